//! The node agent that every netbooted machine runs: inventory, registration, the WireGuard
//! management link.
//!
//! Empty until issue 3 builds it; the binary `oasis-agent` arrives with that work.
