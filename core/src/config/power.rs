//! `[power]`: the BMCs of a prepared rack, each tied to a machine by its boot MAC, and whether the
//! appliance powers the rack on when it comes up.
//!
//! The credentials come from the file (a platform engineer prepared it back at base, and a USB
//! stick's config is signed) and are kept in the running config only; [`Secret`] never shows them
//! in `Debug` output or in an error.

use std::collections::HashMap;
use std::fmt;

use oasis_proto::MacAddr;
use serde::Deserialize;
use toml::Spanned;

use super::sections::{In, Line, Lines};

/// `[power]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPower {
    /// Power on, one at a time in the list's order, every machine whose BMC says it is off when
    /// the appliance has come up.
    pub power_on_at_start: bool,
    /// A control-plane machine with a BMC silent this long is power-cycled once (0: never).
    pub fence_after_secs: Spanned<u64>,
    /// After that cycle, how long it has to heartbeat again before it is powered off and given up.
    pub fence_boot_secs: Spanned<u64>,
    /// A machine without a `[[power.bmc]]` whose agent finds a BMC with a LAN address makes an
    /// `oasis` user on it with a random password and gives it to the appliance, which then
    /// powers that machine through it.
    pub agent_creates_user: bool,
    pub bmc: Vec<Spanned<RawBmc>>,
    pub scan: Vec<Spanned<RawScan>>,
}

impl Default for RawPower {
    fn default() -> Self {
        RawPower {
            power_on_at_start: false,
            fence_after_secs: Spanned::new(0..0, 120),
            fence_boot_secs: Spanned::new(0..0, 600),
            agent_creates_user: false,
            bmc: vec![],
            scan: vec![],
        }
    }
}

/// One `[[power.bmc]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBmc {
    /// The machine's boot MAC.
    pub machine: Spanned<String>,
    /// An IPMI-over-LAN BMC: `HOST` or `HOST:PORT` (623).
    pub ipmi: Option<Spanned<String>>,
    /// A Redfish BMC: `https://HOST[:PORT]`.
    pub redfish: Option<Spanned<String>>,
    pub user: Spanned<String>,
    pub password: Secret,
    /// Redfish: the SHA-256 of the BMC's certificate (hex, colons allowed). Without it the first
    /// certificate seen is trusted and kept for the appliance's run.
    pub fingerprint: Option<Spanned<String>>,
}

/// One `[[power.scan]]` entry as written: a subnet of IPMI BMCs that share a user.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScan {
    /// `ADDRESS/PREFIX`, IPv4, a /22 or smaller.
    pub ipmi: Spanned<String>,
    pub user: Spanned<String>,
    pub password: Secret,
}

/// A password: shown nowhere.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// `[power]`, checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PowerSettings {
    pub power_on_at_start: bool,
    /// Fencing a silent control-plane machine through its BMC; `None`: never.
    pub fence: Option<FencePolicy>,
    /// Agents make a user on their machine's BMC when the config has none for it.
    pub agent_creates_user: bool,
    /// In the file's order (the order machines are powered on).
    pub bmcs: Vec<BmcSettings>,
    /// Subnets where the appliance looks for IPMI BMCs that take these credentials.
    pub scans: Vec<ScanSettings>,
}

/// A subnet of IPMI BMCs (on port 623) that take one user: each address is tried, a BMC found is
/// used for the machine whose agent reads that address from its own BMC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanSettings {
    pub network: std::net::Ipv4Addr,
    pub prefix: u8,
    pub user: String,
    pub password: Secret,
}

impl ScanSettings {
    /// The addresses a BMC may have: all but the network's and broadcast's own (a /31 and a /32
    /// have none of those).
    pub fn addresses(&self) -> impl Iterator<Item = std::net::Ipv4Addr> {
        let first = u32::from(self.network);
        let size = 1u64 << (32 - self.prefix);
        let (skip, take) = if size > 2 { (1, size - 2) } else { (0, size) };
        (0..take).map(move |i| std::net::Ipv4Addr::from(first + (i + skip) as u32))
    }

    /// Whether `address` is in this subnet.
    pub fn contains(&self, address: std::net::Ipv4Addr) -> bool {
        u32::from(address) & prefix_mask(self.prefix) == u32::from(self.network)
    }

