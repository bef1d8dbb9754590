use std::process::Command;

use super::*;

fn message(attributes: Vec<AddressAttribute>, prefix_len: u8) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = AddressFamily::Inet;
    m.header.prefix_len = prefix_len;
    m.attributes = attributes;
    m
}

fn v4(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn the_local_address_is_ifa_local_even_when_ifa_address_is_the_peer() {
    // As the kernel sends a point-to-point address: IFA_ADDRESS (the peer) first.
    let p2p = message(vec![AddressAttribute::Address(v4("10.0.0.2")), AddressAttribute::Local(v4("10.0.0.1"))], 32);
    assert_eq!(local_ipv4(&p2p), Some(Ipv4Addr::new(10, 0, 0, 1)));
    assert_eq!(peer_ipv4(&p2p), Some(Ipv4Addr::new(10, 0, 0, 2)));
    assert_eq!(ipv4_net(&p2p), Some("10.0.0.1/32".parse().unwrap()));
    // A broadcast link: both the same, no peer.
    let lan = message(vec![AddressAttribute::Address(v4("10.1.0.9")), AddressAttribute::Local(v4("10.1.0.9"))], 24);
    assert_eq!(ipv4_net(&lan), Some("10.1.0.9/24".parse().unwrap()));
    assert_eq!(peer_ipv4(&lan), None);
    // Only IFA_ADDRESS (as IPv6 messages are): that is the address.
    let bare = message(vec![AddressAttribute::Address(v4("192.0.2.7"))], 24);
    assert_eq!(local_ipv4(&bare), Some(Ipv4Addr::new(192, 0, 2, 7)));
    let mut v6 = message(vec![AddressAttribute::Address(v4("fe80::1"))], 64);
    v6.header.family = AddressFamily::Inet6;
    assert_eq!(ipv4_net(&v6), None);
}

/// Runs `f` on a thread of its own in a new network namespace (gone when the thread ends) with
/// a veth pair `v0`/`v1`, on a current-thread runtime.
fn in_fresh_netns<T: Send + 'static>(f: impl AsyncFnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: unshare(2) with CLONE_NEWNET changes only this thread's network namespace; the
        // thread is ours and ends when `f` returns.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "unshare(CLONE_NEWNET): {} (this test needs root)", std::io::Error::last_os_error());
        ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(f())
    })
    .join()
    .unwrap()
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_point_to_point_address_is_listed_by_its_local_side_and_replaced() {
    let (listed, shown) = in_fresh_netns(async || {
        ip(&["addr", "add", "10.0.0.1", "peer", "10.0.0.2/32", "dev", "v0"]);
        ip(&["addr", "add", "10.1.0.9/24", "dev", "v0"]);
        ip(&["addr", "add", "fd00::9/64", "dev", "v0", "nodad"]);
        let netlink = Netlink::connect().unwrap();
        let index = netlink.link_index("v0").await.unwrap();
        let listed = netlink.ipv4_addresses(index, "v0").await.unwrap();
        // The peer form of the wanted address is not the wanted address: it goes and comes back
        // plain.
        set_only_ipv4("v0", "10.0.0.1/32".parse().unwrap()).await.unwrap();
        (listed, ip(&["-o", "addr", "show", "dev", "v0"]))
    });
    assert_eq!(listed, ["10.0.0.1/32".parse::<Ipv4Net>().unwrap(), "10.1.0.9/24".parse().unwrap()]);
    assert!(shown.contains("inet 10.0.0.1/32"), "{shown}");
    assert!(!shown.contains("peer") && !shown.contains("10.1.0.9"), "{shown}");
    assert!(shown.contains("fd00::9/64"), "IPv6 addresses stay: {shown}");
}

#[test]
fn setting_the_only_address_is_idempotent_and_brings_the_link_up() {
    let (first, second, state) = in_fresh_netns(async || {
        ip(&["addr", "add", "10.1.0.9/24", "dev", "v0"]);
        ip(&["addr", "add", "10.1.0.10/24", "dev", "v0"]);
        set_only_ipv4("v0", "10.99.0.5/16".parse().unwrap()).await.unwrap();
        let first = ip(&["-o", "-4", "addr", "show", "dev", "v0"]);
        set_only_ipv4("v0", "10.99.0.5/16".parse().unwrap()).await.unwrap();
        let second = ip(&["-o", "-4", "addr", "show", "dev", "v0"]);
        (first, second, ip(&["-o", "link", "show", "dev", "v0"]))
    });
    assert_eq!(first.lines().count(), 1, "{first}");
    assert!(first.contains("inet 10.99.0.5/16 brd 10.99.255.255"), "{first}");
    assert_eq!(first, second);
    assert!(state.contains(",UP"), "{state}");
}

#[test]
fn a_missing_link_and_a_refusal_say_which_and_keep_the_errno() {
    let (missing, refused) = in_fresh_netns(async || {
        let missing = set_only_ipv4("nope0", "10.0.0.1/24".parse().unwrap()).await.unwrap_err();
        let netlink = Netlink::connect().unwrap();
        // Index 999 does not exist: the kernel refuses.
        let refused = netlink.link_up(999, "ghost").await.unwrap_err();
        (missing, refused)
    });
    assert!(matches!(&missing, NetlinkError::NoSuchLink { interface } if interface == "nope0"), "{missing:?}");
    assert_eq!(refused.to_string(), "setting the link up on ghost failed");
    assert_eq!(refused.errno(), Some(libc::ENODEV), "{refused:?}");
}

#[test]
fn synchronous_callers_set_addresses_from_a_runtime_s_blocking_thread_too() {
    let shown = in_fresh_netns(async || {
        tokio::task::spawn_blocking(|| {
            set_only_ipv4_blocking("v1", "192.168.7.1/24".parse().unwrap()).unwrap();
            ip(&["-o", "-4", "addr", "show", "dev", "v1"])
        })
        .await
        .unwrap()
    });
    assert!(shown.contains("inet 192.168.7.1/24"), "{shown}");
}
