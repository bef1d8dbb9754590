//! The appliance's end of the management links: one WireGuard interface, a peer per accepted
//! machine.
//!
//! Kernel WireGuard when the kernel has it (the appliance image's Debian kernel does), otherwise
//! boringtun in this process over a tun device, configured through the same UAPI socket
//! (`/var/run/wireguard/NAME.sock`) that `wg(8)` uses. Both are driven by wireguard-control.
//! boringtun 0.7 cannot modify a peer in place (it panics), so a peer is only ever added or
//! removed: a machine that rekeys gets its old peer removed and a new one added.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime};

use futures::TryStreamExt;
use wireguard_control::{Backend, Device, DeviceUpdate, InterfaceName, Key, PeerConfigBuilder};

#[derive(Debug, thiserror::Error)]
pub enum WireguardError {
    #[error("{0:?} is not a usable interface name (at most 15 characters)")]
    Name(String),
    #[error("cannot create the WireGuard interface {name}: the kernel has no WireGuard ({kernel}) and the userspace implementation failed too ({userspace})")]
    Create { name: String, kernel: std::io::Error, userspace: String },
    #[error("cannot configure the WireGuard interface {name}: {source}")]
    Configure { name: String, source: std::io::Error },
    #[error("cannot set the address of {name}: {message}")]
    Address { name: String, message: String },
    #[error("{0} is not a WireGuard public key")]
    Key(String),
}

/// Which implementation carries the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Implementation {
    Kernel,
    Userspace,
}

/// The management interface, up and configured.
pub struct ManagementInterface {
    name: InterfaceName,
    name_text: String,
    backend: Backend,
    /// The peers configured, by key: an add for a key already there must not reach boringtun.
    peers: std::sync::Mutex<HashMap<String, Ipv4Addr>>,
    /// Keeps boringtun's threads alive; dropping it removes the interface.
    _userspace: Option<boringtun::device::DeviceHandle>,
}

impl std::fmt::Debug for ManagementInterface {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagementInterface").field("name", &self.name_text).field("backend", &self.backend).finish()
    }
}

/// The public key of a private key, base64.
pub fn public_key(private: &[u8; 32]) -> String {
    Key(*private).get_public().to_base64()
}

