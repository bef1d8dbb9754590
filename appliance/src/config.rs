//! `oasis.toml`: the appliance's configuration.
//!
//! Two layers, as in dora: [`RawConfig`] is what the file says (serde, defaults, unknown keys
//! rejected with their name and line), and [`Config`] is what the rest of the code uses, built by
//! [`Config::from_raw`], which checks that the values make sense together. `docs/oasis.toml` in
//! the repository documents every key with its default.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use oasis_pxe::dhcp::{NetworkOptions, Pool};
use oasis_pxe::mac::MacAddr;
use oasis_pxe::script::BootProfile;
use oasis_pxe::tftp::TftpConfig;
use serde::Deserialize;

use crate::store::EventLimits;

/// The version of the configuration format this build reads.
pub const CONFIG_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default = "default_version")]
    pub version: u32,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    pub network: RawNetwork,
    #[serde(default)]
    pub dhcp: RawDhcp,
    #[serde(default)]
    pub tftp: RawTftp,
    #[serde(default)]
    pub http: RawHttp,
    #[serde(default)]
    pub boot: RawBoot,
    /// Absent: the node image, with the agent's arguments.
    pub profile: Option<RawProfile>,
    #[serde(default)]
    pub registration: RawRegistration,
    #[serde(default)]
    pub wireguard: RawWireguard,
    #[serde(default)]
    pub api: RawApi,
    #[serde(default)]
    pub cluster: RawCluster,
    #[serde(default)]
    pub events: RawEvents,
}

fn default_version() -> u32 {
    CONFIG_VERSION
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/oasis")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNetwork {
    pub interface: String,
    pub address: Ipv4Addr,
    #[serde(default = "default_netmask")]
    pub netmask: Ipv4Addr,
}

