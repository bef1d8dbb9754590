//! The appliance's end of the management links: one WireGuard interface, a peer per accepted
//! machine.
//!
//! Kernel WireGuard (through wireguard-control) when the kernel has it, as the appliance image's
//! Debian kernel does; otherwise boringtun in this process over a tun device. boringtun is driven
//! through a private socket pair speaking the cross-platform UAPI text protocol, not through
//! `/var/run/wireguard/NAME.sock`: in that mode boringtun also takes SIGINT and SIGTERM through a
//! signalfd and quietly stops the interface when one arrives (we found it eating the SIGTERM meant
//! for `oasis serve`), and the shared path collides between appliances on one host.
//! boringtun 0.7 cannot modify a peer in place (it panics), so a peer is only ever added or
//! removed: a machine that rekeys gets its old peer removed and a new one added.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use wireguard_control::{Backend, Device, DeviceUpdate, InterfaceName, Key, PeerConfigBuilder};

#[derive(Debug, thiserror::Error)]
pub enum WireguardError {
    #[error("{0:?} is not a usable interface name (at most 15 characters)")]
    Name(String),
    #[error("cannot create the WireGuard interface {name}: the kernel has no WireGuard ({kernel}) and the userspace implementation failed too")]
    Create { name: String, kernel: std::io::Error, source: UserspaceError },
    #[error("cannot configure the WireGuard interface {name}")]
    Configure { name: String, source: std::io::Error },
    #[error(transparent)]
    Address(#[from] oasis_host::netlink::NetlinkError),
    #[error("{address}/{prefix_len} is not an IPv4 prefix; check wireguard.prefix in the configuration")]
    Prefix { address: Ipv4Addr, prefix_len: u8 },
    #[error("{0} is not a WireGuard public key")]
    Key(String),
}

/// Why the embedded userspace WireGuard (boringtun) could not start.
#[derive(Debug, thiserror::Error)]
pub enum UserspaceError {
    #[error("cannot {what}")]
    Io { what: &'static str, source: std::io::Error },
    /// boringtun's own error, which has no `Display`.
    #[error("boringtun cannot create the device: {0}")]
    Device(String),
}

/// Which implementation carries the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Implementation {
    Kernel,
    Userspace,
}

/// How the interface is configured.
enum Control {
    Kernel(InterfaceName),
    /// Our end of boringtun's control socket pair, and its device (dropping it stops the
    /// device's threads and removes the tun interface).
    Boringtun {
        uapi: Mutex<BufReader<UnixStream>>,
        _device: boringtun::device::DeviceHandle,
    },
}

/// The management interface, up and configured.
pub struct ManagementInterface {
    name: String,
    control: Control,
    /// The peers configured, by key: an add for a key already there must not reach boringtun.
    peers: Mutex<HashMap<String, Ipv4Addr>>,
}

impl std::fmt::Debug for ManagementInterface {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagementInterface")
            .field("name", &self.name)
            .field("implementation", &self.implementation())
            .finish()
    }
}

/// The public key of a private key, base64.
pub fn public_key(private: &[u8; 32]) -> String {
    Key(*private).get_public().to_base64()
}

/// How long one exchange with boringtun's control socket may take, each way. Bounded so that a
/// device that stops answering costs its callers this long, never forever: a blocked write (its
/// socket buffer full of unanswered requests) once held the registry's lock until registrations
/// and heartbeats all timed out.
const UAPI_TIMEOUT: Duration = Duration::from_secs(5);

