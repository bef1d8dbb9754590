//! Registration: who a registering machine is, whether it may join, and what it is given.
//!
//! The [`Registry`] is the decision logic over the machine records, with no I/O: the API hands it
//! a request, it answers with the records to commit, the events to record and the reply; the
//! caller commits before it replies. Its rules:
//!
//! - **Identity.** A machine is its SMBIOS system UUID; a machine without a usable one (absent or a
//!   placeholder) is its boot MAC (`mac-aabbccddeeff`).
//! - **Tokens.** A registration carries the per-boot token of its claimed boot MAC (the one the
//!   boot script last served for that MAC carried; see `oasis_appliance::netboot`) or the join token, which
//!   no boot script carries any more and which boot media made by an operator may. Anything else,
//!   including another MAC's per-boot token, is refused (401) and recorded. Either only starts a
//!   registration.
//! - **The wire.** In full DHCP mode a registration must come from the address leased to the boot
//!   MAC it claims, and a per-boot token only from the address its script went to (403 otherwise,
//!   recorded). In proxy mode (or with DHCP off) there is no lease to check against.
//! - **Policy.** `auto` accepts every machine with the token; `allowlist` accepts machines whose
//!   serial or boot MAC is listed and leaves others pending; `manual` leaves every new machine
//!   pending until an operator accepts it. A rejected machine stays rejected until removed.
//! - **Credential.** Each registration that finds its machine accepted gets a fresh credential
//!   (the previous one stops working) and the link configuration. Only its SHA-256 is kept, so a
//!   copy of the store or a log grants nothing. Rotating the join token does not touch credentials.
//! - **Replay.** A nonce already seen for that machine is refused (409).
//! - **A new WireGuard key** for a known machine (it rebooted: netbooted machines make a new key
//!   each boot) replaces the old one, keeps the machine's state and overlay address, and is an event.
//!   Not while an accepted machine is alive on its link (a heartbeat or a WireGuard handshake in
//!   the last [`LINK_SILENCE_SECS`]): a live machine is never re-keyed by a registration alone, so
//!   that is refused (409) and recorded. A machine that really rebooted is silent by the time its
//!   agent asks again.
//! - **A duplicate identity** (the UUID of a registered machine from another boot MAC: cloned
//!   firmware, or the same machine booting from another NIC) is refused (409) with an event; the
//!   operator resolves it with `oasis machine remove ID`. Never merged, never a second record.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4};

use oasis_proto::MacAddr;
use oasis_proto::{Heartbeat, Inventory, LinkConfig, MachineState, RegisterRequest, RegisterResponse};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How long an accepted machine counts as alive on its link after its last heartbeat or WireGuard
/// handshake: three missed heartbeats.
pub const LINK_SILENCE_SECS: u64 = 3 * oasis_proto::HEARTBEAT_SECS;

/// How many recent nonces a record keeps for replay detection.
const NONCES_KEPT: usize = 64;
/// Largest accepted length of any string in a registration, and of any list.
const MAX_STRING: usize = 256;
const MAX_LIST: usize = 256;

/// Who gets accepted without an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    Auto,
    /// Serial numbers (case-insensitive) and boot MACs.
    Allowlist {
        serials: HashSet<String>,
        macs: HashSet<MacAddr>,
    },
    Manual,
}

impl Policy {
    /// Why this machine is accepted by policy, or `None` when it waits for an operator.
    fn accepts(&self, record: &MachineRecord) -> Option<&'static str> {
        match self {
            Policy::Auto => Some("acceptance policy auto"),
            Policy::Allowlist { serials, macs } => {
                let serial = record.inventory.system.serial.as_deref().map(str::to_lowercase);
                if serial.is_some_and(|s| serials.contains(&s)) {
                    Some("serial on the allow-list")
                } else if macs.contains(&record.boot_mac) {
                    Some("MAC on the allow-list")
                } else {
                    None
                }
            }
            Policy::Manual => None,
        }
    }

    fn pending_message(&self, id: &str) -> String {
        let how = format!("accept it with `oasis machine accept {id}`");
        match self {
            Policy::Auto => String::new(),
            Policy::Allowlist { .. } => format!("not on the allow-list (serial or MAC): {how}"),
            Policy::Manual => format!("acceptance policy is manual: {how}"),
        }
    }
}

/// One registered machine, as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineRecord {
    pub id: String,
    pub state: MachineState,
    pub boot_mac: MacAddr,
    /// Base64 WireGuard public key of the machine's current boot.
    pub wireguard_key: String,
    pub inventory: Inventory,
    pub agent_version: String,
    /// Given on first acceptance, kept for the machine's life.
    pub overlay: Option<Ipv4Addr>,
    /// Hex SHA-256 of the current credential.
    pub credential_sha256: Option<String>,
    pub first_registered: u64,
    pub last_registered: u64,
    /// Why the machine is in its state, for people.
    pub reason: String,
    pub recent_nonces: Vec<String>,
    /// An operator's `oasis machine reprovision` under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reprovision: Option<Reprovision>,
}

/// A machine an operator wants clean: its member leaves the cluster (quorum kept), its agent
/// wipes its data disk and reboots it through the network, and it comes back as a fresh spare.
/// Kept in the machine's record, so an appliance restarted in between carries on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reprovision {
    /// Unix seconds.
    pub asked_at: u64,
    /// The boot (its WireGuard key) that is to leave, be wiped and reboot.
    pub boot: String,
    /// That boot said its data disk is wiped (it reboots next).
    pub wiped: bool,
    /// Passed on once already from a boot that went down without its wipe: not again (an agent
    /// that cannot wipe must not reboot the machine in a loop).
    #[serde(default)]
    pub passed_on: bool,
}

/// Why an agent's call is not answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("unknown or replaced credential: register again")]
    UnknownCredential,
    #[error("this machine is not accepted")]
    NotAccepted,
    #[error("agent calls are answered only inside the machine's management link")]
    OutsideLink,
}

/// A heartbeat as the appliance last heard it; kept in memory only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastHeartbeat {
    pub at: u64,
    pub heartbeat: Heartbeat,
}

/// The per-boot token last issued for a boot MAC, as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootToken {
    /// Hex SHA-256 of the token; the token itself went out in the boot script only.
    pub sha256: String,
    /// The address the boot script went to.
    pub issued_to: Option<Ipv4Addr>,
    pub issued_at: u64,
}

