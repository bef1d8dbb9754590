//! UDP generic segmentation offload (Linux `UDP_SEGMENT`, 4.18+): one `send` of a buffer of
//! equal-sized DATA packets leaves as that many datagrams, split by the kernel or the NIC. It
//! cuts a window of sends to one system call. This is the crate's only raw socket option.

use std::io;
use std::os::fd::AsRawFd;

/// Most segments the kernel takes in one send (`UDP_MAX_SEGMENTS`).
pub const MAX_SEGMENTS: usize = 64;

/// Most bytes in one send: a UDP datagram's limit, less room for the headers.
pub const MAX_BYTES: usize = 65_000;

/// Makes every send on `socket` larger than `segment` leave as datagrams of `segment` bytes
/// (the last may be shorter). Fails on kernels or sockets without support.
pub fn enable(socket: &impl AsRawFd, segment: u16) -> io::Result<()> {
    let value = libc::c_int::from(segment);
    // SAFETY: setsockopt reads exactly `size_of::<c_int>()` bytes from a pointer to `value`, which
    // lives until the call returns; the descriptor belongs to `socket`, borrowed for the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
