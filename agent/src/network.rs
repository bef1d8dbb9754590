//! The node's network links, addresses and routes, all through rtnetlink.
//!
//! [`wait_for_boot_link`] brings every physical link up (a link is physical when its sys entry has a
//! `device`: loopback, bridges, WireGuard have none) and waits until one has carrier. The boot NIC is
//! the one whose MAC iPXE names in `BOOTIF=01-aa-bb-cc-dd-ee-ff` on the kernel command line, when
//! that link has carrier; otherwise the first physical link with carrier. [`Netlink::apply_lease`]
//! and [`Netlink::clear_ipv4`] set and remove the address and default route a DHCP lease gives.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use oasis_host::netlink::NetlinkError;
use oasis_host::Ipv4Net;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags};
use rtnetlink::RouteMessageBuilder;

use crate::dhcp::Lease;

/// Errors configuring the network.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The netlink socket could not be opened.
    #[error("cannot open a netlink socket")]
    Socket(#[source] std::io::Error),
    /// The kernel refused a netlink request.
    #[error("{what} failed")]
    Netlink {
        /// What was asked, with the interface.
        what: String,
        /// The kernel's answer.
        source: rtnetlink::Error,
    },
    /// Reading or setting a link's addresses failed.
    #[error(transparent)]
    Address(#[from] NetlinkError),
    /// An address with a prefix length past 32.
    #[error("{address}/{prefix} is not an IPv4 prefix; the prefix length must be at most 32")]
    BadPrefix {
        /// The address.
        address: Ipv4Addr,
        /// The prefix length.
        prefix: u8,
    },
    /// No physical link got carrier.
    #[error("no network link has carrier after {waited:?} (links seen: {seen}); check the cable and the switch port, or that the image has a driver for this NIC (`unmatched` devices in the log)")]
    NoCarrier {
        /// How long we waited.
        waited: Duration,
        /// The physical links found.
        seen: String,
    },
}

/// One network link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name, e.g. `eth0`.
    pub name: String,
    /// MAC address, lowercase `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// Whether the link is administratively up.
    pub up: bool,
    /// Whether the link has carrier (`IFF_LOWER_UP`).
    pub carrier: bool,
    /// Whether it is a loopback link.
    pub loopback: bool,
}

/// The MAC in `BOOTIF=01-aa-bb-cc-dd-ee-ff` (iPXE's and PXELINUX's form: hardware type 01 for
/// Ethernet, then the MAC), as `aa:bb:cc:dd:ee:ff`.
pub fn boot_mac(cmdline: &str) -> Option<String> {
    let value = cmdline.split_ascii_whitespace().filter_map(|w| w.strip_prefix("BOOTIF=")).next_back()?;
    let parts: Vec<&str> = value.split(['-', ':']).collect();
    let mac = match parts.as_slice() {
        [_hwtype, mac @ ..] if mac.len() == 6 => mac,
        mac if mac.len() == 6 => mac,
        _ => return None,
    };
    if mac.iter().all(|b| b.len() == 2 && b.bytes().all(|c| c.is_ascii_hexdigit())) {
        Some(mac.join(":").to_ascii_lowercase())
    } else {
        None
    }
}

/// The boot link among `links` (physical links only): the one with `boot_mac` if it has carrier,
/// else, once `prefer_wait_over` is true (the boot NIC had its chance), the first with carrier.
pub fn choose_boot_link<'a>(links: &'a [Link], boot_mac: Option<&str>, prefer_wait_over: bool) -> Option<&'a Link> {
    let with_carrier = || links.iter().filter(|l| l.carrier);
    if let Some(mac) = boot_mac {
        if let Some(link) = with_carrier().find(|l| l.mac == mac) {
            return Some(link);
        }
        if !prefer_wait_over && links.iter().any(|l| l.mac == mac) {
            return None;
        }
    }
    with_carrier().next()
}

/// Whether `name` is a physical link: `sys/class/net/NAME/device` exists.
pub fn is_physical(sys: &Path, name: &str) -> bool {
    sys.join("class/net").join(name).join("device").exists()
}

