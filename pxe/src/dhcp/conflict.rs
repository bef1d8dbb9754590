//! The conflict check before an address is offered: is anyone already using it? The same probe
//! vets a DHCPDECLINE: an address that answers from the declining client's own hardware address
//! is in use by that client, so the DECLINE is forged.
//!
//! ARP (RFC 5227 style probe: sender address 0.0.0.0) finds any host on the link, firewalled or
//! not, and says which hardware address answered; ICMP echo (what dnsmasq does) also reaches
//! hosts behind a relay, but cannot say who answered. One socket per check kind is shared by all
//! probes in flight; a receive task wakes the probe whose address answered.

use std::collections::HashMap;
use std::future::Future;
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;

use crate::sys;
use oasis_proto::MacAddr;

/// What probing an address found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// Nothing answered within the check's timeout.
    Free,
    /// Something answered: from hardware address `by` when the check can tell (ARP can, ICMP
    /// cannot).
    InUse { by: Option<MacAddr> },
}

impl Probe {
    pub fn in_use(self) -> bool {
        self != Self::Free
    }
}

/// Probes whether an address is in use.
pub trait ConflictCheck: Send + Sync + 'static {
    /// Resolves once something answered for `ip`, or the check's timeout passed.
    fn probe(&self, ip: Ipv4Addr) -> Pin<Box<dyn Future<Output = Probe> + Send + '_>>;
}

/// No check: every address is assumed free.
#[derive(Debug)]
pub struct NoCheck;

impl ConflictCheck for NoCheck {
    fn probe(&self, _ip: Ipv4Addr) -> Pin<Box<dyn Future<Output = Probe> + Send + '_>> {
        Box::pin(async { Probe::Free })
    }
}

/// Probes waiting for an answer, by the address they asked about. An answer carries the
/// answering hardware address when the check knows it.
#[derive(Debug, Default)]
struct Waiters(Mutex<HashMap<Ipv4Addr, Vec<oneshot::Sender<Option<MacAddr>>>>>);

impl Waiters {
    fn register(&self, ip: Ipv4Addr) -> oneshot::Receiver<Option<MacAddr>> {
        let (tx, rx) = oneshot::channel();
        self.0.lock().expect("waiters lock").entry(ip).or_default().push(tx);
        rx
    }

    fn answered(&self, ip: Ipv4Addr, by: Option<MacAddr>) {
        if let Some(senders) = self.0.lock().expect("waiters lock").remove(&ip) {
            for tx in senders {
                let _ = tx.send(by);
            }
        }
    }

    fn forget(&self, ip: Ipv4Addr) {
        let mut map = self.0.lock().expect("waiters lock");
        if let Some(senders) = map.get_mut(&ip) {
            senders.retain(|tx| !tx.is_closed());
            if senders.is_empty() {
                map.remove(&ip);
            }
        }
    }
}

/// Waits for `rx` up to `timeout`.
async fn wait(waiters: &Waiters, ip: Ipv4Addr, rx: oneshot::Receiver<Option<MacAddr>>, timeout: Duration) -> Probe {
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(by)) => Probe::InUse { by },
        _ => {
            waiters.forget(ip);
            Probe::Free
        }
    }
}

/// ARP probes on one interface.
#[derive(Debug)]
pub struct ArpCheck {
    fd: Arc<AsyncFd<OwnedFd>>,
    ifindex: u32,
    our_mac: [u8; 6],
    waiters: Arc<Waiters>,
    timeout: Duration,
}

