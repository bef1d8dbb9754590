//! Wire types shared by the node agent and the appliance.
//!
//! Everything the two exchange is JSON over HTTPS under `/v1`; this crate is the one definition
//! both sides compile against. A field may be added (old readers ignore it); renaming or removing
//! one needs a `/v2`.
//!
//! The exchange, in order:
//! 1. The agent reads `oasis.api=`, `oasis.token=` and `oasis.pin=` from its kernel command line
//!    ([`KernelArgs`]), connects to the API over TLS and refuses the server unless the SHA-256 of
//!    its certificate's public key matches the pin ([`pin_of`]): a rogue server learns nothing,
//!    not even the join token.
//! 2. `POST /v1/register` with a [`RegisterRequest`] (join token, a fresh nonce, the machine's
//!    WireGuard public key and inventory). The answer, a [`RegisterResponse`], says pending,
//!    accepted or rejected; the agent repeats the request (new nonce) until it is not pending.
//! 3. Accepted: the response carries the machine's own credential and its [`LinkConfig`]. The
//!    agent brings up WireGuard and from then on talks to the appliance only through it, with the
//!    credential as its bearer token: `POST /v1/agent/heartbeat` ([`Heartbeat`]) and
//!    `GET /v1/agent/desired?after=REVISION` ([`DesiredState`], answered when the revision moves
//!    past `after` or after [`WATCH_SECS`]).

mod mac;

use std::net::{Ipv4Addr, SocketAddrV4};

pub use mac::{MacAddr, ParseMacError};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The port of the appliance's HTTPS API (registration, agents, admins).
pub const API_PORT: u16 = 9443;
/// The UDP port of the appliance's WireGuard interface.
pub const WIREGUARD_PORT: u16 = 51820;
/// The largest request body the API reads; anything longer is refused with 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// How long a desired-state watch is held open before it is answered unchanged.
pub const WATCH_SECS: u64 = 25;
/// How often an agent sends a heartbeat over the management link.
pub const HEARTBEAT_SECS: u64 = 5;
/// The UDP port of every node's cluster mesh WireGuard interface (node to node).
pub const MESH_PORT: u16 = 51821;
/// The name of a node's cluster mesh interface.
pub const MESH_INTERFACE: &str = "oasis-mesh";
/// etcd's client and peer ports on every control-plane node.
pub const ETCD_CLIENT_PORT: u16 = 2379;
pub const ETCD_PEER_PORT: u16 = 2380;
/// Everything the appliance tells an agent to write or fetch lives under this directory.
pub const NODE_STATE_DIR: &str = "/var/lib/oasis";
/// Where a node mounts its data disk ([`DataDisk`]); service data there survives a power cycle.
pub const DATA_DISK_MOUNT: &str = "/var/lib/oasis/disk";
/// The label of the filesystem oasis makes on a data disk, and looks for on later boots.
pub const DATA_DISK_LABEL: &str = "oasis-data";

pub const REGISTER_PATH: &str = "/v1/register";
pub const HEARTBEAT_PATH: &str = "/v1/agent/heartbeat";
pub const DESIRED_PATH: &str = "/v1/agent/desired";
/// `GET /v1/agent/artifacts/SHA256`: an artifact by its content hash, inside the link only.
pub const ARTIFACTS_PATH: &str = "/v1/agent/artifacts";

/// The pin of a public key: `sha256:` and the lowercase hex SHA-256 of its DER
/// SubjectPublicKeyInfo, as `oasis.pin=` carries it.
pub fn pin_of(spki_der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(spki_der)))
}

/// The agent's parameters from the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelArgs {
    /// Base URL of the appliance's API, e.g. `https://10.0.0.1:9443`.
    pub api: String,
    pub token: String,
    /// `sha256:HEX`, see [`pin_of`].
    pub pin: String,
}

