//! The operator interface: every action an operator can take on a running appliance, one
//! handler for all of them, and one table from their errors to what each door answers.
//!
//! Four doors lead here and only parse and render: the HTTPS admin routes ([`crate::api`], with
//! the admin token), the admin socket ([`crate::admin`]), and, through the socket, the CLI
//! (the `oasis` binary's `commands/`) and the console menu (`oasis_boot::console`). The CLI and
//! the console say what
//! they want as an [`Action`] too: [`Action::request`] is the socket request that carries it,
//! and [`ask`] sends it.
//!
//! [`ActionError`] is the protocol table: [`ActionError::status`] (HTTP) and [`exit_code_of`]
//! (the CLI's exit code, from the status a door answered); its message, causes included
//! ([`chain`]), is the error body the CLI prints and the console shows after "oasis: ". The
//! registry's registration refusals ([`RefusalKind`]) get their status here as well
//! ([`refusal_status`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use oasis_proto::MacAddr;
use oasis_proto::{ErrorBody, MachineState};
use oasis_pxe::dhcp::Lease;

use crate::admin::{self, ClusterHandle, MachineEntry};
use crate::api::{self, Api, MachineView};
use crate::etcd::EtcdError;
use crate::generations::{Applied, GenerationsError, UpdateStatus};
use crate::power::{PowerOp, PowerReport};
use crate::store::{BootMode, Event, StoreError};
use oasis_core::assembly::status::ClusterStatus;
use oasis_core::registry::{AuthError, DecideError, FindError, Happening, MachineRecord, RefusalKind};

/// An operator's accept or reject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Accept,
    Reject,
    /// Take an accepted machine out of the cluster (quorum kept), wipe its data disk through its
    /// agent and boot it again as a fresh spare.
    Reprovision,
}

impl Decision {
    /// The word in a request path (`/v1/machines/ID/accept`).
    pub fn word(self) -> &'static str {
        match self {
            Decision::Accept => "accept",
            Decision::Reject => "reject",
            Decision::Reprovision => "reprovision",
        }
    }

    /// What the CLI prints after it: "ID accepted".
    pub fn past(self) -> &'static str {
        match self {
            Decision::Accept => "accepted",
            Decision::Reject => "rejected",
            Decision::Reprovision => {
                "is being reprovisioned: its member leaves, its data disk is wiped, it boots again \
                                      as a spare (oasis events, oasis cluster status)"
            }
        }
    }

    fn parse(word: &str) -> Result<Decision, ActionError> {
        match word {
            "accept" => Ok(Decision::Accept),
            "reject" => Ok(Decision::Reject),
            "reprovision" => Ok(Decision::Reprovision),
            other => Err(ActionError::NoDecision(other.to_string())),
        }
    }
}

/// Everything an operator can do to a running appliance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Every machine: its network boots and, once its agent registered, its registration.
    Machines,
    /// Registered machines only (the HTTPS door's `GET /v1/machines`).
    Registrations,
    Leases,
    /// The newest `limit` events.
    Events {
        limit: usize,
    },
    /// Accept or reject a machine named by id, unique id prefix or boot MAC.
    Decide {
        machine: String,
        decision: Decision,
    },
    /// Forget a machine; it registers as new when it boots again.
    Remove {
        machine: String,
    },
    /// Boot a MAC from the network (the boot profile) or from its local disk.
    SetBoot {
        mac: MacAddr,
        mode: BootMode,
    },
    ClusterStatus,
    Kubeconfig,
    /// Read one etcd key through the member on machine `via`.
    KvGet {
        via: String,
        key: String,
    },
    /// Write one etcd key through the member on machine `via` ([`ANY_MEMBER`]: the leader, or
    /// another healthy voter).
    KvPut {
        via: String,
        key: String,
        value: String,
    },
    /// Install the update bundle in this file on the appliance as a node generation (streamed,
    /// verified before anything of it is used).
    UpdateApply {
        path: PathBuf,
    },
    /// The node generations installed, which is current, and what each machine is served.
    UpdateStatus,
    /// Pause, resume or cancel the node rollout.
    Rollout(oasis_core::rollout::Command),
    /// A power action through the BMC of a machine named by id, unique id prefix or boot MAC
    /// (a machine that never booted is named by the MAC its `[[power.bmc]]` gives), or of every
    /// machine with a BMC ([`ALL_MACHINES`]).
    Power {
        machine: String,
        op: PowerOp,
    },
}

