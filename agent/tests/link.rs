//! The real WireGuard link, in a network namespace this test makes (and that ends with it).
//!
//! This host's kernel has no WireGuard, so here the test checks that the link says so clearly;
//! on a kernel with WireGuard it checks the interface it made. The lead's end-to-end test in QEMU
//! guests exercises the link with a real peer.

use std::process::Command;

use oasis_agent::link::{Link, LinkError, WireGuardLink};
use oasis_proto::LinkConfig;
use oasis_testkit::netns::Netns;

#[test]
fn the_real_link_configures_or_says_the_kernel_lacks_wireguard() {
    let config = LinkConfig {
        appliance_key: WireGuardLink::new("x").unwrap().public_key(),
        endpoint: "192.0.2.1:51820".parse().unwrap(),
        address: "10.99.0.5".parse().unwrap(),
        prefix_len: 16,
        appliance_address: "10.99.0.1".parse().unwrap(),
        keepalive_secs: 15,
    };
    let (result, ip_addr) = Netns::create("oa-link").unwrap().run_inside(move || {
        let link = WireGuardLink::new("oasis0").unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let result = runtime.block_on(link.configure(&config)).map(|()| link.handshake_age());
        let moved = LinkConfig {
            endpoint: "192.0.2.2:51820".parse().unwrap(),
            address: "10.99.0.6".parse().unwrap(),
            ..config
        };
        let again = result.as_ref().ok().map(|_| runtime.block_on(link.configure(&moved)));
        let shown = Command::new("ip").args(["-o", "addr", "show", "dev", "oasis0"]).output().unwrap();
        (result.map(|age| (age, again.map(|r| r.is_ok()))), String::from_utf8_lossy(&shown.stdout).into_owned())
    });
    match result {
        Err(LinkError::WireGuardUnavailable { interface, .. }) => {
            assert_eq!(interface, "oasis0");
            assert!(ip_addr.is_empty(), "nothing may be left behind: {ip_addr}");
        }
        Ok((age, again)) => {
            assert_eq!(age, None, "no handshake can have happened with an unreachable peer");
            assert_eq!(again, Some(true), "reconfiguring in place must work");
            assert!(ip_addr.contains("10.99.0.6/16") && !ip_addr.contains("10.99.0.5"), "{ip_addr}");
        }
        Err(other) => panic!("unexpected: {other}"),
    }
}
