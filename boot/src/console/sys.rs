//! The system calls the console needs and the standard library lacks: terminal settings and the
//! interfaces' addresses. Every `unsafe` block of the console lives here.

use std::ffi::CStr;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Puts a terminal in line mode: canonical input with echo, CR read as NL, NL written as CRNL.
/// With `baud`, also sets that speed and 8N1 without flow control, for a serial port.
pub fn set_line_mode(fd: BorrowedFd<'_>, baud: Option<u32>) -> io::Result<()> {
    // SAFETY: termios is plain old data; all-zero is a valid value, overwritten by tcgetattr.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is an open descriptor for the duration of the call and `t` is a valid termios.
    if unsafe { libc::tcgetattr(fd.as_raw_fd(), &mut t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    t.c_lflag |= libc::ICANON | libc::ECHO | libc::ECHOE | libc::ISIG;
    t.c_iflag |= libc::ICRNL;
    t.c_iflag &= !(libc::IXON | libc::IXOFF | libc::INLCR | libc::IGNCR);
    t.c_oflag |= libc::OPOST | libc::ONLCR;
    if let Some(baud) = baud {
        let speed = match baud {
            9600 => libc::B9600,
            19200 => libc::B19200,
            38400 => libc::B38400,
            57600 => libc::B57600,
            115200 => libc::B115200,
            other => return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("unsupported speed {other}"))),
        };
        t.c_cflag &= !(libc::CSIZE | libc::PARENB | libc::CSTOPB | libc::CRTSCTS);
        t.c_cflag |= libc::CS8 | libc::CREAD | libc::CLOCAL;
        // SAFETY: `t` is a valid termios initialised by tcgetattr.
        unsafe {
            libc::cfsetispeed(&mut t, speed);
            libc::cfsetospeed(&mut t, speed);
        }
    }
    // SAFETY: `fd` is open and `t` is a valid termios.
    if unsafe { libc::tcsetattr(fd.as_raw_fd(), libc::TCSANOW, &t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Every IPv4 address of this network namespace: interface name, address, prefix length.
pub fn ipv4_addresses() -> io::Result<Vec<(String, Ipv4Addr, u8)>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head to `list`; checked before use, freed below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: `cursor` is a non-null node of the list getifaddrs returned, not yet freed.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        if entry.ifa_addr.is_null() || entry.ifa_netmask.is_null() {
            continue;
        }
        // SAFETY: ifa_addr is non-null and points to a sockaddr of at least the family field.
        let family = unsafe { (*entry.ifa_addr).sa_family };
        if i32::from(family) != libc::AF_INET {
            continue;
        }
        // SAFETY: for AF_INET, ifa_addr and ifa_netmask point to sockaddr_in structures.
        let (addr, mask) = unsafe {
            (
                (*(entry.ifa_addr as *const libc::sockaddr_in)).sin_addr.s_addr,
                (*(entry.ifa_netmask as *const libc::sockaddr_in)).sin_addr.s_addr,
            )
        };
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { CStr::from_ptr(entry.ifa_name) }.to_string_lossy().to_string();
        out.push((name, Ipv4Addr::from(u32::from_be(addr)), u32::from_be(mask).leading_ones() as u8));
    }
    // SAFETY: `list` came from getifaddrs and is freed once; nothing borrowed from it remains.
    unsafe { libc::freeifaddrs(list) };
    Ok(out)
}

/// A new pseudo-terminal: the controlling side and the path of the terminal side.
#[cfg(test)]
pub fn open_pty() -> io::Result<(std::fs::File, std::path::PathBuf)> {
    use std::os::fd::FromRawFd;
    // SAFETY: posix_openpt with constant flags; the result is checked.
    let fd = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let master = unsafe { std::fs::File::from_raw_fd(fd) };
    // SAFETY: `fd` is an open pseudo-terminal master.
    if unsafe { libc::grantpt(fd) } != 0 || unsafe { libc::unlockpt(fd) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: `name` is writable for its whole length, which is passed.
    if unsafe { libc::ptsname_r(fd, name.as_mut_ptr(), name.len()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: ptsname_r wrote a NUL-terminated string into `name`.
    let path = unsafe { CStr::from_ptr(name.as_ptr()) }.to_string_lossy().to_string();
    Ok((master, path.into()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_has_its_address() {
        let all = super::ipv4_addresses().unwrap();
        assert!(all.iter().any(|(name, addr, prefix)| name == "lo" && addr.is_loopback() && *prefix == 8), "{all:?}");
    }
}
