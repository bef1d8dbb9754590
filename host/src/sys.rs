//! The raw syscalls and ioctls the agent and the appliance make, each `unsafe` with its SAFETY
//! comment; the rest go through `nix`.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

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
    fn terminate_reaches_a_real_process() {
        let mut child = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        terminate(child.id()).unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGTERM));
    }
}
