//! Configuration from a USB stick, and the report written back to it.
//!
//! The boot supervisor calls, at boot and whenever [`watch`] reports a stick:
//! 1. [`scan`]: block devices (whole disks and partitions) whose vfat, ext2/3/4 or ISO 9660
//!    filesystem is labelled `OASIS`, identified from their superblocks ([`label`]);
//! 2. [`mount()`]: a [`Mounted`] guard that flushes and unmounts the stick when done;
//! 3. [`read_offer`]: `oasis.toml` checked against the schema of `--config` and, when the image
//!    carries a trusted key ([`signature::TRUSTED_KEY_PATH`]), against `oasis.toml.sig`: an
//!    [`Offer`], accepted with the exact text or refused with a reason an operator can act on;
//! 4. with `oasis serve` running, [`bundle::offer`]: the one `*.bundle` at the stick's root,
//!    verified while copied to the data partition, then installed through the admin socket at
//!    once (`[update] apply_from_stick`) or once confirmed on the console;
//! 5. [`gather`] (the running `oasis serve`'s machines, cluster status and kubeconfig, through
//!    its admin socket), then [`write_report`] into `oasis-report/` on the stick.
//!
//! ```no_run
//! # use oasis_boot::usb::*;
//! # use std::path::Path;
//! let trusted = signature::load_trusted_key(Path::new(signature::TRUSTED_KEY_PATH))?;
//! for stick in scan() {
//!     let mounted = mount(&stick, Path::new("/run/oasis/usb"))?;
//!     let acceptance = Acceptance {
//!         trusted_key: trusted.as_ref(),
//!         save_as: Path::new("/var/lib/oasis/oasis.toml"),
//!         net_class: Some(Path::new("/sys/class/net")),
//!         data_dir: Some(Path::new("/var/lib/oasis")),
//!     };
//!     let offer = read_offer(mounted.root(), &acceptance);
//!     // ... apply an accepted offer, then report:
//!     let mut report = gather(Path::new("/var/lib/oasis"));
//!     report.outcome = match offer {
//!         Some(Offer::Accepted { text, signed }) => Outcome::Applied { text, signed },
//!         Some(Offer::Refused { reason }) => Outcome::Refused { reason },
//!         None => Outcome::ReportOnly,
//!     };
//!     if mounted.writable() {
//!         write_report(mounted.root(), &report)?;
//!     }
//!     mounted.unmount()?;
//! }
//! # Ok::<(), anyhow::Error>(())
//! ```

pub mod bundle;
pub mod devices;
pub mod label;
pub mod mount;
pub mod offer;
pub mod report;
pub mod signature;
pub mod watch;

#[cfg(test)]
mod fake_system;

pub use bundle::{BundleOutcome, Verified};
pub use devices::{scan, Scanner, Stick};
pub use label::FsType;
pub use mount::{mount, MountError, Mounted};
pub use offer::{read_offer, Acceptance, Offer};
pub use report::{gather, write_report, Outcome, Report, ReportError};
pub use watch::{watch, Watcher};
