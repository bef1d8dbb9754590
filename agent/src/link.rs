//! The WireGuard management link to the appliance: interface `oasis0`, one peer (the appliance),
//! the overlay prefix routed through it.
//!
//! [`Link`] is the seam the session drives; [`WireGuardLink`] is the real one: the device through
//! wireguard-control's kernel backend, the address and the link state through rtnetlink. Applying
//! a [`LinkConfig`] again is how the link follows the appliance to a new endpoint: the key stays,
//! the peer is replaced, a stale address is removed.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime};

use futures::TryStreamExt;
use oasis_proto::LinkConfig;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::LinkUnspec;
use wireguard_control::{Backend, Device, DeviceUpdate, InterfaceName, Key, PeerConfigBuilder};

/// The management link's interface name.
pub const INTERFACE: &str = "oasis0";

/// Why the management link could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(
        "this kernel has no WireGuard (creating {interface} failed); the node image must carry the \
         wireguard module: rebuild it with `oasis image build node`"
    )]
    WireGuardUnavailable { interface: String, source: std::io::Error },
    #[error("configuring WireGuard on {interface} failed")]
    WireGuard { interface: String, source: std::io::Error },
    #[error("the appliance sent a WireGuard key that is not valid base64 ({key:?}); report this to the appliance's operator")]
    BadApplianceKey { key: String },
    #[error("the appliance sent an invalid overlay prefix length /{0}")]
    BadPrefix(u8),
    #[error("{what} on {interface} failed: {reason}")]
    Netlink { interface: String, what: &'static str, reason: String },
}

/// The management link as the session sees it.
pub trait Link: Send + Sync {
    /// Creates the interface if needed and makes it match `config`: peer, endpoint, allowed
    /// prefix, keepalive, address, up. Safe to repeat; a changed config replaces the old one.
    fn configure(&self, config: &LinkConfig) -> impl Future<Output = Result<(), LinkError>> + Send;
    /// Time since the last handshake with the appliance; `None` before the first one or when the
    /// interface cannot be read.
    fn handshake_age(&self) -> Option<Duration>;
}

/// The real link: kernel WireGuard through wireguard-control, address and state through rtnetlink.
#[derive(Debug)]
pub struct WireGuardLink {
    name: InterfaceName,
    name_text: String,
    private_key: Key,
}

impl WireGuardLink {
    /// A link on interface `name` (normally [`INTERFACE`]) with a private key made now: the key
    /// lives only in memory, so every boot is a new key and the appliance learns it by
    /// registration.
    pub fn new(name: &str) -> Result<WireGuardLink, LinkError> {
        let parsed = name.parse::<InterfaceName>().map_err(|e| LinkError::Netlink {
            interface: name.to_string(),
            what: "naming the interface",
            reason: e.to_string(),
        })?;
        Ok(WireGuardLink { name: parsed, name_text: name.to_string(), private_key: Key::generate_private() })
    }

    /// The machine's private key: the cluster mesh uses it too, so the appliance knows the
    /// machine by one key.
    pub fn private_key(&self) -> Key {
        self.private_key.clone()
    }

    /// The public key, base64, as registration sends it.
    pub fn public_key(&self) -> String {
        self.private_key.get_public().to_base64()
    }

    fn apply_wireguard(&self, config: &LinkConfig) -> Result<(), LinkError> {
        let appliance = Key::from_base64(&config.appliance_key)
            .map_err(|_| LinkError::BadApplianceKey { key: config.appliance_key.clone() })?;
        let network = overlay_network(config.address, config.prefix_len)?;
        let peer = PeerConfigBuilder::new(&appliance)
            .set_endpoint(SocketAddr::V4(config.endpoint))
            .replace_allowed_ips()
            .add_allowed_ip(IpAddr::V4(network), config.prefix_len)
            .set_persistent_keepalive_interval(config.keepalive_secs);
        // A quick netlink exchange, done in place (not on a blocking thread) so that it runs in
        // the caller's network namespace.
        DeviceUpdate::new()
            .set_private_key(self.private_key.clone())
            .replace_peers()
            .add_peer(peer)
            .apply(&self.name, Backend::Kernel)
            .map_err(|source| {
                let missing =
                    matches!(source.raw_os_error(), Some(libc::EOPNOTSUPP) | Some(libc::ENODEV) | Some(libc::ENOENT));
                if missing {
                    LinkError::WireGuardUnavailable { interface: self.name_text.clone(), source }
                } else {
                    LinkError::WireGuard { interface: self.name_text.clone(), source }
                }
            })
    }