/// Why a kernel command line does not start an agent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelArgsError {
    #[error("the kernel command line has no {0}= argument: boot this machine from the oasis appliance")]
    Missing(&'static str),
    #[error("oasis.api={0:?} is not an https:// URL")]
    BadApi(String),
    #[error("oasis.pin={0:?} is not sha256: followed by 64 hex digits")]
    BadPin(String),
}

impl KernelArgs {
    /// Parses `/proc/cmdline`. Words without `=` (UEFI firmware puts the image name first) and
    /// unrelated arguments are skipped; a repeated argument takes its last value, as the kernel
    /// does for its own.
    pub fn parse(cmdline: &str) -> Result<KernelArgs, KernelArgsError> {
        let (mut api, mut token, mut pin) = (None, None, None);
        for word in cmdline.split_ascii_whitespace() {
            let Some((key, value)) = word.split_once('=') else { continue };
            match key {
                "oasis.api" => api = Some(value.to_string()),
                "oasis.token" => token = Some(value.to_string()),
                "oasis.pin" => pin = Some(value.to_string()),
                _ => {}
            }
        }
        let api = api.filter(|a| !a.is_empty()).ok_or(KernelArgsError::Missing("oasis.api"))?;
        let token = token.filter(|t| !t.is_empty()).ok_or(KernelArgsError::Missing("oasis.token"))?;
        let pin = pin.ok_or(KernelArgsError::Missing("oasis.pin"))?;
        if !api.starts_with("https://") {
            return Err(KernelArgsError::BadApi(api));
        }
        let hex = pin.strip_prefix("sha256:").unwrap_or("");
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(KernelArgsError::BadPin(pin));
        }
        Ok(KernelArgs { api: api.trim_end_matches('/').to_string(), token, pin })
    }
}

/// Whether an SMBIOS system UUID identifies one machine: 32 hex digits (dashes ignored), and not
/// one of the placeholders many boards share: all zeros, all F, or
/// `03000200-0400-0500-0006-000700080009`, which boards from one firmware vendor ship unchanged.
/// The agent drops a UUID that fails this; the appliance checks again, since it trusts no agent.
pub fn usable_smbios_uuid(uuid: &str) -> bool {
    let digits: String = uuid.chars().filter(|c| *c != '-').collect::<String>().to_ascii_lowercase();
    digits.len() == 32
        && digits.chars().all(|c| c.is_ascii_hexdigit())
        && !digits.chars().all(|c| c == '0')
        && !digits.chars().all(|c| c == 'f')
        && digits != "03000200040005000006000700080009"
}

/// What a machine is, as its agent reads it from `/sys` and `/proc`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    pub system: System,
    pub cpus: u32,
    pub cpu_model: Option<String>,
    pub memory_bytes: u64,
    pub disks: Vec<Disk>,
    pub nics: Vec<Nic>,
    pub boot_mode: BootMode,
    /// The machine's own BMC, when its kernel sees one (`/dev/ipmi0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bmc: Option<LocalBmc>,
}

/// A machine's BMC as its agent reads it through the kernel's IPMI driver (the system interface,
/// no credentials needed): who it is and where it answers on the network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalBmc {
    /// The IPMI version it speaks (`2.0`).
    pub ipmi_version: String,
    /// Its IANA manufacturer number (Get Device ID).
    pub manufacturer: u32,
    /// Its firmware revision (`9.8`).
    pub firmware: String,
    /// The channel of its LAN interface (802.3), if it has one.
    pub lan_channel: Option<u8>,
    /// The IPv4 address it answers on there; `None` when it has none (0.0.0.0).
    pub address: Option<Ipv4Addr>,
    /// How it got that address: `static`, `dhcp`, `bios`, `other`, `unspecified`.
    pub address_source: Option<String>,
    /// Its LAN MAC address, `aa:bb:cc:dd:ee:ff`; `None` when it reports none (all zero).
    pub mac: Option<String>,
    /// What could not be read, when something could not (the rest is still reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// SMBIOS identity (`/sys/class/dmi/id`). Each is `None` when absent, unreadable or a
