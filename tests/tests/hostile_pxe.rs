//! Hostile and broken clients against a real `oasis serve` (issue 13): spoofed DECLINEs and
//! RELEASEs do not take a lease away, malformed DHCP datagrams (hlen over 16, truncated, bad
//! options) are refused without a panic while a real client is still served, and a directory in
//! the boot root swapped for a symlink never makes HTTP or TFTP serve a file from outside.
//!
//! Each test makes a rack namespace (bridge `br0`, the appliance at 10.0.0.1) and client
//! namespaces on veth pairs into the bridge; the DHCP client is the harness's
//! ([`oasis_e2e::dhcp_client`]). No virtual machines, no boot assets: the boot root is small files
//! written here. Needs root.

use std::ffi::CString;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, MessageType};
use dhcproto::Encodable;
use oasis_e2e::appliance::write_config;
use oasis_e2e::dhcp_client::{mac_text, message as request, DhcpClient, Role};
use oasis_e2e::json::LeaseState;
use oasis_e2e::{Appliance, Netns};

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const DHCP: &str = "range = [\"10.0.0.100\", \"10.0.0.199\"]\nconflict_check = \"arp\"";
const CLIENT_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x0d, 0x00, 0x01];
const ATTACKER_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x0d, 0x00, 0x66];
const ATTACKER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 66);

/// The rack: the appliance's namespace, a client's and an attacker's, and the running server.
struct Rack {
    appliance: Appliance,
    client: Netns,
    attacker: Netns,
    dir: tempfile::TempDir,
    // Dropped last: the appliance stops before its namespace goes.
    _ns: Netns,
}

fn rack(prefix: &str) -> Rack {
    let ns = Netns::create(prefix).unwrap();
    ns.add_bridge("br0", Some("10.0.0.1/24")).unwrap();
    let client = Netns::create(&format!("{prefix}-c")).unwrap();
    ns.add_veth_to("cl0", &client, "eth0").unwrap();
    ns.attach("cl0", "br0").unwrap();
    client.ip(&["link", "set", "eth0", "down"]).unwrap();
    client.ip(&["link", "set", "eth0", "address", &mac_text(CLIENT_MAC)]).unwrap();
    client.ip(&["link", "set", "eth0", "up"]).unwrap();
    // No address yet: broadcasts go out eth0 from 0.0.0.0, as a DHCP client's do.
    client.ip(&["route", "add", "default", "dev", "eth0"]).unwrap();
    let attacker = Netns::create(&format!("{prefix}-a")).unwrap();
    ns.add_veth_to("at0", &attacker, "eth0").unwrap();
    ns.attach("at0", "br0").unwrap();
    attacker.add_address("eth0", &format!("{ATTACKER_IP}/24")).unwrap();

    let dir = tempfile::Builder::new().prefix("oasis-e2e-").tempdir().unwrap();
    let root = dir.path().join("boot");
    for (name, data) in [
        ("ipxe/undionly.kpxe", &b"undionly"[..]),
        ("ipxe/ipxe.efi", b"ipxe.efi"),
        ("ipxe/snp.efi", b"snp.efi"),
        ("node/vmlinuz", b"kernel"),
        ("node/initrd.img", b"initrd"),
    ] {
        let path = root.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }
    let config = write_config(dir.path(), DHCP, &root, "");
    let appliance = Appliance::start(&ns, &config, &dir.path().join("oasis.log"));
    Rack { appliance, client, attacker, dir, _ns: ns }
}

/// A current-thread runtime for the harness's DHCP client.
fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

/// DISCOVER, OFFER, REQUEST, ACK from the client's namespace; the address bound. Tries again
/// when an answer is lost (the server checks new addresses for conflicts before it offers).
fn dora(client: &Netns, mac: [u8; 6]) -> Ipv4Addr {
    client.run_inside(move || {
        let lease = block_on(async { DhcpClient::bind(mac)?.dora(Role::Os).await });
        lease.unwrap_or_else(|e| panic!("{e}")).ip
    })
}

