//! What `oasis.toml` says: serde structs with defaults, unknown keys refused. A value an error
//! may point at is [`Spanned`]: the parser records where it is, so a message names its line.
//! A default value has the empty span `0..0` (it is in no line of the file).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use oasis_proto::MacAddr;
use oasis_pxe::tftp::TftpConfig;
use serde::Deserialize;
use toml::Spanned;

use crate::events::EventLimits;

/// A default value, which is in no line of the file.
pub(super) fn unplaced<T>(value: T) -> Spanned<T> {
    Spanned::new(0..0, value)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default = "default_version")]
    pub version: Spanned<u32>,
    #[serde(default = "default_data_dir")]
    pub data_dir: Spanned<PathBuf>,
    pub network: RawNetwork,
    #[serde(default)]
    pub dhcp: RawDhcp,
    #[serde(default = "default_tftp")]
    pub tftp: Spanned<RawTftp>,
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
    #[serde(default)]
    pub update: RawUpdate,
    #[serde(default)]
    pub power: super::power::RawPower,
}

fn default_version() -> Spanned<u32> {
    unplaced(super::CONFIG_VERSION)
}
fn default_data_dir() -> Spanned<PathBuf> {
    unplaced(PathBuf::from("/var/lib/oasis"))
}
fn default_tftp() -> Spanned<RawTftp> {
    unplaced(RawTftp::default())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNetwork {
    pub interface: Spanned<String>,
    pub address: Spanned<Ipv4Addr>,
    #[serde(default = "default_netmask")]
    pub netmask: Spanned<Ipv4Addr>,
}

fn default_netmask() -> Spanned<Ipv4Addr> {
    unplaced(Ipv4Addr::new(255, 255, 255, 0))
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
    pub mode: Spanned<DhcpMode>,
    pub range: Option<Spanned<[Ipv4Addr; 2]>>,
    pub router: Option<Ipv4Addr>,
    pub dns_servers: Vec<Ipv4Addr>,
    pub domain_name: Option<String>,
    pub ntp_servers: Vec<Ipv4Addr>,
    pub lease_time: Spanned<u32>,
    pub probation: u32,
    pub authoritative: bool,
    pub conflict_check: ConflictCheckKind,
    pub conflict_timeout_ms: u64,
    pub rate_limit: Spanned<u32>,
    pub rate_burst: u32,
    pub reply_delay_ms: u64,
    pub tolerate_missing_uuid: bool,
    pub port: Spanned<u16>,
    pub client_port: u16,
    pub proxy_port: Spanned<u16>,
    pub reservation: Vec<Spanned<RawReservation>>,
}

impl Default for RawDhcp {
    fn default() -> Self {
        Self {
            mode: unplaced(DhcpMode::Full),
            range: None,
            router: None,
            dns_servers: vec![],
            domain_name: None,
            ntp_servers: vec![],
            lease_time: unplaced(3600),
            probation: 600,
            authoritative: true,
            conflict_check: ConflictCheckKind::Arp,
            conflict_timeout_ms: 300,
            rate_limit: unplaced(10),
            rate_burst: 30,
            reply_delay_ms: 0,
            tolerate_missing_uuid: true,
            port: unplaced(67),
            client_port: 68,
            proxy_port: unplaced(4011),
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
    pub port: Spanned<u16>,
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
            port: unplaced(69),
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
    pub port: Spanned<u16>,
}

impl Default for RawHttp {
    fn default() -> Self {
        Self { port: unplaced(80) }
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
    pub kernel: Spanned<String>,
    pub initrd: Option<Spanned<String>>,
    #[serde(default = "default_cmdline")]
    pub cmdline: Spanned<String>,
}

fn default_cmdline() -> Spanned<String> {
    unplaced(String::new())
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
    pub allow: Spanned<Vec<String>>,
}

impl Default for RawRegistration {
    fn default() -> Self {
        Self { policy: AcceptancePolicy::Auto, allow: unplaced(vec![]) }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawWireguard {
    pub interface: Spanned<String>,
    pub port: Spanned<u16>,
    /// The management overlay, `ADDRESS/LEN`; the appliance takes the first address.
    pub prefix: Spanned<String>,
    pub keepalive: u16,
}

impl Default for RawWireguard {
    fn default() -> Self {
        Self {
            interface: unplaced("oasis-wg".into()),
            port: unplaced(oasis_proto::WIREGUARD_PORT),
            prefix: unplaced("10.99.0.0/16".into()),
            keepalive: 15,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawApi {
    pub port: Spanned<u16>,
}

impl Default for RawApi {
    fn default() -> Self {
        Self { port: unplaced(oasis_proto::API_PORT) }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCluster {
    pub name: Spanned<String>,
    pub control_plane: Spanned<usize>,
    pub min_machines: usize,
    pub settle_secs: u64,
    pub prefer: Vec<Spanned<String>>,
    pub mesh_prefix: Spanned<String>,
    pub mesh_keepalive: u16,
    pub dead_after_secs: Spanned<u64>,
    /// A machine silent this long is given up: a voter on it is replaced by a spare (0: never).
    pub replace_after_secs: Spanned<u64>,
    pub data_disk: DataDiskPolicy,
}

impl Default for RawCluster {
    fn default() -> Self {
        Self {
            name: unplaced("oasis".into()),
            control_plane: unplaced(3),
            min_machines: 1,
            settle_secs: 30,
            prefer: vec![],
            mesh_prefix: unplaced("10.98.0.0/16".into()),
            mesh_keepalive: 15,
            dead_after_secs: unplaced(30),
            replace_after_secs: unplaced(1800),
            data_disk: DataDiskPolicy::Blank,
        }
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

/// How many events the store keeps; the oldest go first.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawEvents {
    pub max_count: Spanned<u64>,
    pub max_age_days: Spanned<u64>,
    pub max_mib: Spanned<u64>,
}

impl Default for RawEvents {
    fn default() -> Self {
        let d = EventLimits::default();
        Self {
            max_count: unplaced(d.max_count),
            max_age_days: unplaced(d.max_age.as_secs() / 86_400),
            max_mib: unplaced(d.max_bytes >> 20),
        }
    }
}

/// Update bundles: the public keys (files `oasis config keygen` writes) a bundle may be signed
/// with, besides the appliance image's own trusted key (relative paths are relative to the
/// file), and how node rollouts go.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawUpdate {
    pub trusted_keys: Vec<PathBuf>,
    /// How long a machine has to pass its gates once told to boot its new generation.
    pub rollout_timeout_secs: Spanned<u64>,
    /// Workers moved at the same time.
    pub workers_at_once: Spanned<usize>,
    /// Boot new generations by kexec where the kernel allows it.
    pub kexec: bool,
    /// Machines (ids) that always reboot through the firmware: kexec hangs on some hardware.
    pub no_kexec: Vec<String>,
    /// Install an update bundle found on the OASIS USB stick without asking on the console.
    pub apply_from_stick: bool,
    /// When the appliance reboots into its own update once written ("HH:MM", UTC); at once
    /// without it.
    pub appliance_reboot_at: Option<Spanned<String>>,
}

impl Default for RawUpdate {
    fn default() -> Self {
        RawUpdate {
            trusted_keys: vec![],
            // Real servers can take minutes in their firmware, then etcd catches up.
            rollout_timeout_secs: unplaced(1800),
            workers_at_once: unplaced(1),
            kexec: true,
            no_kexec: vec![],
            apply_from_stick: false,
            appliance_reboot_at: None,
        }
    }
}
