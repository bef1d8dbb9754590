//! The agent's rtnetlink calls on a real link (a veth pair), in a network namespace this test
//! makes (and that ends with it).

use oasis_agent::network::Netlink;
use oasis_testkit::netns::Netns;

/// A point-to-point address (`ip addr add A peer B`) is this host's A: the mesh endpoint the
/// agent reports from it must not be the peer's B.
#[test]
fn a_point_to_point_address_is_read_as_its_local_side() {
    let ns = Netns::create("oa-net").unwrap();
    ns.ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"]).unwrap();
    ns.ip(&["addr", "add", "10.0.0.1", "peer", "10.0.0.2/32", "dev", "v0"]).unwrap();
    let addresses = ns.run_inside(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let net = Netlink::connect().unwrap();
            let link = net.link_by_name("v0").await.unwrap().unwrap();
            let addresses = net.ipv4_addresses(link.index).await.unwrap();
            net.clear_ipv4(link.index).await.unwrap();
            addresses
        })
    });
    let after = ns.ip(&["-o", "-4", "addr", "show", "dev", "v0"]).unwrap();
    assert_eq!(addresses, [("10.0.0.1".parse().unwrap(), 32)]);
    assert_eq!(after, "", "every IPv4 address is gone");
}
