//! IPv4 prefixes, as [`Ipv4Net`]: the conversions the rest of oasis needs around it.

use std::net::Ipv4Addr;

pub use ipnet::{Ipv4Net, PrefixLenError};

/// `address` with the prefix length of `netmask`; `None` when the mask is not contiguous ones
/// then zeros (255.0.255.0).
pub fn with_netmask(address: Ipv4Addr, netmask: Ipv4Addr) -> Option<Ipv4Net> {
    Ipv4Net::with_netmask(address, netmask).ok()
}

/// The prefix length of `netmask`, if it is one (see [`with_netmask`]).
pub fn prefix_len(netmask: Ipv4Addr) -> Option<u8> {
    with_netmask(Ipv4Addr::UNSPECIFIED, netmask).map(|n| n.prefix_len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netmasks_and_prefixes() {
        assert_eq!(prefix_len(Ipv4Addr::new(255, 255, 255, 0)), Some(24));
        assert_eq!(prefix_len(Ipv4Addr::new(255, 255, 240, 0)), Some(20));
        assert_eq!(prefix_len(Ipv4Addr::UNSPECIFIED), Some(0));
        assert_eq!(prefix_len(Ipv4Addr::BROADCAST), Some(32));
        assert_eq!(prefix_len(Ipv4Addr::new(255, 0, 255, 0)), None);
        let net = with_netmask(Ipv4Addr::new(10, 99, 3, 7), Ipv4Addr::new(255, 255, 0, 0)).unwrap();
        assert_eq!(net.to_string(), "10.99.3.7/16");
        assert_eq!(net.network(), Ipv4Addr::new(10, 99, 0, 0));
        assert_eq!(net.trunc().to_string(), "10.99.0.0/16");
        assert!(net.contains(&Ipv4Addr::new(10, 99, 200, 1)));
    }
}
