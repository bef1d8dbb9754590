//! Is another DHCP server on the rack network? Two servers handing out addresses on one segment
//! fight over every client, so before the operator picks full mode, the console asks the segment
//! the way a client would: one DHCPDISCOVER, then whatever OFFERs come back.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable};
use socket2::{Domain, Protocol, Socket, Type};

/// Looks for DHCP servers on an interface.
pub trait DhcpProbe {
    /// The servers that answered on `nic`: their server identifiers (or source addresses).
    fn other_servers(&self, nic: &str) -> io::Result<Vec<Ipv4Addr>>;
}

/// The real probe: a DHCPDISCOVER from port 68 on a UDP socket bound to the interface, then
/// OFFERs collected for [`UdpDhcpProbe::wait`]. The interface must be up; it needs no address.
/// It must not run while a DHCP client or `oasis serve` holds port 68 on the interface.
#[derive(Debug, Clone)]
pub struct UdpDhcpProbe {
    pub wait: Duration,
}

impl Default for UdpDhcpProbe {
    fn default() -> Self {
        Self { wait: Duration::from_secs(2) }
    }
}

/// The DHCPDISCOVER: broadcast flag set, so that servers answer to the broadcast address (we
/// have no address to be answered at), from a random locally administered MAC, so that no site
/// server mistakes the probe for the appliance's own NIC.
fn discover(xid: u32, chaddr: [u8; 6]) -> Message {
    let mut msg = Message::default();
    msg.set_opcode(Opcode::BootRequest).set_xid(xid).set_flags(Flags::default().set_broadcast()).set_chaddr(&chaddr);
    msg.opts_mut().insert(DhcpOption::MessageType(MessageType::Discover));
    msg.opts_mut().insert(DhcpOption::ParameterRequestList(vec![OptionCode::SubnetMask, OptionCode::Router]));
    msg
}

/// The server behind an answer, if it is an OFFER to our DISCOVER.
fn offer_from(packet: &[u8], xid: u32, source: Ipv4Addr) -> Option<Ipv4Addr> {
    let msg = Message::decode(&mut Decoder::new(packet)).ok()?;
    if msg.opcode() != Opcode::BootReply || msg.xid() != xid || msg.opts().msg_type() != Some(MessageType::Offer) {
        return None;
    }
    match msg.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(id)) => Some(*id),
        _ => Some(source),
    }
}

impl DhcpProbe for UdpDhcpProbe {
    fn other_servers(&self, nic: &str) -> io::Result<Vec<Ipv4Addr>> {
        let context = |what: &str, e: io::Error| io::Error::new(e.kind(), format!("{what} on {nic}: {e}"));
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_reuse_address(true)?;
        socket.set_broadcast(true)?;
        socket.bind_device(Some(nic.as_bytes())).map_err(|e| context("binding to the interface", e))?;
        socket
            .bind(&SocketAddr::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68)).into())
            .map_err(|e| context("binding to port 68 (is a DHCP client running?)", e))?;
        let xid: u32 = rand::random();
        let mut chaddr: [u8; 6] = rand::random();
        chaddr[0] = (chaddr[0] | 0x02) & 0xfe; // locally administered, unicast
        let socket = UdpSocket::from(socket);
        let packet = discover(xid, chaddr).to_vec().map_err(|e| io::Error::other(e.to_string()))?;
        socket
            .send_to(&packet, SocketAddrV4::new(Ipv4Addr::BROADCAST, 67))
            .map_err(|e| context("sending a DHCPDISCOVER (is the interface up?)", e))?;
        let deadline = Instant::now() + self.wait;
        let mut servers = Vec::new();
        let mut buf = [0u8; 1500];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(servers);
            }
            socket.set_read_timeout(Some(left))?;
            let (len, from) = match socket.recv_from(&mut buf) {
                Ok(got) => got,
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    return Ok(servers)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(context("receiving", e)),
            };
            let source = match from {
                SocketAddr::V4(a) => *a.ip(),
                SocketAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
            };
            if let Some(server) = offer_from(&buf[..len], xid, source) {
                if !servers.contains(&server) {
                    servers.push(server);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(kind: MessageType, xid: u32, server_id: Option<Ipv4Addr>) -> Vec<u8> {
        let mut msg = discover(xid, [2, 0, 0, 0, 0, 1]);
        msg.set_opcode(Opcode::BootReply).set_yiaddr(Ipv4Addr::new(10, 0, 0, 100));
        msg.opts_mut().insert(DhcpOption::MessageType(kind));
        if let Some(id) = server_id {
            msg.opts_mut().insert(DhcpOption::ServerIdentifier(id));
        }
        msg.to_vec().unwrap()
    }

    #[test]
    fn only_offers_to_our_discover_count() {
        let src = Ipv4Addr::new(192, 168, 1, 9);
        let id = Ipv4Addr::new(192, 168, 1, 1);
        assert_eq!(offer_from(&reply(MessageType::Offer, 7, Some(id)), 7, src), Some(id));
        assert_eq!(offer_from(&reply(MessageType::Offer, 7, None), 7, src), Some(src), "no identifier: the sender");
        assert_eq!(offer_from(&reply(MessageType::Offer, 8, Some(id)), 7, src), None, "another client's");
        assert_eq!(offer_from(&reply(MessageType::Ack, 7, Some(id)), 7, src), None);
        assert_eq!(offer_from(&discover(7, [2, 0, 0, 0, 0, 1]).to_vec().unwrap(), 7, src), None, "our own DISCOVER");
        assert_eq!(offer_from(b"garbage", 7, src), None);
    }

    #[test]
    fn the_discover_asks_for_a_broadcast_answer() {
        let msg = discover(42, [2, 1, 2, 3, 4, 5]);
        let decoded = Message::decode(&mut Decoder::new(&msg.to_vec().unwrap())).unwrap();
        assert!(decoded.flags().broadcast());
        assert_eq!(decoded.opts().msg_type(), Some(MessageType::Discover));
        assert_eq!(&decoded.chaddr()[..6], &[2, 1, 2, 3, 4, 5]);
    }
}
