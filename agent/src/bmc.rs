//! The machine's own BMC, read through the kernel's IPMI driver: `ipmi_si` talks to the BMC's
//! system interface (KCS, SMIC or BT, found from SMBIOS type 38 or ACPI) and `ipmi_devintf`
//! gives it to user space as `/dev/ipmi0`. The system interface needs no credentials, which is
//! how an agent learns where a BMC answers on the network before anyone has configured it.
//!
//! Three requests, each one ioctl out and one answer back (`IPMICTL_SEND_COMMAND`, then
//! `poll` and `IPMICTL_RECEIVE_MSG_TRUNC`): Get Device ID, Get Channel Info for each channel
//! until an 802.3 LAN one, and Get LAN Configuration Parameters for its address, the address's
//! source and its MAC. The answers are decoded by pure functions (unit-tested on bytes); reading
//! never fails as a whole: what could not be read is said in [`LocalBmc::error`].

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use oasis_proto::LocalBmc;

mod user;
pub use user::{BmcUsers, SystemInterface};

/// Where the kernel puts the first IPMI interface.
pub const DEVICE: &str = "/dev/ipmi0";
/// How long `ipmi_si` may take to bring the interface up after it is loaded.
const APPEAR_WITHIN: Duration = Duration::from_secs(5);
/// How long one request may wait for the BMC's answer (a KCS interface is slow, not that slow).
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// The channels a BMC may put its LAN interface on (0 is IPMB, 14 and 15 are special).
const CHANNELS: std::ops::RangeInclusive<u8> = 1..=11;
/// Channel medium type 802.3 LAN (IPMI 2.0, table 6-3).
const MEDIUM_LAN: u8 = 0x04;

const NETFN_APP: u8 = 0x06;
const NETFN_TRANSPORT: u8 = 0x0c;
const GET_DEVICE_ID: u8 = 0x01;
const GET_CHANNEL_INFO: u8 = 0x42;
const GET_LAN_CONFIG: u8 = 0x02;
const LAN_IP_ADDRESS: u8 = 3;
const LAN_IP_SOURCE: u8 = 4;
const LAN_MAC_ADDRESS: u8 = 5;

/// Whether SMBIOS lists an IPMI device (a type 38 record): the machine has a BMC whose system
/// interface the kernel can drive.
pub fn listed_in_smbios(sys: &Path) -> bool {
    sys.join("firmware/dmi/entries/38-0").exists()
}

/// Reads the BMC behind `device` (waiting a little for it to appear when `sys` says there is
/// one); `None` when the machine has none.
pub fn read(sys: &Path, device: &Path) -> Option<LocalBmc> {
    if !listed_in_smbios(sys) && !device.exists() {
        return None;
    }
    let deadline = Instant::now() + APPEAR_WITHIN;
    while !device.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let interface = match Interface::open(device) {
        Ok(interface) => interface,
        Err(e) => {
            let error = format!("SMBIOS lists a BMC but {} cannot be opened: {e}", device.display());
            return Some(LocalBmc { error: Some(error), ..LocalBmc::default() });
        }
    };
    Some(discover(&mut |netfn, cmd, data| interface.request(netfn, cmd, data)))
}

/// One request to a BMC: netfn, command and data to the answer's bytes, completion code first.
pub type Request<'a> = dyn FnMut(u8, u8, &[u8]) -> io::Result<Vec<u8>> + 'a;

