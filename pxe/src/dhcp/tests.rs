//! The DHCP service end to end in memory: messages in, replies out, store writes checked.

use std::collections::HashMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use dhcproto::v4::relay::{RelayAgentInformation, RelayCode, RelayInfo};
use dhcproto::v4::{Architecture, DhcpOption, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Encodable};

use super::conflict::{ConflictCheck, NoCheck, Probe};
use super::server::decode;
use super::store::{Commit, LeaseStore, MemoryStore, Sighting, StoreError};
use super::*;
use crate::metrics::{ErrorKind, Metrics};
use crate::policy::BootPolicy;
use oasis_proto::MacAddr;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68);

fn mac(n: u8) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0x00, 0x00, n]
}

fn config(mode: Mode) -> DhcpConfig {
    DhcpConfig {
        mode,
        interface: "test0".into(),
        server: SERVER,
        server_port: 67,
        client_port: 68,
        proxy_port: 4011,
        policy: BootPolicy { server: SERVER, http_port: 80, ipxe_dir: "ipxe".into() },
        rate_per_sec: 5,
        rate_burst: 20,
        reply_delay: Duration::ZERO,
        tolerate_missing_uuid: true,
    }
}

fn full_mode() -> Mode {
    Mode::Full {
        pool: Pool {
            start: Ipv4Addr::new(10, 0, 0, 100),
            end: Ipv4Addr::new(10, 0, 0, 199),
            netmask: Ipv4Addr::new(255, 255, 255, 0),
            reservations: HashMap::new(),
            lease_secs: 3600,
            probation_secs: 600,
        },
        authoritative: true,
        network: NetworkOptions { router: Some(SERVER), dns_servers: vec![SERVER], ..Default::default() },
    }
}

fn service(mode: Mode, store: Arc<dyn LeaseStore>, check: Arc<dyn ConflictCheck>) -> (DhcpService, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::default());
    (DhcpService::new(config(mode), store, check, metrics.clone()).unwrap(), metrics)
}

/// What a client puts in its messages.
#[derive(Clone, Copy)]
enum Client {
    Plain,
    BiosPxe,
    UefiPxe,
    Ipxe,
}

fn message(kind: MessageType, client: Client, n: u8) -> Message {
    let mut msg = Message::default();
    msg.set_opcode(Opcode::BootRequest).set_chaddr(&mac(n)).set_xid(0x1000 + u32::from(n));
    let opts = msg.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    let (class, arch, ipxe) = match client {
        Client::Plain => (None, None, false),
        Client::BiosPxe => (Some("PXEClient:Arch:00000:UNDI:002001"), Some(0), false),
        Client::UefiPxe => (Some("PXEClient:Arch:00007:UNDI:003000"), Some(7), false),
        Client::Ipxe => (Some("PXEClient:Arch:00000:UNDI:002001"), Some(0), true),
    };
    if let Some(class) = class {
        opts.insert(DhcpOption::ClassIdentifier(class.as_bytes().to_vec()));
    }
    if let Some(arch) = arch {
        opts.insert(DhcpOption::ClientSystemArchitecture(Architecture::from(arch)));
        opts.insert(DhcpOption::ClientMachineIdentifier(vec![0, 1, 2, 3]));
    }
    if ipxe {
        opts.insert(DhcpOption::UserClass(b"\x04iPXE".to_vec()));
    }
    msg
}

fn request_for(offer: &Message, client: Client, n: u8) -> Message {
    let mut req = message(MessageType::Request, client, n);
    req.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    req.opts_mut().insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
    req
}

async fn send(svc: &DhcpService, msg: &Message) -> Vec<Outgoing> {
    svc.handle(&msg.to_vec().unwrap(), CLIENT, Port::Dhcp).await
}

async fn one(svc: &DhcpService, msg: &Message) -> Message {
    let mut replies = send(svc, msg).await;
    assert_eq!(replies.len(), 1, "expected one reply");
    replies.remove(0).message
}

fn file(msg: &Message) -> String {
    String::from_utf8_lossy(msg.fname().unwrap_or_default()).trim_end_matches('\0').to_string()
}

