//! Loading a kernel to jump into without the firmware: `kexec_file_load(2)`, the one raw
//! syscall, and the reboot that starts it.
//!
//! The kernel checks the image itself (format, and its signature where the running kernel
//! demands one), so a file that is not a bootable kernel is refused here, not at the jump.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Loads `kernel`, with `initrd` if given, and the kernel command line `cmdline`, as the image
/// the next `reboot(RB_KEXEC)` jumps into (needs `CAP_SYS_BOOT`). A command line holding a NUL
/// byte is refused with `InvalidInput` before the kernel sees it.
pub fn load(kernel: &File, initrd: Option<&File>, cmdline: &str) -> io::Result<()> {
    let cmdline = CString::new(cmdline).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let bytes = cmdline.as_bytes_with_nul();
    let (initrd_fd, flags) = match initrd {
        Some(initrd) => (initrd.as_raw_fd(), 0),
        None => (-1, libc::KEXEC_FILE_NO_INITRAMFS),
    };
    // SAFETY: kexec_file_load(kernel_fd, initrd_fd, cmdline_len, cmdline, flags) reads the two
    // descriptors, open for the duration of the call, and `cmdline_len` bytes at `cmdline`,
    // which is a live NUL-terminated buffer of exactly that length; it writes no user memory.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_kexec_file_load,
            kernel.as_raw_fd(),
            initrd_fd,
            bytes.len() as libc::c_ulong,
            bytes.as_ptr(),
            flags as libc::c_ulong,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Syncs every filesystem and jumps into the kernel [`load`] loaded. Returns only when the
/// kernel refused (nothing loaded, or no `CAP_SYS_BOOT`).
pub fn sync_and_jump() -> io::Error {
    crate::sys::sync_and_reboot(crate::sys::RebootMode::RB_KEXEC)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn a_file_that_is_not_a_kernel_is_refused() {
        // Unprivileged: EPERM; with CAP_SYS_BOOT the kernel reads it and refuses its format. Never
        // loaded either way, so nothing can jump into it.
        let mut kernel = tempfile::tempfile().unwrap();
        kernel.write_all(b"not a kernel image\n").unwrap();
        let initrd = tempfile::tempfile().unwrap();
        let error = load(&kernel, Some(&initrd), "console=ttyS0").unwrap_err();
        assert!(
            [libc::EPERM, libc::ENOEXEC, libc::EINVAL, libc::ENOSYS, libc::EBADMSG]
                .contains(&error.raw_os_error().unwrap()),
            "{error}"
        );
        assert_eq!(load(&kernel, None, "a\0b").unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }
}
