//! A read-only TFTP server on tokio (RFC 1350, with options per RFC 2347, 2348, 2349 and 7440),
//! and a client for tests and benchmarks.
//!
//! - [`packet`]: the wire format; parsing never panics.
//! - [`options`]: option negotiation.
//! - [`transfer`]: one transfer, windows of blocks with retransmission.
//! - [`server`]: the request socket, refusals, and a task per transfer.
//! - [`client`]: a read client.

#[cfg(feature = "serve")]
pub mod client;
pub mod config;
#[cfg(feature = "serve")]
mod gso;
pub mod log_limit;
pub mod options;
pub mod packet;
#[cfg(feature = "serve")]
pub mod server;
#[cfg(feature = "serve")]
pub mod transfer;

#[cfg(all(test, feature = "serve"))]
mod tests;

#[cfg(feature = "serve")]
pub use client::{fetch, fetch_into, ClientError, ClientOptions, Stats};
pub use config::{ConfigError, TftpConfig};
#[cfg(feature = "serve")]
pub use server::TftpServer;