    /// `10.0.3.0/24`, for messages.
    pub fn subnet(&self) -> String {
        format!("{}/{}", self.network, self.prefix)
    }
}

/// When a silent control-plane machine is power-cycled, and how long it then has to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FencePolicy {
    /// Silent this long: power-cycled once (its next boot from the network).
    pub after: std::time::Duration,
    /// Not back this long after the cycle: powered off and given up.
    pub boot: std::time::Duration,
}

impl PowerSettings {
    /// The BMC of the machine with this boot MAC, if the config names one.
    pub fn bmc_of(&self, mac: MacAddr) -> Option<&BmcSettings> {
        self.bmcs.iter().find(|b| b.machine == mac)
    }
}

/// One machine's BMC, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BmcSettings {
    pub machine: MacAddr,
    pub endpoint: BmcEndpoint,
    pub user: String,
    pub password: Secret,
}

/// How a BMC is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BmcEndpoint {
    Ipmi { address: String },
    Redfish { url: String, fingerprint: Option<[u8; 32]> },
}

impl BmcEndpoint {
    /// Where it is, for messages and to find two machines given one BMC.
    pub fn address(&self) -> &str {
        match self {
            BmcEndpoint::Ipmi { address } => address,
            BmcEndpoint::Redfish { url, .. } => url,
        }
    }

    /// The BMC's IPv4 address, when the config names it by address (not by a host name): what
    /// a machine's agent reads from its own BMC is compared with it.
    pub fn ipv4(&self) -> Option<std::net::Ipv4Addr> {
        let host_port = match self {
            BmcEndpoint::Ipmi { address } => address.as_str(),
            BmcEndpoint::Redfish { url, .. } => url.strip_prefix("https://")?,
        };
        let host = host_port.rsplit_once(':').map_or(host_port, |(host, _)| host);
        host.parse().ok()
    }

    /// `ipmi` or `redfish`.
    pub fn kind(&self) -> &'static str {
        match self {
            BmcEndpoint::Ipmi { .. } => "ipmi",
            BmcEndpoint::Redfish { .. } => "redfish",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PowerConfigError {
    #[error("power.bmc.machine = {found:?}{at} is not a MAC address: name the machine by its boot MAC")]
    Machine { at: Line, found: String },
    #[error("the [[power.bmc]] of {machine}{at} gives both ipmi and redfish: a BMC is reached one way, keep one")]
    BothProtocols { at: Line, machine: MacAddr },
    #[error("the [[power.bmc]] of {machine}{at} gives neither ipmi = \"HOST\" nor redfish = \"https://HOST\"")]
    NoProtocol { at: Line, machine: MacAddr },
    #[error("power.bmc.ipmi = {found:?}{at} is not HOST or HOST:PORT")]
    IpmiAddress { at: Line, found: String },
    #[error(
        "power.bmc.redfish = {found:?}{at} is not https://HOST[:PORT]: BMC passwords never cross the rack unencrypted"
    )]
    RedfishUrl { at: Line, found: String },
    #[error("power.bmc.fingerprint{at} is not a SHA-256 in hex (64 digits, colons allowed)")]
    Fingerprint { at: Line },
    #[error("power.bmc.fingerprint{at} is for a Redfish BMC's certificate; IPMI has none")]
    FingerprintWithoutRedfish { at: Line },
    #[error("power.bmc.user{at} is empty")]
    User { at: Line },
    #[error("the IPMI {what}{at} is longer than {most} bytes, the most IPMI 2.0 allows: use a shorter one on the BMC")]
    IpmiLength { at: Line, what: &'static str, most: usize },
    #[error("power.{key}{at} is {secs}; use {allowed}")]
    Fence { at: Line, key: &'static str, secs: u64, allowed: &'static str },
    #[error("{machine} has two [[power.bmc]] entries{at}: keep one")]
    TwoBmcs { at: Line, machine: MacAddr },
    #[error(
        "the BMC {address}{at} is given to both {first} and {second}: a BMC controls one machine; fix the address"
    )]
    SharedBmc { at: Line, address: String, first: MacAddr, second: MacAddr },
    #[error("power.scan.ipmi = {found:?}{at} is not an IPv4 subnet: write it as ADDRESS/PREFIX, e.g. \"10.0.1.0/24\"")]
    ScanSubnet { at: Line, found: String },
    #[error("power.scan.ipmi = {found:?}{at} has host bits set: the subnet {network}/{prefix} is meant, write that")]
    ScanHostBits { at: Line, found: String, network: std::net::Ipv4Addr, prefix: u8 },
    #[error(
        "power.scan.ipmi = {found:?}{at} holds {size} addresses: scan at most a /{SCAN_WIDEST} ({} addresses), or list \
         the BMCs in [[power.bmc]]",
        1u32 << (32 - SCAN_WIDEST)
    )]
    ScanTooWide { at: Line, found: String, size: u64 },
    #[error("the [[power.scan]] subnets {first} and {second}{at} overlap: a BMC is tried with one user; keep one")]
    ScanOverlap { at: Line, first: String, second: String },
}

