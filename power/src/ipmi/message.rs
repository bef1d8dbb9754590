//! IPMI messages as they travel inside an RMCP+ session: the LAN framing (addresses, sequence,
//! two checksums), the few commands power control needs, and completion codes in words.
//!
//! Everything here is pure bytes in, bytes out, so every encoding is unit-tested without a BMC.

use crate::PowerState;

/// The BMC's address on the IPMB, and ours (a remote console's software ID), per the IPMI 2.0
/// spec (section 13.8): every LAN message carries both.
const BMC_ADDRESS: u8 = 0x20;
const CONSOLE_SOFTWARE_ID: u8 = 0x81;

const NETFN_CHASSIS: u8 = 0x00;
const NETFN_APP: u8 = 0x06;

/// One request to the BMC, with the name its errors are told by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    pub netfn: u8,
    pub cmd: u8,
    pub data: Vec<u8>,
    /// The command's name in the spec, for the operator ("Chassis Control").
    pub name: &'static str,
}

/// Privilege levels (spec table 6-1) as the session and RAKP messages carry them.
pub(crate) const PRIVILEGE_OPERATOR: u8 = 0x03;

/// Chassis Control (spec 28.3): power down is a hard off, power cycle an off of at least a second
/// then on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Control {
    Down = 0x00,
    Up = 0x01,
    Cycle = 0x02,
}

/// Raises the session from User (where every session starts) to `level`: chassis control and
/// boot options need Operator (spec 22.18).
pub(crate) fn set_session_privilege(level: u8) -> Request {
    Request { netfn: NETFN_APP, cmd: 0x3B, data: vec![level], name: "Set Session Privilege Level" }
}

/// Ends the session on the BMC, which has few session slots (spec 22.19).
pub(crate) fn close_session(managed_session_id: u32) -> Request {
    Request { netfn: NETFN_APP, cmd: 0x3C, data: managed_session_id.to_le_bytes().to_vec(), name: "Close Session" }
}

pub(crate) fn get_chassis_status() -> Request {
    Request { netfn: NETFN_CHASSIS, cmd: 0x01, data: Vec::new(), name: "Get Chassis Status" }
}

pub(crate) fn chassis_control(control: Control) -> Request {
    Request { netfn: NETFN_CHASSIS, cmd: 0x02, data: vec![control as u8], name: "Chassis Control" }
}

/// The boot flags parameter (spec table 28-14, parameter 5).
const BOOT_FLAGS: u8 = 0x05;
/// Boot flags data 1: bit 7 "flags valid", bit 6 "persistent" (clear: next boot only).
const FLAGS_VALID: u8 = 0x80;
const FLAGS_PERSISTENT: u8 = 0x40;
/// Boot device selector (data 2, bits 5:2) "force PXE".
const DEVICE_PXE: u8 = 0x01;

/// Set System Boot Options, boot flags: valid, next boot only, force PXE (legacy boot type: the
/// EFI bit is left clear, as `ipmitool chassis bootdev pxe` does).
pub(crate) fn set_boot_pxe_once() -> Request {
    Request {
        netfn: NETFN_CHASSIS,
        cmd: 0x08,
        data: vec![BOOT_FLAGS, FLAGS_VALID, DEVICE_PXE << 2, 0, 0, 0],
        name: "Set System Boot Options",
    }
}

/// Get System Boot Options, boot flags (set selector and block selector 0).
pub(crate) fn get_boot_flags() -> Request {
    Request { netfn: NETFN_CHASSIS, cmd: 0x09, data: vec![BOOT_FLAGS, 0, 0], name: "Get System Boot Options" }
}

/// The IPMB checksum: what makes the bytes sum to zero.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)))
}

/// The LAN framing of `request` (spec table 13-8), with request sequence `rq_seq` (6 bits).
pub(crate) fn encode_request(request: &Request, rq_seq: u8) -> Vec<u8> {
    let mut out = vec![BMC_ADDRESS, request.netfn << 2];
    out.push(checksum(&out));
    let body_start = out.len();
    out.extend([CONSOLE_SOFTWARE_ID, (rq_seq & 0x3F) << 2, request.cmd]);
    out.extend(&request.data);
    out.push(checksum(&out[body_start..]));
    out
}

/// What the BMC answered: its completion code and the data after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    pub code: u8,
    pub data: Vec<u8>,
}

