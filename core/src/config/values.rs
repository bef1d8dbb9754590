//! Checks of single values, shared by the file's sections and the console's first-boot
//! questions, so both refuse the same things with the same words. Messages name the value, not
//! the key: the section (or the console's question) says which key it is.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// Why a network interface name cannot be one (the kernel's rules, `dev_valid_name`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a valid interface name: 1 to 15 characters, none of them '/', ':' or a space, and not \".\" or \"..\""
)]
pub struct InterfaceNameError(pub String);

/// A Linux network interface name, by the kernel's rules.
pub fn interface_name(name: &str) -> Result<(), InterfaceNameError> {
    let ok = (1..=15).contains(&name.len())
        && name != "."
        && name != ".."
        && !name.bytes().any(|b| b == 0 || b == b'/' || b == b':' || b.is_ascii_whitespace());
    if ok {
        Ok(())
    } else {
        Err(InterfaceNameError(name.to_string()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} is not a contiguous netmask; use e.g. 255.255.255.0")]
pub struct NetmaskError(pub Ipv4Addr);

/// A netmask's prefix length, if it is a contiguous run of ones.
pub fn netmask_len(netmask: Ipv4Addr) -> Result<u8, NetmaskError> {
    ipnet::ipv4_mask_to_prefix(netmask).map_err(|_| NetmaskError(netmask))
}

/// Why a DHCP range cannot be the pool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("{start} comes after {end}; give the lower address first")]
    Order { start: Ipv4Addr, end: Ipv4Addr },
    #[error("{start} and {end} are not on one subnet of netmask {netmask}")]
    Subnets { start: Ipv4Addr, end: Ipv4Addr, netmask: Ipv4Addr },
    #[error("the range contains the appliance's own address {address}; leave it out")]
    OwnAddress { address: Ipv4Addr },
}

/// A pool from `start` to `end` on a network of `netmask`, served by an appliance at `address`.
pub fn range(start: Ipv4Addr, end: Ipv4Addr, netmask: Ipv4Addr, address: Ipv4Addr) -> Result<(), RangeError> {
    let subnet = |ip: Ipv4Addr| u32::from(ip) & u32::from(netmask);
    if u32::from(start) > u32::from(end) {
        return Err(RangeError::Order { start, end });
    }
    if subnet(start) != subnet(end) {
        return Err(RangeError::Subnets { start, end, netmask });
    }
    if subnet(start) == subnet(address) && (u32::from(start)..=u32::from(end)).contains(&u32::from(address)) {
        return Err(RangeError::OwnAddress { address });
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a cluster name; use 1 to 63 lowercase letters, digits or dashes, not starting with a dash")]
pub struct ClusterNameError(pub String);

/// A cluster name: a DNS label's characters, not starting with a dash.
pub fn cluster_name(name: &str) -> Result<(), ClusterNameError> {
    let ok = (1..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(ClusterNameError(name.to_string()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "\"{0}\" is not 1, 3 or 5; the control plane must be 1, 3 or 5 machines, an odd count that keeps etcd's quorum \
     meaningful"
)]
pub struct ControlPlaneError(pub usize);

/// How many control-plane machines a cluster may have.
pub fn control_plane(count: usize) -> Result<(), ControlPlaneError> {
    if [1, 3, 5].contains(&count) {
        Ok(())
    } else {
        Err(ControlPlaneError(count))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not ADDRESS/LENGTH with a length from 8 to 30, e.g. \"10.99.0.0/16\"")]
pub struct PrefixError(pub String);

/// A network `ADDRESS/LEN` (length 8 to 30).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    /// The network address: the host bits of what was written are cleared.
    pub network: Ipv4Addr,
    pub len: u8,
}

impl Prefix {
    pub fn parse(text: &str) -> Result<Prefix, PrefixError> {
        let bad = || PrefixError(text.to_string());
        let (addr, len) = text.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let len: u8 = len.parse().ok().filter(|l| (8..=30).contains(l)).ok_or_else(bad)?;
        let net = Ipv4Net::new(addr, len).map_err(|_| bad())?;
        Ok(Prefix { network: net.network(), len })
    }

    /// The network as an [`Ipv4Net`].
    pub fn net(self) -> Ipv4Net {
        Ipv4Net::new(self.network, self.len.min(32)).unwrap_or_default()
    }

    /// Whether the two networks share an address.
    pub fn overlaps(self, other: Prefix) -> bool {
        let (a, b) = (self.net(), other.net());
        a.contains(&b.network()) || b.contains(&a.network())
    }

    /// Whether `address` is in this network.
    pub fn contains(self, address: Ipv4Addr) -> bool {
        self.net().contains(&address)
    }
}