/// What the BMC answers to the three requests, through `request`.
pub fn discover(request: &mut Request<'_>) -> LocalBmc {
    let mut bmc = LocalBmc::default();
    let mut errors = vec![];
    match request(NETFN_APP, GET_DEVICE_ID, &[]).and_then(|a| device_id(&a)) {
        Ok((version, manufacturer, firmware)) => {
            (bmc.ipmi_version, bmc.manufacturer, bmc.firmware) = (version, manufacturer, firmware)
        }
        Err(e) => errors.push(format!("Get Device ID: {e}")),
    }
    bmc.lan_channel = CHANNELS.into_iter().find(|ch| {
        request(NETFN_APP, GET_CHANNEL_INFO, &[*ch])
            .and_then(|a| completed(&a).map(|d| d.get(1) == Some(&MEDIUM_LAN)))
            .unwrap_or(false)
    });
    let Some(channel) = bmc.lan_channel else {
        errors.push("no LAN channel (802.3) among channels 1-11".into());
        bmc.error = Some(errors.join("; "));
        return bmc;
    };
    let mut parameter = |selector: u8| {
        request(NETFN_TRANSPORT, GET_LAN_CONFIG, &[channel, selector, 0, 0]).and_then(|a| lan_parameter(&a))
    };
    match parameter(LAN_IP_ADDRESS) {
        Ok(data) if data.len() >= 4 => {
            let address = std::net::Ipv4Addr::new(data[0], data[1], data[2], data[3]);
            bmc.address = (!address.is_unspecified()).then_some(address);
        }
        Ok(data) => errors.push(format!("its LAN address is {} bytes, not 4", data.len())),
        Err(e) => errors.push(format!("its LAN address: {e}")),
    }
    match parameter(LAN_IP_SOURCE) {
        Ok(data) if !data.is_empty() => bmc.address_source = Some(address_source(data[0]).to_string()),
        Ok(_) => errors.push("its address source is empty".into()),
        Err(e) => errors.push(format!("its address source: {e}")),
    }
    match parameter(LAN_MAC_ADDRESS) {
        Ok(data) if data.len() >= 6 => {
            let mac: Vec<String> = data[..6].iter().map(|b| format!("{b:02x}")).collect();
            bmc.mac = data[..6].iter().any(|b| *b != 0).then(|| mac.join(":"));
        }
        Ok(data) => errors.push(format!("its MAC is {} bytes, not 6", data.len())),
        Err(e) => errors.push(format!("its MAC: {e}")),
    }
    bmc.error = (!errors.is_empty()).then(|| errors.join("; "));
    bmc
}

/// An answer's data after its completion code, which must be 0.
fn completed(answer: &[u8]) -> io::Result<&[u8]> {
    match answer.split_first() {
        None => Err(invalid("an empty answer".into())),
        Some((0, data)) => Ok(data),
        Some((code, _)) => Err(invalid(format!("the BMC answered completion code {code:#04x}"))),
    }
}

/// Get Device ID's answer (IPMI 2.0, table 20-2): the IPMI version (its fifth byte: major in
/// the low nibble, minor in the high one, so `0x02` is 2.0), the manufacturer (3 bytes,
/// little-endian, 20 bits) and the firmware revision (major in 7 bits, minor in BCD).
fn device_id(answer: &[u8]) -> io::Result<(String, u32, String)> {
    let data = completed(answer)?;
    if data.len() < 9 {
        return Err(invalid(format!("a Get Device ID answer of {} bytes, not at least 9", data.len())));
    }
    let version = format!("{}.{}", data[4] & 0x0f, data[4] >> 4);
    let manufacturer = u32::from_le_bytes([data[6], data[7], data[8], 0]) & 0x000f_ffff;
    let firmware = format!("{}.{:x}", data[2] & 0x7f, data[3]);
    Ok((version, manufacturer, firmware))
}

/// Get LAN Configuration Parameters' answer: its data after the parameter revision byte.
fn lan_parameter(answer: &[u8]) -> io::Result<Vec<u8>> {
    let data = completed(answer)?;
    data.split_first().map(|(_revision, rest)| rest.to_vec()).ok_or_else(|| invalid("no parameter revision".into()))
}

