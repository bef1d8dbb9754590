//! Building DHCP replies: the fields and options every reply of a kind carries.

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Flags, HType, Message, MessageType, Opcode, OptionCode};

use crate::policy::{BootClient, BootFile, ClientKind};
use oasis_proto::MacAddr;

/// The size of the BOOTP `file` field; longer names go in option 67 only.
const FILE_FIELD_LEN: usize = 128;

/// PXE vendor option 43, sub-option 6 (PXE_DISCOVERY_CONTROL) = 8: "download the boot file
/// named in this offer; skip boot server discovery". Without it, some PXE ROMs go looking for a
/// boot server menu that a ProxyDHCP server like ours never offers.
const PXE_DISCOVERY_CONTROL: [u8; 4] = [6, 1, 8, 255];

/// Options that shape a full-mode lease.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkOptions {
    pub router: Option<Ipv4Addr>,
    pub dns_servers: Vec<Ipv4Addr>,
    pub domain_name: Option<String>,
    pub ntp_servers: Vec<Ipv4Addr>,
}

/// A reply of type `kind` to `req` from `server`: same transaction, flags and relay address, the
/// client's hardware address `mac` (read from `req` by [`crate::mac::of_dhcp_client`], never by
/// dhcproto's unchecked `chaddr`); relay agent information (option 82) echoed as RFC 3046
/// requires.
pub fn base(req: &Message, mac: MacAddr, kind: MessageType, server: Ipv4Addr) -> Message {
    let mut reply = Message::default();
    reply
        .set_opcode(Opcode::BootReply)
        .set_htype(HType::Eth)
        .set_xid(req.xid())
        .set_flags(req.flags())
        .set_giaddr(req.giaddr())
        .set_chaddr(&mac.0);
    let opts = reply.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    opts.insert(DhcpOption::ServerIdentifier(server));
    if let Some(relay_info) = req.opts().get(OptionCode::RelayAgentInformation) {
        opts.insert(relay_info.clone());
    }
    reply
}

/// Adds an address lease to a reply: `yiaddr`, lease time, renewal times and network options.
pub fn add_lease(reply: &mut Message, ip: Ipv4Addr, lease_secs: u32, netmask: Ipv4Addr, net: &NetworkOptions) {
    reply.set_yiaddr(ip);
    add_network(reply, netmask, net);
    let opts = reply.opts_mut();
    opts.insert(DhcpOption::AddressLeaseTime(lease_secs));
    opts.insert(DhcpOption::Renewal(lease_secs / 2));
    opts.insert(DhcpOption::Rebinding(lease_secs / 8 * 7));
}

/// Network options without a lease (for DHCPINFORM).
pub fn add_network(reply: &mut Message, netmask: Ipv4Addr, net: &NetworkOptions) {
    let opts = reply.opts_mut();
    opts.insert(DhcpOption::SubnetMask(netmask));
    if let Some(router) = net.router {
        opts.insert(DhcpOption::Router(vec![router]));
    }
    if !net.dns_servers.is_empty() {
        opts.insert(DhcpOption::DomainNameServer(net.dns_servers.clone()));
    }
    if let Some(domain) = &net.domain_name {
        opts.insert(DhcpOption::DomainName(domain.clone()));
    }
    if !net.ntp_servers.is_empty() {
        opts.insert(DhcpOption::NtpServers(net.ntp_servers.clone()));
    }
}

/// Adds boot information: `siaddr` and the boot file (BOOTP `file` field and option 67, since
/// firmware differs in which it reads), the vendor class the client expects echoed, and the
/// client's UUID (option 97) as the PXE specification asks. `proxy` marks a ProxyDHCP reply,
/// which also carries the PXE discovery control sub-option.
pub fn add_boot(reply: &mut Message, server: Ipv4Addr, client: &BootClient, file: &BootFile, proxy: bool) {
    reply.set_siaddr(server);
    // dhcproto panics on a `file` field over 128 bytes. A name that long (a long HTTP URL) goes
    // in option 67 alone, which every client that boots over HTTP reads.
    if file.name().len() <= FILE_FIELD_LEN {
        reply.set_fname_str(file.name());
    }
    let opts = reply.opts_mut();
    opts.insert(DhcpOption::BootfileName(file.name().as_bytes().to_vec()));
    let class: &[u8] = if client.kind == ClientKind::HttpBoot { b"HTTPClient" } else { b"PXEClient" };
    opts.insert(DhcpOption::ClassIdentifier(class.to_vec()));
    if let Some(uuid) = &client.uuid {
        opts.insert(DhcpOption::ClientMachineIdentifier(uuid.clone()));
    }
    if proxy && client.kind == ClientKind::Pxe {
        opts.insert(DhcpOption::VendorExtensions(PXE_DISCOVERY_CONTROL.to_vec()));
    }
}

/// A DHCPNAK: no addresses, a message saying why, always broadcast.
pub fn nak(req: &Message, mac: MacAddr, server: Ipv4Addr, why: &str) -> Message {
    let mut reply = base(req, mac, MessageType::Nak, server);
    reply.set_flags(Flags::default().set_broadcast());
    reply.opts_mut().insert(DhcpOption::Message(why.to_string()));
    reply
}