#[tokio::test]
async fn full_mode_dora_gives_ipxe_its_script_and_commits_before_the_ack() {
    let store = Arc::new(MemoryStore::default());
    let (svc, metrics) = service(full_mode(), store.clone(), Arc::new(NoCheck));
    let offer = one(&svc, &message(MessageType::Discover, Client::Ipxe, 1)).await;
    assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 0, 0, 100));
    assert_eq!(offer.siaddr(), SERVER);
    assert_eq!(file(&offer), "http://10.0.0.1/boot.ipxe?mac=52-54-00-00-00-01");
    assert!(store.leases.lock().unwrap().is_empty(), "an OFFER commits nothing");

    let replies = send(&svc, &request_for(&offer, Client::Ipxe, 1)).await;
    let ack = &replies[0].message;
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr(), offer.yiaddr());
    assert_eq!(replies[0].to, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
    assert_eq!(ack.opts().get(OptionCode::AddressLeaseTime), Some(&DhcpOption::AddressLeaseTime(3600)));
    let leases = store.leases.lock().unwrap().clone();
    assert_eq!(leases.len(), 1);
    assert_eq!((leases[0].ip, leases[0].state), (offer.yiaddr(), LeaseState::Bound));
    assert!(metrics.render().contains("oasis_dhcp_leases_in_use 0\n"), "the gauge waits for its refresh");
    svc.refresh_gauges();
    assert!(metrics.render().contains("oasis_dhcp_leases_in_use 1\n"));
    assert_eq!(store.sightings.lock().unwrap()[0].arch, Some(0));
}

#[tokio::test]
async fn firmware_gets_its_ipxe_build_and_plain_clients_only_an_address() {
    let (svc, _) = service(full_mode(), Arc::new(MemoryStore::default()), Arc::new(NoCheck));
    let bios = one(&svc, &message(MessageType::Discover, Client::BiosPxe, 1)).await;
    assert_eq!(file(&bios), "ipxe/undionly.kpxe");
    assert_eq!(bios.opts().get(OptionCode::ClassIdentifier), Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec())));
    assert_eq!(
        bios.opts().get(OptionCode::ClientMachineIdentifier),
        Some(&DhcpOption::ClientMachineIdentifier(vec![0, 1, 2, 3]))
    );
    let uefi = one(&svc, &message(MessageType::Discover, Client::UefiPxe, 2)).await;
    assert_eq!(file(&uefi), "ipxe/ipxe.efi");
    let plain = one(&svc, &message(MessageType::Discover, Client::Plain, 3)).await;
    assert_eq!(plain.yiaddr(), Ipv4Addr::new(10, 0, 0, 102));
    assert_eq!(file(&plain), "");
    assert!(plain.opts().get(OptionCode::BootfileName).is_none());
}

#[tokio::test]
async fn leases_survive_a_restart_of_the_service() {
    let store = Arc::new(MemoryStore::default());
    let (svc, _) = service(full_mode(), store.clone(), Arc::new(NoCheck));
    let offer = one(&svc, &message(MessageType::Discover, Client::Ipxe, 1)).await;
    one(&svc, &request_for(&offer, Client::Ipxe, 1)).await;
    drop(svc);

    let (restarted, _) = service(full_mode(), store.clone(), Arc::new(NoCheck));
    // Another machine first: it must not get the first machine's address.
    let other = one(&restarted, &message(MessageType::Discover, Client::Plain, 2)).await;
    assert_ne!(other.yiaddr(), offer.yiaddr());
    // The first machine reboots and asks for its address back (INIT-REBOOT).
    let mut reboot = message(MessageType::Request, Client::Ipxe, 1);
    reboot.opts_mut().insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
    let ack = one(&restarted, &reboot).await;
    assert_eq!((ack.opts().msg_type(), ack.yiaddr()), (Some(MessageType::Ack), offer.yiaddr()));
    let again = one(&restarted, &message(MessageType::Discover, Client::Ipxe, 1)).await;
    assert_eq!(again.yiaddr(), offer.yiaddr());
}

