//! IPMI over LAN: a BMC driven with IPMI 2.0 / RMCP+ sessions, cipher suite 3, as `ipmitool -I
//! lanplus -C 3` does. Each driver call is one session (open, a few commands, close) under one
//! deadline, so nothing is held between calls and a BMC that restarted is simply met anew.
//!
//! The session is written here rather than taken from `ipmi-rs` 0.6.0, whose RMCP+ client was the
//! first choice: on what a BMC sends it can panic (`todo!()` when the Open Session Response picks
//! RAKP-HMAC-MD5, -SHA256 or none, `state.rs`; `unwrap()` on a RAKP message 4 that is not RMCP+,
//! `v2_0/mod.rs`), it accepts the BMC's choice of weaker algorithms (no encryption) without
//! checking it against what was asked, falls back to IPMI 1.5 (MD5 or plain password) when the
//! BMC says it lacks 2.0, truncates a user name over 16 characters and makes one with a non-ASCII
//! character the anonymous user, never closes a session (a BMC has a handful of slots), and
//! neither it nor `ipmi-rs-core` has chassis, session-privilege or close-session commands. Cipher
//! suite 3 needs only six messages and two MACs, built on the RustCrypto crates it also uses.
//!
//! What each power action sends: status is Get Chassis Status; on, off and cycle are Chassis
//! Control power up, power down (a hard off) and power cycle. A power cycle of a machine that is
//! off is refused by many BMCs (IPMI 2.0 spec 28.3: "no action should occur"), so cycle reads the
//! state first and powers an off machine up: either way the machine boots afresh, which is what
//! a cycle is asked for. `pxe_once` sets the boot flags (PXE, next boot only) and reads them back.

mod message;
mod packet;
mod rakp;
mod session;

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::{PowerAction, PowerDriver, PowerError, PowerState};
use message::Control;
use session::{Login, Session};

/// The RMCP port every BMC listens on.
pub const DEFAULT_PORT: u16 = 623;

/// What the protocol is called in errors.
const PROTOCOL: &str = "IPMI 2.0 over LAN (RMCP+)";

/// The most a user name and a password may be in IPMI 2.0 (spec 13.31, 22.29).
const MAX_USER: usize = 16;
const MAX_PASSWORD: usize = 20;

/// Why a session or command failed, before it is told as a [`PowerError`] (in
/// [`IpmiLan::power_error`], the one table).
#[derive(Debug)]
pub(crate) enum Fault {
    /// No answer before the deadline, or the network said nothing listens there.
    Silent,
    /// The BMC does not know the user, or holds another password for it.
    Credentials,
    /// An answer that is not the protocol, or not an answer to what was asked.
    Malformed(String),
    /// The BMC understood and refused (an RMCP+ status or a completion code, in words).
    Refused(String),
    /// Accepted, but reads back as something else.
    NotApplied(String),
}

/// A settings error: what to fix in the BMC's entry.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IpmiConfigError {
    #[error("the BMC address {0:?} is not an address, host name, or either with :port")]
    Address(String),
    #[error("the IPMI user name is {0} bytes: IPMI allows at most 16")]
    UserTooLong(usize),
    #[error("the IPMI password is longer than 20 bytes, the most IPMI 2.0 allows: set a shorter one on the BMC")]
    PasswordTooLong,
    #[error("the IPMI timeout is zero: give each request a deadline of at least a few hundred milliseconds")]
    ZeroTimeout,
}

/// One BMC reached over the LAN with a user and password.
pub struct IpmiLan {
    host: String,
    port: u16,
    user: String,
    password: String,
    timeout: Duration,
}

impl std::fmt::Debug for IpmiLan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpmiLan")
            .field("address", &self.address())
            .field("user", &self.user)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Splits `host`, `host:port`, an IP address, or `[IPv6]:port` into host and port.
fn split_address(address: &str) -> Option<(String, u16)> {
    if let Ok(socket) = address.parse::<SocketAddr>() {
        return Some((socket.ip().to_string(), socket.port()));
    }
    if let Ok(ip) = address.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
        return Some((ip.to_string(), DEFAULT_PORT));
    }
    let (host, port) = match address.rsplit_once(':') {
        Some((host, port)) => (host, port.parse::<u16>().ok().filter(|port| *port != 0)?),
        None => (address, DEFAULT_PORT),
    };
    let name = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.';
    (!host.is_empty() && host.chars().all(name)).then(|| (host.to_string(), port))
}