/// The widest subnet a `[[power.scan]]` may name: a /22, 1022 addresses, a few seconds' work.
pub const SCAN_WIDEST: u8 = 22;

impl TryFrom<In<'_, RawPower>> for PowerSettings {
    type Error = PowerConfigError;

    fn try_from(In { raw, lines }: In<'_, RawPower>) -> Result<Self, PowerConfigError> {
        let mut bmcs: Vec<BmcSettings> = vec![];
        let mut by_address: HashMap<String, MacAddr> = HashMap::new();
        for entry in &raw.bmc {
            let at = lines.of(entry);
            let bmc = check_bmc(entry.get_ref(), at, lines)?;
            if bmcs.iter().any(|b| b.machine == bmc.machine) {
                return Err(PowerConfigError::TwoBmcs { at, machine: bmc.machine });
            }
            let address = bmc.endpoint.address().to_ascii_lowercase();
            if let Some(first) = by_address.insert(address.clone(), bmc.machine) {
                return Err(PowerConfigError::SharedBmc { at, address, first, second: bmc.machine });
            }
            bmcs.push(bmc);
        }
        let mut scans: Vec<ScanSettings> = vec![];
        for entry in &raw.scan {
            let scan = check_scan(entry.get_ref(), lines)?;
            if let Some(first) = scans.iter().find(|s| s.contains(scan.network) || scan.contains(s.network)) {
                let (first, second) = (first.subnet(), scan.subnet());
                return Err(PowerConfigError::ScanOverlap { at: lines.of(entry), first, second });
            }
            scans.push(scan);
        }
        Ok(PowerSettings {
            power_on_at_start: raw.power_on_at_start,
            fence: fence_policy(raw, lines)?,
            agent_creates_user: raw.agent_creates_user,
            bmcs,
            scans,
        })
    }
}

/// `fence_after_secs` (0 or at least 60: a heartbeat or two lost is no reason to cut the power)
/// and `fence_boot_secs` (at least 60: firmware and a netboot take that long at the very least).
fn fence_policy(raw: &RawPower, lines: Lines<'_>) -> Result<Option<FencePolicy>, PowerConfigError> {
    let (after, boot) = (*raw.fence_after_secs.get_ref(), *raw.fence_boot_secs.get_ref());
    if after != 0 && after < 60 {
        let at = lines.of(&raw.fence_after_secs);
        return Err(PowerConfigError::Fence {
            at,
            key: "fence_after_secs",
            secs: after,
            allowed: "0 (never) or at least 60",
        });
    }
    if boot < 60 {
        let at = lines.of(&raw.fence_boot_secs);
        return Err(PowerConfigError::Fence { at, key: "fence_boot_secs", secs: boot, allowed: "at least 60" });
    }
    Ok((after != 0).then(|| FencePolicy {
        after: std::time::Duration::from_secs(after),
        boot: std::time::Duration::from_secs(boot),
    }))
}