fn address_source(byte: u8) -> &'static str {
    match byte & 0x0f {
        1 => "static",
        2 => "dhcp",
        3 => "bios",
        4 => "other",
        _ => "unspecified",
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// The kernel's `struct ipmi_system_interface_addr`.
#[repr(C)]
struct SystemInterfaceAddr {
    addr_type: libc::c_int,
    channel: libc::c_short,
    lun: libc::c_uchar,
}

/// The kernel's `struct ipmi_msg`.
#[repr(C)]
struct Msg {
    netfn: libc::c_uchar,
    cmd: libc::c_uchar,
    data_len: libc::c_ushort,
    data: *mut libc::c_uchar,
}

/// The kernel's `struct ipmi_req`.
#[repr(C)]
struct Req {
    addr: *mut libc::c_uchar,
    addr_len: libc::c_uint,
    msgid: libc::c_long,
    msg: Msg,
}

/// The kernel's `struct ipmi_recv`.
#[repr(C)]
struct Recv {
    recv_type: libc::c_int,
    addr: *mut libc::c_uchar,
    addr_len: libc::c_uint,
    msgid: libc::c_long,
    msg: Msg,
}

const IPMI_SYSTEM_INTERFACE_ADDR_TYPE: libc::c_int = 0x0c;
const IPMI_BMC_CHANNEL: libc::c_short = 0x0f;
const IPMI_RESPONSE_RECV_TYPE: libc::c_int = 1;

/// `_IOC(dir, 'i', nr, size)` as `linux/ipmi.h` builds its requests.
const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | ((b'i' as u64) << 8) | nr
}
/// `_IOR('i', 13, struct ipmi_req)`.
const IPMICTL_SEND_COMMAND: u64 = ioc(2, 13, size_of::<Req>());
/// `_IOWR('i', 11, struct ipmi_recv)`.
const IPMICTL_RECEIVE_MSG_TRUNC: u64 = ioc(3, 11, size_of::<Recv>());

/// An open `/dev/ipmi0`.
struct Interface {
    file: File,
}

impl Interface {
    fn open(device: &Path) -> io::Result<Interface> {
        Ok(Interface { file: std::fs::OpenOptions::new().read(true).write(true).open(device)? })
    }

