//! The raw syscalls and ioctls the agent and the appliance make, each `unsafe` with its SAFETY
//! comment; the rest go through `nix`.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Asks the kernel to re-read the partition table of the disk open as `disk` (`BLKRRPART`).
pub fn reread_partitions(disk: &File) -> io::Result<()> {
    const BLKRRPART: libc::c_ulong = 0x125F;
    // SAFETY: BLKRRPART takes no argument; the descriptor is open for the duration of the call.
    let rc = unsafe { libc::ioctl(disk.as_raw_fd(), BLKRRPART as _) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The bytes an unprivileged writer may still use on the filesystem holding `path` (statvfs(3):
/// available blocks times the fragment size).
pub fn available_bytes(path: &Path) -> io::Result<u64> {
    let stats = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
    Ok(stats.blocks_available() * stats.fragment_size())
}

/// Gives `file` its first `len` bytes as real blocks (fallocate(2), mode 0); the filesystem's
/// `EOPNOTSUPP` is returned as it is, for the caller to fall back.
pub fn allocate(file: &File, len: u64) -> io::Result<()> {
    let len = i64::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    nix::fcntl::fallocate(file, nix::fcntl::FallocateFlags::empty(), 0, len).map_err(io::Error::from)
}

/// This process's descriptor limit (`RLIMIT_NOFILE`): soft, hard.
pub fn nofile_limit() -> io::Result<(u64, u64)> {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).map_err(io::Error::from)
}

/// Sets this process's descriptor limit (`RLIMIT_NOFILE`); raising the hard limit needs root.
pub fn set_nofile_limit(soft: u64, hard: u64) -> io::Result<()> {
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, soft, hard).map_err(io::Error::from)
}

/// Sends SIGTERM to process `pid`.
pub fn terminate(pid: u32) -> io::Result<()> {
    let pid = nix::unistd::Pid::from_raw(pid as libc::pid_t);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).map_err(io::Error::from)
}

/// What [`sync_and_reboot`] does after syncing.
pub use nix::sys::reboot::RebootMode;

/// Syncs every filesystem, then reboots or powers off (needs `CAP_SYS_BOOT`). Returns only when
/// the kernel refused.
pub fn sync_and_reboot(how: RebootMode) -> io::Error {
    nix::unistd::sync();
    match nix::sys::reboot::reboot(how) {
        Err(e) => io::Error::from(e),
        Ok(never) => match never {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rereading_partitions_of_a_plain_file_is_refused_not_ignored() {
        let file = tempfile::tempfile().unwrap();
        assert_eq!(reread_partitions(&file).unwrap_err().raw_os_error(), Some(libc::ENOTTY));
    }

    #[test]
    fn space_allocation_and_limits_answer() {
        let dir = tempfile::tempdir().unwrap();
        assert!(available_bytes(dir.path()).unwrap() > 0);
        assert!(available_bytes(&dir.path().join("missing")).is_err());
        let file = tempfile::tempfile_in(dir.path()).unwrap();
        match allocate(&file, 1 << 20) {
            Ok(()) => assert_eq!(file.metadata().unwrap().len(), 1 << 20),
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP), "{e}"),
        }
        let (soft, hard) = nofile_limit().unwrap();
        assert!(soft <= hard);
        set_nofile_limit(soft, hard).unwrap();
    }

    #[test]
    fn terminate_reaches_a_real_process() {
        let mut child = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        terminate(child.id()).unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGTERM));
    }
}