fn default_netmask() -> Ipv4Addr {
    Ipv4Addr::new(255, 255, 255, 0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DhcpMode {
    Full,
    Proxy,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConflictCheckKind {
    Arp,
    Icmp,
    Off,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDhcp {
    pub mode: DhcpMode,
    pub range: Option<[Ipv4Addr; 2]>,
    pub router: Option<Ipv4Addr>,
    pub dns_servers: Vec<Ipv4Addr>,
    pub domain_name: Option<String>,
    pub ntp_servers: Vec<Ipv4Addr>,
    pub lease_time: u32,
    pub probation: u32,
    pub authoritative: bool,
    pub conflict_check: ConflictCheckKind,
    pub conflict_timeout_ms: u64,
    pub rate_limit: u32,
    pub rate_burst: u32,
    pub reply_delay_ms: u64,
    pub tolerate_missing_uuid: bool,
    pub port: u16,
    pub client_port: u16,
    pub proxy_port: u16,
    pub reservation: Vec<RawReservation>,
}

impl Default for RawDhcp {
    fn default() -> Self {
        Self {
            mode: DhcpMode::Full,
            range: None,
            router: None,
            dns_servers: vec![],
            domain_name: None,
            ntp_servers: vec![],
            lease_time: 3600,
            probation: 600,
            authoritative: true,
            conflict_check: ConflictCheckKind::Arp,
            conflict_timeout_ms: 300,
            rate_limit: 10,
            rate_burst: 30,
            reply_delay_ms: 0,
            tolerate_missing_uuid: true,
            port: 67,
            client_port: 68,
            proxy_port: 4011,
            reservation: vec![],
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReservation {
    pub mac: MacAddr,
    pub address: Ipv4Addr,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTftp {
    pub enabled: bool,
    pub port: u16,
    pub max_blksize: u16,
    pub no_blksize: bool,
    pub max_windowsize: u16,
    pub timeout_ms: u64,
    pub retries: u32,
    pub max_transfers: usize,
}

impl Default for RawTftp {
    fn default() -> Self {
        let d = TftpConfig::default();
        Self {
            enabled: true,
            port: 69,
            max_blksize: d.max_blksize,
            no_blksize: d.no_blksize,
            max_windowsize: d.max_windowsize,
            timeout_ms: d.timeout.as_millis() as u64,
            retries: d.retries,
            max_transfers: d.max_transfers,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHttp {
    pub port: u16,
}

impl Default for RawHttp {
    fn default() -> Self {
        Self { port: 80 }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawBoot {
    pub root: Option<PathBuf>,
    pub ipxe_dir: String,
}

impl Default for RawBoot {
    fn default() -> Self {
        Self { root: None, ipxe_dir: "ipxe".into() }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProfile {
    pub kernel: String,
    pub initrd: Option<String>,
    #[serde(default)]
    pub cmdline: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AcceptancePolicy {
    Auto,
    Allowlist,
    Manual,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRegistration {
    pub policy: AcceptancePolicy,
    /// Serial numbers and boot MACs accepted under `allowlist`.
    pub allow: Vec<String>,
}

impl Default for RawRegistration {
    fn default() -> Self {
        Self { policy: AcceptancePolicy::Auto, allow: vec![] }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawWireguard {
    pub interface: String,
    pub port: u16,
    /// The management overlay, `ADDRESS/LEN`; the appliance takes the first address.
    pub prefix: String,
    pub keepalive: u16,
}

impl Default for RawWireguard {
    fn default() -> Self {
        Self {
            interface: "oasis-wg".into(),
            port: oasis_proto::WIREGUARD_PORT,
            prefix: "10.99.0.0/16".into(),
            keepalive: 15,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawApi {
    pub port: u16,
}

impl Default for RawApi {
    fn default() -> Self {
        Self { port: oasis_proto::API_PORT }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCluster {
    pub name: String,
    pub control_plane: usize,
    pub min_machines: usize,
    pub settle_secs: u64,
    pub prefer: Vec<String>,
    pub mesh_prefix: String,
    pub mesh_keepalive: u16,
    pub dead_after_secs: u64,
    pub data_disk: DataDiskPolicy,
}

/// How many events the store keeps; the oldest go first.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawEvents {
    pub max_count: u64,
    pub max_age_days: u64,
    pub max_mib: u64,
}

impl Default for RawEvents {
    fn default() -> Self {
        let d = EventLimits::default();
        Self { max_count: d.max_count, max_age_days: d.max_age.as_secs() / 86_400, max_mib: d.max_bytes >> 20 }
    }
}

/// Which local disk control-plane machines keep etcd's data on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataDiskPolicy {
    /// The largest disk, if it is blank or already oasis's (never another's data).
    Blank,
    /// The largest disk, formatted whatever it holds.
    Wipe,
    /// None: data in memory.
    Off,
}

impl Default for RawCluster {
    fn default() -> Self {
        Self {
            name: "oasis".into(),
            control_plane: 3,
            min_machines: 1,
            settle_secs: 30,
            prefer: vec![],
            mesh_prefix: "10.98.0.0/16".into(),
            mesh_keepalive: 15,
            dead_after_secs: 30,
            data_disk: DataDiskPolicy::Blank,
        }
    }
}

/// Cluster assembly's settings, checked.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub name: String,
    pub control_plane: usize,
    pub min_machines: usize,
    pub settle: Duration,
    pub prefer: Vec<crate::assembly::order::Preference>,
    /// The mesh network; a node's mesh address has the host part of its overlay address.
    pub mesh_network: Ipv4Addr,
    pub mesh_prefix_len: u8,
    pub mesh_keepalive: u16,
    pub dead_after: Duration,
    pub data_disk: DataDiskPolicy,
}

/// A prefix `ADDRESS/LEN` (length 8 to 30): its network address and length.
fn parse_prefix(field: &str, value: &str, text: &str) -> Result<(Ipv4Addr, u8), String> {
    let key = field.rsplit('.').next().unwrap_or(field);
    let bad = || {
        format!(
            "{field}{} {value:?} is not ADDRESS/LENGTH with a length from 8 to 30, e.g. \"10.99.0.0/16\"",
            line_of(text, key)
        )
    };
    let (addr, len) = value.split_once('/').ok_or_else(bad)?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().ok().filter(|l| (8..=30).contains(l)).ok_or_else(bad)?;
    Ok((Ipv4Addr::from(u32::from(addr) & (u32::MAX << (32 - len))), len))
}

fn overlaps(a: (Ipv4Addr, u8), b: (Ipv4Addr, u8)) -> bool {
    let mask = u32::MAX << (32 - a.1.min(b.1));
    u32::from(a.0) & mask == u32::from(b.0) & mask
}

/// The node image's profile, served when the file has no `[profile]`.
pub const NODE_KERNEL: &str = "node/vmlinuz";
pub const NODE_INITRD: &str = "node/initrd.img";

/// The management links' settings, checked.
#[derive(Debug, Clone)]
pub struct WireguardSettings {
    pub interface: String,
    pub port: u16,
    /// The appliance's overlay address.
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub keepalive: u16,
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub interface: String,
    pub address: Ipv4Addr,
    pub netmask: Ipv4Addr,
    pub dhcp: Option<DhcpSettings>,
    pub tftp: Option<(u16, TftpConfig)>,
    pub http_port: u16,
    /// The directory TFTP and HTTP serve; relative paths in the file are relative to the file.
    pub boot_root: PathBuf,
    pub ipxe_dir: String,
    pub profile: BootProfile,
    /// Whether the profile boots the node agent, which then gets its arguments appended.
    pub profile_is_node: bool,
    pub policy: AcceptancePolicy,
    pub allow_serials: HashSet<String>,
    pub allow_macs: HashSet<MacAddr>,
    pub wireguard: WireguardSettings,
    pub api_port: u16,
    pub cluster: ClusterSettings,
    pub events: EventLimits,
}

#[derive(Debug, Clone)]
pub struct DhcpSettings {
    /// `None` in proxy mode.
    pub full: Option<(Pool, NetworkOptions, bool)>,
    pub conflict_check: ConflictCheckKind,
    pub conflict_timeout: Duration,
    pub rate_limit: u32,
    pub rate_burst: u32,
    pub reply_delay: Duration,
    pub tolerate_missing_uuid: bool,
    pub port: u16,
    pub client_port: u16,
    pub proxy_port: u16,
}

/// Where in the file a key is: "line N" for the first line that mentions it.
fn line_of(text: &str, key: &str) -> String {
    text.lines().position(|l| l.trim_start().starts_with(key)).map(|n| format!(" (line {})", n + 1)).unwrap_or_default()
}

impl Config {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Self::parse(&text, path)
    }

    /// Parses and checks configuration text; `path` names it in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string().trim().to_string() })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::from_raw(raw, text, &base).map_err(|message| ConfigError::Invalid { path: path.into(), message })
    }

    fn from_raw(raw: RawConfig, text: &str, base: &Path) -> Result<Self, String> {
        if raw.version != CONFIG_VERSION {
            return Err(format!(
                "version = {} is not understood by this oasis, which reads version {CONFIG_VERSION}",
                raw.version
            ));
        }
        let net = &raw.network;
        if net.interface.is_empty() || net.interface.len() > 15 || net.interface.contains(['/', ' ']) {
            return Err(format!("network.interface {:?} is not a valid interface name", net.interface));
        }
        let mask = u32::from(net.netmask);
        if mask.leading_ones() + mask.trailing_zeros() != 32 {
            return Err(format!("network.netmask {} is not a contiguous netmask", net.netmask));
        }
        let subnet = |ip: Ipv4Addr| u32::from(ip) & mask;
        let dhcp = match raw.dhcp.mode {
            DhcpMode::Off => None,
            mode => {
                let d = &raw.dhcp;
                let full = if mode == DhcpMode::Full {
                    let Some([start, end]) = d.range else {
                        return Err(format!(
                            "dhcp.range is required in full mode{}: e.g. range = [\"10.0.0.100\", \"10.0.0.199\"], or set mode = \"proxy\" beside a site DHCP server",
                            line_of(text, "mode")
                        ));
                    };
                    if u32::from(start) > u32::from(end) {
                        return Err(format!("dhcp.range{}: {start} comes after {end}", line_of(text, "range")));
                    }
                    if subnet(start) != subnet(end) {
                        return Err(format!(
                            "dhcp.range{}: {start} and {end} are not on one subnet of netmask {}",
                            line_of(text, "range"),
                            net.netmask
                        ));
                    }
                    let on_interface_subnet = subnet(start) == subnet(net.address);
                    if on_interface_subnet && (u32::from(start)..=u32::from(end)).contains(&u32::from(net.address)) {
                        return Err(format!(
                            "dhcp.range{} contains the appliance's own address {}",
                            line_of(text, "range"),
                            net.address
                        ));
                    }
                    if d.lease_time < 60 {
                        return Err(format!(
                            "dhcp.lease_time{} is {} s; use at least 60",
                            line_of(text, "lease_time"),
                            d.lease_time
                        ));
                    }
                    let mut reservations = HashMap::new();
                    let mut taken = HashSet::new();
                    for r in &d.reservation {
                        if subnet(r.address) != subnet(start) {
                            return Err(format!(
                                "dhcp.reservation for {} has address {} outside the pool's subnet",
                                r.mac, r.address
                            ));
                        }
                        if r.address == net.address {
                            return Err(format!("dhcp.reservation for {} has the appliance's own address", r.mac));
                        }
                        if !taken.insert(r.address) {
                            return Err(format!("dhcp.reservation: {} is reserved twice", r.address));
                        }
                        if reservations.insert(r.mac, r.address).is_some() {
                            return Err(format!("dhcp.reservation: {} has two reservations", r.mac));
                        }
                    }
                    let pool = Pool {
                        start,
                        end,
                        netmask: net.netmask,
                        reservations,
                        lease_secs: d.lease_time,
                        probation_secs: d.probation,
                    };
                    let options = NetworkOptions {
                        router: d.router,
                        dns_servers: d.dns_servers.clone(),
                        domain_name: d.domain_name.clone(),
                        ntp_servers: d.ntp_servers.clone(),
                    };
                    Some((pool, options, d.authoritative))
                } else {
                    None
                };
                if d.rate_limit == 0 {
                    return Err("dhcp.rate_limit must be at least 1 message per second".into());
                }
                Some(DhcpSettings {
                    full,
                    conflict_check: d.conflict_check,
                    conflict_timeout: Duration::from_millis(d.conflict_timeout_ms),
                    rate_limit: d.rate_limit,
                    rate_burst: d.rate_burst,
                    reply_delay: Duration::from_millis(d.reply_delay_ms),
                    tolerate_missing_uuid: d.tolerate_missing_uuid,
                    port: d.port,
                    client_port: d.client_port,
                    proxy_port: d.proxy_port,
                })
            }
        };
        let t = &raw.tftp;
        let tftp_config = TftpConfig {
            max_blksize: t.max_blksize,
            no_blksize: t.no_blksize,
            max_windowsize: t.max_windowsize,
            timeout: Duration::from_millis(t.timeout_ms.max(1)),
            retries: t.retries,
            max_transfers: t.max_transfers,
        };
        // The TFTP server's own check, so `config check` passes nothing `oasis serve` refuses.
        tftp_config.check().map_err(|e| format!("[tftp]{}: {e}", line_of(text, "[tftp]")))?;
        let tftp = t.enabled.then_some((t.port, tftp_config));
        let data_dir = base.join(&raw.data_dir);
        let boot_root = raw.boot.root.map(|r| base.join(r)).unwrap_or_else(|| data_dir.join("boot"));
        let (profile, profile_is_node) = match raw.profile {
            Some(p) => {
                let is_node = p.kernel == NODE_KERNEL;
                (BootProfile { kernel: p.kernel, initrd: p.initrd, cmdline: p.cmdline }, is_node)
            }
            None => (
                BootProfile {
                    kernel: NODE_KERNEL.into(),
                    initrd: Some(NODE_INITRD.into()),
                    cmdline: "console=ttyS0,115200 console=tty0".into(),
                },
                true,
            ),
        };
        profile.validate().map_err(|e| format!("profile{}: {e}", line_of(text, "cmdline")))?;
        let (mut allow_serials, mut allow_macs) = (HashSet::new(), HashSet::new());
        for entry in &raw.registration.allow {
            match entry.parse::<MacAddr>() {
                Ok(mac) => allow_macs.insert(mac),
                Err(_) if !entry.trim().is_empty() => allow_serials.insert(entry.trim().to_lowercase()),
                Err(_) => return Err(format!("registration.allow{} has an empty entry", line_of(text, "allow"))),
            };
        }
        let w = &raw.wireguard;
        if w.interface.is_empty() || w.interface.len() > 15 || w.interface.contains(['/', ' ']) {
            return Err(format!(
                "wireguard.interface {:?} is not a valid interface name (1 to 15 characters)",
                w.interface
            ));
        }
        let (overlay_network, prefix_len) = parse_prefix("wireguard.prefix", &w.prefix, text)?;
        if overlaps((overlay_network, prefix_len), (net.address, 32)) {
            return Err(format!(
                "wireguard.prefix{} {} overlaps the rack network address {}: pick another range",
                line_of(text, "prefix"),
                w.prefix,
                net.address
            ));
        }
        let overlay_network = u32::from(overlay_network);
        let c = &raw.cluster;
        let name_ok = (1..=63).contains(&c.name.len())
            && c.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !c.name.starts_with('-');
        if !name_ok {
            return Err(format!(
                "cluster.name{} {:?} must be 1 to 63 lowercase letters, digits or dashes",
                line_of(text, "name"),
                c.name
            ));
        }
        if ![1, 3, 5].contains(&c.control_plane) {
            return Err(format!(
                "cluster.control_plane{} is {}; it must be 1, 3 or 5 (an odd count keeps etcd's quorum meaningful)",
                line_of(text, "control_plane"),
                c.control_plane
            ));
        }
        let prefer = c
            .prefer
            .iter()
            .map(|p| p.parse().map_err(|e| format!("cluster.prefer{}: {e}", line_of(text, "prefer"))))
            .collect::<Result<Vec<_>, _>>()?;
        let mesh = parse_prefix("cluster.mesh_prefix", &c.mesh_prefix, text)?;
        if mesh.1 > prefix_len {
            return Err(format!(
                "cluster.mesh_prefix{} {} is smaller than wireguard.prefix {}: every overlay address needs a mesh address",
                line_of(text, "mesh_prefix"),
                c.mesh_prefix,
                w.prefix
            ));
        }
        if overlaps(mesh, (Ipv4Addr::from(overlay_network), prefix_len)) || overlaps(mesh, (net.address, 32)) {
            return Err(format!(
                "cluster.mesh_prefix{} {} overlaps the management overlay or the rack network: pick another range",
                line_of(text, "mesh_prefix"),
                c.mesh_prefix
            ));
        }
        if c.dead_after_secs < 3 * oasis_proto::HEARTBEAT_SECS {
            return Err(format!(
                "cluster.dead_after_secs{} is {}; use at least {} (three heartbeats)",
                line_of(text, "dead_after_secs"),
                c.dead_after_secs,
                3 * oasis_proto::HEARTBEAT_SECS
            ));
        }
        let cluster = ClusterSettings {
            name: c.name.clone(),
            control_plane: c.control_plane,
            min_machines: c.min_machines.max(1),
            settle: Duration::from_secs(c.settle_secs),
            prefer,
            mesh_network: mesh.0,
            mesh_prefix_len: mesh.1,
            mesh_keepalive: c.mesh_keepalive,
            dead_after: Duration::from_secs(c.dead_after_secs),
            data_disk: c.data_disk,
        };
        let e = &raw.events;
        if !(100..=10_000_000).contains(&e.max_count) {
            return Err(format!(
                "events.max_count{} is {}; use 100 to 10000000",
                line_of(text, "max_count"),
                e.max_count
            ));
        }
        if !(1..=3650).contains(&e.max_age_days) {
            return Err(format!(
                "events.max_age_days{} is {}; use 1 to 3650",
                line_of(text, "max_age_days"),
                e.max_age_days
            ));
        }
        if !(1..=1024).contains(&e.max_mib) {
            return Err(format!(
                "events.max_mib{} is {}; use 1 to 1024 (MiB of the data partition)",
                line_of(text, "max_mib"),
                e.max_mib
            ));
        }
        let events = EventLimits {
            max_count: e.max_count,
            max_age: Duration::from_secs(e.max_age_days * 86_400),
            max_bytes: e.max_mib << 20,
        };
        let wireguard = WireguardSettings {
            interface: w.interface.clone(),
            port: w.port,
            address: Ipv4Addr::from(overlay_network + 1),
            prefix_len,
            keepalive: w.keepalive,
        };
        Ok(Self {
            data_dir,
            interface: raw.network.interface,
            address: raw.network.address,
            netmask: raw.network.netmask,
            dhcp,
            tftp,
            http_port: raw.http.port,
            boot_root,
            ipxe_dir: raw.boot.ipxe_dir,
            profile,
            profile_is_node,
            policy: raw.registration.policy,
            allow_serials,
            allow_macs,
            wireguard,
            api_port: raw.api.port,
            cluster,
            events,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
data_dir = "state"

[network]
interface = "br0"
address = "10.0.0.1"

[dhcp]
range = ["10.0.0.100", "10.0.0.199"]
router = "10.0.0.1"

[[dhcp.reservation]]
mac = "52:54:00:00:00:01"
address = "10.0.0.50"

[profile]
kernel = "payload/vmlinuz"
initrd = "payload/initrd.img"
cmdline = "console=ttyS0"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/oasis/oasis.toml"))
    }

    #[test]
    fn the_documented_example_and_a_minimal_file_parse() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/etc/oasis/state"));
        assert_eq!(c.boot_root, PathBuf::from("/etc/oasis/state/boot"));
        let (pool, options, authoritative) = c.dhcp.unwrap().full.unwrap();
        assert_eq!(
            (pool.start, pool.end, pool.lease_secs),
            (Ipv4Addr::new(10, 0, 0, 100), Ipv4Addr::new(10, 0, 0, 199), 3600)
        );
        assert_eq!(options.router, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert!(authoritative);
        assert_eq!(c.tftp.unwrap().0, 69);
        let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/oasis.toml")).unwrap();
        let documented = parse(&example).expect("docs/oasis.toml parses");
        assert_eq!(documented.events, EventLimits::default(), "docs/oasis.toml shows the defaults");
        assert_eq!(c.events, EventLimits::default());
    }

    #[test]
    fn unknown_keys_are_named_with_their_line() {
        let text = GOOD.replace("router = ", "routr = ");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("unknown field `routr`"), "{err}");
        assert!(err.contains("line 10"), "{err}");
    }

    #[test]
    fn nonsense_values_are_explained() {
        let cases = [
            (GOOD.replace("\"10.0.0.100\", \"10.0.0.199\"", "\"10.0.0.199\", \"10.0.0.100\""), "comes after"),
            (GOOD.replace("\"10.0.0.100\", \"10.0.0.199\"", "\"10.0.0.1\", \"10.0.0.199\""), "own address"),
            (GOOD.replace("range = [\"10.0.0.100\", \"10.0.0.199\"]", ""), "dhcp.range is required"),
            (GOOD.replace("10.0.0.50", "192.168.0.50"), "outside the pool's subnet"),
            (GOOD.replace("console=ttyS0", "console=ttyS0\\nshell"), "profile"),
            (GOOD.replace("address = \"10.0.0.1\"", "address = \"10.0.0.300\""), "invalid"),
            (GOOD.replace("mac = \"52:54:00:00:00:01\"", "mac = \"52:54:00\""), "not a MAC address"),
            (format!("version = 2\n{GOOD}"), "version = 2"),
            (format!("{GOOD}\n[cluster]\ncontrol_plane = 2\n"), "must be 1, 3 or 5"),
            (format!("{GOOD}\n[cluster]\nname = \"My Rack\"\n"), "lowercase letters"),
            (format!("{GOOD}\n[cluster]\nprefer = [\"gpus >= 1\"]\n"), "is not a preference"),
            (format!("{GOOD}\n[cluster]\nmesh_prefix = \"10.99.0.0/24\"\n"), "is smaller than"),
            (format!("{GOOD}\n[cluster]\nmesh_prefix = \"10.0.0.0/8\"\n"), "overlaps"),
            (format!("{GOOD}\n[cluster]\ndead_after_secs = 5\n"), "three heartbeats"),
            (format!("{GOOD}\n[events]\nmax_count = 10\n"), "events.max_count"),
            (format!("{GOOD}\n[events]\nmax_age_days = 0\n"), "events.max_age_days"),
            (format!("{GOOD}\n[events]\nmax_mib = 0\n"), "events.max_mib"),
        ];
        for (text, want) in cases {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(want), "wanted {want:?} in: {err}");
        }
    }

    #[test]
    fn without_a_profile_the_node_image_is_served_and_the_overlay_is_checked() {
        let text = GOOD.split("[profile]").next().unwrap().to_string();
        let c = parse(&text).unwrap();
        assert!(c.profile_is_node);
        assert_eq!(c.profile.kernel, NODE_KERNEL);
        assert_eq!(c.wireguard.address, Ipv4Addr::new(10, 99, 0, 1));
        assert_eq!(c.policy, AcceptancePolicy::Auto);
        assert!(!parse(GOOD).unwrap().profile_is_node, "a custom profile gets no agent arguments");

        let allow =
            format!("{text}[registration]\npolicy = \"allowlist\"\nallow = [\"SN-1\", \"52:54:00:00:00:09\"]\n");
        let c = parse(&allow).unwrap();
        assert!(c.allow_serials.contains("sn-1"));
        assert_eq!(c.allow_macs.len(), 1);
        for (prefix, want) in
            [("10.0.0.0/8", "overlaps"), ("10.99.0.0", "ADDRESS/LENGTH"), ("10.99.0.0/31", "ADDRESS/LENGTH")]
        {
            let err = parse(&format!("{text}[wireguard]\nprefix = \"{prefix}\"\n")).unwrap_err().to_string();
            assert!(err.contains(want), "{prefix}: {err}");
        }
    }

    /// Found by the `config_toml` fuzz target's check that what `config check` passes is
    /// servable: `max_transfers = 0` passed, and `oasis serve` then refused to start TFTP.
    #[test]
    fn tftp_settings_the_tftp_server_refuses_are_refused_here() {
        for (tftp, want) in [
            ("max_transfers = 0", "max_transfers is 0"),
            ("max_blksize = 7", "max_blksize is 7"),
            ("max_windowsize = 0", "max_windowsize is 0"),
        ] {
            let err = parse(&format!("{GOOD}\n[tftp]\n{tftp}\n")).unwrap_err().to_string();
            assert!(err.contains(want) && err.contains("line"), "{tftp}: {err}");
        }
        let c = parse(&format!("{GOOD}\n[tftp]\ntimeout_ms = 0\nmax_transfers = 1\n")).unwrap();
        c.tftp.unwrap().1.check().expect("a zero timeout is read as the shortest one");
    }

    #[test]
    fn proxy_mode_needs_no_range() {
        let text = GOOD.replace("range = [\"10.0.0.100\", \"10.0.0.199\"]", "mode = \"proxy\"");
        let c = parse(&text).unwrap();
        assert!(c.dhcp.unwrap().full.is_none());
    }
}