impl ArpCheck {
    /// Opens a packet socket on `interface` (needs CAP_NET_RAW) and starts its receive task.
    pub fn new(interface: &str, our_mac: [u8; 6], timeout: Duration) -> io::Result<Self> {
        let ifindex = sys::interface_index(interface)?;
        let fd = Arc::new(sys::register(sys::arp_socket(ifindex)?)?);
        let waiters = Arc::new(Waiters::default());
        let (rx_fd, rx_waiters) = (fd.clone(), waiters.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 128];
            loop {
                let Ok(mut guard) = rx_fd.readable().await else { return };
                match guard.try_io(|fd| sys::arp_receive(fd.get_ref(), &mut buf)) {
                    Ok(Ok(n)) => {
                        if let Some((ip, hardware)) = arp_sender(&buf[..n]) {
                            rx_waiters.answered(ip, Some(hardware));
                        }
                    }
                    Ok(Err(e)) => tracing::debug!("ARP receive failed: {e}", e = oasis_proto::error_chain(&e)),
                    Err(_would_block) => {}
                }
            }
        });
        Ok(Self { fd, ifindex, our_mac, waiters, timeout })
    }

    fn probe(&self, ip: Ipv4Addr) -> [u8; 28] {
        let mut p = [0u8; 28];
        p[0..2].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
        p[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
        p[4] = 6;
        p[5] = 4;
        p[6..8].copy_from_slice(&1u16.to_be_bytes()); // request
        p[8..14].copy_from_slice(&self.our_mac);
        // Sender address 0.0.0.0 (bytes 14..18) and target MAC zero: an RFC 5227 probe, which
        // pollutes no ARP cache.
        p[24..28].copy_from_slice(&ip.octets());
        p
    }
}

/// The sender protocol and hardware addresses of an ARP reply, or of a request from a host that
/// claims an address (sender address non-zero).
fn arp_sender(packet: &[u8]) -> Option<(Ipv4Addr, MacAddr)> {
    if packet.len() < 28 || packet[0..4] != [0x00, 0x01, 0x08, 0x00] || packet[4] != 6 || packet[5] != 4 {
        return None;
    }
    let hardware = MacAddr(packet[8..14].try_into().ok()?);
    let sender = Ipv4Addr::new(packet[14], packet[15], packet[16], packet[17]);
    (!sender.is_unspecified()).then_some((sender, hardware))
}

impl ConflictCheck for ArpCheck {
    fn probe(&self, ip: Ipv4Addr) -> Pin<Box<dyn Future<Output = Probe> + Send + '_>> {
        Box::pin(async move {
            let rx = self.waiters.register(ip);
            if let Err(e) = sys::arp_broadcast(self.fd.get_ref(), self.ifindex, &self.probe(ip)) {
                tracing::debug!("ARP probe for {ip} not sent: {e}", e = oasis_proto::error_chain(&e));
            }
            wait(&self.waiters, ip, rx, self.timeout).await
        })
    }
}

/// ICMP echo probes.
#[derive(Debug)]
pub struct IcmpCheck {
    socket: Arc<AsyncFd<Socket>>,
    waiters: Arc<Waiters>,
    timeout: Duration,
    id: u16,
}

impl IcmpCheck {
    /// Opens a raw ICMP socket bound to `interface` (needs CAP_NET_RAW) and starts its receive task.
    pub fn new(interface: &str, timeout: Duration) -> io::Result<Self> {
        let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?;
        socket.bind_device(Some(interface.as_bytes()))?;
        socket.set_nonblocking(true)?;
        let socket = Arc::new(sys::register(socket)?);
        let waiters = Arc::new(Waiters::default());
        let id = std::process::id() as u16;
        let (rx_socket, rx_waiters) = (socket.clone(), waiters.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            loop {
                let Ok(mut guard) = rx_socket.readable().await else { return };
                match guard.try_io(|s| (&mut s.get_ref()).read(&mut buf)) {
                    Ok(Ok(n)) => {
                        if let Some(from) = echo_reply_source(&buf[..n], id) {
                            rx_waiters.answered(from, None);
                        }
                    }
                    Ok(Err(e)) => tracing::debug!("ICMP receive failed: {e}", e = oasis_proto::error_chain(&e)),
                    Err(_would_block) => {}
                }
            }
        });
        Ok(Self { socket, waiters, timeout, id })
    }
}