/// The `machine` of [`Action::Power`] that means every machine with a BMC.
pub const ALL_MACHINES: &str = "all";

/// Parses a power action's words.
pub fn power(machine: &str, op: &str) -> Result<Action, ActionError> {
    let op = PowerOp::parse(op).ok_or_else(|| ActionError::BadPowerOp(op.to_string()))?;
    Ok(Action::Power { machine: machine.to_string(), op })
}

/// The `via` of a key read or write that lets the appliance choose the member.
pub const ANY_MEMBER: &str = "any";

/// What an action answers.
#[derive(Debug)]
pub enum Answer {
    Machines(Vec<MachineEntry>),
    Registrations(Vec<MachineView>),
    Leases(Vec<Lease>),
    Events(Vec<Event>),
    /// The record an accept, reject or remove changed.
    Machine(Box<MachineRecord>),
    /// Done; nothing to say.
    Done,
    Cluster(Box<ClusterStatus>),
    /// Text as it is (a kubeconfig, an etcd value).
    Text(String),
    /// The generation a bundle became.
    Applied(Box<Applied>),
    Update(Box<UpdateStatus>),
    /// What each power action came to.
    Power(Vec<PowerReport>),
}

/// Why an action (or an agent's request to the HTTPS API) was not done. Each variant's row in
/// the table is [`ActionError::status`].
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error(transparent)]
    Find(#[from] FindError),
    /// An accept or reject the registry cannot make (an unknown machine, no free overlay
    /// address, back to pending).
    #[error(transparent)]
    Decide(#[from] DecideError),
    #[error("no decision {0:?}: accept, reject or reprovision")]
    NoDecision(String),
    #[error("{0:?} is not a MAC address")]
    BadMac(String),
    #[error("{0}")]
    CannotReprovision(String),
    #[error("boot mode {0:?} is not network or local")]
    BadBootMode(String),
    #[error("{0:?} is not pause, resume or cancel")]
    BadRolloutCommand(String),
    #[error("{0} has no management address: it is not accepted (`oasis machine accept {0}`)")]
    NotAccepted(String),
    #[error("no key {0:?}")]
    NoKey(String),
    #[error("etcd on {via} did not answer")]
    Etcd { via: String, source: EtcdError },
    #[error(transparent)]
    Rollout(#[from] oasis_core::rollout::CommandError),
    #[error(
        "no etcd member is healthy now (oasis cluster status says why); name a machine with --via to ask it anyway"
    )]
    NoHealthyMember,
    #[error("no kubeconfig: the node image has no k3s bundle, or no k3s server is up yet (oasis cluster status)")]
    NoKubeconfig,
    #[error("this door does not reach cluster assembly: ask the admin socket (`oasis cluster ...` on the appliance)")]
    NoCluster,
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A commit on an agent's behalf failed; logged with its cause, not told to the agent.
    #[error("the appliance could not record this; try again")]
    NotRecorded(#[source] StoreError),
    /// A read on an agent's behalf failed; logged with its cause, not told to the agent.
    #[error("the appliance could not read its store; try again")]
    NotRead(#[source] StoreError),
    /// A registration the registry refused, with its own message.
    #[error("{message}")]
    Refused { kind: RefusalKind, message: String },
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("no credential")]
    NoCredential,
    #[error("admin token required (DATA_DIR/admin-token on the appliance)")]
    NoAdminToken,
    #[error("wrong admin token")]
    WrongAdminToken,
    #[error("the request body is not acceptable: {text}")]
    Body { too_large: bool, text: String },
    #[error("no artifact {0}")]
    NoArtifact(String),
    #[error("artifact {path} unreadable")]
    Artifact { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Update(#[from] GenerationsError),
    #[error("the bundle path {0:?} is not absolute: give the full path of the file on the appliance")]
    RelativePath(PathBuf),
    #[error("{0:?} is not a power action: status, on, off, cycle or pxe")]
    BadPowerOp(String),
    #[error("{0} has no BMC and no link to its agent: give it a [[power.bmc]] with its boot MAC in the config, or accept it")]
    NoBmc(String),
}

/// The status for an update that was not installed: the bundle refused (or the appliance has no
/// key to check it with, a configuration to fix) is 422, which the CLI exits 3 for.
fn update_status(e: &GenerationsError) -> StatusCode {
    use GenerationsError::*;
    match e {
        e if e.is_refusal() => StatusCode::UNPROCESSABLE_ENTITY,
        NoTrustedKey | KeyMissing { .. } | Key(_) => StatusCode::UNPROCESSABLE_ENTITY,
        Store(e) => store_status(e),
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The status for a machine name the registry cannot resolve: unknown is 404; ambiguous is 409
/// (the name is fine, the appliance cannot tell which: the message lists them).
fn find_status(e: &FindError) -> StatusCode {
    match e {
        FindError::Unknown(_) => StatusCode::NOT_FOUND,
        FindError::Ambiguous { .. } => StatusCode::CONFLICT,
    }
}

/// The status a registration refusal is answered with: the registry's protocol says which.
pub fn refusal_status(kind: RefusalKind) -> StatusCode {
    StatusCode::from_u16(kind.http_status()).unwrap_or(StatusCode::BAD_REQUEST)
}

/// The status for a store error: a full data partition is 507, anything else is the appliance's
/// trouble and worth another try later (damage needs its operator, and its message says how).
fn store_status(e: &StoreError) -> StatusCode {
    match e {
        StoreError::Full { .. } => StatusCode::INSUFFICIENT_STORAGE,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

impl ActionError {
    /// The protocol table: the HTTP status each error is answered with.
    pub fn status(&self) -> StatusCode {
        use ActionError::*;
        match self {
            NoDecision(_) | NoKey(_) | NoKubeconfig | NoArtifact(_) | NoBmc(_) => StatusCode::NOT_FOUND,
            Find(e) | Decide(DecideError::Find(e)) => find_status(e),
            // Nothing the request can fix: the operator widens the prefix (the message says so).
            Decide(DecideError::PoolExhausted(_) | DecideError::BackToPending)
            | NotAccepted(_)
            | CannotReprovision(_) => StatusCode::CONFLICT,
            BadMac(_) | BadBootMode(_) | BadRolloutCommand(_) | RelativePath(_) | BadPowerOp(_) => {
                StatusCode::BAD_REQUEST
            }
            Update(e) => update_status(e),
            Etcd { .. } | NoHealthyMember => StatusCode::BAD_GATEWAY,
            Rollout(_) => StatusCode::CONFLICT,
            NoCluster => StatusCode::NOT_IMPLEMENTED,
            Store(e) | NotRecorded(e) | NotRead(e) => store_status(e),
            Refused { kind, .. } => refusal_status(*kind),
            Auth(AuthError::OutsideLink) => StatusCode::FORBIDDEN,
            Auth(_) | NoCredential | NoAdminToken | WrongAdminToken => StatusCode::UNAUTHORIZED,
            Body { too_large: true, .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Body { too_large: false, .. } => StatusCode::BAD_REQUEST,
            Artifact { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The CLI's exit code for this error.
    pub fn exit_code(&self) -> i32 {
        exit_code_of(self.status())
    }
}

/// The CLI's exit code for a door's answer: 3 for a refused update bundle (422: a file or a
/// configuration to fix), 2 when what was asked must change (other 4xx: an unknown or ambiguous
/// machine, a machine not accepted, a prefix to widen), 1 when the appliance failed (5xx), 0 for
/// success.
pub fn exit_code_of(status: StatusCode) -> i32 {
    if status.is_success() {
        0
    } else if status == StatusCode::UNPROCESSABLE_ENTITY {
        3
    } else if status.is_client_error() {
        2
    } else {
        1
    }
}

impl IntoResponse for ActionError {
    fn into_response(self) -> Response {
        match &self {
            ActionError::NotRecorded(e) => tracing::error!("store commit failed: {}", oasis_proto::error_chain(e)),
            ActionError::NotRead(e) => tracing::error!("store read failed: {}", oasis_proto::error_chain(e)),
            _ => {}
        }
        (self.status(), Json(ErrorBody { error: oasis_proto::error_chain(&self) })).into_response()
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        match self {
            Answer::Machines(m) => Json(m).into_response(),
            Answer::Registrations(m) => Json(m).into_response(),
            Answer::Leases(l) => Json(l).into_response(),
            Answer::Events(e) => Json(e).into_response(),
            Answer::Machine(r) => Json(r).into_response(),
            Answer::Done => StatusCode::NO_CONTENT.into_response(),
            Answer::Cluster(s) => Json(s).into_response(),
            Answer::Text(t) => (StatusCode::OK, t).into_response(),
            Answer::Applied(a) => Json(a).into_response(),
            Answer::Update(s) => Json(s).into_response(),
            Answer::Power(r) => Json(r).into_response(),
        }
    }
}

/// The one handler of [`Action`]s.
#[derive(Debug, Clone)]
pub struct Operator {
    pub api: Arc<Api>,
    /// Cluster assembly, where the door reaches it (the admin socket does, HTTPS does not).
    pub cluster: Option<ClusterHandle>,
}

impl Operator {
    pub async fn handle(&self, action: Action) -> Result<Answer, ActionError> {
        let store = &self.api.store;
        Ok(match action {
            Action::Machines => {
                let views = api::machine_views(&self.api).await;
                Answer::Machines(admin::with_power(admin::machine_entries(store.machines()?, views), &self.api.power))
            }
            Action::Registrations => Answer::Registrations(api::machine_views(&self.api).await),
            Action::Leases => Answer::Leases(store.leases()?),
            Action::Events { limit } => Answer::Events(store.events(limit)?),
            Action::Decide { machine, decision } => Answer::Machine(Box::new(self.decide(&machine, decision).await?)),
            Action::Remove { machine } => Answer::Machine(Box::new(self.remove(&machine).await?)),
            Action::SetBoot { mac, mode } => {
                store.set_boot_mode(mac, mode).await?;
                Answer::Done
            }
            Action::ClusterStatus => {
                let mut status = self.cluster()?.status.borrow().as_ref().clone();
                self.with_power(&mut status).await;
                Answer::Cluster(Box::new(status))
            }
            Action::Kubeconfig => {
                Answer::Text(self.cluster()?.kubeconfig.borrow().clone().ok_or(ActionError::NoKubeconfig)?)
            }
            Action::KvGet { via, key } => Answer::Text(self.kv(&via, &key, None).await?),
            Action::KvPut { via, key, value } => Answer::Text(self.kv(&via, &key, Some(value)).await?),
            Action::UpdateApply { path } => {
                if !path.is_absolute() {
                    return Err(ActionError::RelativePath(path));
                }
                Answer::Applied(Box::new(self.api.generations.apply_file(&path).await?))
            }
            Action::UpdateStatus => {
                let mut status = self.api.generations.status()?;
                if let Some(cluster) = &self.cluster {
                    status.progress = cluster.status.borrow().rollout.clone();
                }
                Answer::Update(Box::new(status))
            }
            Action::Rollout(command) => Answer::Text(self.rollout(command).await?),
            Action::Power { machine, op } => Answer::Power(self.power(&machine, op).await?),
        })
    }

    /// A rollout command, checked on the record as it is and then carried out in the store's own
    /// transaction (so a step the controller records in between is not undone).
    async fn rollout(&self, command: oasis_core::rollout::Command) -> Result<String, ActionError> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut record = self.api.store.generations()?;
        let said = oasis_core::rollout::command(&mut record, command, now)?;
        let done = Arc::new(std::sync::Mutex::new(None));
        let outcome = done.clone();
        self.api
            .store
            .update_generations(move |record| {
                let result = oasis_core::rollout::command(record, command, now);
                let events = result.iter().cloned().collect();
                *outcome.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(result);
                events
            })
            .await?;
        let result = done.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        match result {
            Some(result) => Ok(result?.message),
            None => Ok(said.message),
        }
    }

    fn cluster(&self) -> Result<&ClusterHandle, ActionError> {
        self.cluster.as_ref().ok_or(ActionError::NoCluster)
    }

    /// An accept or reject: decided and committed under the registry lock, the peer changed
    /// after it (see [`api::PeerQueue`]).
    async fn decide(&self, machine: &str, decision: Decision) -> Result<MachineRecord, ActionError> {
        let state = match decision {
            Decision::Accept => MachineState::Accepted,
            Decision::Reject => MachineState::Rejected,
            Decision::Reprovision => return self.reprovision(machine).await,
        };
        let api = &self.api;
        let peer = {
            let mut registry = api.registry.lock().await;
            let (record, happening) = registry.decide(machine, state)?;
            api.store.save_record(record.clone(), vec![happening]).await?;
            registry.apply(record.clone());
            (api.peers.after_commit(api::PeerChange::of(&record, None)), record)
        };
        let (turn, record) = peer;
        turn.await;
        Ok(record)
    }

    /// `oasis machine reprovision`: kept in the machine's record (the controller takes its member
    /// out, then has its agent wipe its data disk and reboot; its next registration ends it).
    /// Only an accepted machine whose agent is heard now: the agent does the wipe.
    async fn reprovision(&self, machine: &str) -> Result<MachineRecord, ActionError> {
        let api = &self.api;
        let now = crate::store::now();
        let mut registry = api.registry.lock().await;
        let mut record = registry.find(machine)?.clone();
        if record.state != MachineState::Accepted {
            return Err(ActionError::CannotReprovision(format!("{} is {}, not accepted", record.id, record.state)));
        }
        if record.reprovision.as_ref().is_some_and(|r| r.boot == record.wireguard_key) {
            return Ok(record);
        }
        if let Some(since) = crate::agent_power::silence(registry.heartbeat_of(&record.id), now) {
            return Err(ActionError::CannotReprovision(format!(
                "{} is {since}: its agent wipes its disk, so it must be up; power it on (oasis machine power on) \
                 and try again",
                record.id
            )));
        }
        let boot = record.wireguard_key.clone();
        record.reprovision =
            Some(oasis_core::registry::Reprovision { asked_at: now, boot, wiped: false, passed_on: false });
        let happening = Happening {
            kind: "machine-reprovision",
            mac: Some(record.boot_mac),
            message: format!(
                "{} to be reprovisioned (an operator): its member leaves, its data disk is wiped, it boots again as a \
                 spare",
                record.id
            ),
        };
        api.store.save_record(record.clone(), vec![happening]).await?;
        registry.apply(record.clone());
        Ok(record)
    }

    /// Each machine's power in `status`, as its BMC read last.
    async fn with_power(&self, status: &mut ClusterStatus) {
        let registry = self.api.registry.lock().await;
        for m in &mut status.machines {
            let seen = registry.records().find(|r| r.id == m.id).and_then(|r| self.api.power.seen(r.boot_mac));
            m.power = seen.map(|s| s.word());
        }
    }

    /// One power action on one machine, or on every machine with a BMC, one after another in
    /// the config's order (a rack is not powered on all at once). A machine without a BMC is
    /// asked through its agent ([`crate::agent_power`]).
    async fn power(&self, machine: &str, op: PowerOp) -> Result<Vec<PowerReport>, ActionError> {
        let api = &self.api;
        let targets: Vec<(MacAddr, Option<String>)> = {
            let registry = api.registry.lock().await;
            let id_of = |mac: MacAddr| registry.records().find(|r| r.boot_mac == mac).map(|r| r.id.clone());
            if machine == ALL_MACHINES {
                api.power.machines().into_iter().map(|mac| (mac, id_of(mac))).collect()
            } else {
                let (mac, record) = match registry.find(machine) {
                    Ok(record) => (record.boot_mac, Some(record)),
                    Err(e @ FindError::Unknown(_)) => (machine.parse::<MacAddr>().map_err(|_| e)?, None),
                    Err(e) => return Err(e.into()),
                };
                if !api.power.has(mac) {
                    let linked = record.filter(|r| r.state == MachineState::Accepted && r.overlay.is_some());
                    let Some(record) = linked else {
                        return Err(ActionError::NoBmc(machine.to_string()));
                    };
                    let heartbeat = registry.heartbeat_of(&record.id);
                    return Ok(vec![api.agent_power.act(api, record, heartbeat, op, crate::store::now())]);
                }
                vec![(mac, id_of(mac))]
            }
        };
        let mut reports = vec![];
        for (mac, id) in targets {
            reports.push(api.power.act(&api.store, mac, id, op, crate::power::OPERATOR).await);
        }
        Ok(reports)
    }

    async fn remove(&self, machine: &str) -> Result<MachineRecord, ActionError> {
        let api = &self.api;
        let (turn, record) = {
            let mut registry = api.registry.lock().await;
            let record = registry.find(machine)?.clone();
            let happening = Happening {
                kind: "machine-removed",
                mac: Some(record.boot_mac),
                message: format!("{} removed by an operator; it registers as new when it boots again", record.id),
            };
            api.store.remove_record(record.id.clone(), happening).await?;
            registry.remove(&record.id);
            let change =
                api::PeerChange { remove: vec![record.wireguard_key.clone()], add: None, id: record.id.clone() };
            (api.peers.after_commit(change), record)
        };
        turn.await;
        Ok(record)
    }

    /// One etcd read or write through the member on machine `via`: the value read or written.
    async fn kv(&self, via: &str, key: &str, value: Option<String>) -> Result<String, ActionError> {
        let cluster = self.cluster()?;
        let via = match via {
            // The member the last status saw leading, else any healthy voter: what an etcd client
            // given every member's endpoint would use.
            ANY_MEMBER => {
                let status = cluster.status.borrow().clone();
                let healthy = status.members.iter().filter(|m| m.healthy && !m.learner);
                let chosen = healthy.clone().find(|m| m.leader).or_else(|| healthy.clone().next());
                chosen.and_then(|m| m.machine.clone()).ok_or(ActionError::NoHealthyMember)?
            }
            named => named.to_string(),
        };
        let via = via.as_str();
        let overlay = self.api.registry.lock().await.find(via)?.overlay;
        let overlay = overlay.ok_or_else(|| ActionError::NotAccepted(via.to_string()))?;
        let ep = std::net::SocketAddr::from((overlay, oasis_proto::ETCD_CLIENT_PORT));
        let etcd = |source| ActionError::Etcd { via: via.to_string(), source };
        let bytes = match value {
            Some(value) => {
                cluster.etcd.put(ep, key.as_bytes(), value.as_bytes()).await.map_err(etcd)?;
                value.into_bytes()
            }
            None => cluster
                .etcd
                .get(ep, key.as_bytes())
                .await
                .map_err(etcd)?
                .ok_or_else(|| ActionError::NoKey(key.into()))?,
        };
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// The path word of a rollout command.
pub fn rollout_word(command: oasis_core::rollout::Command) -> &'static str {
    use oasis_core::rollout::Command;
    match command {
        Command::Pause => "pause",
        Command::Resume => "resume",
        Command::Cancel => "cancel",
    }
}

/// Parses `/v1/update/{pause|resume|cancel}`.
pub fn rollout(word: &str) -> Result<Action, ActionError> {
    use oasis_core::rollout::Command;
    let command = [Command::Pause, Command::Resume, Command::Cancel]
        .into_iter()
        .find(|c| rollout_word(*c) == word)
        .ok_or_else(|| ActionError::BadRolloutCommand(word.to_string()))?;
    Ok(Action::Rollout(command))
}

/// Parses the words of a boot path (`/v1/machines/{mac}/boot/{mode}`).
pub fn set_boot(mac: &str, mode: &str) -> Result<Action, ActionError> {
    let mac = mac.parse::<MacAddr>().map_err(|_| ActionError::BadMac(mac.to_string()))?;
    let mode = match mode {
        "network" => BootMode::Network,
        "local" => BootMode::Local,
        other => return Err(ActionError::BadBootMode(other.to_string())),
    };
    Ok(Action::SetBoot { mac, mode })
}

/// Parses `/v1/machines/{id}/{decision}`.
pub fn decide(machine: &str, decision: &str) -> Result<Action, ActionError> {
    Ok(Action::Decide { machine: machine.to_string(), decision: Decision::parse(decision)? })
}

/// Percent-encodes a query parameter value (or a path segment).
pub(crate) fn query_value(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Action {
    /// The admin socket request (method, path) that carries this action.
    pub fn request(&self) -> (&'static str, String) {
        match self {
            Action::Machines | Action::Registrations => ("GET", "/v1/machines".into()),
            Action::Leases => ("GET", "/v1/leases".into()),
            Action::Events { limit } => ("GET", format!("/v1/events?limit={limit}")),
            Action::Decide { machine, decision } => ("POST", format!("/v1/machines/{machine}/{}", decision.word())),
            Action::Remove { machine } => ("DELETE", format!("/v1/machines/{machine}")),
            Action::SetBoot { mac, mode } => {
                let word = match mode {
                    BootMode::Network => "network",
                    BootMode::Local => "local",
                };
                ("PUT", format!("/v1/machines/{mac}/boot/{word}"))
            }
            Action::ClusterStatus => ("GET", "/v1/cluster".into()),
            Action::Kubeconfig => ("GET", "/v1/cluster/kubeconfig".into()),
            Action::KvGet { via, key } => {
                ("GET", format!("/v1/cluster/kv?via={}&key={}", query_value(via), query_value(key)))
            }
            Action::UpdateApply { path } => {
                ("POST", format!("/v1/update/apply?path={}", query_value(&path.to_string_lossy())))
            }
            Action::UpdateStatus => ("GET", "/v1/update".into()),
            Action::Rollout(command) => ("POST", format!("/v1/update/{}", rollout_word(*command))),
            Action::Power { machine, op } => ("POST", format!("/v1/machines/{}/power/{op}", query_value(machine))),
            Action::KvPut { via, key, value } => (
                "POST",
                format!(
                    "/v1/cluster/kv?via={}&key={}&value={}",
                    query_value(via),
                    query_value(key),
                    query_value(value)
                ),
            ),
        }
    }
}

/// Sends `action` to the running appliance's admin socket in `data_dir`: the answer's body, or
/// `None` when no appliance runs there.
pub fn ask(data_dir: &Path, action: &Action) -> Result<Option<Vec<u8>>, admin::AdminError> {
    let (method, path) = action.request();
    admin::request(data_dir, method, &path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::AdminError;
    use oasis_core::registry::Policy;

    /// A decision the registry refuses keeps its own message (once) and its row of the table.
    #[test]
    fn decide_errors_keep_their_message_and_status() {
        use oasis_core::registry::PoolExhausted;
        let cases = [
            (DecideError::Find(FindError::Unknown("m9".into())), StatusCode::NOT_FOUND),
            (DecideError::Find(FindError::Ambiguous { what: "m".into(), ids: vec![] }), StatusCode::CONFLICT),
            (DecideError::PoolExhausted(PoolExhausted { prefix_len: 30 }), StatusCode::CONFLICT),
            (DecideError::BackToPending, StatusCode::CONFLICT),
        ];
        for (decide, status) in cases {
            let text = decide.to_string();
            let e = ActionError::from(decide);
            assert_eq!((e.status(), oasis_proto::error_chain(&e)), (status, text));
            assert_eq!(e.exit_code(), 2);
        }
        let find = ActionError::from(FindError::Unknown("m9".into()));
        assert_eq!(find.status(), StatusCode::NOT_FOUND);
    }

    /// Every action a client says goes through the admin socket's router to the handler, and
    /// its refusals come back with the table's status.
    #[test]
    fn actions_travel_through_the_admin_socket_and_refusals_keep_their_status() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let api = rt.block_on(async {
            let api = api::test_api(dir.path(), Policy::Manual);
            let ca = crate::pki::ClusterCa::load_or_create(&api.store).unwrap();
            let cluster = ClusterHandle {
                status: tokio::sync::watch::channel(Arc::default()).1,
                etcd: crate::etcd::EtcdClient::new(&ca).unwrap(),
                kubeconfig: tokio::sync::watch::channel(None).1,
            };
            let listener = admin::listen(dir.path()).unwrap();
            let router = admin::router(api.clone(), cluster);
            tokio::spawn(async move { axum::serve(listener, router).await });
            api
        });
        let refused = |action: Action| match ask(dir.path(), &action) {
            Err(AdminError::Refused { status, message }) => (status.as_u16(), message),
            other => panic!("{action:?} was not refused: {other:?}"),
        };

        let mac: MacAddr = "52:54:00:aa:00:01".parse().unwrap();
        let answer = ask(dir.path(), &Action::SetBoot { mac, mode: BootMode::Local }).unwrap();
        assert_eq!(answer, Some(vec![]), "204, nothing to say");
        let machines = ask(dir.path(), &Action::Machines).unwrap().unwrap();
        let machines: Vec<MachineEntry> = serde_json::from_slice(&machines).unwrap();
        assert!(machines.iter().any(|m| m.netboot.mac == mac && m.netboot.boot == BootMode::Local), "{machines:?}");

        let (status, message) = refused(Action::Decide { machine: "nobody".into(), decision: Decision::Accept });
        assert_eq!(status, 404, "{message}");
        assert!(message.contains("`oasis machines` lists them"), "{message}");
        let (status, message) = refused(Action::Kubeconfig);
        assert_eq!(status, 404, "{message}");
        let (status, message) = refused(Action::KvGet { via: "nobody".into(), key: "k".into() });
        assert_eq!(status, 404, "{message}");
        let status = ask(dir.path(), &Action::UpdateStatus).unwrap().unwrap();
        let status: UpdateStatus = serde_json::from_slice(&status).unwrap();
        assert_eq!((status.current, status.generations.len()), (0, 1), "only the shipped generation");
        let (status, message) = refused(Action::UpdateApply { path: "relative.bundle".into() });
        assert_eq!(status, 400, "{message}");
        let (status, message) = refused(Action::UpdateApply { path: dir.path().join("no.bundle") });
        assert_eq!(status, 422, "{message}");
        assert!(message.contains("cannot open the bundle"), "{message}");
        let e = admin::request(dir.path(), "POST", &Action::UpdateApply { path: dir.path().join("x") }.request().1);
        assert_eq!(e.unwrap_err().exit_code(), 3, "a refused bundle exits 3");
        std::fs::write(dir.path().join("some.bundle"), b"OASISBDL").unwrap();
        let (status, message) = refused(Action::UpdateApply { path: dir.path().join("some.bundle") });
        assert_eq!(status, 422, "{message}");
        assert!(message.contains("[update] trusted_keys"), "no key to check it with: {message}");
        // A path no client makes, through the same table.
        let e = admin::request(dir.path(), "PUT", "/v1/machines/not-a-mac/boot/local").unwrap_err();
        assert_eq!((e.exit_code(), e.to_string()), (2, "\"not-a-mac\" is not a MAC address".to_string()));
        drop(api);
    }
}