/// One entry; `at` is its `[[power.bmc]]` line, a value's own line is named where one is wrong.
fn check_bmc(raw: &RawBmc, at: Line, lines: Lines<'_>) -> Result<BmcSettings, PowerConfigError> {
    let machine = raw
        .machine
        .get_ref()
        .parse::<MacAddr>()
        .map_err(|_| PowerConfigError::Machine { at: lines.of(&raw.machine), found: raw.machine.get_ref().clone() })?;
    let endpoint = match (&raw.ipmi, &raw.redfish) {
        (Some(_), Some(_)) => return Err(PowerConfigError::BothProtocols { at, machine }),
        (None, None) => return Err(PowerConfigError::NoProtocol { at, machine }),
        (Some(ipmi), None) => {
            if let Some(fingerprint) = &raw.fingerprint {
                return Err(PowerConfigError::FingerprintWithoutRedfish { at: lines.of(fingerprint) });
            }
            let address = ipmi.get_ref().trim();
            if !valid_host_port(address) {
                return Err(PowerConfigError::IpmiAddress { at: lines.of(ipmi), found: address.into() });
            }
            BmcEndpoint::Ipmi { address: address.into() }
        }
        (None, Some(written)) => {
            let url = written.get_ref().trim().trim_end_matches('/');
            if !url.strip_prefix("https://").is_some_and(valid_host_port) {
                return Err(PowerConfigError::RedfishUrl { at: lines.of(written), found: url.into() });
            }
            let fingerprint = match &raw.fingerprint {
                None => None,
                Some(text) => Some(
                    parse_fingerprint(text.get_ref()).ok_or(PowerConfigError::Fingerprint { at: lines.of(text) })?,
                ),
            };
            BmcEndpoint::Redfish { url: url.into(), fingerprint }
        }
    };
    let user = raw.user.get_ref().trim();
    if user.is_empty() {
        return Err(PowerConfigError::User { at: lines.of(&raw.user) });
    }
    if matches!(endpoint, BmcEndpoint::Ipmi { .. }) {
        if user.len() > IPMI_MOST_USER {
            return Err(PowerConfigError::IpmiLength { at: lines.of(&raw.user), what: "user", most: IPMI_MOST_USER });
        }
        if raw.password.expose().len() > IPMI_MOST_PASSWORD {
            return Err(PowerConfigError::IpmiLength { at, what: "password", most: IPMI_MOST_PASSWORD });
        }
    }
    Ok(BmcSettings { machine, endpoint, user: user.into(), password: raw.password.clone() })
}

/// One `[[power.scan]]`: an IPv4 subnet no wider than [`SCAN_WIDEST`], written without host bits,
/// and IPMI credentials.
fn check_scan(raw: &RawScan, lines: Lines<'_>) -> Result<ScanSettings, PowerConfigError> {
    let (at, found) = (lines.of(&raw.ipmi), raw.ipmi.get_ref().trim().to_string());
    let subnet = || -> Option<(std::net::Ipv4Addr, u8)> {
        let (address, prefix) = found.split_once('/')?;
        let prefix = prefix.parse::<u8>().ok().filter(|p| *p <= 32)?;
        Some((address.parse().ok()?, prefix))
    };
    let (address, prefix) = subnet().ok_or_else(|| PowerConfigError::ScanSubnet { at, found: found.clone() })?;
    if prefix < SCAN_WIDEST {
        return Err(PowerConfigError::ScanTooWide { at, found, size: 1u64 << (32 - prefix) });
    }
    let network = std::net::Ipv4Addr::from(u32::from(address) & prefix_mask(prefix));
    if network != address {
        return Err(PowerConfigError::ScanHostBits { at, found, network, prefix });
    }
    let user = raw.user.get_ref().trim();
    if user.is_empty() {
        return Err(PowerConfigError::User { at: lines.of(&raw.user) });
    }
    if user.len() > IPMI_MOST_USER {
        return Err(PowerConfigError::IpmiLength { at: lines.of(&raw.user), what: "user", most: IPMI_MOST_USER });
    }
    if raw.password.expose().len() > IPMI_MOST_PASSWORD {
        return Err(PowerConfigError::IpmiLength { at, what: "password", most: IPMI_MOST_PASSWORD });
    }
    Ok(ScanSettings { network, prefix, user: user.into(), password: raw.password.clone() })
}

/// The netmask of a /`prefix` as a number (a /0 has none).
fn prefix_mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

/// The longest user name and password IPMI 2.0 carries (RAKP's fields).
const IPMI_MOST_USER: usize = 16;
const IPMI_MOST_PASSWORD: usize = 20;

/// `HOST` or `HOST:PORT`: a name or IPv4 address of sane characters, a port 1-65535.
fn valid_host_port(text: &str) -> bool {
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (text, None),
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
    host_ok && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0))
}