#[tokio::test]
async fn release_decline_nak_and_inform() {
    let store = Arc::new(MemoryStore::default());
    let (svc, _) = service(full_mode(), store.clone(), Arc::new(NoCheck));
    let offer = one(&svc, &message(MessageType::Discover, Client::Plain, 1)).await;
    one(&svc, &request_for(&offer, Client::Plain, 1)).await;

    let mut release = message(MessageType::Release, Client::Plain, 1);
    release.set_ciaddr(offer.yiaddr());
    release.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    let from_lease = SocketAddrV4::new(offer.yiaddr(), 68);
    assert!(svc.handle(&release.to_vec().unwrap(), from_lease, Port::Dhcp).await.is_empty());
    assert_eq!(store.leases.lock().unwrap()[0].state, LeaseState::Released);

    // The client comes back, gets its address, finds it in use and declines it.
    let offer = one(&svc, &message(MessageType::Discover, Client::Plain, 1)).await;
    assert_eq!(one(&svc, &request_for(&offer, Client::Plain, 1)).await.opts().msg_type(), Some(MessageType::Ack));
    let mut decline = message(MessageType::Decline, Client::Plain, 1);
    decline.opts_mut().insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
    decline.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    assert!(send(&svc, &decline).await.is_empty());
    assert_eq!(store.leases.lock().unwrap()[0].state, LeaseState::Declined);
    let next = one(&svc, &message(MessageType::Discover, Client::Plain, 1)).await;
    assert_ne!(next.yiaddr(), offer.yiaddr(), "declined address is not offered again");

    let mut steal = message(MessageType::Request, Client::Plain, 2);
    steal.opts_mut().insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(192, 168, 7, 7)));
    let nak = one(&svc, &steal).await;
    assert_eq!(nak.opts().msg_type(), Some(MessageType::Nak));

    let mut inform = message(MessageType::Inform, Client::BiosPxe, 3);
    inform.set_ciaddr(Ipv4Addr::new(10, 0, 0, 50));
    let replies = send(&svc, &inform).await;
    assert_eq!(replies[0].to, SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 50), 68));
    assert_eq!(replies[0].message.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(file(&replies[0].message), "ipxe/undionly.kpxe");
}

#[tokio::test]
async fn relayed_requests_go_back_to_the_relay_with_option_82() {
    let (svc, _) = service(full_mode(), Arc::new(MemoryStore::default()), Arc::new(NoCheck));
    let mut discover = message(MessageType::Discover, Client::BiosPxe, 1);
    discover.set_giaddr(Ipv4Addr::new(10, 0, 0, 254));
    let mut info = RelayAgentInformation::default();
    info.insert(RelayInfo::AgentCircuitId(b"rack1-port7".to_vec()));
    discover.opts_mut().insert(DhcpOption::RelayAgentInformation(info.clone()));
    let replies = send(&svc, &discover).await;
    assert_eq!(replies[0].to, SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 254), 67));
    assert_eq!(replies[0].message.giaddr(), Ipv4Addr::new(10, 0, 0, 254));
    let echoed = match replies[0].message.opts().get(OptionCode::RelayAgentInformation) {
        Some(DhcpOption::RelayAgentInformation(i)) => i.get(RelayCode::AgentCircuitId).cloned(),
        _ => None,
    };
    assert_eq!(echoed, Some(RelayInfo::AgentCircuitId(b"rack1-port7".to_vec())));

    discover.set_giaddr(Ipv4Addr::new(172, 16, 0, 1));
    assert!(send(&svc, &discover).await.is_empty(), "no pool for that relay's subnet");
}

#[tokio::test]
async fn proxy_mode_answers_boot_clients_only_and_never_hands_out_addresses() {
    let (svc, _) = service(Mode::Proxy, Arc::new(MemoryStore::default()), Arc::new(NoCheck));
    let offer = one(&svc, &message(MessageType::Discover, Client::BiosPxe, 1)).await;
    assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(offer.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(file(&offer), "ipxe/undionly.kpxe");
    assert_eq!(offer.opts().get(OptionCode::VendorExtensions), Some(&DhcpOption::VendorExtensions(vec![6, 1, 8, 255])));
    assert!(offer.opts().get(OptionCode::AddressLeaseTime).is_none());

    assert!(send(&svc, &message(MessageType::Discover, Client::Plain, 2)).await.is_empty());
    let mut site_request = message(MessageType::Request, Client::BiosPxe, 1);
    site_request.opts_mut().insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 0, 2)));
    site_request.opts_mut().insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, 77)));
    assert!(send(&svc, &site_request).await.is_empty(), "requests to the site server are not ours");

    // The PXE boot server port: the client has its address from the site server by now.
    let mut req = message(MessageType::Request, Client::UefiPxe, 1);
    req.set_ciaddr(Ipv4Addr::new(10, 0, 0, 77));
    let from = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 77), 4011);
    let replies = svc.handle(&req.to_vec().unwrap(), from, Port::Proxy).await;
    assert_eq!(replies.len(), 1);
    assert_eq!((replies[0].to, replies[0].port), (from, Port::Proxy));
    assert_eq!(replies[0].message.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(file(&replies[0].message), "ipxe/ipxe.efi");
    assert_eq!(replies[0].message.yiaddr(), Ipv4Addr::UNSPECIFIED);
}

