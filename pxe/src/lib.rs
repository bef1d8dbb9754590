//! Network boot services for oasis, as a library on tokio.
//!
//! - [`dhcp`]: DHCPv4, full server or ProxyDHCP, on dhcproto.
//! - [`policy`]: what a booting client gets, from the options it sent.
//! - [`tftp`]: a read-only TFTP server (RFC 1350, 2347, 2348, 2349, 7440).
//! - [`http`]: iPXE scripts, kernels and files with Range and HEAD, and `/metrics`.
//! - [`script`]: the iPXE scripts themselves.
//! - [`boot_root`]: the one directory TFTP and HTTP serve from, and the checks that keep them in it.
//! - [`conn`]: the accept loop every HTTP listener shares: connection caps ([`conn_limit`]),
//!   header, body and send timeouts.
//! - [`metrics`]: counters shared by all services, rendered in Prometheus text format.

pub mod boot_root;
#[cfg(feature = "serve")]
pub mod conn;
#[cfg(feature = "serve")]
pub mod conn_limit;
pub mod dhcp;
#[cfg(feature = "serve")]
pub mod http;
pub mod mac;
#[cfg(feature = "serve")]
pub mod metrics;
pub mod policy;
pub mod script;
mod sys;
pub mod tftp;