/// What a registration's source address is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leases {
    /// This appliance hands out no addresses (proxy mode, DHCP off): nothing to check against.
    NotOurs,
    /// Full DHCP mode: the address bound to the claimed boot MAC now, if it holds one.
    Bound(Option<Ipv4Addr>),
}

/// What the appliance saw on the wire around a registration, looked up by the caller for the
/// boot MAC the registration claims.
#[derive(Debug, Clone)]
pub struct Wire {
    /// The registration's source address.
    pub from: Ipv4Addr,
    pub leases: Leases,
    /// The per-boot token last issued for the claimed boot MAC.
    pub boot_token: Option<BootToken>,
    /// Seconds since the last WireGuard handshake, by peer key (base64).
    pub handshakes: HashMap<String, u64>,
}

/// Something worth an event in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Happening {
    pub kind: &'static str,
    pub mac: Option<MacAddr>,
    pub message: String,
}

/// The outcome of a registration.
#[derive(Debug)]
pub enum Registration {
    /// Commit `record`, then reply with `response`. `old_key` is a WireGuard key to drop.
    Answer {
        record: Box<MachineRecord>,
        response: RegisterResponse,
        old_key: Option<String>,
        happenings: Vec<Happening>,
    },
    /// Refuse with this message; record the happening if any. What status answers it is the
    /// operator table's business (`oasis_appliance::operator::ActionError`), not the registry's.
    Refuse { kind: RefusalKind, message: String, happening: Option<Happening> },
}

/// Why a registration was refused, in kinds the protocol table maps to answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// The request's shape is wrong (a field that does not parse, a string too long).
    Malformed,
    /// Neither the machine's boot token nor the join token.
    WrongToken,
    /// Not from where the appliance handed the machine its address or its boot token.
    WrongPlace,
    /// A duplicate identity, a replay, or a new key for a machine alive on its link.
    Conflict,
}

impl RefusalKind {
    /// The HTTP status the API answers a refusal of this kind with, as the rules above say; the
    /// operator's error table (`oasis_appliance::operator`) answers with it.
    pub fn http_status(self) -> u16 {
        match self {
            RefusalKind::Malformed => 400,
            RefusalKind::WrongToken => 401,
            RefusalKind::WrongPlace => 403,
            RefusalKind::Conflict => 409,
        }
    }
}

/// A machine named by an operator that is not exactly one machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FindError {
    #[error("no machine {0:?}: `oasis machines` lists them")]
    Unknown(String),
    #[error("{what:?} matches {} machines ({}): give more of the id", ids.len(), ids.join(", "))]
    Ambiguous { what: String, ids: Vec<String> },
}

/// An operator's decision the registry cannot make.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecideError {
    #[error(transparent)]
    Find(#[from] FindError),
    #[error(transparent)]
    PoolExhausted(#[from] PoolExhausted),
    #[error("a machine cannot be set back to pending: accept it, reject it, or remove it")]
    BackToPending,
}

/// Every address of the management prefix is taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "no free overlay address in the /{prefix_len} management prefix: widen wireguard.prefix in oasis.toml, or \
     remove machines that are gone (`oasis machine remove ID`)"
)]
pub struct PoolExhausted {
    pub prefix_len: u8,
}

/// The overlay network of the management links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlay {
    /// The appliance's own overlay address; the first of the prefix.
    pub appliance: Ipv4Addr,
    pub prefix_len: u8,
    /// The appliance's WireGuard endpoint on the rack network.
    pub endpoint: SocketAddrV4,
    pub appliance_key: String,
    pub keepalive_secs: u16,
}

impl Overlay {
    fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> {
        // Every address but the network's and the broadcast's (none left on a /31 or /32).
        let net = ipnet::Ipv4Net::new(self.appliance, self.prefix_len.min(32)).unwrap_or_default();
        let (first, last) = (u32::from(net.network()).saturating_add(1), u32::from(net.broadcast()));
        (first..last).map(Ipv4Addr::from)
    }

    fn link(&self, address: Ipv4Addr) -> LinkConfig {
        LinkConfig {
            appliance_key: self.appliance_key.clone(),
            endpoint: self.endpoint,
            address,
            prefix_len: self.prefix_len,
            appliance_address: self.appliance,
            keepalive_secs: self.keepalive_secs,
        }
    }
}

/// The machine id for an inventory and boot MAC.
pub fn machine_id(inventory: &Inventory, boot_mac: MacAddr) -> String {
    match inventory.system.uuid.as_deref().map(str::to_lowercase) {
        Some(uuid) if oasis_proto::usable_smbios_uuid(&uuid) => uuid,
        _ => format!("mac-{}", boot_mac.to_string().replace(':', "")),
    }
}

/// The SHA-256, hex, of a credential.
pub fn credential_hash(credential: &str) -> String {
    hex::encode(Sha256::digest(credential.as_bytes()))
}

