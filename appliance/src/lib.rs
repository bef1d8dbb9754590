//! The oasis appliance: `oasis serve` and the operator interface onto it.
//!
//! The decisions live in `oasis_core` (configuration, registry, planner, desired state, status);
//! this crate does the I/O around them. The flow, boot to register to accept to assemble:
//!
//! 1. [`serve`] starts the services on the [`store`]: DHCP, TFTP and HTTP boot (`oasis_pxe`),
//!    each boot script carrying a per-boot token ([`netboot`]), the HTTPS [`api`], the WireGuard
//!    interface ([`wireguard`]), the [`admin`] socket and the [`controller`].
//! 2. A booted machine's agent registers on the [`api`]; the registry (`oasis_core::registry`)
//!    decides, the store commits before the answer, and an accepted machine gets its management
//!    link (a WireGuard peer, added after the registry's lock is released).
//! 3. An operator acts through one door per interface (the CLI over the [`admin`] socket, the
//!    HTTPS admin routes, the console's menu, the [`web`] page), each parsing into one
//!    [`operator::Action`] and its one handler; [`operator::ActionError`] maps every error to an
//!    HTTP status, an exit code ([`exit`]) and a console line.
//! 4. The [`controller`] turns accepted machines into a cluster: each tick it observes etcd
//!    ([`etcd`], certified by the cluster CA in [`pki`]) and the machines' heartbeats, asks the
//!    planner for one step, executes it, and publishes each machine's desired state on the API.
//! 5. An update bundle (admin socket, [`upload`] over HTTPS or from the [`web`] page) becomes a
//!    node generation on the data partition ([`generations`]); the [`controller`] then rolls the
//!    machines onto it one at a time (`oasis_core::rollout` decides; `controller/rollout.rs`
//!    observes and asks each machine to reboot into it) and sends a machine that fails its gates
//!    back.
//!
//! Also here: [`identity`] (the appliance's TLS key, admin token and secrets, made once and
//! kept), [`limits`] (the descriptor limit and the connection caps sized to fit in it) and
//! [`inventory`] (the machines as text, for the USB stick's report and the web page).

pub mod admin;
pub mod agent_power;
pub mod api;
pub mod appliance_update;
pub mod controller;
pub mod etcd;
pub mod exit;
pub mod generations;
pub mod identity;
pub mod inventory;
pub mod limits;
pub mod netboot;
pub mod operator;
pub mod pki;
pub mod power;
pub mod serve;
pub mod store;
pub mod upload;
pub mod web;
pub mod wireguard;

/// Exit code of a store that needs its operator: damaged, or missing where one existed.
pub const EXIT_STORE: i32 = 5;

/// The exit code for an error, from the typed causes along its whole chain ([`exit::Exit::of`]):
/// 2 for a request the running appliance refused as asked, 3 for a configuration to fix (bad
/// file, or one this host does not match), 4 for a store in use, [`EXIT_STORE`] (5) for a store
/// damaged or lost, 1 otherwise.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    exit::Exit::of(err.as_ref()).code()
}