#[tokio::test]
async fn malformed_and_truncated_packets_are_counted_and_the_server_keeps_serving() {
    let (svc, metrics) = service(full_mode(), Arc::new(MemoryStore::default()), Arc::new(NoCheck));
    let good = message(MessageType::Discover, Client::Ipxe, 1).to_vec().unwrap();
    let mut bad: Vec<Vec<u8>> = vec![vec![], vec![1], vec![0xff; 300], good[..100].to_vec(), good[..240].to_vec()];
    // A valid header with an option whose length runs past the end.
    let mut overrun = good[..240].to_vec();
    overrun.extend_from_slice(&[53, 200, 1]);
    bad.push(overrun);
    // Option 94 with the wrong length, option 93 truncated, option 82 garbage.
    for opt in [&[94u8, 1, 1][..], &[93, 1, 0], &[82, 3, 1, 9, 9], &[53, 0]] {
        let mut packet = good[..240].to_vec();
        packet.extend_from_slice(opt);
        packet.push(255);
        bad.push(packet);
    }
    let mut flipped = good.clone();
    for i in (0..flipped.len()).step_by(7) {
        flipped[i] ^= 0x5a;
    }
    bad.push(flipped);
    for packet in &bad {
        let _ = svc.handle(packet, CLIENT, Port::Dhcp).await;
    }
    let malformed = metrics.error_count(ErrorKind::DhcpMalformed);
    assert!(malformed >= 6, "only {malformed} counted as malformed");
    let replies = svc.handle(&good, CLIENT, Port::Dhcp).await;
    assert_eq!(replies[0].message.opts().msg_type(), Some(MessageType::Offer), "still serving");
}

#[tokio::test]
async fn a_flooding_client_is_rate_limited_without_affecting_others() {
    let (svc, metrics) = service(full_mode(), Arc::new(MemoryStore::default()), Arc::new(NoCheck));
    let flood = message(MessageType::Discover, Client::Plain, 1);
    for _ in 0..50 {
        send(&svc, &flood).await;
    }
    assert!(metrics.error_count(ErrorKind::DhcpRateLimited) >= 29);
    assert_eq!(
        one(&svc, &message(MessageType::Discover, Client::Plain, 2)).await.opts().msg_type(),
        Some(MessageType::Offer)
    );
}

struct FailingStore;

impl LeaseStore for FailingStore {
    fn load_leases(&self) -> Result<Vec<Lease>, StoreError> {
        Ok(vec![])
    }
    fn save_lease(&self, _lease: Lease) -> Commit {
        Box::pin(async { Err("disk full".into()) })
    }
    fn record_sighting(&self, _sighting: Sighting) {}
}

#[tokio::test]
async fn no_ack_goes_out_when_the_commit_fails() {
    let (svc, metrics) = service(full_mode(), Arc::new(FailingStore), Arc::new(NoCheck));
    let offer = one(&svc, &message(MessageType::Discover, Client::Plain, 1)).await;
    assert!(send(&svc, &request_for(&offer, Client::Plain, 1)).await.is_empty());
    assert_eq!(metrics.error_count(ErrorKind::StoreWrite), 1);
}

/// A conflict check that finds the listed addresses in use.
struct Taken(Vec<Ipv4Addr>);

impl ConflictCheck for Taken {
    fn probe(&self, ip: Ipv4Addr) -> Pin<Box<dyn Future<Output = Probe> + Send + '_>> {
        let probe = if self.0.contains(&ip) { Probe::InUse { by: None } } else { Probe::Free };
        Box::pin(async move { probe })
    }
}

#[tokio::test]
async fn addresses_that_answer_the_conflict_check_are_skipped_and_quarantined() {
    let store = Arc::new(MemoryStore::default());
    let taken = Taken(vec![Ipv4Addr::new(10, 0, 0, 100), Ipv4Addr::new(10, 0, 0, 101)]);
    let (svc, metrics) = service(full_mode(), store.clone(), Arc::new(taken));
    let offer = one(&svc, &message(MessageType::Discover, Client::Plain, 1)).await;
    assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 0, 0, 102));
    assert_eq!(metrics.error_count(ErrorKind::DhcpConflict), 2);
    let declined: Vec<_> =
        store.leases.lock().unwrap().iter().filter(|l| l.state == LeaseState::Declined).map(|l| l.ip).collect();
    assert_eq!(declined.len(), 2);
}