/// placeholder such as "To Be Filled By O.E.M." or an all-zero UUID.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct System {
    pub uuid: Option<String>,
    pub serial: Option<String>,
    pub vendor: Option<String>,
    pub product: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// Kernel name, e.g. `vda`, `nvme0n1`.
    pub name: String,
    pub size_bytes: u64,
    pub model: Option<String>,
    pub rotational: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    pub name: String,
    /// `aa:bb:cc:dd:ee:ff`
    pub mac: String,
    pub driver: Option<String>,
    pub speed_mbps: Option<u32>,
    pub link: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootMode {
    #[default]
    Bios,
    Uefi,
}

/// `POST /v1/register`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// The join token from `oasis.token=`.
    pub token: String,
    /// Random, new for every request: the appliance refuses one it has seen (replay).
    pub nonce: String,
    /// The MAC of the interface the machine booted from, `aa:bb:cc:dd:ee:ff`.
    pub boot_mac: String,
    /// The machine's WireGuard public key, base64.
    pub wireguard_key: String,
    pub agent_version: String,
    pub inventory: Inventory,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MachineState {
    Pending,
    Accepted,
    Rejected,
}

impl std::fmt::Display for MachineState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MachineState::Pending => "pending",
            MachineState::Accepted => "accepted",
            MachineState::Rejected => "rejected",
        })
    }
}

/// The answer to a registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub machine_id: String,
    pub state: MachineState,
    /// For people: why pending or rejected, what an operator can do.
    pub message: String,
    /// Only when accepted: the bearer token for `/v1/agent/*`, valid only from `link.address`.
    pub credential: Option<String>,
    /// Only when accepted.
    pub link: Option<LinkConfig>,
    /// Only when accepted, and only when the appliance has no way to this machine's BMC yet and
    /// its config allows it (`[power] agent_creates_user`): the user name the agent is to make
    /// on its BMC, with a password of its own choosing, reported in a heartbeat
    /// ([`Heartbeat::bmc_account`]). Absent from appliances before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bmc_user: Option<String>,
}

/// What came of making the user a registration asked for ([`RegisterResponse::bmc_user`]) on
/// the machine's BMC. Sent in heartbeats until one is answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BmcAccount {
    pub user: String,
    /// The BMC's LAN address, where it answers IPMI (port 623).
    pub address: Option<Ipv4Addr>,
    /// Set when the user was made, its password tested by the BMC.
    pub password: Option<BmcPassword>,
    /// Set when it was not: what went wrong.
    pub error: Option<String>,
}

/// A BMC password: shown in no `Debug` output, so no log line carries it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BmcPassword(pub String);

impl std::fmt::Debug for BmcPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BmcPassword(..)")
    }
}

/// The machine's side of its WireGuard management link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkConfig {
    /// The appliance's WireGuard public key, base64.
    pub appliance_key: String,
    /// Where the appliance's WireGuard listens on the rack network.
    pub endpoint: SocketAddrV4,
    /// The machine's overlay address.
    pub address: Ipv4Addr,
    /// The overlay prefix length; the whole overlay is routed through the link.
    pub prefix_len: u8,
    /// The appliance's overlay address: the API is at `https://APPLIANCE_ADDRESS:API_PORT`.
    pub appliance_address: Ipv4Addr,
    pub keepalive_secs: u16,
}

