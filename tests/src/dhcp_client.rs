//! A real DHCP client for tests and the soak: one machine (one MAC address) talking to a DHCP
//! server over a UDP socket on port 68, in the network namespace of the thread that binds it.
//!
//! It sends what real clients send. DISCOVER and the REQUEST that follows an OFFER go out
//! broadcast with the broadcast flag set, because the client has no address yet and so the answer
//! must come back broadcast too; a RENEW goes unicast to the server from the bound address, with
//! `ciaddr`; a RELEASE likewise, and is not answered. As PXE firmware or iPXE ([`Role`]) the
//! client adds the options a boot server reads: vendor class `PXEClient:Arch:…`, the architecture
//! (option 93), the machine's UUID (option 97), iPXE's user class.
//!
//! Answers are matched by transaction id and hardware address; a lost one is asked again after
//! [`ANSWER_WAIT`], a few times ([`TRIES`]), so every call is bounded. Other machines' broadcast
//! answers that reach the socket are skipped. Needs a Tokio runtime (the socket is Tokio's).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use dhcproto::v4::{Architecture, DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Encodable};
use tokio::net::UdpSocket;
use tokio::time::Instant;

/// Longest wait for one answer before the request is sent again.
pub const ANSWER_WAIT: Duration = Duration::from_secs(2);
/// How many times an exchange (or a whole DORA) is tried before the client gives up.
pub const TRIES: u32 = 5;

/// Who in a machine's boot is asking: what a real machine sends differs by stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The firmware's PXE client, of RFC 4578 architecture `arch` (0 BIOS, 7 x86-64 UEFI).
    PxeFirmware { arch: u16 },
    /// iPXE, loaded by the firmware, asking for its script.
    Ipxe { arch: u16 },
    /// The operating system's client (busybox udhcpc, as the node image runs).
    Os,
}