#[tokio::test]
async fn pxe_clients_without_option_97_are_refused_when_asked() {
    let mut cfg = config(full_mode());
    cfg.tolerate_missing_uuid = false;
    let svc = DhcpService::new(cfg, Arc::new(MemoryStore::default()), Arc::new(NoCheck), Arc::default()).unwrap();
    let mut discover = message(MessageType::Discover, Client::BiosPxe, 1);
    discover.opts_mut().remove(OptionCode::ClientMachineIdentifier);
    let offer = one(&svc, &discover).await;
    assert_eq!(file(&offer), "", "an address but no boot file");
    assert_eq!(file(&one(&svc, &message(MessageType::Discover, Client::BiosPxe, 2)).await), "ipxe/undionly.kpxe");
}

/// Every mode and port a datagram can reach.
fn every_mode_and_port() -> Vec<(&'static str, Mode, Port)> {
    vec![
        ("full, port 67", full_mode(), Port::Dhcp),
        ("full, port 4011", full_mode(), Port::Proxy),
        ("proxy, port 67", Mode::Proxy, Port::Dhcp),
        ("proxy, port 4011", Mode::Proxy, Port::Proxy),
    ]
}

/// Regression (issue 13): dhcproto's `Message::chaddr` slices `chaddr[..hlen]`, so a datagram
/// whose `hlen` is over 16 panicked its handler. Such datagrams, and any hardware address that
/// is not a 6-byte Ethernet one, are refused and counted, in every mode and on both ports.
#[tokio::test]
async fn hostile_hardware_address_lengths_are_refused_without_a_panic() {
    let from = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 77), 68);
    for (name, mode, port) in every_mode_and_port() {
        let (svc, metrics) = service(mode, Arc::new(MemoryStore::default()), Arc::new(NoCheck));
        let mut renew = message(MessageType::Request, Client::BiosPxe, 1);
        renew.set_ciaddr(Ipv4Addr::new(10, 0, 0, 77));
        let mut decline = message(MessageType::Decline, Client::BiosPxe, 1);
        decline.opts_mut().insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, 100)));
        let mut release = message(MessageType::Release, Client::BiosPxe, 1);
        release.set_ciaddr(Ipv4Addr::new(10, 0, 0, 77));
        let bases = [
            message(MessageType::Discover, Client::BiosPxe, 1),
            message(MessageType::Discover, Client::Ipxe, 1),
            renew,
            message(MessageType::Inform, Client::UefiPxe, 1),
            decline,
            release,
        ];
        // (htype, hlen): hlen past the 16-byte field, the sizes of other hardware, other hardware.
        let headers = [(1u8, 17u8), (1, 255), (1, 128), (1, 16), (1, 0), (1, 5), (1, 7), (6, 6), (32, 6), (0, 6)];
        let mut sent = 0;
        for base in &bases {
            let good = base.to_vec().unwrap();
            for (htype, hlen) in headers {
                let mut bad = good.clone();
                bad[1] = htype;
                bad[2] = hlen;
                let replies = svc.handle(&bad, from, port).await;
                assert!(replies.is_empty(), "{name}: htype {htype} hlen {hlen} was answered");
                sent += 1;
            }
        }
        assert_eq!(metrics.error_count(ErrorKind::DhcpMalformed), sent, "{name}: every one counted as malformed");
        // And the server still serves a well-formed client.
        let good = match port {
            Port::Dhcp => message(MessageType::Discover, Client::BiosPxe, 2),
            Port::Proxy => {
                let mut req = message(MessageType::Request, Client::BiosPxe, 2);
                req.set_ciaddr(Ipv4Addr::new(10, 0, 0, 78));
                req
            }
        };
        let replies = svc.handle(&good.to_vec().unwrap(), from, port).await;
        assert_eq!(replies.len(), 1, "{name}: a good client is still served");
    }
}

