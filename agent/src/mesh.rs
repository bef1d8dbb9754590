//! The cluster mesh: WireGuard interface `oasis-mesh` ([`MESH_INTERFACE`]) with every other node
//! as a peer, configured from [`DesiredState::mesh`](oasis_proto::DesiredState::mesh).
//!
//! The interface uses the machine's own key (the one its management link has, so the appliance
//! knows each node by one key) and listens on [`MESH_PORT`]. Applying a config converges: missing
//! peers are added, changed ones updated in place, unlisted ones removed, and peers already right
//! are not touched, so their sessions (and handshakes) survive every new desired state. No config
//! means no interface.
//!
//! [`Mesh`] is the seam the session drives; [`WireGuardMesh`] is the real one: wireguard-control's
//! kernel backend for the device, rtnetlink ([`Netlink`]) for the address and link state.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, SystemTime};

use oasis_proto::{MeshConfig, MeshPeerStatus, MESH_INTERFACE, MESH_PORT};
use wireguard_control::{AllowedIp, Backend, Device, DeviceUpdate, InterfaceName, Key, PeerConfig, PeerConfigBuilder};

use crate::network::{Netlink, NetworkError};

/// A peer is counted as up when its last handshake is at most this old (WireGuard renews a
/// session every two minutes while there is traffic; keepalives make sure there is).
pub const PEER_UP_WITHIN: Duration = Duration::from_secs(180);

/// Why the mesh could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error(
        "this kernel has no WireGuard (creating {MESH_INTERFACE} failed); the node image must carry \
         the wireguard module: rebuild it with `oasis image build node`"
    )]
    WireGuardUnavailable { source: std::io::Error },
    #[error("configuring WireGuard on {MESH_INTERFACE} failed")]
    WireGuard { source: std::io::Error },
    #[error(
        "the appliance sent mesh peer {machine_id} with a WireGuard key that is not valid base64 \
         ({key:?}); the appliance and this agent may be different versions"
    )]
    BadPeerKey { machine_id: String, key: String },
    #[error("the appliance sent an invalid mesh prefix length /{0}")]
    BadPrefix(u8),
    #[error("configuring {MESH_INTERFACE} failed")]
    Network(#[from] NetworkError),
}

/// What the mesh looks like, for the heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeshReport {
    /// Where other nodes reach this one's mesh: the boot link's address and [`MESH_PORT`].
    pub endpoint: Option<SocketAddrV4>,
    /// The peers as the kernel reports them; empty without a mesh.
    pub peers: Vec<MeshPeerStatus>,
}

impl MeshReport {
    /// Peers with a recent handshake, and all peers.
    pub fn peers_up(&self) -> (usize, usize) {
        let up = self
            .peers
            .iter()
            .filter(|p| p.handshake_age_secs.is_some_and(|age| age <= PEER_UP_WITHIN.as_secs()))
            .count();
        (up, self.peers.len())
    }
}

/// The mesh as the session sees it.
pub trait Mesh: Send + Sync {
    /// Makes `oasis-mesh` match `config`, or removes it when `None`. Safe to repeat.
    fn apply(&self, config: Option<&MeshConfig>) -> impl Future<Output = Result<(), MeshError>> + Send;
    /// The endpoint and the peers' handshake ages. Never fails: what cannot be read is left out.
    fn report(&self) -> impl Future<Output = MeshReport> + Send;
}

/// The real mesh: kernel WireGuard through wireguard-control, address through rtnetlink.
#[derive(Debug)]
pub struct WireGuardMesh {
    name: InterfaceName,
    private_key: Key,
    /// The interface the machine booted from: its address is the mesh endpoint.
    boot_interface: String,
}

impl WireGuardMesh {
    /// A mesh on [`MESH_INTERFACE`] with `private_key` (the management link's), reachable at the
    /// address of `boot_interface`.
    pub fn new(private_key: Key, boot_interface: &str) -> WireGuardMesh {
        let name = MESH_INTERFACE.parse().expect("the mesh interface name is a valid interface name");
        WireGuardMesh { name, private_key, boot_interface: boot_interface.to_string() }
    }

    fn device(&self) -> Option<Device> {
        Device::get(&self.name, Backend::Kernel).ok()
    }