/// `POST /v1/agent/heartbeat`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// What the agent is doing, e.g. `linked`.
    pub phase: String,
    pub uptime_secs: u64,
    pub last_error: Option<String>,
    /// The desired-state revision the agent has applied.
    pub applied_revision: u64,
    /// The agent's resident memory, for `oasis machines` and the benchmarks. Added after v1's
    /// first release: absent from older agents.
    #[serde(default)]
    pub rss_bytes: Option<u64>,
    /// Where this machine's mesh interface can be reached on the rack network (its boot address
    /// and [`MESH_PORT`]); the appliance gives it to the other nodes as this one's endpoint.
    #[serde(default)]
    pub mesh_endpoint: Option<SocketAddrV4>,
    /// The mesh peers as the kernel reports them.
    #[serde(default)]
    pub mesh: Vec<MeshPeerStatus>,
    /// Every service the desired state asked for.
    #[serde(default)]
    pub services: Vec<ServiceStatus>,
    /// The data disk the desired state asked for.
    #[serde(default)]
    pub data_disk: Option<DataDiskStatus>,
    /// The running kernel's release (`uname -r`, e.g. `6.12.118+deb13-amd64`): which node
    /// generation's kernel the machine booted. Absent from older agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// The node generation this boot runs, as the boot script named it on the kernel command
    /// line ([`GENERATION_ARG`]). Absent from older agents and from boots without the argument.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// The user made on this machine's BMC, once, when a registration asked for one; the
    /// appliance takes it out before it keeps the heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bmc_account: Option<BmcAccount>,
    /// This boot wiped its data disk, as a reboot request asked ([`RebootRequest::wipe_data`]),
    /// and reboots now.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub data_disk_wiped: bool,
}

/// The kernel command-line argument that names the node generation a boot runs:
/// `oasis.generation=N`.
pub const GENERATION_ARG: &str = "oasis.generation";

/// The kernel command-line argument that names where the appliance serves boot scripts over HTTP,
/// `oasis.boot=http://ADDRESS[:PORT]`: an agent asked to kexec fetches its own script from
/// `BASE/boot.ipxe?mac=M` the way the firmware does.
pub const BOOT_URL_ARG: &str = "oasis.boot";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataDiskStatus {
    pub device: String,
    /// Mounted at [`DATA_DISK_MOUNT`].
    pub mounted: bool,
    /// This boot made the filesystem (the disk was blank, or wiping was allowed).
    pub formatted: bool,
    /// For people: why it is not mounted.
    pub message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshPeerStatus {
    /// The peer's WireGuard public key, base64.
    pub key: String,
    /// Seconds since the last handshake with the peer; `None` when there has been none.
    pub handshake_age_secs: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    /// The [`ServiceSpec::generation`] this status describes.
    pub generation: u64,
    pub state: ServiceState,
    /// Times the agent has restarted the process since the generation began.
    pub restarts: u32,
    /// For people: why it failed, what it waits for, the last lines it wrote.
    pub message: Option<String>,
    /// Whether the service's data lives on volatile memory (tmpfs): lost when the machine
    /// powers off.
    pub volatile_data: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceState {
    /// Fetching or verifying its artifacts.
    Fetching,
    /// Artifacts verified and files written; not started because the spec says `run: false`.
    Prepared,
    Running,
    /// The process exited; the agent restarts it after a pause.
    Exited,
    /// Cannot be prepared (an artifact does not match its hash, a file cannot be written): the
    /// agent retries, the message says why.
    Failed,
}

/// What the appliance wants a machine to be. Until cluster assembly picks a role for it, a
/// machine is `unassigned` with no mesh and no services.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredState {
    pub revision: u64,
    pub role: Role,
    /// The name of the cluster the machine belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<MeshConfig>,
    /// The processes the machine runs (etcd, k3s), complete: a service not listed is stopped and
    /// its files removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceSpec>,
    /// A local disk for service data, mounted at [`DATA_DISK_MOUNT`] before services start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_disk: Option<DataDisk>,
    /// Boot into another node generation. Absent from appliances before node rollouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot: Option<RebootRequest>,
}

/// Asks one boot of a machine to boot again into a node generation: its services are stopped,
/// its data disk unmounted, then the machine reboots through the network boot path (whose script
/// now names `generation`) or, with `kexec`, loads that script's kernel and initramfs itself and
/// jumps into them.
///
/// Addressed to one boot (`boot`, the WireGuard key the machine made in that boot): the boot that
/// follows has another key and ignores it, so a desired state published again after the reboot
/// never reboots the machine a second time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebootRequest {
    pub generation: u64,
    /// The WireGuard public key of the boot that is to reboot.
    pub boot: String,
    /// Jump into the new kernel without the firmware (kexec); on failure the agent falls back
    /// to a reboot.
    pub kexec: bool,
    /// Power the machine off instead of booting it again (an operator's `oasis machine power off`
    /// of a machine without a BMC). Absent from appliances before power control.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub power_off: bool,
    /// Wipe the data disk before rebooting (`oasis machine reprovision`): its filesystem's
    /// first and last MiB are zeroed, so the next boot finds it blank. The agent says so in a
    /// heartbeat ([`Heartbeat::data_disk_wiped`]) before it reboots.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub wipe_data: bool,
}

