//! The appliance's console: the first-boot questions and, after setup, the live status view with
//! its menu. Everything is plain lines for a dumb terminal at 115200 baud: no cursor addressing,
//! no colours, no screen clearing. The same text goes to the serial port and the screen
//! ([`Consoles`]); the operator answers on either.
//!
//! - [`terminal`]: the [`Terminal`] the dialogues talk to.
//! - [`consoles`]: the real one, `/dev/ttyS0` and `/dev/tty0` together.
//! - [`nics`]: the network interfaces offered as the rack interface.
//! - [`probe`]: looking for another DHCP server on the rack network.
//! - [`setup`]: the first-boot dialogue, which returns `oasis.toml` text.
//! - [`status`]: the status block, read from a running `oasis serve`'s admin socket.
//! - [`menu`]: the status loop and its menu; [`ApplianceActions`] for what the supervisor does.
//!
//! # First boot: prompt order
//!
//! Every question is one line ending in `]: ` (it has a default, shown in brackets, which Enter
//! takes) or `: ` (it has none). A bad answer prints `error: REASON` on its own line and asks the
//! same question again. The `[...]` defaults below are the ones on a machine with one NIC `eth0`
//! with link and no address.
//!
//! ```text
//! oasis: first-boot setup. Press Enter to take the default shown in [brackets].
//! network interfaces:
//!   1) eth0  link up  52:54:00:12:34:56  no address
//! Rack interface [eth0]:                                (a name from the list, or its number)
//! Appliance address on eth0 [10.0.0.1]:                 (an address it already has is the default)
//! Netmask [255.255.255.0]:                              (255.255.255.0, /24 or 24)
//! oasis: looking for another DHCP server on eth0
//! oasis: no other DHCP server answered on eth0          (or the warning below)
//! warning: another DHCP server answers on eth0: 192.168.1.1; proxy mode is proposed ...
//! DHCP mode, full or proxy [full]:                      ([proxy] after the warning)
//! DHCP range, first-last [10.0.0.100-10.0.0.199]:       (full mode only)
//! Cluster name [oasis]:
//! Control-plane machines, 1, 3 or 5 [3]:
//! Acceptance policy, auto, allowlist or manual [auto]:
//! Allowed serial numbers and MACs, separated by spaces:  (allowlist only; `[...]` on a redo)
//! oasis: setup summary
//!   ... (one line per answer)
//! Save this setup, yes or redo [yes]:
//! oasis: setup saved
//! ```
//!
//! `redo` asks everything again from the rack interface on, each answer given before being the
//! new default. `oasis: setup saved` is printed once the answers are confirmed and the TOML text
//! has been checked by [`oasis_core::config::Config::parse`]; [`setup::first_boot`] then returns that
//! text for the supervisor to write.
//!
//! # After setup: the status view
//!
//! [`menu::run_status`] prints a status block whenever it changed (checked every
//! [`menu::REFRESH`]), after every command and whenever the operator presses Enter. Each block
//! starts with a line `oasis status: ...` and ends with the menu line and the prompt `Choice: `:
//!
//! ```text
//! oasis status: cluster oasis healthy                   (cluster NAME HEALTH, as `oasis cluster status`)
//! progress: ...
//! machines: 4 registered (3 accepted, 1 pending, 0 rejected), 3 up; 1 booted but not registered
//! pending: ID (MAC, serial SERIAL) ([a] accepts it)     (at most 3, then "pending: and N more")
//! control plane: 3 of 3 place(s), 0 worker(s); etcd: 3 member(s), 3 healthy, 0 learner(s)
//! kubernetes: not bundled
//! warning: ...                                          (at most 3)
//! rack address: 10.0.0.1/24 on eth0                     (from DATA_DIR/oasis.toml)
//! admin token: sha256 0123456789abcdef                  (of the token in DATA_DIR/admin-token)
//! menu: [a] accept pending  [e] events  [x] export report to USB  [r] reboot  [p] power off
//! Choice:
//! ```
//!
//! Without a server on the admin socket the first line is `oasis status: oasis serve is not
//! running (...)`, followed by the rack address and token lines.
//!
//! `a` lists the pending machines (`  1) ID (MAC, serial SERIAL)`) and asks `Accept which,
//! numbers separated by spaces, all or none [all]: ` (or prints `oasis: no machine is waiting
//! for acceptance`); each accepted one prints `oasis: accepted ID`. `e` prints the last ten
//! events (`  #SEQ KIND: MESSAGE`). `x` prints `oasis: report exported: ...` or `oasis: export
//! failed: ...`. `r` and `p` ask `Reboot the appliance, yes or no [no]: ` and `Power off the
//! appliance, yes or no [no]: ` first, then print `oasis: rebooting` or `oasis: powering off`
//! before calling [`ApplianceActions`]. Any other letter prints `error: ...` and the block again.
//!
//! # For the supervisor
//!
//! Bring the NICs up before [`host_nics`] (a NIC that is down shows no carrier) and keep them up
//! for the probe, which sends from port 68 and needs no address. The TOML [`first_boot`]
//! returns relies on the defaults `data_dir = "/var/lib/oasis"` and the boot root
//! `DATA_DIR/boot`. Lines typed while nobody reads wait in [`Consoles`]; call
//! [`Consoles::discard_typed`] before [`run_status`] so that they are not taken as commands.

pub mod consoles;
pub mod menu;
pub mod nics;
pub mod probe;
pub mod setup;
pub mod status;
mod sys;
pub mod terminal;

pub use consoles::Consoles;
pub use menu::{run_status, ApplianceActions};
pub use nics::{host_nics, list_nics, Link, Nic};
pub use probe::{DhcpProbe, UdpDhcpProbe};
pub use setup::first_boot;
pub use terminal::{Input, Terminal};