impl IpmiLan {
    /// A driver for the BMC at `address` (`host` or `host:port`, port 623 by default), where every
    /// call gives up after `timeout`.
    pub fn new(address: &str, user: &str, password: &str, timeout: Duration) -> Result<Self, IpmiConfigError> {
        let (host, port) = split_address(address).ok_or_else(|| IpmiConfigError::Address(address.to_string()))?;
        if user.len() > MAX_USER {
            return Err(IpmiConfigError::UserTooLong(user.len()));
        }
        if password.len() > MAX_PASSWORD {
            return Err(IpmiConfigError::PasswordTooLong);
        }
        if timeout.is_zero() {
            return Err(IpmiConfigError::ZeroTimeout);
        }
        Ok(IpmiLan { host, port, user: user.to_string(), password: password.to_string(), timeout })
    }

    /// The user this driver logs in as.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Runs `work` in a fresh session under one deadline, and closes the session whatever
    /// `work` returned.
    fn in_session<T>(&self, work: impl FnOnce(&mut Session) -> Result<T, Fault>) -> Result<T, Fault> {
        let deadline = Instant::now() + self.timeout;
        // An address that does not resolve cannot answer either.
        let bmc = (self.host.as_str(), self.port).to_socket_addrs().ok().and_then(|mut all| all.next());
        let login = Login {
            user: self.user.as_bytes(),
            password: self.password.as_bytes(),
            privilege: message::PRIVILEGE_OPERATOR,
        };
        let mut session = Session::open(bmc.ok_or(Fault::Silent)?, &login, deadline)?;
        let result = work(&mut session);
        session.close();
        result
    }

    /// The one table from a fault to what the operator reads.
    fn power_error(&self, action: &str, fault: Fault) -> PowerError {
        let address = self.address();
        match fault {
            Fault::Silent => PowerError::Unreachable { address, timeout: self.timeout },
            Fault::Credentials => PowerError::Credentials { address, user: self.user.clone() },
            Fault::Malformed(detail) => PowerError::Protocol { address, protocol: PROTOCOL, detail },
            Fault::Refused(detail) => PowerError::Refused { address, action: action.to_string(), detail },
            Fault::NotApplied(found) => PowerError::NotApplied { address, action: action.to_string(), found },
        }
    }
}

fn read_power(session: &mut Session) -> Result<PowerState, Fault> {
    message::power_state(&session.call(&message::get_chassis_status())?).map_err(Fault::Malformed)
}

fn control(session: &mut Session, control: Control) -> Result<(), Fault> {
    session.call(&message::chassis_control(control)).map(drop)
}