/// A disk the agent makes into its data disk: it mounts one that already has the
/// [`DATA_DISK_LABEL`] filesystem, formats a blank one, and formats one holding anything else only
/// when `wipe` says so (the operator allowed it for accepted machines).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataDisk {
    /// Kernel name, e.g. `vda`, `sda`, `nvme0n1`.
    pub device: String,
    pub wipe: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    #[default]
    Unassigned,
    ControlPlane,
    Worker,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Unassigned => "unassigned",
            Role::ControlPlane => "control-plane",
            Role::Worker => "worker",
        })
    }
}

/// The node's side of the cluster mesh: a WireGuard interface ([`MESH_INTERFACE`]) with the
/// machine's own key, listening on [`MESH_PORT`], with every other node as a peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshConfig {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub keepalive_secs: u16,
    pub peers: Vec<MeshPeer>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshPeer {
    pub machine_id: String,
    /// WireGuard public key, base64.
    pub key: String,
    pub endpoint: SocketAddrV4,
    /// The peer's mesh address; the only address allowed from it.
    pub address: Ipv4Addr,
}

/// A process the agent runs and keeps running. The appliance decides everything about it (its
/// command line, its configuration files); the agent fetches, verifies, writes, starts and
/// restarts, and reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// `etcd`, `k3s`.
    pub name: String,
    /// Changes whenever anything below changes: the agent restarts the process (with fresh files)
    /// when the generation it runs differs.
    pub generation: u64,
    /// Fetched from [`ARTIFACTS_PATH`] and verified before anything starts; the first is the
    /// program.
    pub artifacts: Vec<Artifact>,
    /// Written (replacing what is there) before the process starts.
    pub files: Vec<FileSpec>,
    /// Created empty if missing; the service's data. Each must lie under [`NODE_STATE_DIR`].
    pub data_dirs: Vec<String>,
    /// The arguments after the program.
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// `false`: fetch and write everything, then wait (reported as `prepared`).
    pub run: bool,
}

/// A file the appliance serves by content hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// Lowercase hex SHA-256 of the content; also its name under [`ARTIFACTS_PATH`].
    pub sha256: String,
    pub size: u64,
    /// Where the agent puts it; must lie under [`NODE_STATE_DIR`].
    pub path: String,
    /// Unix permission bits, e.g. `0o755`.
    pub mode: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSpec {
    /// Must lie under [`NODE_STATE_DIR`].
    pub path: String,
    pub mode: u32,
    pub contents: String,
}

/// Whether `path` is absolute, lies under [`NODE_STATE_DIR`] and has no `.`, `..` or empty
/// component: the only paths an agent writes for the appliance.
pub fn is_node_state_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix(NODE_STATE_DIR).and_then(|r| r.strip_prefix('/')) else { return false };
    !rest.is_empty() && rest.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

