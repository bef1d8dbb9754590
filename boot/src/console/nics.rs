//! The network interfaces the operator can choose as the rack interface: the machine's own NICs,
//! read from `/sys/class/net`. Loopback, WireGuard, bridges, veths, taps and every other
//! software interface have no `device` link there and are left out.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::Path;

/// Whether a NIC sees a link partner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Carrier: a cable to a live switch port.
    Up,
    /// Up, but no carrier: unplugged, or the switch port is off.
    NoCarrier,
    /// Administratively down: its carrier is unknown until it is brought up.
    Down,
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Link::Up => "link up",
            Link::NoCarrier => "no link",
            Link::Down => "down",
        })
    }
}

/// One NIC as the first-boot dialogue lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    pub name: String,
    /// As `/sys/class/net/NAME/address` has it.
    pub mac: String,
    pub link: Link,
    /// IPv4 addresses it already has, with their prefix lengths.
    pub addresses: Vec<(Ipv4Addr, u8)>,
}

/// `ARPHRD_LOOPBACK` in `/sys/class/net/NAME/type`.
const ARPHRD_LOOPBACK: &str = "772";

fn read(dir: &Path, file: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(file)).ok().map(|s| s.trim().to_string())
}

/// The physical NICs under `sys_class_net` (normally `/sys/class/net`), sorted by name, without
/// addresses (sysfs has none; see [`host_nics`]).
pub fn list_nics(sys_class_net: &Path) -> Vec<Nic> {
    let Ok(entries) = std::fs::read_dir(sys_class_net) else { return vec![] };
    let mut nics: Vec<Nic> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().to_string();
            let dir = entry.path();
            let physical = std::fs::symlink_metadata(dir.join("device")).is_ok();
            if name == "lo" || !physical || read(&dir, "type").as_deref() == Some(ARPHRD_LOOPBACK) {
                return None;
            }
            // Reading `carrier` fails while the interface is down.
            let link = match read(&dir, "carrier").as_deref() {
                Some("1") => Link::Up,
                Some("0") => Link::NoCarrier,
                _ if read(&dir, "operstate").as_deref() == Some("up") => Link::Up,
                _ => Link::Down,
            };
            let mac = read(&dir, "address").unwrap_or_default();
            Some(Nic { name, mac, link, addresses: vec![] })
        })
        .collect();
    nics.sort_by(|a, b| a.name.cmp(&b.name));
    nics
}

/// This machine's NICs with their IPv4 addresses. Bring the NICs up first (`ip link set NAME
/// up`): a NIC that is down shows no carrier.
pub fn host_nics() -> Vec<Nic> {
    let mut nics = list_nics(Path::new("/sys/class/net"));
    match super::sys::ipv4_addresses() {
        Ok(addresses) => {
            for (name, address, prefix) in addresses {
                if let Some(nic) = nics.iter_mut().find(|n| n.name == name) {
                    nic.addresses.push((address, prefix));
                }
            }
        }
        Err(e) => tracing::warn!("cannot read the interfaces' addresses: {e}", e = oasis_proto::error_chain(&e)),
    }
    nics
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interface(root: &Path, name: &str, files: &[(&str, &str)], physical: bool) {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for (file, content) in files {
            std::fs::write(dir.join(file), format!("{content}\n")).unwrap();
        }
        if physical {
            std::os::unix::fs::symlink("../../../devices/pci0000:00/0000:00:03.0", dir.join("device")).unwrap();
        }
    }

    #[test]
    fn physical_nics_with_their_link_state_and_mac() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        interface(r, "lo", &[("address", "00:00:00:00:00:00"), ("type", "772"), ("carrier", "1")], false);
        interface(r, "oasis-wg", &[("type", "65534"), ("carrier", "1")], false);
        interface(r, "br0", &[("address", "aa:bb:cc:00:00:01"), ("type", "1"), ("carrier", "1")], false);
        interface(r, "veth3", &[("address", "aa:bb:cc:00:00:02"), ("type", "1"), ("carrier", "1")], false);
        interface(
            r,
            "eth1",
            &[("address", "52:54:00:00:00:02"), ("type", "1"), ("carrier", "1"), ("operstate", "up")],
            true,
        );
        interface(
            r,
            "eth0",
            &[("address", "52:54:00:00:00:01"), ("type", "1"), ("carrier", "0"), ("operstate", "down")],
            true,
        );
        // Down: the kernel refuses to read `carrier`, which the file's absence stands for here.
        interface(r, "eth2", &[("address", "52:54:00:00:00:03"), ("type", "1"), ("operstate", "down")], true);

        let nics = list_nics(r);
        let seen: Vec<(&str, &str, Link)> = nics.iter().map(|n| (n.name.as_str(), n.mac.as_str(), n.link)).collect();
        assert_eq!(
            seen,
            [
                ("eth0", "52:54:00:00:00:01", Link::NoCarrier),
                ("eth1", "52:54:00:00:00:02", Link::Up),
                ("eth2", "52:54:00:00:00:03", Link::Down),
            ]
        );
        assert!(list_nics(&r.join("missing")).is_empty());
    }
}
