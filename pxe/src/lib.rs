//! Network boot services for oasis, as a library on tokio.
//!
//! - [`dhcp`]: DHCPv4, full server or ProxyDHCP, on dhcproto.
//! - [`policy`]: what a booting client gets, from the options it sent.
//! - [`boot_root`]: the one directory TFTP and HTTP serve from, and the checks that keep them in it.
//! - [`metrics`]: counters shared by all services, rendered in Prometheus text format.

pub mod boot_root;
pub mod dhcp;
pub mod mac;
pub mod metrics;
pub mod policy;
mod sys;