impl PowerDriver for IpmiLan {
    fn kind(&self) -> &'static str {
        "ipmi"
    }

    fn address(&self) -> String {
        match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => format!("[{ip}]:{}", self.port),
            _ => format!("{}:{}", self.host, self.port),
        }
    }

    fn status(&self) -> Result<PowerState, PowerError> {
        self.in_session(read_power).map_err(|fault| self.power_error("read the power state", fault))
    }

    fn power(&self, action: PowerAction) -> Result<(), PowerError> {
        self.in_session(|session| match action {
            PowerAction::On => control(session, Control::Up),
            PowerAction::Off => control(session, Control::Down),
            PowerAction::Cycle => match read_power(session)? {
                PowerState::On => control(session, Control::Cycle),
                PowerState::Off => control(session, Control::Up),
            },
        })
        .map_err(|fault| self.power_error(&format!("power {action}"), fault))
    }

    fn pxe_once(&self) -> Result<(), PowerError> {
        self.in_session(|session| {
            session.call(&message::set_boot_pxe_once())?;
            let flags = message::boot_flags(&session.call(&message::get_boot_flags())?).map_err(Fault::Malformed)?;
            if flags.is_pxe_once() {
                Ok(())
            } else {
                Err(Fault::NotApplied(flags.describe()))
            }
        })
        .map_err(|fault| self.power_error("boot from the network once", fault))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_take_port_623_unless_told() {
        let t = Duration::from_secs(1);
        let cases = [
            ("10.0.0.9", "10.0.0.9:623"),
            ("10.0.0.9:6230", "10.0.0.9:6230"),
            ("bmc-3.rack.example", "bmc-3.rack.example:623"),
            ("bmc-3:1623", "bmc-3:1623"),
            ("fd00::9", "[fd00::9]:623"),
            ("[fd00::9]", "[fd00::9]:623"),
            ("[fd00::9]:624", "[fd00::9]:624"),
        ];
        for (given, address) in cases {
            assert_eq!(IpmiLan::new(given, "oasis", "pw", t).unwrap().address(), address, "{given}");
        }
        for bad in ["", "bmc:", "bmc:0", "bmc:99999", "bm c", ":623", "a:b:c"] {
            assert_eq!(IpmiLan::new(bad, "oasis", "pw", t).unwrap_err(), IpmiConfigError::Address(bad.into()), "{bad}");
        }
    }

    #[test]
    fn settings_ipmi_cannot_carry_are_refused() {
        let t = Duration::from_secs(1);
        assert_eq!(IpmiLan::new("bmc", &"u".repeat(17), "pw", t).unwrap_err(), IpmiConfigError::UserTooLong(17));
        assert_eq!(IpmiLan::new("bmc", "oasis", &"p".repeat(21), t).unwrap_err(), IpmiConfigError::PasswordTooLong);
        assert_eq!(IpmiLan::new("bmc", "oasis", "pw", Duration::ZERO).unwrap_err(), IpmiConfigError::ZeroTimeout);
        assert!(IpmiLan::new("bmc", &"u".repeat(16), &"p".repeat(20), t).is_ok());
    }

    #[test]
    fn the_password_is_never_shown() {
        let driver = IpmiLan::new("10.0.0.9", "oasis", "hunter2-secret", Duration::from_secs(2)).unwrap();
        let shown = format!("{driver:?}");
        assert!(shown.contains("10.0.0.9:623") && shown.contains("oasis"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        let error = driver.power_error("power on", Fault::Credentials);
        assert!(!error.to_string().contains("hunter2"), "{error}");
    }

    #[test]
    fn faults_become_the_power_errors_they_mean() {
        let driver = IpmiLan::new("10.0.0.9", "oasis", "pw", Duration::from_secs(2)).unwrap();
        let error = |fault| driver.power_error("power cycle", fault);
        assert!(
            matches!(error(Fault::Silent), PowerError::Unreachable { timeout, .. } if timeout == Duration::from_secs(2))
        );
        assert!(matches!(error(Fault::Credentials), PowerError::Credentials { user, .. } if user == "oasis"));
        assert!(matches!(error(Fault::Malformed("x".into())), PowerError::Protocol { protocol: PROTOCOL, .. }));
        let refused = error(Fault::Refused("Chassis Control answered completion code 0xd5: ...".into()));
        assert_eq!(
            refused.to_string(),
            "the BMC at 10.0.0.9:623 refused to power cycle: Chassis Control answered completion code 0xd5: ..."
        );
        assert!(matches!(error(Fault::NotApplied("y".into())), PowerError::NotApplied { found, .. } if found == "y"));
    }

    /// A valid protected packet of session 0x11223344 with the keys of `sik` [7; 20].
    fn protected() -> (packet::SessionKeys, Vec<u8>) {
        let keys = packet::SessionKeys::from_sik(&[7; 20]);
        let message = message::encode_request(&message::get_chassis_status(), 1);
        let packet = packet::encode_protected(&keys, 0x1122_3344, 1, &message, [3; 16]);
        (keys, packet)
    }

    proptest::proptest! {
        /// Whatever comes back from the network, every decoder answers with a value or an
        /// error, never a panic.
        #[test]
        fn nothing_a_bmc_sends_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80), tag: u8, session: u32) {
            let _ = packet::decode_unprotected(&bytes, packet::PAYLOAD_OPEN_SESSION_RESPONSE);
            let _ = rakp::open_session_response(&bytes, tag, session);
            let _ = rakp::parse_rakp2(&bytes, tag, session);
            let _ = rakp::parse_rakp4(&bytes, tag, session);
            let _ = message::decode_response(&bytes, &message::get_boot_flags(), tag);
            let _ = message::boot_flags(&bytes);
            let _ = message::power_state(&bytes);
            let (keys, _) = protected();
            let _ = packet::decode_protected(&keys, session, &bytes);
        }

        /// A protected packet with any byte changed (but RMCP's reserved byte and sequence
        /// number, which carry nothing) or any length cut is refused.
        #[test]
        fn a_damaged_session_packet_is_refused(at: proptest::sample::Index, flip in 1u8.., cut: proptest::sample::Index) {
            let (keys, packet) = protected();
            let mut damaged = packet.clone();
            let at = at.index(packet.len());
            proptest::prop_assume!(!(1..3).contains(&at));
            damaged[at] ^= flip;
            proptest::prop_assert!(packet::decode_protected(&keys, 0x1122_3344, &damaged).is_err());
            proptest::prop_assert!(packet::decode_protected(&keys, 0x1122_3344, &packet[..cut.index(packet.len())]).is_err());
        }
    }
}