/// Checks that `bytes` is the answer to `request` sent with `rq_seq` (addresses, network function,
/// command, sequence, both checksums) and splits off the completion code.
pub(crate) fn decode_response(bytes: &[u8], request: &Request, rq_seq: u8) -> Result<Reply, String> {
    // rqAddr, netFn/LUN, checksum, rsAddr, rqSeq/LUN, cmd, completion code, checksum.
    if bytes.len() < 8 {
        return Err(format!("an IPMI response of {} bytes (at least 8 expected)", bytes.len()));
    }
    if checksum(&bytes[..2]) != bytes[2] || checksum(&bytes[3..bytes.len() - 1]) != bytes[bytes.len() - 1] {
        return Err("an IPMI response whose checksums do not add up".into());
    }
    let (netfn, seq) = (bytes[1] >> 2, bytes[4] >> 2);
    if bytes[0] != CONSOLE_SOFTWARE_ID || bytes[3] != BMC_ADDRESS {
        return Err(format!("an IPMI response between addresses {:#04x} and {:#04x}", bytes[3], bytes[0]));
    }
    if netfn != request.netfn | 1 || bytes[5] != request.cmd || seq != rq_seq & 0x3F {
        return Err(format!(
            "the answer to another request (network function {netfn:#04x}, command {:#04x}, sequence {seq}) instead of {}",
            bytes[5], request.name
        ));
    }
    Ok(Reply { code: bytes[6], data: bytes[7..bytes.len() - 1].to_vec() })
}

/// The power state in a Get Chassis Status answer (spec table 28-3: byte 1 bit 0, "power is on").
pub(crate) fn power_state(data: &[u8]) -> Result<PowerState, String> {
    if data.len() < 3 {
        return Err(format!("a chassis status of {} bytes (at least 3 expected)", data.len()));
    }
    Ok(if data[0] & 0x01 != 0 { PowerState::On } else { PowerState::Off })
}

/// The boot flags a BMC reads back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BootFlags {
    pub valid: bool,
    pub persistent: bool,
    /// The boot device selector (spec table 28-14, data 2 bits 5:2).
    pub device: u8,
}

impl BootFlags {
    /// Whether the next boot (only the next) is from the network. The "valid" bit is not
    /// required: OpenIPMI's `ipmi_sim` always reads it back clear (lanserv/bmc_chassis.c), while a
    /// BMC that drops the request reads back another device.
    pub(crate) fn is_pxe_once(&self) -> bool {
        self.device == DEVICE_PXE && !self.persistent
    }

    /// The flags in words, for an operator told that the BMC ignored the request.
    pub(crate) fn describe(&self) -> String {
        let device = match self.device {
            0x00 => "no override".to_string(),
            0x01 => "PXE".to_string(),
            0x02 => "the default hard disk".to_string(),
            0x05 => "CD/DVD".to_string(),
            0x06 => "BIOS setup".to_string(),
            other => format!("device {other:#x}"),
        };
        let when = if self.persistent { "every boot" } else { "the next boot" };
        let valid = if self.valid { "" } else { ", flags marked not valid" };
        format!("boot from {device} on {when}{valid}")
    }
}

/// The boot flags in a Get System Boot Options answer: parameter version, parameter selector,
/// then five bytes of flags.
pub(crate) fn boot_flags(data: &[u8]) -> Result<BootFlags, String> {
    if data.len() < 7 {
        return Err(format!("boot options of {} bytes (7 expected for the boot flags)", data.len()));
    }
    if data[1] & 0x7F != BOOT_FLAGS {
        return Err(format!("boot option parameter {} instead of the boot flags ({BOOT_FLAGS})", data[1] & 0x7F));
    }
    Ok(BootFlags {
        valid: data[2] & FLAGS_VALID != 0,
        persistent: data[2] & FLAGS_PERSISTENT != 0,
        device: (data[3] >> 2) & 0x0F,
    })
}