/// A RENEW from the bound address, unicast to the server: the answer's type and address.
fn renew(client: &Netns, mac: [u8; 6], ip: Ipv4Addr) -> (Option<MessageType>, Ipv4Addr) {
    client.run_inside(move || {
        let reply = block_on(async { DhcpClient::bind(mac)?.renew_message(ip, SERVER, Role::Os).await });
        let reply = reply.unwrap_or_else(|e| panic!("an answer to the RENEW: {e}"));
        (reply.opts().msg_type(), reply.yiaddr())
    })
}

/// Sends raw datagrams from the attacker's namespace to the server's `port`.
fn send_from_attacker(attacker: &Netns, datagrams: Vec<Vec<u8>>, port: u16) {
    attacker.run_inside(move || {
        let socket = UdpSocket::bind(SocketAddrV4::new(ATTACKER_IP, 68)).unwrap();
        for datagram in datagrams {
            socket.send_to(&datagram, SocketAddrV4::new(SERVER, port)).unwrap();
        }
    })
}

/// `/metrics` from the appliance, fetched from the attacker's namespace (it has an address
/// from the start): the value of `oasis_errors_total{kind="KIND"}`.
fn error_count(rack: &Rack, kind: &str) -> u64 {
    let text = rack.attacker.exec(&["busybox", "wget", "-q", "-O", "-", "http://10.0.0.1/metrics"]).unwrap();
    let prefix = format!("oasis_errors_total{{kind=\"{kind}\"}} ");
    // A counter this build does not have (an older one) reads as zero.
    text.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0, |n| n.parse().unwrap())
}

/// The address's lease record, as `oasis leases --json` lists it.
fn lease_of(appliance: &Appliance, ip: Ipv4Addr) -> (String, LeaseState) {
    let leases = appliance.leases();
    let lease = leases.iter().find(|l| l.ip == ip).unwrap_or_else(|| panic!("no lease of {ip}"));
    (lease.mac.to_string(), lease.state)
}