    fn apply_wireguard(&self, config: &MeshConfig) -> Result<(), MeshError> {
        let wanted = wanted_peers(config)?;
        let device = self.device();
        let current: Vec<PeerConfig> =
            device.as_ref().map(|d| d.peers.iter().map(|p| p.config.clone()).collect()).unwrap_or_default();
        let changes = converge(&current, &wanted);
        let device_right = device
            .as_ref()
            .is_some_and(|d| d.listen_port == Some(MESH_PORT) && d.private_key.as_ref() == Some(&self.private_key));
        if device_right && changes.is_empty() {
            return Ok(());
        }
        let mut update = DeviceUpdate::new().set_private_key(self.private_key.clone()).set_listen_port(MESH_PORT);
        for key in &changes.remove {
            update = update.remove_peer_by_key(key);
        }
        for peer in changes.upsert {
            update = update.add_peer(peer);
        }
        // A quick netlink exchange, done in place (not on a blocking thread) so that it runs in
        // the caller's network namespace.
        update.apply(&self.name, Backend::Kernel).map_err(|source| {
            let missing =
                matches!(source.raw_os_error(), Some(libc::EOPNOTSUPP) | Some(libc::ENODEV) | Some(libc::ENOENT));
            if missing {
                MeshError::WireGuardUnavailable { source }
            } else {
                MeshError::WireGuard { source }
            }
        })
    }

    async fn apply_address(&self, config: &MeshConfig) -> Result<(), MeshError> {
        let netlink = Netlink::connect()?;
        let link = netlink.link_by_name(MESH_INTERFACE).await?.ok_or_else(|| MeshError::WireGuard {
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "the interface vanished after it was made"),
        })?;
        netlink.set_ipv4_address(link.index, MESH_INTERFACE, config.address, config.prefix_len).await?;
        if !link.up {
            netlink.set_up(&link).await?;
        }
        Ok(())
    }

    async fn remove(&self) -> Result<(), MeshError> {
        let netlink = Netlink::connect()?;
        if let Some(link) = netlink.link_by_name(MESH_INTERFACE).await? {
            tracing::info!("removing the cluster mesh {MESH_INTERFACE}");
            netlink.delete(&link).await?;
        }
        Ok(())
    }

    async fn endpoint(&self) -> Option<SocketAddrV4> {
        let netlink = Netlink::connect().ok()?;
        let link = netlink.link_by_name(&self.boot_interface).await.ok()??;
        let (address, _) = netlink.ipv4_addresses(link.index).await.ok()?.into_iter().next()?;
        Some(SocketAddrV4::new(address, MESH_PORT))
    }
}

impl Mesh for WireGuardMesh {
    async fn apply(&self, config: Option<&MeshConfig>) -> Result<(), MeshError> {
        let Some(config) = config else { return self.remove().await };
        if config.prefix_len > 32 {
            return Err(MeshError::BadPrefix(config.prefix_len));
        }
        self.apply_wireguard(config)?;
        self.apply_address(config).await
    }

    async fn report(&self) -> MeshReport {
        let now = SystemTime::now();
        let peers = self
            .device()
            .map(|device| {
                device
                    .peers
                    .iter()
                    .map(|p| MeshPeerStatus {
                        key: p.config.public_key.to_base64(),
                        handshake_age_secs: p
                            .stats
                            .last_handshake_time
                            .map(|at| now.duration_since(at).unwrap_or_default().as_secs()),
                    })
                    .collect()
            })
            .unwrap_or_default();
        MeshReport { endpoint: self.endpoint().await, peers }
    }
}

/// A peer as the config wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedPeer {
    pub key: Key,
    pub endpoint: SocketAddrV4,
    pub address: Ipv4Addr,
    pub keepalive_secs: u16,
}

fn wanted_peers(config: &MeshConfig) -> Result<Vec<WantedPeer>, MeshError> {
    config
        .peers
        .iter()
        .map(|p| {
            let key = Key::from_base64(&p.key)
                .map_err(|_| MeshError::BadPeerKey { machine_id: p.machine_id.clone(), key: p.key.clone() })?;
            Ok(WantedPeer { key, endpoint: p.endpoint, address: p.address, keepalive_secs: config.keepalive_secs })
        })
        .collect()
}

/// What to change on the device to go from `current` peers to `wanted`.
#[derive(Debug, Default)]
pub struct Changes {
    pub remove: Vec<Key>,
    /// Added, or updated in place (the session is kept).
    pub upsert: Vec<PeerConfigBuilder>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.upsert.is_empty()
    }
}