/// A completion code in words (spec table 5-2, and the command-specific codes of the commands
/// sent here), so that an operator reads why the BMC refused.
pub(crate) fn completion_words(request: &Request, code: u8) -> String {
    let specific = match (request.netfn, request.cmd, code) {
        (NETFN_APP, 0x3B, 0x80) => Some("that privilege level is not available to this user"),
        (NETFN_APP, 0x3B, 0x81) => Some("that privilege level exceeds the user's or the channel's limit"),
        (NETFN_CHASSIS, 0x08 | 0x09, 0x80) => Some("the boot flags parameter is not supported"),
        (NETFN_CHASSIS, 0x08, 0x81) => Some("another client is setting boot options (set in progress)"),
        (NETFN_CHASSIS, 0x08, 0x82) => Some("the boot flags are read-only"),
        _ => None,
    };
    let words = specific.unwrap_or(match code {
        0xC0 => "the BMC is busy",
        0xC1 => "the BMC does not know this command",
        0xC3 => "the BMC timed out processing it",
        0xC4 => "the BMC is out of space",
        0xC6..=0xC8 => "the BMC rejects the request's length",
        0xC9 => "a parameter is out of range",
        0xCC => "the BMC rejects a field of the request (this BMC may not support it)",
        0xCE => "the BMC could not provide a response",
        0xD1 => "the BMC is updating its firmware",
        0xD2 => "the BMC is initialising",
        0xD3 => "the destination is unavailable",
        0xD4 => "the session's privilege is too low (the user needs operator privilege)",
        0xD5 => "not possible in the chassis's present state",
        0xD6 => "that function is disabled on this BMC",
        0xFF => "an unspecified error in the BMC",
        _ => "an error the IPMI spec leaves to the BMC's maker",
    });
    format!("{} answered completion code {code:#04x}: {words}", request.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_framed_with_both_checksums() {
        // Get Chassis Status, sequence 1: 20 00 e0 | 81 04 01 | 7a (the bytes ipmitool sends).
        assert_eq!(encode_request(&get_chassis_status(), 1), [0x20, 0x00, 0xE0, 0x81, 0x04, 0x01, 0x7A]);
        assert_eq!(
            encode_request(&chassis_control(Control::Cycle), 2),
            [0x20, 0x00, 0xE0, 0x81, 0x08, 0x02, 0x02, 0x73]
        );
        assert_eq!(
            encode_request(&set_boot_pxe_once(), 0x3F),
            [0x20, 0x00, 0xE0, 0x81, 0xFC, 0x08, 0x05, 0x80, 0x04, 0x00, 0x00, 0x00, 0xF2]
        );
        assert_eq!(encode_request(&close_session(0x0403_0201), 0)[6..10], [1, 2, 3, 4]);
    }

    fn response(netfn: u8, seq: u8, cmd: u8, rest: &[u8]) -> Vec<u8> {
        let mut out = vec![0x81, netfn << 2];
        out.push(checksum(&out));
        out.extend([0x20, seq << 2, cmd]);
        out.extend(rest);
        out.push(checksum(&out[3..]));
        out
    }

    #[test]
    fn a_chassis_status_reads_as_on_or_off() {
        let request = get_chassis_status();
        let on = decode_response(&response(0x01, 5, 0x01, &[0x00, 0x01, 0x00, 0x00]), &request, 5).unwrap();
        assert_eq!(on, Reply { code: 0, data: vec![0x01, 0x00, 0x00] });
        assert_eq!(power_state(&on.data).unwrap(), PowerState::On);
        assert_eq!(power_state(&[0x60, 0x10, 0x00]).unwrap(), PowerState::Off);
        assert!(power_state(&[0x01]).unwrap_err().contains("1 bytes"));
    }

    #[test]
    fn answers_to_something_else_or_damaged_are_refused() {
        let request = get_chassis_status();
        let good = response(0x01, 5, 0x01, &[0x00, 0x01, 0x00, 0x00]);
        assert!(decode_response(&good, &request, 6).unwrap_err().contains("another request"));
        assert!(decode_response(&good, &chassis_control(Control::Up), 5).unwrap_err().contains("another request"));
        let mut damaged = good.clone();
        damaged[7] ^= 0x01;
        assert!(decode_response(&damaged, &request, 5).unwrap_err().contains("checksums"));
        assert!(decode_response(&good[..5], &request, 5).unwrap_err().contains("5 bytes"));
        let mut other = response(0x01, 5, 0x01, &[0x00, 0x01, 0x00, 0x00]);
        other[0] = 0x83;
        other[2] = checksum(&other[..2]);
        assert!(decode_response(&other, &request, 5).unwrap_err().contains("addresses"));
    }

    #[test]
    fn a_refusal_keeps_its_completion_code() {
        let reply = decode_response(&response(0x01, 1, 0x02, &[0xD5]), &chassis_control(Control::Cycle), 1);
        assert_eq!(reply.unwrap(), Reply { code: 0xD5, data: vec![] });
        let words = completion_words(&chassis_control(Control::Cycle), 0xD5);
        assert_eq!(words, "Chassis Control answered completion code 0xd5: not possible in the chassis's present state");
        assert!(completion_words(&set_boot_pxe_once(), 0x80).contains("not supported"));
        assert!(completion_words(&set_session_privilege(3), 0x81).contains("limit"));
        assert!(completion_words(&get_chassis_status(), 0x99).contains("maker"));
    }

    #[test]
    fn boot_flags_read_back() {
        // What ipmi_sim answers after "force PXE": valid bit clear, next boot only, PXE.
        let sim = boot_flags(&[0x01, 0x05, 0x00, 0x04, 0x00, 0x00, 0x00]).unwrap();
        assert!(sim.is_pxe_once());
        assert_eq!(sim.describe(), "boot from PXE on the next boot, flags marked not valid");
        let persistent = boot_flags(&[0x01, 0x05, 0xC0, 0x04, 0x00, 0x00, 0x00]).unwrap();
        assert!(!persistent.is_pxe_once());
        assert_eq!(persistent.describe(), "boot from PXE on every boot");
        let disk = boot_flags(&[0x01, 0x05, 0x80, 0x08, 0x00, 0x00, 0x00]).unwrap();
        assert!(!disk.is_pxe_once());
        assert!(boot_flags(&[0x01, 0x04, 0x80, 0x04, 0, 0, 0]).unwrap_err().contains("parameter 4"));
        assert!(boot_flags(&[0x01, 0x05, 0x80]).unwrap_err().contains("3 bytes"));
    }
}
