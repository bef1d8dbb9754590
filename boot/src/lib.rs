//! `oasis boot`: what runs on the appliance image around `oasis serve`.
//!
//! The image's `/init` runs `oasis boot` ([`supervisor::run`]): it prepares the boot disk's data
//! partition ([`disk`]), chooses the configuration (a USB stick's, the saved one, or the
//! [`console`]'s first-boot questions), and runs `oasis serve` as a child process, restarting
//! it when it exits or when a stick ([`usb`]) brings a new configuration. The console's status
//! view and menu, and the stick's report, talk to `serve` through the same admin socket as the
//! CLI (`oasis_appliance::admin`), so they can do nothing the CLI cannot.
//!
//! - [`supervisor`]: the order of things at boot, and `serve`'s restarts.
//! - [`disk`]: finding the boot disk and preparing its data partition.
//! - [`console`]: the serial and video consoles: first-boot questions, status view, menu.
//! - [`usb`]: configuration from a stick labelled `OASIS`, its signature, and the report written
//!   back to it.
//! - [`slots`]: the two boot slots and GRUB's environment block; [`self_update`]: the appliance
//!   writing an update into the other slot, its trial boot and health check, commit or fallback.

pub mod console;
pub mod disk;
pub mod self_update;
pub mod slots;
pub mod supervisor;
pub mod usb;
pub mod watchdog;