/// A SHA-256 in hex, colons or spaces between the bytes allowed.
fn parse_fingerprint(text: &str) -> Option<[u8; 32]> {
    let digits: String = text.chars().filter(|c| !matches!(c, ':' | ' ')).collect();
    let bytes = hex::decode(digits).ok()?;
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::sections::Lines;

    fn check(text: &str) -> Result<PowerSettings, PowerConfigError> {
        #[derive(Deserialize)]
        struct File {
            power: RawPower,
        }
        let file: File = toml::from_str(text).unwrap();
        PowerSettings::try_from(In { raw: &file.power, lines: Lines(text) })
    }

    #[test]
    fn bmcs_are_read_in_order_with_their_passwords_hidden() {
        let text = r#"
[power]
power_on_at_start = true
[[power.bmc]]
machine = "52:54:00:00:00:02"
ipmi = "10.0.1.2"
user = "admin"
password = "hunter2"
[[power.bmc]]
machine = "52:54:00:00:00:01"
redfish = "https://bmc-1.rack:8443/"
user = "root"
password = "calvin"
fingerprint = "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89"
"#;
        let power = check(text).unwrap();
        assert!(power.power_on_at_start);
        assert_eq!(power.bmcs.len(), 2);
        assert_eq!(power.bmcs[0].endpoint, BmcEndpoint::Ipmi { address: "10.0.1.2".into() });
        let first: MacAddr = "52:54:00:00:00:01".parse().unwrap();
        let redfish = power.bmc_of(first).unwrap();
        assert!(matches!(&redfish.endpoint, BmcEndpoint::Redfish { url, fingerprint: Some(f) }
            if url == "https://bmc-1.rack:8443" && f[0] == 0xAB));
        assert_eq!(redfish.password.expose(), "calvin");
        let shown = format!("{power:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("calvin"), "{shown}");
    }

    #[test]
    fn each_mistake_is_named_with_its_line() {
        let entry = |body: &str| format!("[power]\n[[power.bmc]]\n{body}\nuser = \"u\"\npassword = \"p\"\n");
        let cases = [
            (entry("machine = \"rack-1\"\nipmi = \"10.0.1.2\""), "is not a MAC address", 3),
            (entry("machine = \"52:54:00:00:00:01\""), "gives neither ipmi", 2),
            (
                entry("machine = \"52:54:00:00:00:01\"\nipmi = \"a\"\nredfish = \"https://b\""),
                "both ipmi and redfish",
                2,
            ),
            (entry("machine = \"52:54:00:00:00:01\"\nipmi = \"10.0.1.2:0\""), "is not HOST or HOST:PORT", 4),
            (entry("machine = \"52:54:00:00:00:01\"\nipmi = \"10.0.1.2;reboot\""), "is not HOST or HOST:PORT", 4),
            (entry("machine = \"52:54:00:00:00:01\"\nredfish = \"http://10.0.1.2\""), "never cross the rack", 4),
            (
                entry("machine = \"52:54:00:00:00:01\"\nredfish = \"https://b\"\nfingerprint = \"00\""),
                "not a SHA-256",
                5,
            ),
            (entry("machine = \"52:54:00:00:00:01\"\nipmi = \"b\"\nfingerprint = \"00\""), "IPMI has none", 5),
        ];
        for (text, says, line) in cases {
            let error = check(&text).unwrap_err().to_string();
            assert!(error.contains(says) && error.contains(&format!("(line {line})")), "{text}: {error}");
        }
        let blank_user =
            "[power]\n[[power.bmc]]\nmachine = \"52:54:00:00:00:01\"\nipmi = \"b\"\nuser = \" \"\npassword = \"p\"\n";
        assert!(check(blank_user).unwrap_err().to_string().contains("user (line 5) is empty"));
        let long = "[power]\n[[power.bmc]]\nmachine = \"52:54:00:00:00:01\"\nipmi = \"b\"\nuser = \"u\"\npassword = \"123456789012345678901\"\n";
        let error = check(long).unwrap_err().to_string();
        assert!(error.contains("IPMI password (line 2) is longer than 20 bytes"), "{error}");
        assert!(!error.contains("123456789"), "{error}");
    }

    #[test]
    fn a_bmc_named_by_address_has_that_address() {
        let ipmi = |a: &str| BmcEndpoint::Ipmi { address: a.into() };
        let redfish = |u: &str| BmcEndpoint::Redfish { url: u.into(), fingerprint: None };
        let at = |a: &str| Some(a.parse::<std::net::Ipv4Addr>().unwrap());
        assert_eq!(ipmi("10.0.2.3").ipv4(), at("10.0.2.3"));
        assert_eq!(ipmi("10.0.2.3:6230").ipv4(), at("10.0.2.3"));
        assert_eq!(redfish("https://10.0.2.4:8443").ipv4(), at("10.0.2.4"));
        assert_eq!(redfish("https://10.0.2.4").ipv4(), at("10.0.2.4"));
        assert_eq!(ipmi("bmc-7.rack").ipv4(), None, "a name is not resolved");
        assert_eq!(redfish("https://bmc-7.rack:443").ipv4(), None);
    }

    #[test]
    fn a_machine_has_one_bmc_and_a_bmc_one_machine() {
        let two = |a: &str, b: &str, c: &str, d: &str| {
            format!(
                "[power]\n[[power.bmc]]\nmachine = \"{a}\"\nipmi = \"{b}\"\nuser = \"u\"\npassword = \"p\"\n\
                 [[power.bmc]]\nmachine = \"{c}\"\nipmi = \"{d}\"\nuser = \"u\"\npassword = \"p\"\n"
            )
        };
        let twice = check(&two("52:54:00:00:00:01", "10.0.1.1", "52:54:00:00:00:01", "10.0.1.2")).unwrap_err();
        assert!(twice.to_string().contains("has two [[power.bmc]] entries (line 7)"), "{twice}");
        let shared = check(&two("52:54:00:00:00:01", "10.0.1.1", "52:54:00:00:00:02", "10.0.1.1")).unwrap_err();
        assert!(shared.to_string().contains("is given to both 52:54:00:00:00:01 and 52:54:00:00:00:02"), "{shared}");
        assert!(check("[power]\n").unwrap().bmcs.is_empty());
    }

    #[test]
    fn a_scan_is_a_narrow_subnet_with_credentials() {
        let scan = |subnet: &str| {
            format!("[power]\n[[power.scan]]\nipmi = \"{subnet}\"\nuser = \"admin\"\npassword = \"p\"\n")
        };
        let power = check(&scan("10.0.3.8/29")).unwrap();
        let one = &power.scans[0];
        let addresses: Vec<String> = one.addresses().map(|a| a.to_string()).collect();
        assert_eq!(addresses.first().map(String::as_str), Some("10.0.3.9"), "not the network's own address");
        assert_eq!(addresses.last().map(String::as_str), Some("10.0.3.14"), "nor its broadcast");
        assert_eq!(addresses.len(), 6);
        assert!(one.contains("10.0.3.15".parse().unwrap()) && !one.contains("10.0.3.16".parse().unwrap()));
        assert_eq!(check(&scan("10.0.3.7/32")).unwrap().scans[0].addresses().count(), 1);
        assert_eq!(check(&scan("10.0.0.0/22")).unwrap().scans[0].addresses().count(), 1022);
        assert!(!format!("{power:?}").contains("password = "), "the password is hidden");

        for (subnet, says) in [
            ("10.0.3.0", "is not an IPv4 subnet"),
            ("10.0.3.0/33", "is not an IPv4 subnet"),
            ("bmc.rack/24", "is not an IPv4 subnet"),
            ("10.0.3.5/24", "the subnet 10.0.3.0/24 is meant"),
            ("10.0.0.0/16", "holds 65536 addresses: scan at most a /22"),
        ] {
            let error = check(&scan(subnet)).unwrap_err().to_string();
            assert!(error.contains(says) && error.contains("(line 3)"), "{subnet}: {error}");
        }
        let two =
            format!("{}[[power.scan]]\nipmi = \"10.0.3.0/24\"\nuser = \"u\"\npassword = \"p\"\n", scan("10.0.3.8/29"));
        let error = check(&two).unwrap_err().to_string();
        assert!(error.contains("10.0.3.8/29 and 10.0.3.0/24 (line 6) overlap"), "{error}");
    }
}