#[test]
fn spoofed_declines_and_releases_do_not_take_a_lease_away() {
    let rack = rack("oasis-hostile-dhcp");
    let ip = dora(&rack.client, CLIENT_MAC);
    // The client uses its address, so it answers ARP for it from its own hardware address.
    rack.client.add_address("eth0", &format!("{ip}/24")).unwrap();

    let decline = |mac: [u8; 6], xid: u32| {
        let mut decline = request(MessageType::Decline, mac, xid);
        decline.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
        decline.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
        decline.to_vec().unwrap()
    };
    let mut release = request(MessageType::Release, CLIENT_MAC, 0x0d20_0003);
    release.set_ciaddr(ip);
    release.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    let forged = vec![
        // Right after the client's ACK, with the client's hardware address: the server's ARP
        // probe finds the address answering from that very hardware address.
        decline(CLIENT_MAC, 0x0d20_0001),
        // The attacker's own hardware address: it holds nothing.
        decline(ATTACKER_MAC, 0x0d20_0002),
        // The client's hardware address, from the attacker's address.
        release.to_vec().unwrap(),
    ];
    send_from_attacker(&rack.attacker, forged, 67);

    // Each is handled on its own task: wait until the metrics say all three were ignored, or
    // the lease changed.
    let bound = (mac_text(CLIENT_MAC), LeaseState::Bound);
    let deadline = Instant::now() + Duration::from_secs(20);
    while error_count(&rack, "dhcp_decline_ignored") < 2 || error_count(&rack, "dhcp_release_ignored") < 1 {
        if lease_of(&rack.appliance, ip) != bound {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the forged DECLINEs and RELEASE were not all handled\n--- oasis log ---\n{}",
            oasis_e2e::tail(&rack.appliance.log(), 40)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(lease_of(&rack.appliance, ip), bound, "a forged DECLINE or RELEASE changed the lease");
    // The DECLINE with the client's own hardware address was caught by the real ARP probe.
    let log = rack.appliance.log();
    assert!(
        log.contains("answers from the sender's own hardware address"),
        "no line about the ARP probe answering from the client:\n{}",
        oasis_e2e::tail(&log, 40)
    );
    assert_eq!(renew(&rack.client, CLIENT_MAC, ip), (Some(MessageType::Ack), ip), "the client keeps its address");
}

/// Malformed datagrams: a valid DISCOVER (and a boot-server REQUEST) with `hlen` over 16, cut
/// short, or with options dhcproto asserts on, plus noise.
fn hostile_datagrams() -> Vec<Vec<u8>> {
    let mut discover = request(MessageType::Discover, ATTACKER_MAC, 0x0d30_0000);
    discover.opts_mut().insert(DhcpOption::ClassIdentifier(b"PXEClient:Arch:00000:UNDI:002001".to_vec()));
    let mut boot_request = request(MessageType::Request, ATTACKER_MAC, 0x0d30_0001);
    boot_request.set_ciaddr(ATTACKER_IP);
    boot_request.opts_mut().insert(DhcpOption::ClassIdentifier(b"PXEClient:Arch:00007:UNDI:003000".to_vec()));
    let mut out = Vec::new();
    for good in [discover.to_vec().unwrap(), boot_request.to_vec().unwrap()] {
        for hlen in [17u8, 64, 128, 255] {
            let mut bad = good.clone();
            bad[2] = hlen;
            out.push(bad);
        }
        out.push(good[..100].to_vec());
        out.push(good[..239].to_vec());
        for option in [&[53u8, 200, 1][..], &[94, 2, 1, 1], &[81, 1, 0], &[53, 0]] {
            let mut bad = good[..240].to_vec();
            bad.extend_from_slice(option);
            bad.push(255);
            out.push(bad);
        }
    }
    out.push(vec![0x01; 300]);
    out.push(vec![]);
    out
}

#[test]
fn hostile_datagrams_are_refused_and_a_real_client_is_still_served() {
    let rack = rack("oasis-hostile-bad");
    let datagrams = hostile_datagrams();
    let malformed_before = error_count(&rack, "dhcp_malformed");
    for port in [67, 4011] {
        for _ in 0..5 {
            send_from_attacker(&rack.attacker, datagrams.clone(), port);
        }
    }
    let expected = malformed_before + 2 * 5 * datagrams.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(20);
    while error_count(&rack, "dhcp_malformed") < expected {
        assert!(
            Instant::now() < deadline,
            "{} of {expected} hostile datagrams counted as malformed\n--- oasis log ---\n{}",
            error_count(&rack, "dhcp_malformed"),
            oasis_e2e::tail(&rack.appliance.log(), 40)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let ip = dora(&rack.client, CLIENT_MAC);
    assert!(ip.octets()[..3] == [10, 0, 0] && (100..=199).contains(&ip.octets()[3]), "{ip}");
    let log = rack.appliance.log();
    assert!(!log.contains("panicked"), "a datagram panicked a handler:\n{}", oasis_e2e::tail(&log, 40));
}

/// `race/d/d/.../vmlinuz`: deep, so that a server that checked the path before opening it again
/// had a wide window for the swap.
fn race_name() -> String {
    format!("race/{}vmlinuz", "d/".repeat(100))
}

const INSIDE: &[u8] = b"the kernel inside the boot root";
const SECRET: &[u8] = b"SECRET-OUTSIDE-THE-BOOT-ROOT";

/// Exchanges `a` and `b` atomically (`renameat2(RENAME_EXCHANGE)`), over and over, until told to
/// stop; an even number of times, so everything is back in place at the end.
fn swap_until(a: &Path, b: &Path, stop: &AtomicBool) -> u64 {
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).unwrap();
    let (a, b) = (c(a), c(b));
    let exchange = || {
        // SAFETY: both paths are NUL-terminated and outlive the call.
        let rc =
            unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_EXCHANGE) };
        assert_eq!(rc, 0, "renameat2: {}", std::io::Error::last_os_error());
    };
    let mut swaps = 0;
    while !stop.load(Ordering::Relaxed) {
        exchange();
        exchange();
        swaps += 1;
    }
    swaps
}

fn http_get(target: &str) -> (u16, Vec<u8>) {
    let mut stream = TcpStream::connect((SERVER, 80)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(stream, "GET {target} HTTP/1.1\r\nHost: 10.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete response head");
    let status = std::str::from_utf8(&raw[9..12]).unwrap().parse().unwrap();
    (status, raw[split + 4..].to_vec())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_directory_swapped_for_a_symlink_serves_nothing_from_outside() {
    let rack = rack("oasis-hostile-race");
    rack.client.add_address("eth0", "10.0.0.50/24").unwrap();
    let root: PathBuf = rack.dir.path().join("boot");
    let outside = rack.dir.path().join("outside");
    for (base, data) in [(&root, INSIDE), (&outside, SECRET)] {
        let name = race_name();
        let file = if base == &outside { outside.join(name.strip_prefix("race/").unwrap()) } else { base.join(&name) };
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, data).unwrap();
    }
    let (node, link) = (root.join("race"), root.join("race.link"));
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let stop = stop.clone();
        std::thread::spawn(move || swap_until(&node, &link, &stop))
    };

    // HTTP and TFTP clients, four of each at once, from the client's namespace.
    let results = rack.client.run_inside(|| {
        let http: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    let target = format!("/boot/{}", race_name());
                    (0..200).map(|_| http_get(&target)).collect::<Vec<_>>()
                })
            })
            .collect();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let tftp = runtime.block_on(async {
            let fetches: Vec<_> = (0..4)
                .map(|_| {
                    tokio::spawn(async {
                        let server = SocketAddr::V4(SocketAddrV4::new(SERVER, 69));
                        let options = oasis_pxe::tftp::ClientOptions::default();
                        let mut got = Vec::new();
                        for _ in 0..200 {
                            got.push(oasis_pxe::tftp::fetch(server, race_name().as_bytes(), &options).await);
                        }
                        got
                    })
                })
                .collect();
            let mut all = Vec::new();
            for fetch in fetches {
                all.extend(fetch.await.unwrap());
            }
            all
        });
        let http: Vec<_> = http.into_iter().flat_map(|t| t.join().unwrap()).collect();
        (http, tftp)
    });
    stop.store(true, Ordering::Relaxed);
    assert!(swapper.join().unwrap() > 0, "the swapper never ran");
    let (http, tftp) = results;

    let leaks = http.iter().filter(|(_, body)| contains(body, SECRET)).count();
    assert_eq!(leaks, 0, "{leaks} of {} HTTP responses carried the file outside the boot root", http.len());
    for (status, body) in &http {
        assert!(*status == 200 && body == INSIDE || *status == 404, "{status}: {}", String::from_utf8_lossy(body));
    }
    let leaks = tftp.iter().filter(|r| r.as_ref().is_ok_and(|(data, _)| contains(data, SECRET))).count();
    assert_eq!(leaks, 0, "{leaks} of {} TFTP transfers carried the file outside the boot root", tftp.len());
    for result in &tftp {
        match result {
            Ok((data, _)) => assert_eq!(data, INSIDE),
            Err(oasis_pxe::tftp::ClientError::Server { .. }) => {}
            Err(e) => panic!("the TFTP server failed: {e}"),
        }
    }
    // With the directory back, both serve the file inside.
    let name = race_name();
    let (status, body) = rack.client.run_inside(move || http_get(&format!("/boot/{name}")));
    assert_eq!((status, body.as_slice()), (200, INSIDE));
}