/// Regression (issue 13): a seeded fuzz of well-formed requests with random header bytes,
/// random option bytes and random lengths, in every mode and on both ports. None may panic, and
/// the server answers a good client afterwards. About one in forty of these datagrams carries an
/// `hlen` over 16, the kind that panicked before.
#[tokio::test]
async fn fuzzed_datagrams_never_panic_the_handler() {
    use rand::{Rng, SeedableRng};
    let from = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 77), 68);
    // A pool large enough that the fuzzed DISCOVERs (from random hardware addresses) do not
    // exhaust it before the good client asks.
    let wide = |mode| match mode {
        Mode::Full { authoritative, network, .. } => Mode::Full {
            pool: Pool {
                start: Ipv4Addr::new(10, 0, 1, 0),
                end: Ipv4Addr::new(10, 0, 255, 254),
                netmask: Ipv4Addr::new(255, 255, 0, 0),
                reservations: HashMap::new(),
                lease_secs: 3600,
                probation_secs: 600,
            },
            authoritative,
            network,
        },
        proxy => proxy,
    };
    for (name, mode, port) in every_mode_and_port() {
        let mut cfg = config(wide(mode));
        (cfg.rate_per_sec, cfg.rate_burst) = (1_000_000, 1_000_000);
        let metrics = Arc::new(Metrics::default());
        let svc = DhcpService::new(cfg, Arc::new(MemoryStore::default()), Arc::new(NoCheck), metrics.clone()).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(13);
        let mut renew = message(MessageType::Request, Client::UefiPxe, 3);
        renew.set_ciaddr(Ipv4Addr::new(10, 0, 0, 100));
        let mut relayed = message(MessageType::Discover, Client::Ipxe, 4);
        relayed.set_giaddr(Ipv4Addr::new(10, 0, 0, 254));
        let mut info = RelayAgentInformation::default();
        info.insert(RelayInfo::AgentCircuitId(b"port7".to_vec()));
        relayed.opts_mut().insert(DhcpOption::RelayAgentInformation(info));
        let offer = Message::default();
        let bases: Vec<Vec<u8>> = [
            message(MessageType::Discover, Client::BiosPxe, 1),
            request_for(&offer, Client::Ipxe, 2),
            renew,
            relayed,
            message(MessageType::Inform, Client::BiosPxe, 5),
            message(MessageType::Decline, Client::Plain, 6),
            message(MessageType::Release, Client::Plain, 7),
        ]
        .iter()
        .map(|m| m.to_vec().unwrap())
        .collect();
        let mut long_hlen = 0;
        for i in 0..8_000 {
            let mut datagram = bases[i % bases.len()].clone();
            for _ in 0..rng.random_range(1..=8) {
                let at = rng.random_range(0..240);
                datagram[at] = rng.random();
            }
            for _ in 0..rng.random_range(0..=4) {
                let at = rng.random_range(240..datagram.len());
                datagram[at] = rng.random();
            }
            match rng.random_range(0..4) {
                0 => datagram.truncate(rng.random_range(0..datagram.len())),
                1 => datagram.extend((0..rng.random_range(1..64)).map(|_| rng.random::<u8>())),
                _ => {}
            }
            long_hlen += usize::from(datagram.get(2).is_some_and(|hlen| *hlen > 16));
            let _ = svc.handle(&datagram, from, port).await;
        }
        assert!(long_hlen > 100, "{name}: the fuzz sent only {long_hlen} datagrams with hlen over 16");
        let good = match port {
            Port::Dhcp => message(MessageType::Discover, Client::BiosPxe, 9),
            Port::Proxy => {
                let mut req = message(MessageType::Request, Client::BiosPxe, 9);
                req.set_ciaddr(Ipv4Addr::new(10, 0, 0, 79));
                req
            }
        };
        assert_eq!(svc.handle(&good.to_vec().unwrap(), from, port).await.len(), 1, "{name}: still serving");
    }
}

/// Options of a length dhcproto 0.15 asserts on are refused before dhcproto sees them: the
/// assertion was caught (the parse runs under `catch_unwind`), but each one printed a panic
/// message, on a path any client can reach. Runs of a repeated option count as one (RFC 3396).
#[test]
fn option_lengths_dhcproto_asserts_on_are_refused_before_parsing() {
    let good = message(MessageType::Discover, Client::BiosPxe, 1).to_vec().unwrap();
    let header = &good[..240];
    let with = |options: &[u8]| {
        let mut packet = header.to_vec();
        packet.extend_from_slice(&[53, 1, 1]);
        packet.extend_from_slice(options);
        packet.push(255);
        packet
    };
    for bad in [
        &[80u8, 1, 0][..],
        &[81, 2, 0, 0],
        &[94, 2, 1, 2],
        &[94, 3, 1, 2, 3, 94, 3, 1, 2, 3],
        &[152, 3, 0, 0, 0],
        &[155, 5, 0, 0, 0, 0, 0],
    ] {
        let packet = with(bad);
        assert!(decode(&packet).is_none(), "{bad:?}");
        let dhcproto = std::panic::catch_unwind(|| Message::from_bytes(&packet).map(|_| ()));
        if cfg!(debug_assertions) {
            assert!(dhcproto.is_err(), "dhcproto no longer asserts on {bad:?}; the pre-check may go");
        }
    }
    for fine in [&[80u8, 0][..], &[94, 3, 1, 2, 3], &[94, 3, 1, 2, 3, 0, 94, 3, 1, 2, 3], &[152, 4, 0, 0, 0, 1]] {
        assert!(decode(&with(fine)).is_some(), "{fine:?}");
    }
    assert!(decode(&good).is_some());
}

