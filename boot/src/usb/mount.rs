//! Mounting a stick and unmounting it again, flushed, before anyone pulls it: the only raw
//! syscalls of the USB module (mount(2), umount2(2), syncfs(2)).
//!
//! The filesystem's kernel module (vfat, ext4, iso9660) must be loaded: the boot supervisor
//! loads them, since the initramfs has no modprobe for the kernel to call.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

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

fn c_path(path: &Path) -> std::io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "a path with a NUL byte"))
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
    let device = c_path(&stick.device).map_err(fail)?;
    let dir = c_path(target).map_err(fail)?;
    let fstype = CString::new(stick.fs.mount_type()).expect("no NUL in a type name");
    let mut flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    if stick.fs.read_only() {
        flags |= libc::MS_RDONLY;
    }
    // vfat: write metadata out early, for sticks pulled without warning.
    let options = CString::new(if stick.fs == FsType::Vfat { "flush" } else { "" }).expect("no NUL");
    // SAFETY: every pointer is a NUL-terminated string that outlives the call.
    let rc = unsafe { libc::mount(device.as_ptr(), dir.as_ptr(), fstype.as_ptr(), flags, options.as_ptr().cast()) };
    if rc != 0 {
        let err = fail(std::io::Error::last_os_error());
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
    let fail = |source| MountError::Unmount { target: target.into(), source };
    // syncfs before umount: an error writing back is reported here rather than lost.
    let dir = std::fs::File::open(target).map_err(fail)?;
    // SAFETY: the descriptor is open for the duration of the call.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(fail(std::io::Error::last_os_error()));
    }
    drop(dir);
    let path = c_path(target).map_err(fail)?;
    // SAFETY: a NUL-terminated path that outlives the call.
    if unsafe { libc::umount2(path.as_ptr(), 0) } != 0 {
        return Err(fail(std::io::Error::last_os_error()));
    }
    if remove_target {
        let _ = std::fs::remove_dir(target);
    }
    tracing::info!(target = %target.display(), "USB stick unmounted");
    Ok(())
}
