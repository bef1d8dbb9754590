//! A read-only TFTP server on tokio (RFC 1350, with options per RFC 2347, 2348, 2349 and 7440),
//! and a client for tests and benchmarks.
//!
//! - [`packet`]: the wire format; parsing never panics.
//! - [`options`]: option negotiation.
//! - [`transfer`]: one transfer, windows of blocks with retransmission.
//! - [`server`]: the request socket, refusals, and a task per transfer.
//! - [`client`]: a read client.

pub mod client;
pub mod config;
mod gso;
pub mod log_limit;
pub mod options;
pub mod packet;
pub mod server;
pub mod transfer;

#[cfg(test)]
mod tests;

pub use client::{fetch, fetch_into, ClientError, ClientOptions, Stats};
pub use config::{ConfigError, TftpConfig};
pub use server::TftpServer;