/// Compares secrets without leaking where they differ through timing.
pub fn secrets_equal(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks the shape of a registration, before anything else looks at it.
fn validate(req: &RegisterRequest) -> Result<MacAddr, String> {
    let mac: MacAddr = req
        .boot_mac
        .parse()
        .map_err(|_| format!("boot_mac {:?} is not a MAC address", crate::events::truncate(&req.boot_mac, 40)))?;
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD
        .decode(&req.wireguard_key)
        .map_err(|_| "wireguard_key is not base64".to_string())?;
    if key.len() != 32 {
        return Err(format!("wireguard_key is {} bytes, a WireGuard key is 32", key.len()));
    }
    if !(16..=128).contains(&req.nonce.len()) {
        return Err("nonce must be 16 to 128 characters".into());
    }
    let inv = &req.inventory;
    let strings = [
        Some(&req.agent_version),
        inv.system.uuid.as_ref(),
        inv.system.serial.as_ref(),
        inv.system.vendor.as_ref(),
        inv.system.product.as_ref(),
        inv.cpu_model.as_ref(),
    ];
    let listed = inv
        .disks
        .iter()
        .flat_map(|d| [Some(&d.name), d.model.as_ref()])
        .chain(inv.nics.iter().flat_map(|n| [Some(&n.name), Some(&n.mac), n.driver.as_ref()]));
    if strings.into_iter().chain(listed).flatten().any(|s| s.len() > MAX_STRING) {
        return Err(format!("a string in the registration is longer than {MAX_STRING} bytes"));
    }
    if inv.disks.len() > MAX_LIST || inv.nics.len() > MAX_LIST {
        return Err(format!("more than {MAX_LIST} disks or NICs"));
    }
    Ok(mac)
}

/// Checks a registration for `mac` against what the appliance handed out on the wire: in full DHCP
/// mode it comes from `mac`'s lease, and a per-boot token (`boot_token`, when that is what it
/// carries) from the address its script went to.
fn check_wire(mac: MacAddr, boot_token: Option<&BootToken>, wire: &Wire) -> Result<(), String> {
    let Leases::Bound(leased) = wire.leases else { return Ok(()) };
    let from = wire.from;
    match leased {
        Some(address) if address == from => {}
        Some(address) => {
            return Err(format!(
                "{mac} holds {address} on the rack network, and this registration comes from {from}: a machine \
                 registers from the address this appliance leased it"
            ))
        }
        None => {
            return Err(format!(
                "{mac} holds no address from this appliance, and this registration comes from {from}: a machine \
                 registers from the address this appliance leased it; boot it from this appliance"
            ))
        }
    }
    match boot_token.and_then(|t| t.issued_to) {
        Some(issued_to) if issued_to != from => Err(format!(
            "this boot's token for {mac} went to {issued_to}, and this registration comes from {from}: boot the \
             machine from this appliance again"
        )),
        _ => Ok(()),
    }
}

/// A registration refused by one of the checks, as [`Registration::Refuse`] carries it.
#[derive(Debug)]
struct Refused {
    kind: RefusalKind,
    message: String,
    happening: Option<Happening>,
}

/// What an admitted registration updates: its boot MAC, the record, the WireGuard key to drop,
/// and the events so far.
type Found = (MacAddr, MachineRecord, Option<String>, Vec<Happening>);

/// The registered machines and the rules above. Lives in memory; every change it makes is
/// returned to the caller to commit.
#[derive(Debug)]
pub struct Registry {
    pub policy: Policy,
    pub overlay: Overlay,
    records: HashMap<String, MachineRecord>,
    heartbeats: HashMap<String, LastHeartbeat>,
}

impl Registry {
    pub fn new(policy: Policy, overlay: Overlay, records: Vec<MachineRecord>) -> Registry {
        let records = records.into_iter().map(|r| (r.id.clone(), r)).collect();
        Registry { policy, overlay, records, heartbeats: HashMap::new() }
    }

    pub fn records(&self) -> impl Iterator<Item = &MachineRecord> {
        self.records.values()
    }

    pub fn get(&self, id: &str) -> Option<&MachineRecord> {
        self.records.get(id)
    }

    pub fn heartbeat_of(&self, id: &str) -> Option<&LastHeartbeat> {
        self.heartbeats.get(id)
    }

    /// Finds a machine by id, unique id prefix, or boot MAC.
    pub fn find(&self, what: &str) -> Result<&MachineRecord, FindError> {
        if let Some(r) = self.records.get(what) {
            return Ok(r);
        }
        if let Ok(mac) = what.parse::<MacAddr>() {
            if let Some(r) = self.records.values().find(|r| r.boot_mac == mac) {
                return Ok(r);
            }
        }
        let matches: Vec<_> = self.records.values().filter(|r| r.id.starts_with(what)).collect();
        match matches.as_slice() {
            [one] => Ok(one),
            [] => Err(FindError::Unknown(what.to_string())),
            _ => {
                let mut ids: Vec<String> = matches.iter().map(|r| r.id.clone()).collect();
                ids.sort();
                Err(FindError::Ambiguous { what: what.to_string(), ids })
            }
        }
    }

    /// Decides a registration. `token` is the current join token; `credential` a fresh random
    /// credential, used only if the machine is accepted; `wire` what was seen of the claimed
    /// machine on the rack network.
    pub fn register(
        &self,
        req: &RegisterRequest,
        token: &str,
        credential: &str,
        wire: &Wire,
        now: u64,
    ) -> Registration {
        let (mac, mut record, old_key, mut happenings) =
            match self.admitted(req, token, wire).and_then(|mac| self.record_for(req, mac, wire, now)) {
                Ok(found) => found,
                Err(Refused { kind, message, happening }) => return Registration::Refuse { kind, message, happening },
            };
        let id = record.id.clone();
        if let Some(asked) = record.reprovision.take() {
            match (asked.boot == req.wireguard_key, asked.wiped) {
                // The same boot registering again: still under way.
                (true, _) => record.reprovision = Some(asked),
                (false, true) => happenings.push(Happening {
                    kind: "machine-reprovisioned",
                    mac: Some(mac),
                    message: format!("{id} booted again with its data disk wiped: a fresh spare"),
                }),
                // It rebooted before its wipe (a crash, a power cut): this boot is wiped instead,
                // once.
                (false, false) if !asked.passed_on => {
                    record.reprovision =
                        Some(Reprovision { boot: req.wireguard_key.clone(), passed_on: true, ..asked });
                }
                (false, false) => happenings.push(Happening {
                    kind: "machine-reprovision-stopped",
                    mac: Some(mac),
                    message: format!(
                        "{id} booted again twice without wiping its data disk: its reprovisioning is stopped (a \
                         spare now, its disk as it was); see its console, then ask again"
                    ),
                }),
            }
        }
        record.inventory = req.inventory.clone();
        record.agent_version = req.agent_version.clone();
        record.last_registered = now;
        record.recent_nonces.push(req.nonce.clone());
        if record.recent_nonces.len() > NONCES_KEPT {
            record.recent_nonces.remove(0);
        }
        if record.state == MachineState::Pending {
            match self.policy.accepts(&record) {
                Some(why) => {
                    if let Err(e) = self.accept_into(&mut record, why, &mut happenings) {
                        record.reason = e.to_string();
                    }
                }
                None => record.reason = self.policy.pending_message(&id),
            }
        }
        let (credential, link) = match (record.state, record.overlay) {
            (MachineState::Accepted, Some(address)) => {
                record.credential_sha256 = Some(credential_hash(credential));
                (Some(credential.to_string()), Some(self.overlay.link(address)))
            }
            _ => (None, None),
        };
        debug_assert_eq!(record.boot_mac, mac);
        let response = RegisterResponse {
            machine_id: id,
            state: record.state,
            message: record.reason.clone(),
            credential,
            link,
            // The appliance's power control decides.
            bmc_user: None,
        };
        Registration::Answer { record: Box::new(record), response, old_key, happenings }
    }

    /// The first checks of a registration, in order: its token (the claimed machine's boot token,
    /// or the join token), its shape, and what was seen on the wire. The boot MAC it claims.
    fn admitted(&self, req: &RegisterRequest, token: &str, wire: &Wire) -> Result<MacAddr, Refused> {
        let boot_token = wire.boot_token.as_ref().filter(|t| secrets_equal(&credential_hash(&req.token), &t.sha256));
        if boot_token.is_none() && !secrets_equal(&req.token, token) {
            // Only what validates goes into the event: the request is not the appliance's.
            let mac: Option<MacAddr> = req.boot_mac.parse().ok();
            return Err(Refused {
                kind: RefusalKind::WrongToken,
                message: "the token is neither this machine's boot token nor the join token: boot the machine \
                          from this appliance again; its boot script carries a token for that boot"
                    .into(),
                happening: Some(Happening {
                    kind: "registration-refused",
                    mac,
                    message: match mac {
                        Some(mac) => format!("registration as {mac} from {} refused: wrong token", wire.from),
                        None => format!("registration from {} refused: wrong token", wire.from),
                    },
                }),
            });
        }
        let mac = validate(req).map_err(|e| {
            let happening =
                Happening { kind: "registration-malformed", mac: None, message: format!("registration refused: {e}") };
            Refused { kind: RefusalKind::Malformed, message: e, happening: Some(happening) }
        })?;
        check_wire(mac, boot_token, wire).map_err(|why| Refused {
            kind: RefusalKind::WrongPlace,
            message: why.clone(),
            happening: Some(Happening {
                kind: "registration-refused",
                mac: Some(mac),
                message: format!("registration as {mac} from {} refused: {why}", wire.from),
            }),
        })?;
        Ok(mac)
    }

    /// The record an admitted registration updates: the machine's own (with the WireGuard key to
    /// drop if it rebooted), or a new pending one; refused for a duplicate identity, a replay, or
    /// a new key for a machine alive on its link.
    fn record_for(&self, req: &RegisterRequest, mac: MacAddr, wire: &Wire, now: u64) -> Result<Found, Refused> {
        let id = machine_id(&req.inventory, mac);
        let Some(existing) = self.records.get(&id) else {
            let happening = Happening {
                kind: "machine-registered",
                mac: Some(mac),
                message: format!("new machine {id} ({mac}) registered"),
            };
            let record = MachineRecord {
                id: id.clone(),
                state: MachineState::Pending,
                boot_mac: mac,
                wireguard_key: req.wireguard_key.clone(),
                inventory: req.inventory.clone(),
                agent_version: req.agent_version.clone(),
                overlay: None,
                credential_sha256: None,
                first_registered: now,
                last_registered: now,
                reason: String::new(),
                recent_nonces: vec![],
                reprovision: None,
            };
            return Ok((mac, record, None, vec![happening]));
        };
        if existing.boot_mac != mac {
            let message = format!(
                "machine {id} is already registered from MAC {}; this registration comes from {mac}. Two \
                 machines share an SMBIOS UUID, or one boots from another NIC: if it is the same machine, \
                 remove the old record with `oasis machine remove {id}`",
                existing.boot_mac
            );
            return Err(Refused {
                kind: RefusalKind::Conflict,
                message: message.clone(),
                happening: Some(Happening { kind: "duplicate-identity", mac: Some(mac), message }),
            });
        }
        if existing.recent_nonces.contains(&req.nonce) {
            return Err(Refused {
                kind: RefusalKind::Conflict,
                message: "replayed registration: this nonce was already used".into(),
                happening: Some(Happening {
                    kind: "registration-replayed",
                    mac: Some(mac),
                    message: format!("replayed registration for {id} refused"),
                }),
            });
        }
        let mut record = existing.clone();
        if record.wireguard_key == req.wireguard_key {
            return Ok((mac, record, None, vec![]));
        }
        if let Some(heard) = self.alive_on_link(existing, wire, now) {
            return Err(Refused {
                kind: RefusalKind::Conflict,
                message: format!(
                    "machine {id} is alive on its management link ({heard}), and this registration brings a new \
                     WireGuard key: a live machine is not re-keyed. A machine that really rebooted is accepted \
                     once its old link has been silent for {LINK_SILENCE_SECS} s; its agent keeps asking"
                ),
                happening: Some(Happening {
                    kind: "rekey-refused",
                    mac: Some(mac),
                    message: format!(
                        "a new WireGuard key for {id} from {} refused: the machine is alive on its link ({heard})",
                        wire.from
                    ),
                }),
            });
        }
        let old_key = std::mem::replace(&mut record.wireguard_key, req.wireguard_key.clone());
        let happening = Happening {
            kind: "machine-rekeyed",
            mac: Some(mac),
            message: format!(
                "{id} registered from {} with a new WireGuard key (it rebooted; its link was silent); the old key \
                 is dropped",
                wire.from
            ),
        };
        Ok((mac, record, Some(old_key), vec![happening]))
    }

    /// How an accepted machine was heard from on its link within [`LINK_SILENCE_SECS`], if it was.
    fn alive_on_link(&self, record: &MachineRecord, wire: &Wire, now: u64) -> Option<String> {
        if record.state != MachineState::Accepted {
            return None;
        }
        let recent = |age: u64| age < LINK_SILENCE_SECS;
        if let Some(age) = self.heartbeats.get(&record.id).map(|h| now.saturating_sub(h.at)).filter(|a| recent(*a)) {
            return Some(format!("its last heartbeat was {age} s ago"));
        }
        let age = wire.handshakes.get(&record.wireguard_key).copied().filter(|a| recent(*a))?;
        Some(format!("its last WireGuard handshake was {age} s ago"))
    }

    /// Marks a record accepted and gives it an overlay address if it has none.
    fn accept_into(
        &self,
        record: &mut MachineRecord,
        why: &str,
        happenings: &mut Vec<Happening>,
    ) -> Result<(), PoolExhausted> {
        if record.overlay.is_none() {
            let used: HashSet<Ipv4Addr> = self.records.values().filter_map(|r| r.overlay).collect();
            let free = self.overlay.hosts().find(|a| *a != self.overlay.appliance && !used.contains(a));
            let Some(address) = free else {
                return Err(PoolExhausted { prefix_len: self.overlay.prefix_len });
            };
            record.overlay = Some(address);
        }
        record.state = MachineState::Accepted;
        record.reason = why.to_string();
        happenings.push(Happening {
            kind: "machine-accepted",
            mac: Some(record.boot_mac),
            message: format!("{} accepted ({why})", record.id),
        });
        Ok(())
    }

    /// An operator's decision; returns the changed record and its event.
    pub fn decide(&self, what: &str, state: MachineState) -> Result<(MachineRecord, Happening), DecideError> {
        let mut record = self.find(what)?.clone();
        let mut happenings = vec![];
        match state {
            MachineState::Accepted => self.accept_into(&mut record, "accepted by an operator", &mut happenings)?,
            MachineState::Rejected => {
                record.state = MachineState::Rejected;
                record.reason = "rejected by an operator: `oasis machine remove ID` forgets it".into();
                record.credential_sha256 = None;
                happenings.push(Happening {
                    kind: "machine-rejected",
                    mac: Some(record.boot_mac),
                    message: format!("{} rejected by an operator", record.id),
                });
            }
            MachineState::Pending => return Err(DecideError::BackToPending),
        }
        Ok((record, happenings.remove(0)))
    }

    /// Stores a committed record. A new WireGuard key is a new boot: the last heartbeat, which
    /// described the previous boot (its services, its mesh), is forgotten.
    pub fn apply(&mut self, record: MachineRecord) {
        if self.records.get(&record.id).is_some_and(|old| old.wireguard_key != record.wireguard_key) {
            self.heartbeats.remove(&record.id);
        }
        self.records.insert(record.id.clone(), record);
    }

    pub fn remove(&mut self, id: &str) -> Option<MachineRecord> {
        self.heartbeats.remove(id);
        self.records.remove(id)
    }

    /// The accepted machine a credential belongs to, if it is presented from its overlay address.
    pub fn authenticate(&self, credential: &str, from: Ipv4Addr) -> Result<&MachineRecord, AuthError> {
        let hash = credential_hash(credential);
        let record = self
            .records
            .values()
            .find(|r| r.credential_sha256.as_deref().is_some_and(|h| secrets_equal(h, &hash)))
            .ok_or(AuthError::UnknownCredential)?;
        if record.state != MachineState::Accepted {
            return Err(AuthError::NotAccepted);
        }
        if record.overlay != Some(from) {
            return Err(AuthError::OutsideLink);
        }
        Ok(record)
    }

    pub fn record_heartbeat(&mut self, id: &str, heartbeat: Heartbeat, now: u64) {
        self.heartbeats.insert(id.to_string(), LastHeartbeat { at: now, heartbeat });
    }
}

#[cfg(test)]
mod tests {
    use oasis_proto::{Nic, System};

    use super::*;

    const TOKEN: &str = "join-token";

    fn overlay() -> Overlay {
        Overlay {
            appliance: Ipv4Addr::new(10, 99, 0, 1),
            prefix_len: 29,
            endpoint: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 51820),
            appliance_key: "A".repeat(43) + "=",
            keepalive_secs: 15,
        }
    }

    fn key(n: u8) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode([n; 32])
    }

    fn request(uuid: &str, mac: &str, key_n: u8, nonce: &str) -> RegisterRequest {
        RegisterRequest {
            token: TOKEN.into(),
            nonce: format!("nonce-{nonce:0>16}"),
            boot_mac: mac.into(),
            wireguard_key: key(key_n),
            agent_version: "0.1.0".into(),
            inventory: Inventory {
                system: System { uuid: Some(uuid.into()), serial: Some("SN-1".into()), ..Default::default() },
                cpus: 2,
                nics: vec![Nic { name: "eth0".into(), mac: mac.into(), driver: None, speed_mbps: None, link: true }],
                ..Default::default()
            },
        }
    }

    const UUID: &str = "6F1B2C3D-0000-4000-8000-00000000000A";

    /// A registration from 10.0.0.100 with nothing seen of its machine, as in proxy mode.
    fn proxy() -> Wire {
        Wire {
            from: Ipv4Addr::new(10, 0, 0, 100),
            leases: Leases::NotOurs,
            boot_token: None,
            handshakes: HashMap::new(),
        }
    }

    /// Registers and commits, as the API does.
    fn register(
        reg: &mut Registry,
        req: &RegisterRequest,
    ) -> Result<(RegisterResponse, Vec<Happening>), (u16, String)> {
        register_seen(reg, req, &proxy(), 100).map_err(|(status, message, _)| (status, message))
    }

    /// A refusal: status, message, event.
    type Refused = (u16, String, Option<Happening>);

    /// Registers at `now` with `wire`, and commits, as the API does; a refusal with its event.
    fn register_seen(
        reg: &mut Registry,
        req: &RegisterRequest,
        wire: &Wire,
        now: u64,
    ) -> Result<(RegisterResponse, Vec<Happening>), Refused> {
        match reg.register(req, TOKEN, &format!("cred-{}", req.nonce), wire, now) {
            Registration::Answer { record, response, happenings, .. } => {
                reg.apply(*record);
                Ok((response, happenings))
            }
            Registration::Refuse { kind, message, happening } => Err((kind.http_status(), message, happening)),
        }
    }

    fn boot_token(token: &str, issued_to: [u8; 4]) -> BootToken {
        BootToken { sha256: credential_hash(token), issued_to: Some(issued_to.into()), issued_at: 50 }
    }

    #[test]
    fn auto_accepts_with_a_credential_and_a_link() {
        let mut reg = Registry::new(Policy::Auto, overlay(), vec![]);
        let (resp, events) = register(&mut reg, &request(UUID, "52:54:00:00:00:01", 1, "1")).unwrap();
        assert_eq!(resp.machine_id, UUID.to_lowercase());
        assert_eq!(resp.state, MachineState::Accepted);
        let link = resp.link.unwrap();
        assert_eq!(link.address, Ipv4Addr::new(10, 99, 0, 2));
        assert_eq!(link.appliance_address, Ipv4Addr::new(10, 99, 0, 1));
        let kinds: Vec<_> = events.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, ["machine-registered", "machine-accepted"]);
        let credential = resp.credential.unwrap();
        assert!(reg.authenticate(&credential, link.address).is_ok());
        let outside = reg.authenticate(&credential, Ipv4Addr::new(10, 0, 0, 100));
        assert_eq!(outside.unwrap_err(), AuthError::OutsideLink, "only inside the link");
    }

    #[test]
    fn a_wrong_token_malformed_fields_and_replays_are_refused() {
        let mut reg = Registry::new(Policy::Auto, overlay(), vec![]);
        let mut bad = request(UUID, "52:54:00:00:00:01", 1, "1");
        bad.token = "guess".into();
        assert!(matches!(
            reg.register(&bad, TOKEN, "c", &proxy(), 1),
            Registration::Refuse { kind: RefusalKind::WrongToken, .. }
        ));
        // Issue 13, defect 5: the refusal's event quoted the request's fields unvalidated.
        bad.boot_mac = "x".repeat(60_000);
        match reg.register(&bad, TOKEN, "c", &proxy(), 1) {
            Registration::Refuse { kind: RefusalKind::WrongToken, happening: Some(h), .. } => {
                assert_eq!(h.message, "registration from 10.0.0.100 refused: wrong token");
            }
            other => panic!("{other:?}"),
        }
        bad.token = TOKEN.into();
        match reg.register(&bad, TOKEN, "c", &proxy(), 1) {
            Registration::Refuse { kind: RefusalKind::Malformed, message, happening } => {
                assert!(message.len() < 200, "{}", message.len());
                assert!(happening.unwrap().message.len() < 250);
            }
            other => panic!("{other:?}"),
        }

        for (field, mutate) in [
            ("boot_mac", Box::new(|r: &mut RegisterRequest| r.boot_mac = "nope".into()) as Box<dyn Fn(&mut _)>),
            ("wireguard_key", Box::new(|r: &mut RegisterRequest| r.wireguard_key = "AAAA".into())),
            ("nonce", Box::new(|r: &mut RegisterRequest| r.nonce = "short".into())),
            ("longer than", Box::new(|r: &mut RegisterRequest| r.inventory.system.vendor = Some("x".repeat(300)))),
        ] {
            let mut r = request(UUID, "52:54:00:00:00:01", 1, "1");
            mutate(&mut r);
            match reg.register(&r, TOKEN, "c", &proxy(), 1) {
                Registration::Refuse { kind: RefusalKind::Malformed, message, .. } => {
                    assert!(message.contains(field), "{message}")
                }
                other => panic!("{field}: {other:?}"),
            }
        }

        let first = request(UUID, "52:54:00:00:00:01", 1, "1");
        register(&mut reg, &first).unwrap();
        assert_eq!(register(&mut reg, &first).unwrap_err().0, 409, "the same nonce again is a replay");
        register(&mut reg, &request(UUID, "52:54:00:00:00:01", 1, "2")).unwrap();
    }

    #[test]
    fn manual_waits_for_an_operator_and_allowlist_checks_serial_and_mac() {
        let mut reg = Registry::new(Policy::Manual, overlay(), vec![]);
        let (resp, _) = register(&mut reg, &request(UUID, "52:54:00:00:00:01", 1, "1")).unwrap();
        assert_eq!((resp.state, resp.credential, resp.link), (MachineState::Pending, None, None));
        assert!(resp.message.contains("oasis machine accept"), "{}", resp.message);
        let (record, event) = reg.decide("6f1b", MachineState::Accepted).unwrap();
        assert_eq!(event.kind, "machine-accepted");
        reg.apply(record);
        let (resp, _) = register(&mut reg, &request(UUID, "52:54:00:00:00:01", 1, "2")).unwrap();
        assert_eq!(resp.state, MachineState::Accepted);
        assert!(resp.credential.is_some());

        let allow = Policy::Allowlist {
            serials: HashSet::from(["sn-1".to_string()]),
            macs: HashSet::from(["52:54:00:00:00:09".parse().unwrap()]),
        };
        let mut reg = Registry::new(allow, overlay(), vec![]);
        let by_serial = register(&mut reg, &request(UUID, "52:54:00:00:00:01", 1, "1")).unwrap().0;
        assert_eq!(by_serial.state, MachineState::Accepted);
        let mut other = request("6F1B2C3D-0000-4000-8000-00000000000B", "52:54:00:00:00:02", 2, "1");
        other.inventory.system.serial = Some("SN-2".into());
        assert_eq!(register(&mut reg, &other).unwrap().0.state, MachineState::Pending);
        let mut by_mac = request("6F1B2C3D-0000-4000-8000-00000000000C", "52:54:00:00:00:09", 3, "1");
        by_mac.inventory.system.serial = None;
        assert_eq!(register(&mut reg, &by_mac).unwrap().0.state, MachineState::Accepted);
    }

    #[test]
    fn a_reboot_forgets_the_previous_boots_heartbeat() {
        let mut reg = Registry::new(Policy::Auto, overlay(), vec![]);
        let (resp, _) = register(&mut reg, &request(UUID, "52:54:00:00:00:01", 1, "1")).unwrap();
        reg.record_heartbeat(&resp.machine_id, Heartbeat::default(), 10);
        register(&mut reg, &request(UUID, "52:54:00:00:00:01", 1, "2")).unwrap();
        assert!(reg.heartbeat_of(&resp.machine_id).is_some(), "registering again in the same boot keeps it");
        register(&mut reg, &request(UUID, "52:54:00:00:00:01", 2, "3")).unwrap();
        assert!(reg.heartbeat_of(&resp.machine_id).is_none());
    }

    #[test]
    fn a_reboot_rekeys_and_keeps_the_address_and_the_old_credential_stops_working() {
        let mut reg = Registry::new(Policy::Auto, overlay(), vec![]);
        let (first, _) = register(&mut reg, &request(UUID, "52:54:00:00:00:01", 1, "1")).unwrap();
        let address = first.link.as_ref().unwrap().address;
        match reg.register(&request(UUID, "52:54:00:00:00:01", 2, "2"), TOKEN, "cred-2", &proxy(), 200) {
            Registration::Answer { record, response, old_key, happenings } => {
                assert_eq!(old_key, Some(key(1)));
                assert_eq!(happenings[0].kind, "machine-rekeyed");
                assert_eq!(response.link.unwrap().address, address);
                reg.apply(*record);
            }
            other => panic!("{other:?}"),
        }
        let old = reg.authenticate(first.credential.as_deref().unwrap(), address);
        assert_eq!(old.unwrap_err(), AuthError::UnknownCredential);
        assert!(reg.authenticate("cred-2", address).is_ok());
        assert_eq!(reg.records().count(), 1, "one machine, one record");
    }

    /// A reprovisioning lasts through its boot's registrations; the next boot ends it once its
    /// wipe was heard, and is wiped in turn when it was not (a crash before the wipe).
    #[test]
    fn a_reprovisioning_ends_with_the_boot_after_the_wipe() {
        let mut reg = Registry::new(Policy::Auto, overlay(), vec![]);
        let (first, _) = register(&mut reg, &request(UUID, "52:54:00:00:00:01", 1, "1")).unwrap();
        let id = first.machine_id;
        let asking = |reg: &mut Registry, boot: u8, wiped: bool| {
            let mut record = reg.get(&id).unwrap().clone();
            record.reprovision = Some(Reprovision { asked_at: 100, boot: key(boot), wiped, passed_on: false });
            reg.apply(record);
        };
        let under_way = |reg: &Registry| reg.get(&id).unwrap().reprovision.clone();
        asking(&mut reg, 1, false);
        register(&mut reg, &request(UUID, "52:54:00:00:00:01", 1, "2")).unwrap();
        assert_eq!(under_way(&reg).map(|r| r.boot), Some(key(1)), "the same boot: still under way");
        let (_, said) = register(&mut reg, &request(UUID, "52:54:00:00:00:01", 2, "3")).unwrap();
        assert_eq!(under_way(&reg).map(|r| (r.boot, r.wiped)), Some((key(2), false)), "not wiped: this boot is");
        assert!(!said.iter().any(|h| h.kind == "machine-reprovisioned"));
        let (_, said) = register(&mut reg, &request(UUID, "52:54:00:00:00:01", 4, "5")).unwrap();
        assert_eq!(under_way(&reg), None, "passed on once, not in a loop");
        assert!(said.iter().any(|h| h.kind == "machine-reprovision-stopped"), "{said:?}");
        asking(&mut reg, 4, true);
        let (_, said) = register(&mut reg, &request(UUID, "52:54:00:00:00:01", 3, "6")).unwrap();
        assert_eq!(under_way(&reg), None);
        assert!(said.iter().any(|h| h.kind == "machine-reprovisioned"), "{said:?}");
    }

    #[test]
    fn a_duplicate_uuid_from_another_mac_is_refused_not_merged() {
        let mut reg = Registry::new(Policy::Auto, overlay(), vec![]);
        register(&mut reg, &request(UUID, "52:54:00:00:00:01", 1, "1")).unwrap();
        match reg.register(&request(UUID, "52:54:00:00:00:02", 2, "1"), TOKEN, "c", &proxy(), 1) {
            Registration::Refuse { kind: RefusalKind::Conflict, message, happening: Some(h) } => {
                assert!(message.contains("oasis machine remove"), "{message}");
                assert_eq!(h.kind, "duplicate-identity");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(reg.records().count(), 1);
    }

    #[test]
    fn a_machine_alive_by_its_heartbeats_is_not_rekeyed_and_keeps_its_credential() {
        let mut reg = Registry::new(Policy::Auto, overlay(), vec![]);
        let (first, _) = register_seen(&mut reg, &request(UUID, "52:54:00:00:00:01", 1, "1"), &proxy(), 100).unwrap();
        let (id, address) = (first.machine_id.clone(), first.link.as_ref().unwrap().address);
        let credential = first.credential.unwrap();
        reg.record_heartbeat(&id, Heartbeat::default(), 110);

        let impostor = request(UUID, "52:54:00:00:00:01", 9, "2");
        let (status, message, event) = register_seen(&mut reg, &impostor, &proxy(), 112).unwrap_err();
        assert_eq!(status, 409);
        assert!(message.contains("alive on its management link") && message.contains("2 s ago"), "{message}");
        assert!(message.contains(&format!("silent for {LINK_SILENCE_SECS} s")), "{message}");
        let event = event.unwrap();
        assert_eq!((event.kind, event.mac), ("rekey-refused", Some("52:54:00:00:00:01".parse().unwrap())));
        assert!(event.message.contains("10.0.0.100"), "{}", event.message);
        assert_eq!(reg.get(&id).unwrap().wireguard_key, key(1), "the live machine keeps its key");
        assert!(reg.authenticate(&credential, address).is_ok(), "and its credential");
        assert!(reg.heartbeat_of(&id).is_some());

        // Its own agent registering again in the same boot (same key) is answered.
        let (again, _) = register_seen(&mut reg, &request(UUID, "52:54:00:00:00:01", 1, "3"), &proxy(), 113).unwrap();
        assert_eq!(again.link.unwrap().address, address);

        // Silent for the whole window: a reboot, taken as one.
        let rebooted = request(UUID, "52:54:00:00:00:01", 2, "4");
        let (answer, events) = register_seen(&mut reg, &rebooted, &proxy(), 110 + LINK_SILENCE_SECS).unwrap();
        assert_eq!(answer.link.unwrap().address, address);
        assert_eq!(events[0].kind, "machine-rekeyed");
        assert_eq!(reg.get(&id).unwrap().wireguard_key, key(2));
    }

    #[test]
    fn a_machine_alive_by_its_handshakes_is_not_rekeyed() {
        let mut reg = Registry::new(Policy::Auto, overlay(), vec![]);
        let (first, _) = register(&mut reg, &request(UUID, "52:54:00:00:00:01", 1, "1")).unwrap();
        // No heartbeat yet (say the appliance just restarted), but the link shook hands.
        let mut wire = proxy();
        wire.handshakes = HashMap::from([(key(1), 4), (key(7), 0)]);
        let impostor = request(UUID, "52:54:00:00:00:01", 9, "2");
        let (status, message, _) = register_seen(&mut reg, &impostor, &wire, 200).unwrap_err();
        assert_eq!(status, 409);
        assert!(message.contains("handshake was 4 s ago"), "{message}");
        assert_eq!(reg.get(&first.machine_id).unwrap().wireguard_key, key(1));

        wire.handshakes.insert(key(1), LINK_SILENCE_SECS);
        let (_, events) = register_seen(&mut reg, &impostor, &wire, 200).unwrap();
        assert_eq!(events[0].kind, "machine-rekeyed", "another peer's handshake says nothing of this one");
    }

    #[test]
    fn a_pending_machine_has_no_link_to_be_alive_on() {
        let mut reg = Registry::new(Policy::Manual, overlay(), vec![]);
        register(&mut reg, &request(UUID, "52:54:00:00:00:01", 1, "1")).unwrap();
        let mut wire = proxy();
        wire.handshakes = HashMap::from([(key(1), 0)]);
        let (_, events) = register_seen(&mut reg, &request(UUID, "52:54:00:00:00:01", 2, "2"), &wire, 100).unwrap();
        assert_eq!(events[0].kind, "machine-rekeyed");
    }

    #[test]
    fn a_machines_own_per_boot_token_is_accepted_and_no_other() {
        let mut reg = Registry::new(Policy::Auto, overlay(), vec![]);
        let mut wire = proxy();
        wire.boot_token = Some(boot_token("boot-of-01", [10, 0, 0, 100]));
        let mut req = request(UUID, "52:54:00:00:00:01", 1, "1");
        req.token = "boot-of-01".into();
        let (resp, _) = register_seen(&mut reg, &req, &wire, 100).unwrap();
        assert_eq!(resp.state, MachineState::Accepted);

        // Machine 02's registration is checked against 02's token: 01's does not fit.
        let mut other = request("6F1B2C3D-0000-4000-8000-00000000000B", "52:54:00:00:00:02", 2, "1");
        other.token = "boot-of-01".into();
        wire.boot_token = Some(boot_token("boot-of-02", [10, 0, 0, 101]));
        let (status, message, event) = register_seen(&mut reg, &other, &wire, 100).unwrap_err();
        assert_eq!(status, 401);
        assert!(message.contains("neither this machine's boot token nor the join token"), "{message}");
        assert_eq!(event.unwrap().kind, "registration-refused");
        wire.boot_token = None;
        assert_eq!(register_seen(&mut reg, &other, &wire, 100).unwrap_err().0, 401, "nor with none issued");

        // The join token still works, with or without a per-boot token issued.
        other.token = TOKEN.into();
        assert_eq!(register_seen(&mut reg, &other, &wire, 100).unwrap().0.state, MachineState::Accepted);
        wire.boot_token = Some(boot_token("boot-of-01", [10, 0, 0, 100]));
        other.nonce = "nonce-0000000000000002".into();
        assert!(register_seen(&mut reg, &other, &wire, 100).is_ok());
    }

    #[test]
    fn in_full_mode_a_registration_comes_from_the_claimed_machines_lease() {
        let mut reg = Registry::new(Policy::Auto, overlay(), vec![]);
        let leased = Ipv4Addr::new(10, 0, 0, 100);
        let mut wire = Wire { leases: Leases::Bound(Some(leased)), ..proxy() };
        let req = |nonce: &str| request(UUID, "52:54:00:00:00:01", 1, nonce);

        wire.from = Ipv4Addr::new(10, 0, 0, 101);
        let (status, message, event) = register_seen(&mut reg, &req("1"), &wire, 100).unwrap_err();
        assert_eq!(status, 403);
        assert!(message.contains("52:54:00:00:00:01 holds 10.0.0.100") && message.contains("from 10.0.0.101"));
        let event = event.unwrap();
        assert_eq!(event.kind, "registration-refused");
        assert!(event.message.contains("from 10.0.0.101"), "{}", event.message);
        wire.leases = Leases::Bound(None);
        let (status, message, _) = register_seen(&mut reg, &req("1"), &wire, 100).unwrap_err();
        assert_eq!(status, 403);
        assert!(message.contains("holds no address from this appliance"), "{message}");
        assert_eq!(reg.records().count(), 0, "a refusal records no machine");

        // From its lease: answered. A per-boot token only from where its script went.
        wire.leases = Leases::Bound(Some(leased));
        wire.from = leased;
        assert!(register_seen(&mut reg, &req("1"), &wire, 100).is_ok());
        let mut with_boot_token = req("2");
        with_boot_token.token = "boot-of-01".into();
        wire.boot_token = Some(boot_token("boot-of-01", [10, 0, 0, 100]));
        assert!(register_seen(&mut reg, &with_boot_token, &wire, 100).is_ok());
        wire.boot_token = Some(boot_token("boot-of-01", [10, 0, 0, 99]));
        with_boot_token.nonce = "nonce-0000000000000003".into();
        let (status, message, _) = register_seen(&mut reg, &with_boot_token, &wire, 100).unwrap_err();
        assert_eq!(status, 403);
        assert!(message.contains("went to 10.0.0.99"), "{message}");

        // Proxy mode: no lease to check against, from anywhere.
        let anywhere = Wire { from: Ipv4Addr::new(192, 0, 2, 7), ..proxy() };
        assert!(register_seen(&mut reg, &req("4"), &anywhere, 100).is_ok());
    }

    #[test]
    fn placeholder_uuids_fall_back_to_the_mac() {
        let mac: MacAddr = "52:54:00:00:00:01".parse().unwrap();
        for uuid in ["00000000-0000-0000-0000-000000000000", "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF", "junk"] {
            let mut inv = Inventory::default();
            inv.system.uuid = Some(uuid.into());
            assert_eq!(machine_id(&inv, mac), "mac-525400000001");
        }
    }

    #[test]
    fn the_overlay_runs_out_with_a_clear_message_and_rejection_is_sticky() {
        // A /29 has 6 hosts; the appliance takes one.
        let mut reg = Registry::new(Policy::Auto, overlay(), vec![]);
        for i in 1..=5u8 {
            let uuid = format!("6F1B2C3D-0000-4000-8000-0000000000{i:02X}");
            let resp = register(&mut reg, &request(&uuid, &format!("52:54:00:00:00:{i:02x}"), i, "1")).unwrap().0;
            assert_eq!(resp.state, MachineState::Accepted);
        }
        let resp = register(&mut reg, &request(UUID, "52:54:00:00:01:00", 9, "1")).unwrap().0;
        assert_eq!(resp.state, MachineState::Pending);
        assert!(resp.message.contains("wireguard.prefix"), "{}", resp.message);

        let (record, _) = reg.decide(&UUID.to_lowercase(), MachineState::Rejected).unwrap();
        reg.apply(record);
        let resp = register(&mut reg, &request(UUID, "52:54:00:00:01:00", 9, "2")).unwrap().0;
        assert_eq!((resp.state, resp.credential), (MachineState::Rejected, None));
    }
}