/// A conflict check where the listed addresses answer from the given hardware addresses.
struct AnswersFrom(Vec<(Ipv4Addr, Option<MacAddr>)>);

impl ConflictCheck for AnswersFrom {
    fn probe(&self, ip: Ipv4Addr) -> Pin<Box<dyn Future<Output = Probe> + Send + '_>> {
        let probe = match self.0.iter().find(|(answering, _)| *answering == ip) {
            Some(&(_, by)) => Probe::InUse { by },
            None => Probe::Free,
        };
        Box::pin(async move { probe })
    }
}

/// A clock the test moves by hand.
fn manual_clock(start: u64) -> (Arc<std::sync::atomic::AtomicU64>, impl Fn() -> u64 + Send + Sync + 'static) {
    let now = Arc::new(std::sync::atomic::AtomicU64::new(start));
    let reader = now.clone();
    (now, move || reader.load(std::sync::atomic::Ordering::Relaxed))
}

/// DISCOVER and REQUEST for client `n`: its bound address.
async fn bind(svc: &DhcpService, n: u8) -> Ipv4Addr {
    let offer = one(svc, &message(MessageType::Discover, Client::Plain, n)).await;
    let ack = one(svc, &request_for(&offer, Client::Plain, n)).await;
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    ack.yiaddr()
}

fn decline_of(ip: Ipv4Addr, n: u8) -> Message {
    let mut decline = message(MessageType::Decline, Client::Plain, n);
    decline.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
    decline.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    decline
}

/// Client `n` renews `ip` from that address: the outcome.
async fn renew(svc: &DhcpService, ip: Ipv4Addr, n: u8) -> (Option<MessageType>, Ipv4Addr) {
    let mut renew = message(MessageType::Request, Client::Plain, n);
    renew.set_ciaddr(ip);
    let replies = svc.handle(&renew.to_vec().unwrap(), SocketAddrV4::new(ip, 68), Port::Dhcp).await;
    assert_eq!(replies.len(), 1, "one reply to a renewal");
    (replies[0].message.opts().msg_type(), replies[0].message.yiaddr())
}

/// Regression (issue 13): a DECLINE with another client's address took that client's bound
/// lease away: its next REQUEST was NAKed and the address sat in probation.
#[tokio::test]
async fn a_decline_from_anyone_but_the_fresh_holder_is_ignored() {
    let store = Arc::new(MemoryStore::default());
    let (svc, metrics) = service(full_mode(), store.clone(), Arc::new(NoCheck));
    let (clock, reader) = manual_clock(1_000_000);
    let svc = svc.with_clock(reader);
    let victim = bind(&svc, 1).await;

    // Another machine, under its own hardware address, declines the victim's address.
    assert!(send(&svc, &decline_of(victim, 2)).await.is_empty());
    // The victim's own hardware address, but long after its ACK.
    clock.fetch_add(lease::DECLINE_WINDOW_SECS + 1, std::sync::atomic::Ordering::Relaxed);
    assert!(send(&svc, &decline_of(victim, 1)).await.is_empty());
    // An address this server does not hand out, and a DECLINE naming no address.
    assert!(send(&svc, &decline_of(Ipv4Addr::new(10, 0, 0, 250), 1)).await.is_empty());
    let mut nameless = decline_of(victim, 1);
    nameless.opts_mut().remove(OptionCode::RequestedIpAddress);
    assert!(send(&svc, &nameless).await.is_empty());

    assert_eq!(metrics.error_count(ErrorKind::DhcpDeclineIgnored), 4);
    assert!(store.leases.lock().unwrap().iter().all(|l| l.state == LeaseState::Bound), "nothing declined");
    assert_eq!(renew(&svc, victim, 1).await, (Some(MessageType::Ack), victim), "the victim keeps its lease");
    let other = one(&svc, &message(MessageType::Discover, Client::Plain, 3)).await;
    assert_ne!(other.yiaddr(), victim, "and nobody else is offered it");
}

