//! The hardware watchdog (`/dev/watchdog`, Linux's watchdog API), armed during a trial boot so
//! that a hang reboots the appliance and GRUB spends one of the new slot's tries: the appliance
//! then falls back by itself even when nothing of it runs any more.
//!
//! Armed, the timer resets the machine unless it is fed within its timeout; a thread of its own
//! feeds it while the trial runs, and stops when the trial ends. A hang of the kernel or of
//! `oasis boot` stops the feeding. Committed, the watchdog is disarmed with the API's "magic
//! close" (writing `V` before closing).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

/// The watchdog device.
pub const DEVICE: &str = "/dev/watchdog";

/// `WDIOC_SETTIMEOUT`: `_IOWR('W', 6, int)`.
const WDIOC_SETTIMEOUT: libc::c_ulong = 0xC004_5706;

/// An armed watchdog.
#[derive(Debug)]
pub struct Watchdog {
    file: File,
    /// The timeout the driver took (it may round); `None`: it kept its own default.
    pub timeout_secs: Option<u32>,
}

impl Watchdog {
    /// Opens (and so starts) the watchdog at `path`, asking for a timeout of `secs`.
    pub fn arm(path: &Path, secs: u32) -> io::Result<Watchdog> {
        let file = OpenOptions::new().write(true).open(path)?;
        let mut timeout = libc::c_int::try_from(secs).unwrap_or(libc::c_int::MAX);
        // SAFETY: WDIOC_SETTIMEOUT reads and writes one int through the pointer, which lives
        // across the call.
        let set = unsafe { libc::ioctl(file.as_raw_fd(), WDIOC_SETTIMEOUT, &mut timeout) };
        let timeout_secs = (set == 0).then(|| u32::try_from(timeout).unwrap_or(secs));
        Ok(Watchdog { file, timeout_secs })
    }

    /// Feeds it: the timeout starts again.
    pub fn feed(&mut self) -> io::Result<()> {
        self.file.write_all(b"\0")?;
        self.file.flush()
    }

    /// Stops it ("magic close").
    pub fn disarm(mut self) -> io::Result<()> {
        self.file.write_all(b"V")?;
        self.file.flush()
    }
}