/// The peer changes that make `current` into `wanted`; peers already right are left alone.
pub fn converge(current: &[PeerConfig], wanted: &[WantedPeer]) -> Changes {
    let by_key: BTreeMap<String, &PeerConfig> = current.iter().map(|p| (p.public_key.to_base64(), p)).collect();
    let mut changes = Changes::default();
    for peer in wanted {
        let allowed = AllowedIp { address: IpAddr::V4(peer.address), cidr: 32 };
        let right = by_key.get(&peer.key.to_base64()).is_some_and(|now| {
            now.endpoint == Some(SocketAddr::V4(peer.endpoint))
                && now.persistent_keepalive_interval.unwrap_or(0) == peer.keepalive_secs
                && now.allowed_ips == [allowed.clone()]
                && now.preshared_key.is_none()
        });
        if !right {
            // A keepalive of 0 is sent as 0: off. (Leaving it out would keep the old one.)
            let builder = PeerConfigBuilder::new(&peer.key)
                .set_endpoint(SocketAddr::V4(peer.endpoint))
                .replace_allowed_ips()
                .add_allowed_ip(allowed.address, allowed.cidr)
                .set_persistent_keepalive_interval(peer.keepalive_secs);
            changes.upsert.push(builder);
        }
    }
    for now in current {
        if !wanted.iter().any(|w| w.key == now.public_key) {
            changes.remove.push(now.public_key.clone());
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use oasis_proto::MeshPeer;

    use super::*;

    fn key(n: u8) -> Key {
        Key([n; 32])
    }

    fn wanted(n: u8) -> WantedPeer {
        WantedPeer {
            key: key(n),
            endpoint: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, n), MESH_PORT),
            address: Ipv4Addr::new(10, 98, 0, n),
            keepalive_secs: 25,
        }
    }

    /// The peer as the kernel reports it once `wanted` was applied.
    fn applied(w: &WantedPeer) -> PeerConfig {
        // PeerConfig is non-exhaustive: built the way the kernel backend reads one back.
        let mut peer = PeerConfigBuilder::new(&w.key)
            .set_endpoint(SocketAddr::V4(w.endpoint))
            .add_allowed_ip(IpAddr::V4(w.address), 32)
            .into_peer_config();
        peer.persistent_keepalive_interval = Some(w.keepalive_secs);
        peer
    }

    fn keys(builders: &[PeerConfigBuilder]) -> Vec<Key> {
        builders.iter().map(|b| b.public_key().clone()).collect()
    }

    #[test]
    fn a_new_mesh_adds_every_peer() {
        let changes = converge(&[], &[wanted(2), wanted(3)]);
        assert_eq!(keys(&changes.upsert), [key(2), key(3)]);
        assert!(changes.remove.is_empty());
        let peer = changes.upsert[0].clone().into_peer_config();
        let expected = applied(&wanted(2));
        assert_eq!(peer.endpoint, expected.endpoint);
        assert_eq!(peer.persistent_keepalive_interval, Some(25));
        assert_eq!(peer.allowed_ips, expected.allowed_ips);
    }

    #[test]
    fn peers_already_right_are_not_touched() {
        let current = [applied(&wanted(2)), applied(&wanted(3))];
        assert!(converge(&current, &[wanted(2), wanted(3)]).is_empty());
    }

    #[test]
    fn changed_peers_are_updated_and_unlisted_ones_removed() {
        let moved = WantedPeer { endpoint: "10.0.1.3:51821".parse().unwrap(), ..wanted(3) };
        let readdressed = WantedPeer { address: Ipv4Addr::new(10, 98, 0, 44), ..wanted(4) };
        let current = [applied(&wanted(2)), applied(&wanted(3)), applied(&wanted(4)), applied(&wanted(5))];
        let changes = converge(&current, &[moved, readdressed, wanted(5), wanted(6)]);
        assert_eq!(keys(&changes.upsert), [key(3), key(4), key(6)]);
        assert_eq!(changes.remove, [key(2)]);
        let peer = changes.upsert[1].clone().into_peer_config();
        assert_eq!(peer.allowed_ips, [AllowedIp { address: IpAddr::V4(Ipv4Addr::new(10, 98, 0, 44)), cidr: 32 }]);
    }

    #[test]
    fn a_keepalive_of_zero_is_off_as_the_kernel_reports_it() {
        let off = WantedPeer { keepalive_secs: 0, ..wanted(2) };
        let mut current = applied(&off);
        current.persistent_keepalive_interval = Some(0);
        assert!(converge(&[current], std::slice::from_ref(&off)).is_empty());
        let changes = converge(&[applied(&wanted(2))], &[off]);
        assert_eq!(changes.upsert[0].clone().into_peer_config().persistent_keepalive_interval, Some(0));
    }

    #[test]
    fn a_bad_peer_key_names_the_machine() {
        let config = MeshConfig {
            address: Ipv4Addr::new(10, 98, 0, 5),
            prefix_len: 16,
            keepalive_secs: 25,
            peers: vec![MeshPeer {
                machine_id: "m-7".into(),
                key: "not a key".into(),
                endpoint: "10.0.0.7:51821".parse().unwrap(),
                address: Ipv4Addr::new(10, 98, 0, 7),
            }],
        };
        let error = wanted_peers(&config).unwrap_err();
        assert!(error.to_string().contains("mesh peer m-7"), "{error}");
    }

    #[test]
    fn peers_are_up_with_a_recent_handshake() {
        let peer = |age| MeshPeerStatus { key: "k".into(), handshake_age_secs: age };
        let report = MeshReport { endpoint: None, peers: vec![peer(Some(3)), peer(Some(600)), peer(None)] };
        assert_eq!(report.peers_up(), (1, 3));
    }
}
