//! Cluster assembly: the controller that turns accepted machines into a cluster.
//!
//! - [`planner`]: the next membership change, as a pure function with its safety rules.

pub mod desired;
pub mod order;
pub mod planner;
