//! The node agent that every netbooted machine runs: inventory, registration, the WireGuard
//! management link.

pub mod client;
pub mod inventory;
pub mod link;
pub mod session;
pub mod status;