    /// One request to the BMC and its answer (completion code first).
    fn request(&self, netfn: u8, cmd: u8, data: &[u8]) -> io::Result<Vec<u8>> {
        let fd = self.file.as_raw_fd();
        let mut addr =
            SystemInterfaceAddr { addr_type: IPMI_SYSTEM_INTERFACE_ADDR_TYPE, channel: IPMI_BMC_CHANNEL, lun: 0 };
        let mut out = data.to_vec();
        let mut req = Req {
            addr: (&mut addr as *mut SystemInterfaceAddr).cast(),
            addr_len: size_of::<SystemInterfaceAddr>() as libc::c_uint,
            msgid: libc::c_long::from(cmd),
            msg: Msg { netfn, cmd, data_len: out.len() as libc::c_ushort, data: out.as_mut_ptr() },
        };
        // SAFETY: `req` and the buffers it points to live across the call; the kernel copies them.
        if unsafe { libc::ioctl(fd, IPMICTL_SEND_COMMAND as libc::c_ulong, &mut req) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let deadline = Instant::now() + ANSWER_WITHIN;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, format!("no answer within {ANSWER_WITHIN:?}")));
            }
            let mut poll = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
            // SAFETY: one pollfd, valid for the call.
            let ready = unsafe { libc::poll(&mut poll, 1, left.as_millis().min(i32::MAX as u128) as libc::c_int) };
            if ready < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if ready == 0 {
                continue;
            }
            let mut answer_addr = SystemInterfaceAddr { addr_type: 0, channel: 0, lun: 0 };
            let mut answer = vec![0u8; 256];
            let mut recv = Recv {
                recv_type: 0,
                addr: (&mut answer_addr as *mut SystemInterfaceAddr).cast(),
                addr_len: size_of::<SystemInterfaceAddr>() as libc::c_uint,
                msgid: 0,
                msg: Msg { netfn: 0, cmd: 0, data_len: answer.len() as libc::c_ushort, data: answer.as_mut_ptr() },
            };
            // SAFETY: `recv` and its buffers live across the call; the kernel writes at most
            // `data_len` bytes into `answer` and `addr_len` into `answer_addr`.
            if unsafe { libc::ioctl(fd, IPMICTL_RECEIVE_MSG_TRUNC as libc::c_ulong, &mut recv) } < 0 {
                let e = io::Error::last_os_error();
                // EMSGSIZE: truncated, still an answer.
                if e.raw_os_error() != Some(libc::EMSGSIZE) {
                    return Err(e);
                }
            }
            // An answer to another request (or an event) is not ours: wait for ours.
            if recv.recv_type != IPMI_RESPONSE_RECV_TYPE || recv.msgid != libc::c_long::from(cmd) || recv.msg.cmd != cmd
            {
                continue;
            }
            answer.truncate(usize::from(recv.msg.data_len));
            return Ok(answer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BMC as ipmi_sim answers (its device id, LAN on channel 1), with `lan` as its LAN
    /// parameters by selector.
    fn bmc(lan: &'static [(u8, &'static [u8])]) -> impl FnMut(u8, u8, &[u8]) -> io::Result<Vec<u8>> {
        move |netfn, cmd, data| match (netfn, cmd) {
            (NETFN_APP, GET_DEVICE_ID) => Ok(vec![0, 0x23, 0x09, 0x09, 0x08, 0x02, 0x9f, 0x91, 0x12, 0x00, 0x02, 0x0f]),
            (NETFN_APP, GET_CHANNEL_INFO) if data == [1] => Ok(vec![0, 1, MEDIUM_LAN, 0x01, 0x80, 0xf2, 0x1b, 0, 0, 0]),
            (NETFN_APP, GET_CHANNEL_INFO) => Ok(vec![0xcc]),
            (NETFN_TRANSPORT, GET_LAN_CONFIG) => match lan.iter().find(|(selector, _)| *selector == data[1]) {
                Some((_, bytes)) => Ok([&[0u8, 0x11][..], bytes].concat()),
                None => Ok(vec![0x80]),
            },
            _ => Ok(vec![0xc1]),
        }
    }

    #[test]
    fn a_configured_bmc_is_read_whole() {
        let found = discover(&mut bmc(&[(3, &[10, 0, 2, 7]), (4, &[0x01]), (5, &[0x52, 0x54, 0, 0x0b, 0, 7])]));
        assert_eq!(
            found,
            LocalBmc {
                ipmi_version: "2.0".into(),
                manufacturer: 0x1291,
                firmware: "9.8".into(),
                lan_channel: Some(1),
                address: Some(std::net::Ipv4Addr::new(10, 0, 2, 7)),
                address_source: Some("static".into()),
                mac: Some("52:54:00:0b:00:07".into()),
                error: None,
            }
        );
    }

    #[test]
    fn an_unconfigured_bmc_has_no_address_and_what_failed_is_said() {
        let found = discover(&mut bmc(&[(3, &[0, 0, 0, 0]), (4, &[0x00])]));
        assert_eq!((found.address, found.mac.as_deref()), (None, None));
        assert_eq!(found.address_source.as_deref(), Some("unspecified"));
        assert!(
            found.error.as_deref().is_some_and(|e| e.contains("its MAC: the BMC answered completion code 0x80")),
            "{found:?}"
        );
        let mut silent = |_: u8, _: u8, _: &[u8]| -> io::Result<Vec<u8>> {
            Err(io::Error::new(io::ErrorKind::TimedOut, "no answer"))
        };
        let found = discover(&mut silent);
        assert_eq!(found.lan_channel, None);
        assert!(found
            .error
            .as_deref()
            .is_some_and(|e| e.contains("Get Device ID: no answer") && e.contains("no LAN channel")));
    }

    #[test]
    fn short_and_garbled_answers_are_errors_not_panics() {
        assert!(device_id(&[]).is_err() && device_id(&[0, 1, 2]).is_err());
        assert!(lan_parameter(&[0]).is_err());
        assert!(completed(&[0xd5]).is_err());
    }

    #[test]
    fn the_ioctl_requests_are_those_of_linux_ipmi_h() {
        assert_eq!(IPMICTL_SEND_COMMAND, 0x8028_690d);
        assert_eq!(IPMICTL_RECEIVE_MSG_TRUNC, 0xc030_690b);
    }
}