    async fn apply_address(&self, config: &LinkConfig) -> Result<(), LinkError> {
        let failed = |what: &'static str| {
            let interface = self.name_text.clone();
            move |e: rtnetlink::Error| LinkError::Netlink { interface, what, reason: e.to_string() }
        };
        let (connection, handle, _) = rtnetlink::new_connection().map_err(|e| LinkError::Netlink {
            interface: self.name_text.clone(),
            what: "opening a netlink socket",
            reason: e.to_string(),
        })?;
        let connection = tokio::spawn(connection);
        let result = async {
            let link = handle
                .link()
                .get()
                .match_name(self.name_text.clone())
                .execute()
                .try_next()
                .await
                .map_err(failed("finding the interface"))?
                .ok_or_else(|| LinkError::Netlink {
                    interface: self.name_text.clone(),
                    what: "finding the interface",
                    reason: "it does not exist".into(),
                })?;
            let index = link.header.index;
            let wanted = IpAddr::V4(config.address);
            let mut present = false;
            let mut addresses = handle.address().get().set_link_index_filter(index).execute();
            let mut stale = Vec::new();
            while let Some(message) = addresses.try_next().await.map_err(failed("listing addresses"))? {
                let is_wanted = message.header.prefix_len == config.prefix_len
                    && message.attributes.iter().any(|a| matches!(a, AddressAttribute::Address(ip) if *ip == wanted));
                if is_wanted {
                    present = true;
                } else {
                    stale.push(message);
                }
            }
            for message in stale {
                handle.address().del(message).execute().await.map_err(failed("removing an old address"))?;
            }
            if !present {
                handle
                    .address()
                    .add(index, wanted, config.prefix_len)
                    .execute()
                    .await
                    .map_err(failed("adding the overlay address"))?;
            }
            handle
                .link()
                .set(LinkUnspec::new_with_index(index).up().build())
                .execute()
                .await
                .map_err(failed("setting the link up"))
        }
        .await;
        connection.abort();
        result
    }
}

impl Link for WireGuardLink {
    async fn configure(&self, config: &LinkConfig) -> Result<(), LinkError> {
        self.apply_wireguard(config)?;
        self.apply_address(config).await
    }

    fn handshake_age(&self) -> Option<Duration> {
        let device = Device::get(&self.name, Backend::Kernel).ok()?;
        let last = device.peers.first()?.stats.last_handshake_time?;
        Some(SystemTime::now().duration_since(last).unwrap_or_default())
    }
}

/// The network address of `address/prefix_len`, as WireGuard's allowed IPs want it.
fn overlay_network(address: Ipv4Addr, prefix_len: u8) -> Result<Ipv4Addr, LinkError> {
    if prefix_len > 32 {
        return Err(LinkError::BadPrefix(prefix_len));
    }
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix_len)).unwrap_or(0);
    Ok(Ipv4Addr::from(u32::from(address) & mask))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_overlay_network_is_the_address_masked() {
        assert_eq!(overlay_network("10.99.3.7".parse().unwrap(), 16).unwrap(), Ipv4Addr::new(10, 99, 0, 0));
        assert_eq!(overlay_network("10.99.3.7".parse().unwrap(), 32).unwrap(), Ipv4Addr::new(10, 99, 3, 7));
        assert_eq!(overlay_network("10.99.3.7".parse().unwrap(), 0).unwrap(), Ipv4Addr::UNSPECIFIED);
        assert!(matches!(overlay_network(Ipv4Addr::LOCALHOST, 33), Err(LinkError::BadPrefix(33))));
    }

    #[test]
    fn keys_are_fresh_and_base64() {
        let (a, b) = (WireGuardLink::new("oasis-a").unwrap(), WireGuardLink::new("oasis-b").unwrap());
        assert_ne!(a.public_key(), b.public_key());
        assert!(Key::from_base64(&a.public_key()).is_ok());
        assert!(WireGuardLink::new("a name that is far too long").is_err());
    }
}
