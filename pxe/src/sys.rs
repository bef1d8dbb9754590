// The ARP and reactor helpers serve the DHCP server only; boot_root uses the rest.
#![cfg_attr(not(feature = "serve"), allow(dead_code))]

//! The raw system calls pxe needs and the standard library lacks: a packet socket for ARP, and
//! opening files beneath a directory descriptor without following symlinks (`openat2`, `openat`).
//! Every `unsafe` block of the crate lives here, except the one `setsockopt` that turns on UDP
//! segmentation offload, beside its use in `tftp::gso`.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

const ETH_P_ARP: u16 = 0x0806;

/// The kernel's index for an interface name.
pub fn interface_index(name: &str) -> io::Result<u32> {
    let c_name = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in interface name"))?;
    // SAFETY: `c_name` is a valid NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(index)
}

fn link_address(ifindex: u32, mac: [u8; 6]) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = ETH_P_ARP.to_be();
    addr.sll_ifindex = ifindex as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&mac);
    addr
}

/// A non-blocking `AF_PACKET`/`SOCK_DGRAM` socket that sends and receives ARP payloads (the
/// kernel adds and strips the Ethernet header) on one interface.
pub fn arp_socket(ifindex: u32) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_ARP.to_be()),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let addr = link_address(ifindex, [0; 6]);
    // SAFETY: `addr` is a valid sockaddr_ll and the length passed is its size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // A packet socket also sees the frames this host sends, our own probes among them: one
    // wasted wakeup per probe. Kernels before 4.20 lack the option; the parser ignores our
    // probes anyway (sender address 0.0.0.0), so failing here costs only those wakeups.
    let one: libc::c_int = 1;
    // SAFETY: `one` is a valid c_int and the length passed is its size.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_IGNORE_OUTGOING,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    Ok(fd)
}

/// Sends one ARP payload to the Ethernet broadcast address.
pub fn arp_broadcast(fd: &OwnedFd, ifindex: u32, payload: &[u8]) -> io::Result<()> {
    let addr = link_address(ifindex, [0xff; 6]);
    // SAFETY: `payload` is valid for its length, `addr` is a valid sockaddr_ll of the size given.
    let rc = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            payload.as_ptr().cast(),
            payload.len(),
            0,
            (&addr as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one ARP payload; `WouldBlock` when none is waiting.
pub fn arp_receive(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Registers a socket that owns its descriptor with the tokio reactor.
#[cfg(feature = "serve")]
pub fn register<T: AsRawFd + IntoOwned>(socket: T) -> io::Result<tokio::io::unix::AsyncFd<T>> {
    // SAFETY: `T: IntoOwned` is implemented only for types that own their descriptor, so it stays
    // open and unchanged until the AsyncFd (which then owns `socket`) is dropped.
    unsafe { tokio::io::unix::AsyncFd::register(socket) }.map_err(|e| e.into_parts().1)
}

/// Marks types that own their file descriptor outright.
pub trait IntoOwned {}
impl IntoOwned for OwnedFd {}
#[cfg(feature = "serve")]
impl IntoOwned for socket2::Socket {}

/// `openat2(2)` of the relative `name` beneath the directory `dir`, with `flags` (plus
/// `O_CLOEXEC`). The kernel resolves every component under `dir` and fails with `ELOOP` at any
/// symlink on the way (`RESOLVE_NO_SYMLINKS`, `RESOLVE_NO_MAGICLINKS`) and with `EXDEV` if
/// resolution would leave `dir` (`RESOLVE_BENEATH`), so nothing swapped in meanwhile can lead
/// the open elsewhere. `ENOSYS` on kernels before 5.6.
pub fn openat2_beneath(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: open_how is plain old data (three integers); all-zero is a valid value. It is
    // #[non_exhaustive] in libc, so it is built this way rather than with a literal.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: `name` is NUL-terminated and outlives the call, `how` is a valid open_how and the
    // size passed is its size, `dir` is an open descriptor borrowed for the call. The kernel
    // writes nothing back.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            name.as_ptr(),
            &how as *const libc::open_how,
            size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat2 returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `openat(2)` of the single path component `name` in the directory `dir`, with `flags` plus
/// `O_NOFOLLOW | O_CLOEXEC`: a symlink is not followed (`ELOOP`; `ENOTDIR` with `O_DIRECTORY`;
/// with `O_PATH` and without `O_DIRECTORY`, the symlink itself is opened).
pub fn openat_nofollow(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated and outlives the call, `dir` is an open descriptor
    // borrowed for the call.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Swaps two directory entries atomically (`renameat2(RENAME_EXCHANGE)`): for tests that race a
/// directory against a symlink.
#[cfg(test)]
pub fn rename_exchange(a: &std::path::Path, b: &std::path::Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = |p: &std::path::Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
    };
    let (a, b) = (c(a)?, c(b)?);
    // SAFETY: both paths are NUL-terminated and outlive the call.
    let rc = unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_EXCHANGE) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