/// Why an exchange gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum DhcpClientError {
    #[error("cannot open a DHCP client socket on port 68: {0}")]
    Socket(std::io::Error),
    #[error("cannot send the {what} of {mac} to {to}")]
    Send { what: &'static str, mac: String, to: SocketAddrV4, source: std::io::Error },
    #[error("no answer to the {what} of {mac} after {tries} tries of {} s each", ANSWER_WAIT.as_secs())]
    NoAnswer { what: &'static str, mac: String, tries: u32 },
    #[error("the server answered the {what} of {mac} with {answer}")]
    Refused { what: &'static str, mac: String, answer: String },
}

/// An address the server acknowledged, with what came with it.
#[derive(Debug, Clone)]
pub struct Lease {
    pub ip: Ipv4Addr,
    /// The server's identifier (option 54): where RENEWs and RELEASEs go.
    pub server: Ipv4Addr,
    /// The subnet mask's prefix length (option 1), 24 when the server sent none.
    pub prefix_len: u8,
    pub lease_secs: u32,
    /// T1 (option 58): when the client renews; half the lease when the server sent none.
    pub renew_after: Duration,
    /// The boot file (option 67, else the BOOTP `file` field), for boot clients.
    pub boot_file: Option<String>,
    /// `siaddr`: the TFTP server for the boot file.
    pub next_server: Ipv4Addr,
}

impl Lease {
    fn from_ack(ack: &Message) -> Lease {
        let opts = ack.opts();
        let server = match opts.get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(ip)) => *ip,
            _ => ack.siaddr(),
        };
        let prefix_len = match opts.get(OptionCode::SubnetMask) {
            Some(DhcpOption::SubnetMask(mask)) => u32::from(*mask).count_ones() as u8,
            _ => 24,
        };
        let lease_secs = match opts.get(OptionCode::AddressLeaseTime) {
            Some(DhcpOption::AddressLeaseTime(secs)) => *secs,
            _ => 0,
        };
        let renew_after = match opts.get(OptionCode::Renewal) {
            Some(DhcpOption::Renewal(secs)) => Duration::from_secs(u64::from(*secs)),
            _ => Duration::from_secs(u64::from(lease_secs / 2)),
        };
        let boot_file = match opts.get(OptionCode::BootfileName) {
            Some(DhcpOption::BootfileName(name)) => Some(String::from_utf8_lossy(name).into_owned()),
            _ => ack.fname().filter(|f| !f.is_empty()).map(|f| String::from_utf8_lossy(f).into_owned()),
        };
        Lease { ip: ack.yiaddr(), server, prefix_len, lease_secs, renew_after, boot_file, next_server: ack.siaddr() }
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_text(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// A bare client message: BOOTREQUEST from `mac` with transaction id `xid` and message type
/// `kind`, nothing else (tests add what they forge).
pub fn message(kind: MessageType, mac: [u8; 6], xid: u32) -> Message {
    let mut msg = Message::default();
    msg.set_opcode(Opcode::BootRequest).set_chaddr(&mac).set_xid(xid);
    msg.opts_mut().insert(DhcpOption::MessageType(kind));
    msg
}

/// A client for one MAC address; see the module comment.
#[derive(Debug)]
pub struct DhcpClient {
    socket: UdpSocket,
    mac: [u8; 6],
    xid: u32,
}

impl DhcpClient {
    /// Binds `0.0.0.0:68` in the calling thread's network namespace. One client at a time per
    /// namespace: the port is not shared.
    pub fn bind(mac: [u8; 6]) -> Result<DhcpClient, DhcpClientError> {
        DhcpClient::bind_to(mac, Ipv4Addr::UNSPECIFIED)
    }

    /// Binds `ip:68`, with `SO_REUSEADDR` as busybox udhcpc does. Here it matters because a
    /// test process is threaded: while another thread forks (to run `ip`, say), the child holds
    /// a copy of every descriptor until it execs, so a socket just closed can stay bound for a
    /// moment and the next client's bind would fail with "address in use".
    pub fn bind_to(mac: [u8; 6], ip: Ipv4Addr) -> Result<DhcpClient, DhcpClientError> {
        use socket2::{Domain, Protocol, Socket, Type};
        // Transaction ids differ between clients and between the clients of one process.
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(DhcpClientError::Socket)?;
        socket.set_reuse_address(true).map_err(DhcpClientError::Socket)?;
        socket.set_broadcast(true).map_err(DhcpClientError::Socket)?;
        socket.set_nonblocking(true).map_err(DhcpClientError::Socket)?;
        socket.bind(&SocketAddrV4::new(ip, 68).into()).map_err(DhcpClientError::Socket)?;
        let socket = UdpSocket::from_std(socket.into()).map_err(DhcpClientError::Socket)?;
        let seed = u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]).rotate_left(12);
        let xid = seed ^ NEXT.fetch_add(0x0001_0001, Ordering::Relaxed).wrapping_mul(0x9e37_79b9);
        Ok(DhcpClient { socket, mac, xid })
    }

    /// Binds `0.0.0.0:68` on interface `ifname` only, as a real client does: its broadcasts
    /// leave through that interface whether or not any route points there (a machine that has
    /// just lost its address has none).
    pub fn bind_device(mac: [u8; 6], ifname: &str) -> Result<DhcpClient, DhcpClientError> {
        let client = DhcpClient::bind(mac)?;
        client.socket.bind_device(Some(ifname.as_bytes())).map_err(DhcpClientError::Socket)?;
        Ok(client)
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn next_xid(&mut self) -> u32 {
        self.xid = self.xid.wrapping_add(1);
        self.xid
    }

    /// A message of `kind` as `role` sends it, with a new transaction id.
    fn request(&mut self, kind: MessageType, role: Role) -> Message {
        let mut msg = message(kind, self.mac, self.next_xid());
        let opts = msg.opts_mut();
        opts.insert(DhcpOption::ParameterRequestList(vec![
            OptionCode::SubnetMask,
            OptionCode::Router,
            OptionCode::DomainNameServer,
            OptionCode::AddressLeaseTime,
            OptionCode::BootfileName,
        ]));
        match role {
            Role::PxeFirmware { arch } | Role::Ipxe { arch } => {
                let class = format!("PXEClient:Arch:{arch:05}:UNDI:002001");
                opts.insert(DhcpOption::ClassIdentifier(class.into_bytes()));
                opts.insert(DhcpOption::ClientSystemArchitecture(Architecture::from(arch)));
                // Type 0 and the 16 bytes of the SMBIOS UUID; here made from the MAC.
                let mut uuid = vec![0u8; 17];
                uuid[11..17].copy_from_slice(&self.mac);
                opts.insert(DhcpOption::ClientMachineIdentifier(uuid));
                if matches!(role, Role::Ipxe { .. }) {
                    // RFC 3004 framing: a length byte, then the class.
                    opts.insert(DhcpOption::UserClass(b"\x04iPXE".to_vec()));
                }
            }
            Role::Os => {
                opts.insert(DhcpOption::ClassIdentifier(b"udhcp 1.36.1".to_vec()));
            }
        }
        msg
    }

    /// Sends `msg` to `to` and waits up to [`ANSWER_WAIT`] for the server's answer to it (same
    /// transaction id and hardware address). `Ok(None)` when none came.
    pub async fn exchange(&self, msg: &Message, to: SocketAddrV4) -> Result<Option<Message>, DhcpClientError> {
        let what = kind_name(msg);
        let bytes = msg.to_vec().expect("a client message always encodes");
        self.socket.send_to(&bytes, to).await.map_err(|source| DhcpClientError::Send {
            what,
            mac: mac_text(self.mac),
            to,
            source,
        })?;
        let deadline = Instant::now() + ANSWER_WAIT;
        let mut buf = [0u8; 1500];
        loop {
            let received = tokio::time::timeout_at(deadline, self.socket.recv_from(&mut buf)).await;
            let Ok(Ok((n, _))) = received else { return Ok(None) };
            let Ok(reply) = Message::from_bytes(&buf[..n]) else { continue };
            if reply.opcode() == Opcode::BootReply
                && reply.xid() == msg.xid()
                && reply.chaddr().get(..6) == Some(&self.mac[..])
            {
                return Ok(Some(reply));
            }
        }
    }

    /// DISCOVER, OFFER, REQUEST, ACK, all broadcast, as `role`; a lost answer or a NAK starts
    /// over, up to [`TRIES`] times.
    pub async fn dora(&mut self, role: Role) -> Result<Lease, DhcpClientError> {
        let broadcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
        let mut last = None;
        for _ in 0..TRIES {
            let mut discover = self.request(MessageType::Discover, role);
            discover.set_flags(Flags::default().set_broadcast());
            let Some(offer) = self.exchange(&discover, broadcast).await? else { continue };
            if offer.opts().msg_type() != Some(MessageType::Offer) {
                last = Some(self.refused("DISCOVER", &offer));
                continue;
            }
            let server = match offer.opts().get(OptionCode::ServerIdentifier) {
                Some(DhcpOption::ServerIdentifier(ip)) => *ip,
                _ => offer.siaddr(),
            };
            // The REQUEST answers the OFFER: the same transaction.
            let mut request = self.request(MessageType::Request, role);
            request.set_xid(discover.xid()).set_flags(Flags::default().set_broadcast());
            request.opts_mut().insert(DhcpOption::ServerIdentifier(server));
            request.opts_mut().insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
            let Some(ack) = self.exchange(&request, broadcast).await? else { continue };
            if ack.opts().msg_type() == Some(MessageType::Ack) && ack.yiaddr() == offer.yiaddr() {
                return Ok(Lease::from_ack(&ack));
            }
            last = Some(self.refused("REQUEST", &ack));
        }
        Err(last.unwrap_or(DhcpClientError::NoAnswer { what: "DISCOVER", mac: mac_text(self.mac), tries: TRIES }))
    }

    /// A RENEW of `ip` (REQUEST with `ciaddr`, unicast to `server`; the address must be on an
    /// interface), asked again up to [`TRIES`] times while unanswered. Returns the answer, ACK or
    /// NAK, as the server sent it.
    pub async fn renew_message(
        &mut self,
        ip: Ipv4Addr,
        server: Ipv4Addr,
        role: Role,
    ) -> Result<Message, DhcpClientError> {
        let mut request = self.request(MessageType::Request, role);
        request.set_ciaddr(ip);
        let to = SocketAddrV4::new(server, 67);
        for _ in 0..TRIES {
            if let Some(answer) = self.exchange(&request, to).await? {
                return Ok(answer);
            }
        }
        Err(DhcpClientError::NoAnswer { what: "RENEW", mac: mac_text(self.mac), tries: TRIES })
    }

    /// A RENEW of `lease` that must be ACKed for the same address: the renewed lease.
    pub async fn renew(&mut self, lease: &Lease, role: Role) -> Result<Lease, DhcpClientError> {
        let answer = self.renew_message(lease.ip, lease.server, role).await?;
        if answer.opts().msg_type() == Some(MessageType::Ack) && answer.yiaddr() == lease.ip {
            Ok(Lease::from_ack(&answer))
        } else {
            Err(self.refused("RENEW", &answer))
        }
    }

    /// A RELEASE of `lease`, unicast to its server from its address. Not answered.
    pub async fn release(&mut self, lease: &Lease) -> Result<(), DhcpClientError> {
        let mut release = message(MessageType::Release, self.mac, self.next_xid());
        release.set_ciaddr(lease.ip);
        release.opts_mut().insert(DhcpOption::ServerIdentifier(lease.server));
        let to = SocketAddrV4::new(lease.server, 67);
        let bytes = release.to_vec().expect("a client message always encodes");
        self.socket.send_to(&bytes, to).await.map_err(|source| DhcpClientError::Send {
            what: "RELEASE",
            mac: mac_text(self.mac),
            to,
            source,
        })?;
        Ok(())
    }

    fn refused(&self, what: &'static str, answer: &Message) -> DhcpClientError {
        let answer = match answer.opts().msg_type() {
            Some(MessageType::Nak) => match answer.opts().get(OptionCode::Message) {
                Some(DhcpOption::Message(text)) => format!("a NAK ({text})"),
                _ => "a NAK".to_string(),
            },
            Some(kind) => format!("{kind:?} of {}", answer.yiaddr()),
            None => "a message without a type".to_string(),
        };
        DhcpClientError::Refused { what, mac: mac_text(self.mac), answer }
    }
}

fn kind_name(msg: &Message) -> &'static str {
    match msg.opts().msg_type() {
        Some(MessageType::Discover) => "DISCOVER",
        Some(MessageType::Request) => "REQUEST",
        Some(MessageType::Release) => "RELEASE",
        Some(MessageType::Decline) => "DECLINE",
        Some(MessageType::Inform) => "INFORM",
        _ => "message",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_reads_the_ack() {
        let mut ack = Message::default();
        ack.set_opcode(Opcode::BootReply).set_yiaddr(Ipv4Addr::new(10, 0, 1, 7)).set_siaddr(Ipv4Addr::new(10, 0, 0, 1));
        ack.set_fname_str("ipxe/undionly.kpxe");
        let opts = ack.opts_mut();
        opts.insert(DhcpOption::MessageType(MessageType::Ack));
        opts.insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 0, 1)));
        opts.insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 0, 0)));
        opts.insert(DhcpOption::AddressLeaseTime(60));
        let lease = Lease::from_ack(&ack);
        assert_eq!(
            (lease.ip, lease.server, lease.prefix_len),
            (Ipv4Addr::new(10, 0, 1, 7), Ipv4Addr::new(10, 0, 0, 1), 16)
        );
        assert_eq!((lease.lease_secs, lease.renew_after), (60, Duration::from_secs(30)));
        assert_eq!(lease.boot_file.as_deref(), Some("ipxe/undionly.kpxe"));
        ack.opts_mut().insert(DhcpOption::BootfileName(b"http://10.0.0.1/boot.ipxe?mac=52-54-00-00-00-01".to_vec()));
        ack.opts_mut().insert(DhcpOption::Renewal(20));
        let lease = Lease::from_ack(&ack);
        assert_eq!(lease.boot_file.as_deref(), Some("http://10.0.0.1/boot.ipxe?mac=52-54-00-00-00-01"));
        assert_eq!(lease.renew_after, Duration::from_secs(20));
    }

    #[test]
    fn roles_send_what_the_boot_policy_reads() {
        let mac = [0x52, 0x54, 0x00, 0x5a, 0x00, 0x01];
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _guard = runtime.enter();
        // Port 68 may be taken on the host; the messages are what is checked, so any socket will do.
        let socket = UdpSocket::from_std({
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .unwrap();
        let mut client = DhcpClient { socket, mac, xid: 1 };
        let firmware = client.request(MessageType::Discover, Role::PxeFirmware { arch: 7 });
        let client_kind = oasis_pxe::policy::BootClient::from_message(&firmware).map(|c| (c.kind, c.arch));
        assert_eq!(client_kind, Some((oasis_pxe::policy::ClientKind::Pxe, Some(7))));
        let ipxe = client.request(MessageType::Discover, Role::Ipxe { arch: 0 });
        let client_kind = oasis_pxe::policy::BootClient::from_message(&ipxe).map(|c| c.kind);
        assert_eq!(client_kind, Some(oasis_pxe::policy::ClientKind::Ipxe));
        let os = client.request(MessageType::Discover, Role::Os);
        assert!(oasis_pxe::policy::BootClient::from_message(&os).is_none());
        assert_ne!(firmware.xid(), ipxe.xid());
    }
}
