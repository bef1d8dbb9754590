//! The decisions of oasis, without I/O: no tokio, redb, axum or sockets. Everything here is a
//! pure function of its inputs, tested in seconds (`cargo test -p oasis-core`); the appliance
//! (`oasis-appliance`) does the I/O around it.
//!
//! The flow of a rack, and where each step is decided:
//!
//! 1. **Configure.** `oasis.toml` is read and checked section by section ([`config`]); the
//!    console's first-boot questions use the same validators.
//! 2. **Boot.** A machine network-boots from the appliance (`oasis_pxe`, run by
//!    `oasis_appliance::serve`); each boot is a [`records::Machine`] record, and its boot script
//!    carries a per-boot token (`oasis_appliance::netboot`).
//! 3. **Register.** The node agent registers over HTTPS; [`registry`] decides who it is, whether
//!    it may join under the policy, and what it is given (credential, management-link address).
//!    Every decision is an event ([`events`] keeps the table bounded).
//! 4. **Accept.** Under the `manual` or `allowlist` policy an operator accepts it
//!    (`oasis_appliance::operator`), and the registry's records say so.
//! 5. **Assemble.** The controller (`oasis_appliance::controller`) observes etcd and the
//!    machines each tick and asks [`assembly::planner`] for one step: roles ([`assembly::order`]),
//!    bootstrap, membership, one-member-at-a-time restarts, settle; [`assembly::bookkeeping`]
//!    records what each step changed; [`assembly::desired`] is what each machine is told to run,
//!    with [`k3s`] rendering Kubernetes on top when a bundle is given; [`assembly::status`] is
//!    the cluster as the operator sees it.
//! 6. **Update.** A signed update bundle (`oasis_image::bundle`) is installed only if
//!    [`update`] allows it over what runs: a newer sequence, the rack's product and architecture,
//!    etcd one minor version up at most and never down across minors; [`generations`] says
//!    which node generations are kept and which one each machine's boot script serves.
//! 7. **Roll out.** [`rollout`] moves the machines to the newest generation one at a time,
//!    behind health gates, and sends a machine that fails them back.

pub mod assembly;
pub mod config;
pub mod events;
pub mod generations;
pub mod k3s;
pub mod records;
pub mod registry;
pub mod rollout;
pub mod update;
