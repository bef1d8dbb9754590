//! DHCPv4 for network boot: a full server (addresses and boot information) or ProxyDHCP
//! (boot information only, beside a site's own DHCP server).
//!
//! - [`lease`]: the lease state machine, pure logic.
//! - [`server`]: the decision for each message, and the sockets.
//! - [`reply`]: what goes into each kind of reply.
//! - [`conflict`]: ARP or ICMP checks before an address is offered.
//! - [`ratelimit`]: per-client token buckets.
//! - [`store`]: what the server needs from persistent storage.

#[cfg(feature = "serve")]
pub mod conflict;
pub mod lease;
pub mod ratelimit;
pub mod reply;
#[cfg(feature = "serve")]
pub mod server;
pub mod store;

#[cfg(all(test, feature = "serve"))]
mod tests;

pub use lease::{Lease, LeaseState, Pool};
pub use reply::NetworkOptions;
#[cfg(feature = "serve")]
pub use server::{DhcpConfig, DhcpError, DhcpServer, DhcpService, Mode, Outgoing, Port};
pub use store::{LeaseStore, MemoryStore, Sighting};