/// The source of an ICMP echo reply carrying our identifier, from a raw IPv4 packet.
fn echo_reply_source(packet: &[u8], id: u16) -> Option<Ipv4Addr> {
    let ihl = usize::from(packet.first()? & 0x0f) * 4;
    let icmp = packet.get(ihl..ihl + 8)?;
    if icmp[0] != 0 || u16::from_be_bytes([icmp[4], icmp[5]]) != id {
        return None;
    }
    let src = packet.get(12..16)?;
    Some(Ipv4Addr::new(src[0], src[1], src[2], src[3]))
}

fn echo_request(id: u16, seq: u16) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[0] = 8; // echo request
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    p[8..].copy_from_slice(b"oasis-cc");
    let sum = internet_checksum(&p);
    p[2..4].copy_from_slice(&sum.to_be_bytes());
    p
}

fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

impl ConflictCheck for IcmpCheck {
    fn probe(&self, ip: Ipv4Addr) -> Pin<Box<dyn Future<Output = Probe> + Send + '_>> {
        Box::pin(async move {
            let rx = self.waiters.register(ip);
            let packet = echo_request(self.id, u16::from_be_bytes([ip.octets()[2], ip.octets()[3]]));
            if let Err(e) = self.socket.get_ref().send_to(&packet, &SocketAddrV4::new(ip, 0).into()) {
                tracing::debug!("ICMP probe for {ip} not sent: {e}", e = oasis_proto::error_chain(&e));
            }
            wait(&self.waiters, ip, rx, self.timeout).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_requests_carry_a_valid_checksum() {
        let p = echo_request(0x1234, 7);
        assert_eq!(internet_checksum(&p), 0, "a packet with its checksum sums to zero");
    }

    #[test]
    fn parses_echo_replies_and_arp_senders() {
        let mut packet = vec![0x45, 0, 0, 36, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 0, 7, 10, 0, 0, 1];
        packet.extend_from_slice(&[0, 0, 0, 0, 0x12, 0x34, 0, 1]);
        assert_eq!(echo_reply_source(&packet, 0x1234), Some(Ipv4Addr::new(10, 0, 0, 7)));
        assert_eq!(echo_reply_source(&packet, 0x9999), None, "someone else's ping");
        assert_eq!(echo_reply_source(&packet[..22], 0x1234), None, "truncated");

        let mut arp = [0u8; 28];
        arp[0..6].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4]);
        arp[8..14].copy_from_slice(&[0x52, 0x54, 0, 0, 0, 9]);
        arp[14..18].copy_from_slice(&[10, 0, 0, 9]);
        assert_eq!(arp_sender(&arp), Some((Ipv4Addr::new(10, 0, 0, 9), MacAddr([0x52, 0x54, 0, 0, 0, 9]))));
        arp[14..18].copy_from_slice(&[0, 0, 0, 0]);
        assert_eq!(arp_sender(&arp), None, "another probe is not an answer");
        assert_eq!(arp_sender(&arp[..10]), None);
    }

    #[tokio::test]
    async fn waiters_are_woken_by_their_address_only() {
        let waiters = Waiters::default();
        let by = Some(MacAddr([0x52, 0x54, 0, 0, 0, 5]));
        let rx = waiters.register(Ipv4Addr::new(10, 0, 0, 5));
        waiters.answered(Ipv4Addr::new(10, 0, 0, 6), by);
        assert_eq!(wait(&waiters, Ipv4Addr::new(10, 0, 0, 5), rx, Duration::from_millis(10)).await, Probe::Free);
        let rx = waiters.register(Ipv4Addr::new(10, 0, 0, 5));
        waiters.answered(Ipv4Addr::new(10, 0, 0, 5), by);
        assert_eq!(
            wait(&waiters, Ipv4Addr::new(10, 0, 0, 5), rx, Duration::from_millis(10)).await,
            Probe::InUse { by }
        );
    }
}
