//! Mounting a stick and unmounting it again, flushed, before anyone pulls it (through
//! `oasis_host::mount`).
//!
//! The filesystem's kernel module (vfat, ext4, iso9660) must be loaded: the boot supervisor
//! loads them, since the initramfs has no modprobe for the kernel to call.

use std::path::{Path, PathBuf};

use oasis_host::mount::MsFlags;

use super::devices::Stick;
use super::label::FsType;

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot make the mount point {path}")]
    MountPoint { path: PathBuf, source: std::io::Error },
    #[error("cannot mount {device} ({fs}) on {target}{hint}")]
    Mount { device: PathBuf, fs: FsType, target: PathBuf, source: std::io::Error, hint: &'static str },
    #[error("cannot unmount {target}; do not pull the stick yet, its report may be incomplete")]
    Unmount { target: PathBuf, source: std::io::Error },
}

/// A mounted stick; unmounted (flushed first) when dropped or by [`Mounted::unmount`], which
/// reports a failure.
#[derive(Debug)]
pub struct Mounted {
    stick: Stick,
    target: PathBuf,
    mounted: bool,
    /// Whether [`mount`] made the mount point (and so removes it again).
    made_target: bool,
}

/// Mounts `stick` on `target` (created if missing): without devices, set-uid or executables;
/// read-only for ISO 9660, which then takes no report.
pub fn mount(stick: &Stick, target: &Path) -> Result<Mounted, MountError> {
    let made_target = !target.exists();
    std::fs::create_dir_all(target).map_err(|source| MountError::MountPoint { path: target.into(), source })?;
    let fail = |source: std::io::Error| {
        let hint = match source.raw_os_error() {
            Some(libc::ENODEV) => ": the kernel has no driver for this filesystem (load its module)",
            Some(libc::EINVAL) | Some(libc::EUCLEAN) => {
                ": the filesystem is damaged; check it on another computer or format it again"
            }
            Some(libc::ENOENT) | Some(libc::ENXIO) | Some(libc::ENOMEDIUM) => ": the stick is gone",
            _ => "",
        };
        MountError::Mount { device: stick.device.clone(), fs: stick.fs, target: target.into(), source, hint }
    };
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if stick.fs.read_only() {
        flags |= MsFlags::MS_RDONLY;
    }
    // vfat: write metadata out early, for sticks pulled without warning.
    let options = if stick.fs == FsType::Vfat { "flush" } else { "" };
    if let Err(source) = oasis_host::mount::mount(&stick.device, target, stick.fs.mount_type(), flags, options) {
        let err = fail(source);
        if made_target {
            let _ = std::fs::remove_dir(target);
        }
        return Err(err);
    }
    tracing::info!(device = %stick.device.display(), fs = %stick.fs, target = %target.display(), "USB stick mounted");
    Ok(Mounted { stick: stick.clone(), target: target.into(), mounted: true, made_target })
}

impl Mounted {
    /// Where the stick's root directory is.
    pub fn root(&self) -> &Path {
        &self.target
    }

    pub fn stick(&self) -> &Stick {
        &self.stick
    }

    /// Whether a report can be written to it (not an ISO 9660 volume).
    pub fn writable(&self) -> bool {
        !self.stick.fs.read_only()
    }

    /// Flushes everything written to the stick and unmounts it.
    pub fn unmount(mut self) -> Result<(), MountError> {
        self.mounted = false;
        unmount(&self.target, self.made_target)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.mounted {
            if let Err(e) = unmount(&self.target, self.made_target) {
                tracing::error!("{e}", e = oasis_proto::error_chain(&e));
            }
        }
    }
}

fn unmount(target: &Path, remove_target: bool) -> Result<(), MountError> {
    // Flushed before the unmount: an error writing back is reported rather than lost.
    oasis_host::mount::unmount(target).map_err(|source| MountError::Unmount { target: target.into(), source })?;
    if remove_target {
        let _ = std::fs::remove_dir(target);
    }
    tracing::info!(target = %target.display(), "USB stick unmounted");
    Ok(())
}
