//! The node agent that every netbooted machine runs: inventory, registration, the WireGuard
//! management link.
//!
//! The boot phase ([`boot`]) comes first: kernel modules for the devices present ([`drivers`]), the
//! boot link through rtnetlink ([`network`]) and its DHCP lease ([`dhcp`]).

pub mod boot;
pub mod dhcp;
pub mod drivers;
pub mod network;