/// The body of every 4xx/5xx answer from the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// An error and each of its causes, once each, joined by `": "`: `a: b: c`. The one way oasis
/// renders an error as text (on stderr, in a heartbeat's `last_error`, on a console, in an
/// event). Every message says only its own part and keeps its cause as its `source()`, so nothing
/// is printed twice; a cause whose text its wrapper already ends with (a `transparent` layer, or
/// a message that still repeats its source) is skipped.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !part.is_empty() && !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("cannot read {path}")]
    struct ReadError {
        path: String,
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("the configuration")]
        Config(#[source] ReadError),
        #[error(transparent)]
        Transparent(#[from] ReadError),
    }

    #[test]
    fn error_chain_prints_each_cause_once() {
        let io = || std::io::Error::from_raw_os_error(2);
        let read = ReadError { path: "/missing.toml".into(), source: io() };
        let expected = format!("cannot read /missing.toml: {}", io());
        assert_eq!(error_chain(&read), expected);
        let outer = Outer::Config(ReadError { path: "/missing.toml".into(), source: io() });
        assert_eq!(error_chain(&outer), format!("the configuration: {expected}"));
        // A transparent layer shows its cause's text; the cause is not added again.
        let transparent = Outer::from(ReadError { path: "/missing.toml".into(), source: io() });
        assert_eq!(error_chain(&transparent), expected);
    }

    use super::*;

    const PIN: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn kernel_args_skip_the_image_name_and_other_words() {
        let line = format!("vmlinuz initrd=initrd.img console=ttyS0 oasis.api=https://10.0.0.1:9443/ oasis.token=abc oasis.pin={PIN} quiet");
        let args = KernelArgs::parse(&line).unwrap();
        assert_eq!(args, KernelArgs { api: "https://10.0.0.1:9443".into(), token: "abc".into(), pin: PIN.into() });
    }

    #[test]
    fn kernel_args_refuse_what_cannot_be_trusted() {
        let ok = format!("oasis.api=https://a oasis.token=t oasis.pin={PIN}");
        assert!(KernelArgs::parse(&ok).is_ok());
        assert_eq!(KernelArgs::parse("oasis.token=t"), Err(KernelArgsError::Missing("oasis.api")));
        assert_eq!(
            KernelArgs::parse(&format!("oasis.api=https://a oasis.token= oasis.pin={PIN}")),
            Err(KernelArgsError::Missing("oasis.token"))
        );
        assert!(matches!(
            KernelArgs::parse(&format!("oasis.api=http://a oasis.token=t oasis.pin={PIN}")),
            Err(KernelArgsError::BadApi(_))
        ));
        for pin in ["sha256:00", "md5:0123", &PIN.to_uppercase(), &format!("{PIN}0")] {
            let line = format!("oasis.api=https://a oasis.token=t oasis.pin={pin}");
            assert!(matches!(KernelArgs::parse(&line), Err(KernelArgsError::BadPin(_))), "{pin}");
        }
    }

    #[test]
    fn pins_are_sha256_of_the_key() {
        assert_eq!(pin_of(b""), "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }

    #[test]
    fn wire_names_are_stable() {
        let r = RegisterResponse {
            machine_id: "m".into(),
            state: MachineState::Pending,
            message: String::new(),
            credential: None,
            link: None,
            bmc_user: None,
        };
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains(r#""state":"pending""#), "{json}");
        let d = DesiredState { revision: 1, ..DesiredState::default() };
        assert_eq!(serde_json::to_string(&d).unwrap(), r#"{"revision":1,"role":"unassigned"}"#);
        let old: DesiredState = serde_json::from_str(r#"{"revision":1,"role":"control-plane"}"#).unwrap();
        assert_eq!(old.role, Role::ControlPlane);
        let hb: Heartbeat =
            serde_json::from_str(r#"{"phase":"linked","uptime_secs":1,"last_error":null,"applied_revision":0}"#)
                .unwrap();
        assert!(hb.services.is_empty() && hb.mesh_endpoint.is_none());
    }

    #[test]
    fn node_state_paths_stay_under_the_state_dir() {
        assert!(is_node_state_path("/var/lib/oasis/etcd/data"));
        for bad in [
            "/var/lib/oasis",
            "/var/lib/oasis/",
            "/var/lib/oasisx/a",
            "/etc/passwd",
            "/var/lib/oasis/../x",
            "/var/lib/oasis/a//b",
            "/var/lib/oasis/./a",
            "var/lib/oasis/a",
        ] {
            assert!(!is_node_state_path(bad), "{bad}");
        }
    }
}
