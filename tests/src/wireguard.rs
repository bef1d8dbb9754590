//! A machine's end of the management link in userspace, for simulated machines on a host whose
//! kernel has no WireGuard: boringtun on a tun device in the calling thread's network namespace,
//! one peer (the appliance) at the endpoint the registration named, the overlay routed through
//! it. What the node agent does with kernel WireGuard (agent/src/link.rs), done the way the
//! appliance's own fallback does it (appliance/src/wireguard.rs): boringtun driven over a private
//! socket pair speaking the cross-platform UAPI text protocol, never through a shared
//! `/var/run/wireguard/NAME.sock` (which would collide between machines and lets boringtun take
//! SIGINT for itself).
//!
//! A device costs a thread and a tun queue; the soak gives one to a subset of its machines.

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use oasis_proto::LinkConfig;

/// Interface MTU: WireGuard's 60-byte overhead inside the rack's 1500.
const MTU: &str = "1420";

/// Why the link is not up.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// boringtun's own error, which has no `Display`.
    #[error("cannot create the userspace WireGuard device {name}: {reason}")]
    Device { name: String, reason: String },
    #[error("cannot set up the control socket of the userspace WireGuard device {name}")]
    Control { name: String, source: std::io::Error },
    #[error("the WireGuard device {name} refused its configuration")]
    Configure { name: String, source: std::io::Error },
    #[error("the appliance's WireGuard key {0:?} is not 32 bytes of base64")]
    Key(String),
    #[error(transparent)]
    Ip(#[from] crate::HarnessError),
}

/// The management link, up; dropping it stops boringtun's thread and deletes the interface (at
/// once, so that the next boot's link can take the name).
pub struct UserspaceLink {
    ns: String,
    name: String,
    /// Closing it stops the device (boringtun exits on the control socket's end of file).
    uapi: Option<BufReader<UnixStream>>,
    device: Option<boringtun::device::DeviceHandle>,
}

impl std::fmt::Debug for UserspaceLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserspaceLink").field("ns", &self.ns).field("name", &self.name).finish()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The network address of `address/prefix_len`.
fn network(address: Ipv4Addr, prefix_len: u8) -> Ipv4Addr {
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix_len.min(32))).unwrap_or(0);
    Ipv4Addr::from(u32::from(address) & mask)
}

impl UserspaceLink {
    /// Creates interface `name` with private key `private` and configures it from `config`:
    /// the appliance as the only peer, its endpoint, the overlay prefix as its allowed IPs, the
    /// keepalive; then the machine's overlay address, the MTU, up. Call it on a thread inside
    /// namespace `ns` (see [`crate::Netns::spawn_inside`]): the device, its UDP socket and its
    /// thread are made where the caller is.
    pub fn up(ns: &str, name: &str, private: &[u8], config: &LinkConfig) -> Result<UserspaceLink, LinkError> {
        let control = |source| LinkError::Control { name: name.to_string(), source };
        let appliance = base64::engine::general_purpose::STANDARD
            .decode(&config.appliance_key)
            .ok()
            .filter(|k| k.len() == 32)
            .ok_or_else(|| LinkError::Key(config.appliance_key.clone()))?;
        let (ours, theirs) = UnixStream::pair().map_err(control)?;
        let device_config = boringtun::device::DeviceConfig {
            n_threads: 1,
            use_connected_socket: true,
            use_multi_queue: false,
            // boringtun owns this descriptor from here on.
            uapi_fd: theirs.into_raw_fd(),
        };
        let device = boringtun::device::DeviceHandle::new(name, device_config)
            .map_err(|e| LinkError::Device { name: name.to_string(), reason: format!("{e:?}") })?;
        ours.set_read_timeout(Some(Duration::from_secs(5))).map_err(control)?;
        let mut link = UserspaceLink {
            ns: ns.to_string(),
            name: name.to_string(),
            uapi: Some(BufReader::new(ours)),
            device: Some(device),
        };
        let request = format!(
            "set=1\nprivate_key={}\nreplace_peers=true\npublic_key={}\nendpoint={}\nallowed_ip={}/{}\n\
             persistent_keepalive_interval={}\n\n",
            hex(private),
            hex(&appliance),
            config.endpoint,
            network(config.address, config.prefix_len),
            config.prefix_len,
            config.keepalive_secs,
        );
        link.exchange(&request).map_err(|source| LinkError::Configure { name: name.to_string(), source })?;
        let ip = |args: &[&str]| crate::run(Command::new("ip").args(["-n", ns]).args(args));
        ip(&["address", "add", &format!("{}/{}", config.address, config.prefix_len), "dev", name])?;
        ip(&["link", "set", name, "mtu", MTU, "up"])?;
        Ok(link)
    }

    /// One UAPI exchange: sends `request`, reads the answer up to the empty line that ends it,
    /// and fails unless it carries `errno=0`.
    fn exchange(&mut self, request: &str) -> std::io::Result<()> {
        let uapi = self.uapi.as_mut().expect("the control socket is there until the link is dropped");
        uapi.get_mut().write_all(request.as_bytes())?;
        let mut errno = None;
        loop {
            let mut line = String::new();
            if uapi.read_line(&mut line)? == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the WireGuard device stopped"));
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some(value) = line.strip_prefix("errno=") {
                errno = Some(value.to_string());
            }
        }
        match errno.as_deref() {
            Some("0") => Ok(()),
            Some(errno) => Err(std::io::Error::other(format!("errno {errno}"))),
            None => Err(std::io::Error::other("no status in the answer")),
        }
    }
}

impl Drop for UserspaceLink {
    /// Stops the device and waits (boundedly) for its interface to go with its descriptor; deletes
    /// it if it stays. Deleted first, the device would find its tun descriptor dead and say so on
    /// stderr.
    fn drop(&mut self) {
        drop(self.uapi.take());
        drop(self.device.take());
        let present = || crate::run(Command::new("ip").args(["-n", &self.ns, "link", "show", &self.name])).is_ok();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while present() {
            if std::time::Instant::now() > deadline {
                let _ = crate::run(Command::new("ip").args(["-n", &self.ns, "link", "delete", &self.name]));
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allowed_prefix_is_the_overlay_network() {
        assert_eq!(network(Ipv4Addr::new(10, 99, 3, 7), 16), Ipv4Addr::new(10, 99, 0, 0));
        assert_eq!(network(Ipv4Addr::new(10, 99, 3, 7), 32), Ipv4Addr::new(10, 99, 3, 7));
        assert_eq!(network(Ipv4Addr::new(10, 99, 3, 7), 0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
    }
}