/// Throws away whatever the device sent that nobody read: the late answer to an exchange that
/// timed out. Without this, every later exchange would read the answer to the one before it.
fn uapi_drain(uapi: &mut BufReader<UnixStream>) -> std::io::Result<()> {
    let buffered = uapi.buffer().len();
    uapi.consume(buffered);
    let stream = uapi.get_mut();
    stream.set_nonblocking(true)?;
    let mut scratch = [0u8; 4096];
    let drained = loop {
        match stream.read(&mut scratch) {
            Ok(0) => break Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the WireGuard device stopped")),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    stream.set_nonblocking(false)?;
    drained
}

/// One UAPI exchange: sends `request` (ending with an empty line), reads `key=value` lines up to
/// the empty line that ends the answer, and fails unless it carries `errno=0`. Each direction is
/// bounded by [`UAPI_TIMEOUT`].
fn uapi_exchange(uapi: &mut BufReader<UnixStream>, request: &str) -> std::io::Result<Vec<(String, String)>> {
    uapi_drain(uapi)?;
    uapi.get_mut().write_all(request.as_bytes())?;
    let mut answer = vec![];
    loop {
        let mut line = String::new();
        if uapi.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the WireGuard device stopped"));
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once('=') {
            answer.push((k.to_string(), v.to_string()));
        }
    }
    match answer.iter().find(|(k, _)| k == "errno").map(|(_, v)| v.as_str()) {
        Some("0") => Ok(answer),
        Some(errno) => Err(std::io::Error::other(format!("the WireGuard device refused the change (errno {errno})"))),
        None => Err(std::io::Error::other("the WireGuard device gave no status")),
    }
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
        let update = DeviceUpdate::new().set_private_key(Key(*private)).set_listen_port(port).replace_peers();
        let control = match update.apply(&iface, Backend::Kernel) {
            Ok(()) => Control::Kernel(iface),
            Err(kernel) => {
                tracing::info!("no kernel WireGuard ({kernel}); using the embedded userspace implementation");
                let failed = |source| WireguardError::Create { name: name.to_string(), kernel, source };
                Self::start_boringtun(name, private, port).map_err(failed)?
            }
        };
        let net = oasis_host::Ipv4Net::new(address, prefix_len)
            .map_err(|_| WireguardError::Prefix { address, prefix_len })?;
        // Replaces whatever address a previous run left, and sets the interface up.
        oasis_host::netlink::set_only_ipv4(name, net).await?;
        Ok(ManagementInterface { name: name.to_string(), control, peers: Mutex::new(HashMap::new()) })
    }

    fn start_boringtun(name: &str, private: &[u8; 32], port: u16) -> Result<Control, UserspaceError> {
        let io = |what| move |source| UserspaceError::Io { what, source };
        let (ours, theirs) = UnixStream::pair().map_err(io("make the control socket pair"))?;
        let config = boringtun::device::DeviceConfig {
            n_threads: 2,
            use_connected_socket: true,
            use_multi_queue: false,
            // boringtun owns this descriptor from here on.
            uapi_fd: theirs.into_raw_fd(),
        };
        let device =
            boringtun::device::DeviceHandle::new(name, config).map_err(|e| UserspaceError::Device(format!("{e:?}")))?;
        let mut uapi = BufReader::new(ours);
        uapi.get_mut().set_read_timeout(Some(UAPI_TIMEOUT)).map_err(io("set the control socket's timeouts"))?;
        uapi.get_mut().set_write_timeout(Some(UAPI_TIMEOUT)).map_err(io("set the control socket's timeouts"))?;
        let request =
            format!("set=1\nprivate_key={}\nlisten_port={port}\nreplace_peers=true\n\n", hex::encode(private));
        uapi_exchange(&mut uapi, &request).map_err(io("set the key and port through the control socket"))?;
        Ok(Control::Boringtun { uapi: Mutex::new(uapi), _device: device })
    }

    pub fn implementation(&self) -> Implementation {
        match self.control {
            Control::Kernel(_) => Implementation::Kernel,
            Control::Boringtun { .. } => Implementation::Userspace,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn configure_error(&self, source: std::io::Error) -> WireguardError {
        WireguardError::Configure { name: self.name.clone(), source }
    }

    /// Sets (`Some`) or removes (`None`) one peer.
    fn set_peer(&self, key: &Key, overlay: Option<Ipv4Addr>) -> Result<(), WireguardError> {
        match &self.control {
            Control::Kernel(iface) => {
                let update = match overlay {
                    Some(ip) => DeviceUpdate::new()
                        .add_peer(PeerConfigBuilder::new(key).replace_allowed_ips().add_allowed_ip(IpAddr::V4(ip), 32)),
                    None => DeviceUpdate::new().remove_peer_by_key(key),
                };
                update.apply(iface, Backend::Kernel).map_err(|e| self.configure_error(e))
            }
            Control::Boringtun { uapi, .. } => {
                let peer = hex::encode(key.as_bytes());
                let request = match overlay {
                    Some(ip) => format!("set=1\npublic_key={peer}\nreplace_allowed_ips=true\nallowed_ip={ip}/32\n\n"),
                    None => format!("set=1\npublic_key={peer}\nremove=true\n\n"),
                };
                let mut uapi = uapi.lock().unwrap_or_else(|e| e.into_inner());
                uapi_exchange(&mut uapi, &request).map(|_| ()).map_err(|e| self.configure_error(e))
            }
        }
    }

    /// Adds the peer of an accepted machine: its key, and its overlay address as the only
    /// address it may send from. Does nothing if the peer is already there with that address.
    pub fn add_peer(&self, key: &str, overlay: Ipv4Addr) -> Result<(), WireguardError> {
        let parsed = Key::from_base64(key).map_err(|_| WireguardError::Key(key.to_string()))?;
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        match peers.get(key) {
            Some(address) if *address == overlay => return Ok(()),
            Some(_) => self.set_peer(&parsed, None)?,
            None => {}
        }
        self.set_peer(&parsed, Some(overlay))?;
        peers.insert(key.to_string(), overlay);
        Ok(())
    }

    /// Does nothing if there is no such peer.
    pub fn remove_peer(&self, key: &str) -> Result<(), WireguardError> {
        let parsed = Key::from_base64(key).map_err(|_| WireguardError::Key(key.to_string()))?;
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if peers.remove(key).is_some() {
            self.set_peer(&parsed, None)?;
        }
        Ok(())
    }

    /// How long ago each peer (by base64 key) last completed a handshake.
    pub fn handshake_ages(&self) -> HashMap<String, Duration> {
        match &self.control {
            Control::Kernel(iface) => {
                let now = SystemTime::now();
                match Device::get(iface, Backend::Kernel) {
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
            Control::Boringtun { uapi, .. } => {
                let mut uapi = uapi.lock().unwrap_or_else(|e| e.into_inner());
                uapi_exchange(&mut uapi, "get=1\n\n")
                    .map(|answer| boringtun_handshake_ages(&answer))
                    .unwrap_or_default()
            }
        }
    }
}

impl Drop for ManagementInterface {
    fn drop(&mut self) {
        if let Control::Kernel(iface) = &self.control {
            if let Ok(device) = Device::get(iface, Backend::Kernel) {
                let _ = device.delete();
            }
        }
    }
}

/// The handshake age of each peer in boringtun's answer to `get=1` (a peer starts at each
/// `public_key=`, in hex). Unlike the kernel and the UAPI's description, boringtun 0.7 reports
/// `last_handshake_time_sec` as the time *since* the handshake, not a Unix time.
fn boringtun_handshake_ages(answer: &[(String, String)]) -> HashMap<String, Duration> {
    let mut out = HashMap::new();
    let mut peer: Option<String> = None;
    for (key, value) in answer {
        match key.as_str() {
            "public_key" => peer = Key::from_hex(value).ok().map(|k| k.to_base64()),
            "last_handshake_time_sec" => {
                if let (Some(p), Ok(secs)) = (&peer, value.parse::<u64>()) {
                    out.insert(p.clone(), Duration::from_secs(secs));
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boringtun_reports_handshake_ages_not_times() {
        let key = Key([7; 32]);
        let answer: Vec<(String, String)> = [
            ("private_key", "00".repeat(32)),
            ("public_key", hex::encode(key.as_bytes())),
            ("last_handshake_time_sec", "42".to_string()),
            ("public_key", hex::encode([8u8; 32])),
            ("errno", "0".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let ages = boringtun_handshake_ages(&answer);
        assert_eq!(ages.get(&key.to_base64()), Some(&Duration::from_secs(42)));
        assert_eq!(ages.len(), 1, "a peer without a handshake has no age");
    }

    /// Reads one request (up to its empty line) as the device would.
    fn read_request(device: &mut BufReader<UnixStream>) {
        let mut line = String::new();
        while device.read_line(&mut line).unwrap() > 0 && line != "\n" {
            line.clear();
        }
    }

    #[test]
    fn a_late_answer_is_never_taken_for_the_next_exchanges() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let device = std::thread::spawn(move || {
            let mut device = BufReader::new(theirs);
            read_request(&mut device);
            std::thread::sleep(Duration::from_millis(300));
            device.get_mut().write_all(b"late=1\nerrno=0\n\n").unwrap();
            read_request(&mut device);
            device.get_mut().write_all(b"fresh=1\nerrno=0\n\n").unwrap();
        });
        let mut uapi = BufReader::new(ours);
        assert!(uapi_exchange(&mut uapi, "get=1\n\n").is_err(), "no answer within the timeout");
        std::thread::sleep(Duration::from_millis(400));
        let answer = uapi_exchange(&mut uapi, "get=1\n\n").unwrap();
        assert!(answer.iter().any(|(k, _)| k == "fresh"), "the second exchange read {answer:?}");
        device.join().unwrap();
    }
}