fn format_mac(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// A connection to the kernel's routing netlink; addresses are set through `oasis_host::netlink`.
#[derive(Debug, Clone)]
pub struct Netlink {
    host: Arc<oasis_host::netlink::Netlink>,
    handle: rtnetlink::Handle,
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    let what = what.into();
    move |source| NetworkError::Netlink { what, source }
}

impl Netlink {
    /// Opens the socket; the connection runs as a task on the current tokio runtime.
    pub fn connect() -> Result<Netlink, NetworkError> {
        let host = oasis_host::netlink::Netlink::connect()?;
        let handle = host.handle().clone();
        Ok(Netlink { host: Arc::new(host), handle })
    }

    /// Every link.
    pub async fn links(&self) -> Result<Vec<Link>, NetworkError> {
        let messages: Vec<_> =
            self.handle.link().get().execute().try_collect().await.map_err(nl("listing network links"))?;
        Ok(messages
            .into_iter()
            .map(|m| {
                let mut link = Link {
                    index: m.header.index,
                    name: String::new(),
                    mac: String::new(),
                    up: m.header.flags.contains(LinkFlags::Up),
                    carrier: m.header.flags.contains(LinkFlags::LowerUp),
                    loopback: m.header.flags.contains(LinkFlags::Loopback),
                };
                for attr in m.attributes {
                    match attr {
                        LinkAttribute::IfName(name) => link.name = name,
                        LinkAttribute::Address(bytes) => link.mac = format_mac(&bytes),
                        _ => {}
                    }
                }
                link
            })
            .collect())
    }

    /// Sets a link up.
    pub async fn set_up(&self, link: &Link) -> Result<(), NetworkError> {
        Ok(self.host.link_up(link.index, &link.name).await?)
    }

    /// The IPv4 addresses on a link, with prefix lengths: each its local side (`IFA_LOCAL`), also
    /// on a point-to-point link.
    pub async fn ipv4_addresses(&self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>, NetworkError> {
        let nets = self.host.ipv4_addresses(index, &format!("link {index}")).await?;
        Ok(nets.into_iter().map(|n| (n.addr(), n.prefix_len())).collect())
    }

    /// Removes every IPv4 address of a link (and with them the routes through it).
    pub async fn clear_ipv4(&self, index: u32) -> Result<(), NetworkError> {
        Ok(self.host.clear_ipv4(index, &format!("link {index}")).await?)
    }

    /// The link called `name`, if there is one.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>, NetworkError> {
        Ok(self.links().await?.into_iter().find(|l| l.name == name))
    }

    /// Removes a link (a virtual one: WireGuard, a bridge).
    pub async fn delete(&self, link: &Link) -> Result<(), NetworkError> {
        self.handle.link().del(link.index).execute().await.map_err(nl(format!("removing {}", link.name)))
    }

    /// Makes `address/prefix` the link's only IPv4 address. `name` is for the error message.
    pub async fn set_ipv4_address(
        &self,
        index: u32,
        name: &str,
        address: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), NetworkError> {
        let net = Ipv4Net::new(address, prefix).map_err(|_| NetworkError::BadPrefix { address, prefix })?;
        Ok(self.host.set_only_ipv4(index, name, net).await?)
    }

    /// Gives the link the lease's address (replacing any other IPv4 address) and, if the lease names
    /// a router, the default route through it.
    pub async fn apply_lease(&self, index: u32, lease: &Lease) -> Result<(), NetworkError> {
        self.set_ipv4_address(index, &lease.interface, lease.address, lease.prefix).await?;
        if let Some(router) = lease.router {
            let route = RouteMessageBuilder::<Ipv4Addr>::new().gateway(router).output_interface(index).build();
            self.handle
                .route()
                .add(route)
                .replace()
                .execute()
                .await
                .map_err(nl(format!("adding the default route via {router} on {}", lease.interface)))?;
        }
        Ok(())
    }
}

/// Brings every physical link up and waits for the boot link to have carrier.
pub async fn wait_for_boot_link(
    net: &Netlink,
    sys: &Path,
    cmdline: &str,
    timeout: Duration,
) -> Result<Link, NetworkError> {
    let wanted = boot_mac(cmdline);
    let start = Instant::now();
    let mut seen: Vec<Link>;
    loop {
        let links = net.links().await?;
        seen = links.into_iter().filter(|l| !l.loopback && is_physical(sys, &l.name)).collect();
        for link in seen.iter().filter(|l| !l.up) {
            tracing::info!(interface = %link.name, mac = %link.mac, "bringing link up");
            net.set_up(link).await?;
        }
        if let Some(link) = choose_boot_link(&seen, wanted.as_deref(), start.elapsed() > timeout / 2) {
            return Ok(link.clone());
        }
        if start.elapsed() > timeout {
            let seen = seen.iter().map(|l| format!("{} {}", l.name, l.mac)).collect::<Vec<_>>().join(", ");
            return Err(NetworkError::NoCarrier {
                waited: timeout,
                seen: if seen.is_empty() { "none".into() } else { seen },
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, mac: &str, carrier: bool) -> Link {
        Link { index, name: format!("eth{index}"), mac: mac.into(), up: true, carrier, loopback: false }
    }

    #[test]
    fn bootif_is_read_in_ipxe_form() {
        assert_eq!(boot_mac("console=ttyS0 BOOTIF=01-52-54-00-AA-BB-0c quiet").as_deref(), Some("52:54:00:aa:bb:0c"));
        assert_eq!(boot_mac("BOOTIF=52:54:00:aa:bb:0c").as_deref(), Some("52:54:00:aa:bb:0c"));
        assert_eq!(boot_mac("BOOTIF=01-52-54-00"), None);
        assert_eq!(boot_mac("BOOTIF=01-zz-54-00-aa-bb-0c"), None);
        assert_eq!(boot_mac("console=ttyS0"), None);
    }

    #[test]
    fn the_boot_nic_wins_when_it_has_carrier() {
        let links = [link(2, "52:54:00:00:00:01", true), link(3, "52:54:00:00:00:02", true)];
        assert_eq!(choose_boot_link(&links, Some("52:54:00:00:00:02"), false).unwrap().index, 3);
        assert_eq!(choose_boot_link(&links, None, false).unwrap().index, 2);
    }

    #[test]
    fn without_carrier_on_the_boot_nic_wait_then_take_the_first_with_carrier() {
        let links = [link(2, "52:54:00:00:00:01", true), link(3, "52:54:00:00:00:02", false)];
        assert_eq!(choose_boot_link(&links, Some("52:54:00:00:00:02"), false), None);
        assert_eq!(choose_boot_link(&links, Some("52:54:00:00:00:02"), true).unwrap().index, 2);
        // A BOOTIF naming no link here (a stale command line) does not make us wait.
        assert_eq!(choose_boot_link(&links, Some("52:54:00:00:00:99"), false).unwrap().index, 2);
        assert_eq!(choose_boot_link(&[link(2, "x", false)], None, true), None);
    }

    #[test]
    fn physical_links_have_a_device() {
        let sys = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(sys.path().join("class/net/eth0/device")).unwrap();
        std::fs::create_dir_all(sys.path().join("class/net/lo")).unwrap();
        assert!(is_physical(sys.path(), "eth0"));
        assert!(!is_physical(sys.path(), "lo"));
        assert!(!is_physical(sys.path(), "wg0"));
    }
}