impl ManagementInterface {
    /// Creates (or takes over) the interface, sets its key and port, its address and brings it up.
    /// Peers left from a previous run are removed; the caller adds the current ones.
    pub async fn start(
        name: &str,
        private: &[u8; 32],
        port: u16,
        address: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<ManagementInterface, WireguardError> {
        let iface: InterfaceName = name.parse().map_err(|_| WireguardError::Name(name.to_string()))?;
        let update = || DeviceUpdate::new().set_private_key(Key(*private)).set_listen_port(port).replace_peers();
        let (backend, userspace) = match update().apply(&iface, Backend::Kernel) {
            Ok(()) => (Backend::Kernel, None),
            Err(kernel) => {
                tracing::info!("no kernel WireGuard ({kernel}); using the embedded userspace implementation");
                let config = boringtun::device::DeviceConfig {
                    n_threads: 2,
                    use_connected_socket: true,
                    use_multi_queue: false,
                    uapi_fd: -1,
                };
                let handle = boringtun::device::DeviceHandle::new(name, config).map_err(|e| {
                    WireguardError::Create { name: name.to_string(), kernel, userspace: format!("{e:?}") }
                })?;
                update()
                    .apply(&iface, Backend::Userspace)
                    .map_err(|source| WireguardError::Configure { name: name.to_string(), source })?;
                (Backend::Userspace, Some(handle))
            }
        };
        set_address(name, address, prefix_len).await?;
        Ok(ManagementInterface {
            name: iface,
            name_text: name.to_string(),
            backend,
            peers: std::sync::Mutex::new(HashMap::new()),
            _userspace: userspace,
        })
    }

    pub fn implementation(&self) -> Implementation {
        match self.backend {
            Backend::Userspace => Implementation::Userspace,
            _ => Implementation::Kernel,
        }
    }

    pub fn name(&self) -> &str {
        &self.name_text
    }

    /// Adds the peer of an accepted machine: its key, and its overlay address as the only
    /// address it may send from.
    /// Does nothing if the peer is already there with that address.
    pub fn add_peer(&self, key: &str, overlay: Ipv4Addr) -> Result<(), WireguardError> {
        let parsed = Key::from_base64(key).map_err(|_| WireguardError::Key(key.to_string()))?;
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        match peers.get(key) {
            Some(address) if *address == overlay => return Ok(()),
            Some(_) => self.apply(DeviceUpdate::new().remove_peer_by_key(&parsed))?,
            None => {}
        }
        let peer = PeerConfigBuilder::new(&parsed).replace_allowed_ips().add_allowed_ip(IpAddr::V4(overlay), 32);
        self.apply(DeviceUpdate::new().add_peer(peer))?;
        peers.insert(key.to_string(), overlay);
        Ok(())
    }

    /// Does nothing if there is no such peer.
    pub fn remove_peer(&self, key: &str) -> Result<(), WireguardError> {
        let parsed = Key::from_base64(key).map_err(|_| WireguardError::Key(key.to_string()))?;
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if peers.remove(key).is_some() {
            self.apply(DeviceUpdate::new().remove_peer_by_key(&parsed))?;
        }
        Ok(())
    }

    fn apply(&self, update: DeviceUpdate) -> Result<(), WireguardError> {
        update
            .apply(&self.name, self.backend)
            .map_err(|source| WireguardError::Configure { name: self.name_text.clone(), source })
    }

    /// How long ago each peer (by base64 key) last completed a handshake.
    pub fn handshake_ages(&self) -> HashMap<String, Duration> {
        match self.backend {
            // wireguard-control prints a line on stdout for every key it does not know, and
            // boringtun answers with one (own_public_key): read boringtun's answer ourselves.
            Backend::Userspace => boringtun_handshake_ages(&self.name_text).unwrap_or_default(),
            _ => {
                let now = SystemTime::now();
                match Device::get(&self.name, self.backend) {
                    Ok(device) => device
                        .peers
                        .iter()
                        .filter_map(|p| {
                            let at = p.stats.last_handshake_time?;
                            Some((p.config.public_key.to_base64(), now.duration_since(at).unwrap_or_default()))
                        })
                        .collect(),
                    Err(_) => HashMap::new(),
                }
            }
        }
    }
}

impl Drop for ManagementInterface {
    fn drop(&mut self) {
        if self.backend == Backend::Kernel {
            if let Ok(device) = Device::get(&self.name, self.backend) {
                let _ = device.delete();
            }
        }
    }
}

/// The handshake age of each peer, from boringtun's control socket (the cross-platform UAPI:
/// `get=1`, answered by `key=value` lines, a peer starting at each `public_key=` in hex). Unlike
/// the kernel and the UAPI's description, boringtun 0.7 reports `last_handshake_time_sec` as the
/// time *since* the handshake, not a Unix time.
fn boringtun_handshake_ages(name: &str) -> std::io::Result<HashMap<String, Duration>> {
    use std::io::{BufRead, Write};
    let mut sock = std::os::unix::net::UnixStream::connect(format!("/var/run/wireguard/{name}.sock"))?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
    sock.write_all(b"get=1\n\n")?;
    let mut out = HashMap::new();
    let mut peer: Option<String> = None;
    for line in std::io::BufReader::new(sock).lines() {
        let line = line?;
        if line.is_empty() {
            break;
        }
        let Some((key, value)) = line.split_once('=') else { continue };
        match key {
            "public_key" => peer = Key::from_hex(value).ok().map(|k| k.to_base64()),
            "last_handshake_time_sec" => {
                if let (Some(p), Ok(secs)) = (&peer, value.parse::<u64>()) {
                    out.insert(p.clone(), Duration::from_secs(secs));
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Gives the interface its address and brings it up, through rtnetlink.
async fn set_address(name: &str, address: Ipv4Addr, prefix_len: u8) -> Result<(), WireguardError> {
    let fail = |message: String| WireguardError::Address { name: name.to_string(), message };
    let (connection, handle, _) = rtnetlink::new_connection().map_err(|e| fail(e.to_string()))?;
    tokio::spawn(connection);
    let link = handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
        .map_err(|e| fail(e.to_string()))?
        .ok_or_else(|| fail("the interface vanished".into()))?;
    let index = link.header.index;
    // Replace whatever address a previous run left.
    let mut existing = handle.address().get().set_link_index_filter(index).execute();
    while let Some(addr) = existing.try_next().await.map_err(|e| fail(e.to_string()))? {
        let _ = handle.address().del(addr).execute().await;
    }
    handle.address().add(index, IpAddr::V4(address), prefix_len).execute().await.map_err(|e| fail(e.to_string()))?;
    handle
        .link()
        .set(rtnetlink::LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| fail(e.to_string()))?;
    Ok(())
}
