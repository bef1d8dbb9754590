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

use oasis_host::netlink::NetlinkError;
use oasis_host::Ipv4Net;
use oasis_proto::LinkConfig;
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
    #[error(transparent)]
    Address(#[from] NetlinkError),
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
        let net =
            Ipv4Net::new(config.address, config.prefix_len).map_err(|_| LinkError::BadPrefix(config.prefix_len))?;
        Ok(oasis_host::netlink::set_only_ipv4(&self.name_text, net).await?)
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
    let net = Ipv4Net::new(address, prefix_len).map_err(|_| LinkError::BadPrefix(prefix_len))?;
    Ok(net.network())
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