#[tokio::test]
async fn a_decline_right_after_the_ack_is_honoured_unless_the_address_answers_from_the_decliner() {
    let holder = MacAddr(mac(1));
    let store = Arc::new(MemoryStore::default());
    // Client 1's first address answers from client 1 itself; client 2's from another machine.
    let check = AnswersFrom(vec![
        (Ipv4Addr::new(10, 0, 0, 100), Some(holder)),
        (Ipv4Addr::new(10, 0, 0, 101), Some(MacAddr([0x02, 0, 0, 0, 0, 0x99]))),
    ]);
    let (svc, metrics) = service(full_mode(), store.clone(), Arc::new(check));
    let (clock, reader) = manual_clock(1_000_000);
    let svc = svc.with_clock(reader);
    // The conflict check runs before an address new to a client is offered, and these two
    // answer it; so each client asks for its address straight away, as after a lost OFFER.
    for (n, last) in [(1, 100), (2, 101)] {
        let mut select = message(MessageType::Request, Client::Plain, n);
        select.opts_mut().insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, last)));
        select.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
        assert_eq!(one(&svc, &select).await.opts().msg_type(), Some(MessageType::Ack));
    }
    clock.fetch_add(5, std::sync::atomic::Ordering::Relaxed);

    // A forged DECLINE of client 1's address, in its window: the address answers from client 1.
    assert!(send(&svc, &decline_of(Ipv4Addr::new(10, 0, 0, 100), 1)).await.is_empty());
    assert_eq!(metrics.error_count(ErrorKind::DhcpDeclineIgnored), 1);
    assert_eq!(renew(&svc, Ipv4Addr::new(10, 0, 0, 100), 1).await.0, Some(MessageType::Ack));

    // Client 2 really found its address taken by another machine.
    assert!(send(&svc, &decline_of(Ipv4Addr::new(10, 0, 0, 101), 2)).await.is_empty());
    let declined = store.leases.lock().unwrap().iter().filter(|l| l.state == LeaseState::Declined).count();
    assert_eq!(declined, 1);
    assert_eq!(renew(&svc, Ipv4Addr::new(10, 0, 0, 101), 2).await.0, Some(MessageType::Nak));
}

/// Regression (issue 13): a RELEASE with the holder's hardware address, sent from anywhere,
/// gave the holder's address back. A client unicasts its RELEASE from the address it releases.
#[tokio::test]
async fn a_release_from_another_address_is_ignored() {
    let store = Arc::new(MemoryStore::default());
    let (svc, metrics) = service(full_mode(), store.clone(), Arc::new(NoCheck));
    let victim = bind(&svc, 1).await;
    let mut release = message(MessageType::Release, Client::Plain, 1);
    release.set_ciaddr(victim);
    release.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    let forged = release.to_vec().unwrap();
    for from in [Ipv4Addr::new(10, 0, 0, 66), Ipv4Addr::UNSPECIFIED] {
        assert!(svc.handle(&forged, SocketAddrV4::new(from, 68), Port::Dhcp).await.is_empty());
    }
    // A relay address that is not where the datagram came from.
    let mut relayed = release.clone();
    relayed.set_giaddr(Ipv4Addr::new(10, 0, 0, 254));
    let relayed = relayed.to_vec().unwrap();
    assert!(svc.handle(&relayed, SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 66), 67), Port::Dhcp).await.is_empty());
    assert_eq!(metrics.error_count(ErrorKind::DhcpReleaseIgnored), 3);
    assert_eq!(store.leases.lock().unwrap()[0].state, LeaseState::Bound);
    assert_eq!(renew(&svc, victim, 1).await, (Some(MessageType::Ack), victim));

    // From the relay it names: honoured.
    svc.handle(&relayed, SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 254), 67), Port::Dhcp).await;
    assert_eq!(store.leases.lock().unwrap().last().unwrap().state, LeaseState::Released);
    // From the address itself, but not the holder: ignored.
    let victim2 = bind(&svc, 2).await;
    let mut other = message(MessageType::Release, Client::Plain, 3);
    other.set_ciaddr(victim2);
    svc.handle(&other.to_vec().unwrap(), SocketAddrV4::new(victim2, 68), Port::Dhcp).await;
    assert_eq!(metrics.error_count(ErrorKind::DhcpReleaseIgnored), 4);
    assert_eq!(renew(&svc, victim2, 2).await, (Some(MessageType::Ack), victim2));
}
