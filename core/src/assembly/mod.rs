//! What the controller decides, as pure functions of what it observed. The loop that observes
//! and acts is `oasis_appliance::controller`.
//!
//! - [`planner`]: the next step (membership change, restart, settle), in phases, with its safety
//!   rules.
//! - [`order`]: which machines get control-plane places first.
//! - [`fence`]: power-cycling a silent control-plane machine through its BMC, then giving it up.
//! - [`desired`]: each machine's desired state (role, mesh, etcd's command line).
//! - [`status`]: the cluster as `oasis cluster status` shows it, built from one tick's observation.
//! - [`bookkeeping`]: what each step changes in the persisted assembly, as one pure function
//!   the controller and the planner's property test both call.

pub mod bookkeeping;
pub mod desired;
pub mod fence;
pub mod order;
pub mod planner;
pub mod status;
