//! The appliance's HTTPS API on port `oasis_proto::API_PORT`: registration, the agents'
//! heartbeats and desired-state watch, and the admin endpoints.
//!
//! TLS with the appliance's own key (see [`crate::identity`]); agents trust it by its pin.
//! - `POST /v1/register`: a per-boot token or the join token in the body, from the claimed
//!   machine's lease in full DHCP mode; see [`oasis_core::registry`] for the rules.
//! - `POST /v1/agent/heartbeat`, `GET /v1/agent/desired?after=N`: the machine's credential as
//!   bearer token, and only from the machine's own overlay address (inside its WireGuard link).
//! - `GET /v1/machines`, `POST /v1/machines/{id}/accept|reject`, `DELETE /v1/machines/{id}`,
//!   `POST /v1/machines/{id}/power/{status|on|off|cycle|pxe}`, `POST /v1/admin/update` (an update bundle as the body, streamed: [`crate::upload`]): the
//!   admin token as bearer token.
//!
//! Every refusal is an [`oasis_proto::ErrorBody`] with a status that says which kind: 400
//! malformed, 401 bad token or credential, 403 not allowed from there, 404 unknown, 409 replay,
//! duplicate, a name that matches several machines or no overlay address left, 413 too large,
//! 503 or 507 the appliance's own trouble. The statuses come from one table,
//! [`crate::operator::ActionError::status`]; the admin routes are parsed into
//! [`crate::operator::Action`]s.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use oasis_proto::{DesiredState, Heartbeat, MachineState, RegisterRequest, MAX_BODY_BYTES, WATCH_SECS};
use oasis_pxe::conn::{self, Guard};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Mutex};

use crate::identity::{random_token, Identity};
use crate::operator::{Action, ActionError, Answer, Operator};
use crate::store::Store;
use crate::wireguard::ManagementInterface;
use oasis_core::registry::{
    machine_id, secrets_equal, LastHeartbeat, Leases, MachineRecord, Registration, Registry, Wire,
};

/// What the API handlers share.
pub struct Api {
    pub registry: Mutex<Registry>,
    pub store: Store,
    pub identity: Identity,
    pub wireguard: Option<Arc<ManagementInterface>>,
    /// Every machine's desired state, published by the assembly controller.
    pub desired: watch::Sender<Arc<Published>>,
    /// The files agents may fetch, by SHA-256.
    pub artifacts: HashMap<String, PathBuf>,
    /// This appliance's DHCP hands out the rack's addresses (full mode): a registration must come
    /// from the claimed machine's lease.
    pub full_dhcp: bool,
    /// Peer changes of committed records, in commit order, off the registry lock.
    pub peers: PeerQueue,
    /// The node generations installed from update bundles.
    pub generations: Arc<crate::generations::NodeGenerations>,
    /// The machines' BMCs (`[power]`).
    pub power: Arc<crate::power::PowerControl>,
    /// Power asked of machines without a BMC, through their agents.
    pub agent_power: crate::agent_power::AgentPower,
}

/// Desired states as the controller last published them. The revision moves whenever any
/// machine's state changes; an agent compares what it gets with what it runs.
#[derive(Debug, Default)]
pub struct Published {
    pub revision: u64,
    /// Each machine's state with the WireGuard key (the boot) it was computed for.
    pub states: BTreeMap<String, (String, DesiredState)>,
}

impl Published {
    /// Nothing published yet, at a revision no earlier run of `serve` used: revisions start at
    /// the time `serve` starts (milliseconds). An agent applies a state whose revision differs
    /// from the one it last saw; counting from 0 again after a restart could hand it a new
    /// state under the very number it saw before, which it would then ignore (found when agents
    /// kept "unassigned" after a restart until the next change).
    pub fn at_start() -> Published {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2))
            .unwrap_or(0);
        Published { revision: millis, states: BTreeMap::new() }
    }

    /// The state for a machine in its current boot. A state computed for an earlier boot (the
    /// machine rebooted since the controller's last tick) is not served: it may start etcd as a
    /// member whose data this boot does not have. The machine gets nothing until the next tick.
    fn state_of(&self, id: &str, key: &str) -> DesiredState {
        let state = match self.states.get(id) {
            Some((computed_for, state)) if computed_for == key => state.clone(),
            _ => DesiredState::default(),
        };
        DesiredState { revision: self.revision, ..state }
    }
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Api")
    }
}

impl From<JsonRejection> for ActionError {
    fn from(r: JsonRejection) -> Self {
        ActionError::Body { too_large: r.status() == StatusCode::PAYLOAD_TOO_LARGE, text: r.body_text() }
    }
}

/// A WireGuard peer change that a committed record asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerChange {
    /// The machine, for the log.
    pub id: String,
    /// Keys to drop, in order.
    pub remove: Vec<String>,
    /// The key to add, with the overlay address it may use.
    pub add: Option<(String, Ipv4Addr)>,
}

impl PeerChange {
    /// What makes the peers match `record`; `old_key` is the key of its previous boot.
    pub fn of(record: &MachineRecord, old_key: Option<String>) -> PeerChange {
        let mut remove: Vec<String> = old_key.into_iter().collect();
        let add = match (record.state, record.overlay) {
            (MachineState::Accepted, Some(overlay)) => Some((record.wireguard_key.clone(), overlay)),
            _ => {
                remove.push(record.wireguard_key.clone());
                None
            }
        };
        PeerChange { id: record.id.clone(), remove, add }
    }
}

/// Where peer changes go: the management interface, or a fake in tests.
pub trait PeerDevice: Send + Sync {
    fn add_peer(&self, key: &str, overlay: Ipv4Addr) -> Result<(), crate::wireguard::WireguardError>;
    fn remove_peer(&self, key: &str) -> Result<(), crate::wireguard::WireguardError>;
}

impl PeerDevice for ManagementInterface {
    fn add_peer(&self, key: &str, overlay: Ipv4Addr) -> Result<(), crate::wireguard::WireguardError> {
        ManagementInterface::add_peer(self, key, overlay)
    }
    fn remove_peer(&self, key: &str) -> Result<(), crate::wireguard::WireguardError> {
        ManagementInterface::remove_peer(self, key)
    }
}

/// Peer changes, made after the registry lock is released and in the order their records were
/// committed.
///
/// A change to the device can take a userspace device's control-socket timeout; under the
/// registry lock it would stall every registration, heartbeat and the controller. Released
/// first, two changes for one machine could race (accept, then reject: the reject's removal
/// done first and the accept's addition last would leave a rejected machine a peer). So each
/// commit takes a turn *while it still holds the registry lock* (turns are handed out in commit
/// order) and starts a task at once that waits for the turns before it to finish, makes its
/// change, and ends its turn even if it fails or panics. The task is spawned, not merely
/// awaited: a request dropped by its client still makes its change and passes the turn on.
pub struct PeerQueue {
    device: Option<Arc<dyn PeerDevice>>,
    next: std::sync::atomic::AtomicU64,
    done: Arc<watch::Sender<u64>>,
}

impl std::fmt::Debug for PeerQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerQueue").field("done", &*self.done.borrow()).finish_non_exhaustive()
    }
}

/// Ends a turn when dropped.
struct TurnDone(Arc<watch::Sender<u64>>);

impl Drop for TurnDone {
    fn drop(&mut self) {
        self.0.send_modify(|done| *done += 1);
    }
}

impl PeerQueue {
    pub fn new(device: Option<Arc<dyn PeerDevice>>) -> PeerQueue {
        PeerQueue { device, next: Default::default(), done: Arc::new(watch::channel(0).0) }
    }

    /// Queues `change` behind every change committed before it. Call with the registry lock
    /// held, right after the commit; await what it returns after releasing the lock.
    pub fn after_commit(&self, change: PeerChange) -> impl std::future::Future<Output = ()> + Send + 'static {
        let turn = self.next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut done = self.done.subscribe();
        let finish = TurnDone(self.done.clone());
        let device = self.device.clone();
        let task = tokio::spawn(async move {
            let _finish = finish;
            // The sender lives as long as the queue's tasks: an error is only a shutdown.
            let _ = done.wait_for(|d| *d >= turn).await;
            let Some(device) = device else { return };
            let changed = tokio::task::spawn_blocking(move || apply_peer_change(device.as_ref(), &change)).await;
            if let Err(e) = changed {
                tracing::error!("the WireGuard update failed: {e}");
            }
        });
        async move {
            let _ = task.await;
        }
    }
}

fn apply_peer_change(device: &dyn PeerDevice, change: &PeerChange) {
    for key in &change.remove {
        if let Err(e) = device.remove_peer(key) {
            tracing::warn!(machine = %change.id, "WireGuard peer not removed: {}", oasis_proto::error_chain(&e));
        }
    }
    if let Some((key, overlay)) = &change.add {
        if let Err(e) = device.add_peer(key, *overlay) {
            tracing::error!(machine = %change.id, "WireGuard peer not added: {}", oasis_proto::error_chain(&e));
        }
    }
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ")
}

fn source_v4(addr: SocketAddr) -> Ipv4Addr {
    match addr.ip() {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(v6) => v6.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED),
    }
}

/// The router, with the body limit every route shares.
pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route(oasis_proto::REGISTER_PATH, post(register))
        .route(oasis_proto::HEARTBEAT_PATH, post(heartbeat))
        .route(oasis_proto::DESIRED_PATH, get(desired))
        .route(&format!("{}/{{sha256}}", oasis_proto::ARTIFACTS_PATH), get(artifact))
        .route("/v1/machines", get(list_machines))
        .route("/v1/machines/{id}/{decision}", post(decide))
        .route("/v1/machines/{id}/power/{op}", post(power))
        .route("/v1/machines/{id}", delete(remove))
        .route("/v1/admin/update", post(upload_update).layer(DefaultBodyLimit::disable()))
        .route("/v1/admin/update/{command}", post(rollout_command))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(api)
}

async fn register(
    State(api): State<Arc<Api>>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    body: Result<Json<RegisterRequest>, JsonRejection>,
) -> Result<Json<oasis_proto::RegisterResponse>, ActionError> {
    let Json(req) = body?;
    let credential = random_token();
    // One registration at a time: the decision and its commit must not interleave with another
    // for the same machine, and registrations are rare enough that this costs nothing. The
    // peer change comes after the lock (see [`PeerQueue`]).
    let (peer_changed, response) = {
        let mut registry = api.registry.lock().await;
        let wire = wire_of(&api, &registry, &req, source_v4(from)).await?;
        match registry.register(&req, &api.identity.join_token, &credential, &wire, now()) {
            Registration::Refuse { kind, message, happening } => {
                // Counted per source by the store, which logs the first of each kind: a flood of
                // refusals must not fill the data partition with events or log lines.
                match happening {
                    Some(h) => api.store.record_untrusted(from.ip(), h),
                    None => tracing::debug!(%from, "registration refused: {message}"),
                }
                return Err(ActionError::Refused { kind, message });
            }
            Registration::Answer { record, mut response, old_key, happenings } => {
                api.power.link_found(&api.store, record.boot_mac, &record.id, record.inventory.bmc.as_ref());
                if response.credential.is_some() {
                    response.bmc_user = api.power.user_for_agent(record.boot_mac, record.inventory.bmc.as_ref());
                }
                for h in &happenings {
                    tracing::info!(%from, "{}", h.message);
                }
                api.store.save_record((*record).clone(), happenings).await.map_err(ActionError::NotRecorded)?;
                let change = PeerChange::of(&record, old_key);
                registry.apply(*record);
                (api.peers.after_commit(change), response)
            }
        }
    };
    peer_changed.await;
    Ok(Json(response))
}

/// What the appliance saw on the wire of the machine a registration claims to be (by its boot
/// MAC, when that parses; the registry refuses it otherwise): its lease in full DHCP mode, its
/// newest boot script's token, and the management link's handshakes.
async fn wire_of(api: &Api, registry: &Registry, req: &RegisterRequest, from: Ipv4Addr) -> Result<Wire, ActionError> {
    let unreadable = ActionError::NotRead;
    let mac = req.boot_mac.parse::<oasis_proto::MacAddr>().ok();
    let boot_token = match mac {
        Some(mac) => api.store.boot_token(mac).map_err(unreadable)?,
        None => None,
    };
    let leases = match (api.full_dhcp, mac) {
        (false, _) => Leases::NotOurs,
        (true, Some(mac)) => Leases::Bound(api.store.bound_address(mac, Some(from), now()).map_err(unreadable)?),
        (true, None) => Leases::Bound(None),
    };
    // Handshakes matter only to a new key for an accepted machine (is the old one still live?),
    // and asking the device is not free: only then is it asked.
    let rekeys = mac
        .and_then(|mac| registry.get(&machine_id(&req.inventory, mac)))
        .is_some_and(|r| r.state == MachineState::Accepted && r.wireguard_key != req.wireguard_key);
    let handshakes = if rekeys { handshake_ages(api).await } else { HashMap::new() };
    let handshakes = handshakes.into_iter().map(|(key, age)| (key, age.as_secs())).collect();
    Ok(Wire { from, leases, boot_token, handshakes })
}

/// Every peer's handshake age, asked of the device off the async workers (a userspace device's
/// control socket can take up to its timeout to answer).
async fn handshake_ages(api: &Api) -> HashMap<String, Duration> {
    let Some(wg) = api.wireguard.clone() else { return HashMap::new() };
    tokio::task::spawn_blocking(move || wg.handshake_ages()).await.unwrap_or_default()
}

/// The machine a request comes from (its id and current WireGuard key), by its credential and
/// source address.
async fn agent(api: &Api, headers: &HeaderMap, from: SocketAddr) -> Result<(String, String), ActionError> {
    let credential = bearer(headers).ok_or(ActionError::NoCredential)?;
    let registry = api.registry.lock().await;
    let record = registry.authenticate(credential, source_v4(from))?;
    Ok((record.id.clone(), record.wireguard_key.clone()))
}

async fn heartbeat(
    State(api): State<Arc<Api>>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Json<Heartbeat>, JsonRejection>,
) -> Result<Json<DesiredState>, ActionError> {
    let (id, key) = agent(&api, &headers, from).await?;
    let Json(mut beat) = body?;
    // A BMC user its agent made: the password goes to the store's secrets, never with the
    // heartbeat (which `oasis machines` shows); answered only once it is committed.
    if let Some(account) = beat.bmc_account.take() {
        let mac = api.registry.lock().await.get(&id).map(|r| r.boot_mac);
        // (None: removed since its credential was checked; nothing to keep.)
        let Some(mac) = mac else { return Err(ActionError::NoCredential) };
        if api.power.adopt(&api.store, mac, &id, account).await.map_err(ActionError::NotRecorded)? {
            let (api, id) = (Arc::clone(&api), id.clone());
            // Its power read at once, for `oasis machines`, without holding up the answer.
            tokio::spawn(async move {
                api.power.act(&api.store, mac, Some(id), crate::power::PowerOp::Status, "its BMC user was made").await
            });
        }
    }
    if beat.data_disk_wiped {
        reprovision_wiped(&api, &id, &key).await?;
    }
    api.registry.lock().await.record_heartbeat(&id, beat, now());
    let state = api.desired.borrow().state_of(&id, &key);
    Ok(Json(state))
}

/// Boot `key` of machine `id` wiped its data disk for its reprovisioning: kept, so that its
/// next boot ends the reprovisioning (a boot that was not wiped is wiped in turn).
async fn reprovision_wiped(api: &Api, id: &str, key: &str) -> Result<(), ActionError> {
    let mut registry = api.registry.lock().await;
    let Some(mut record) = registry.get(id).cloned() else { return Ok(()) };
    match record.reprovision.as_mut() {
        Some(asked) if asked.boot == key && !asked.wiped => asked.wiped = true,
        _ => return Ok(()),
    }
    let happening = oasis_core::registry::Happening {
        kind: "machine-wiped",
        mac: Some(record.boot_mac),
        message: format!("{id} wiped its data disk for its reprovisioning and reboots"),
    };
    api.store.save_record(record.clone(), vec![happening]).await.map_err(ActionError::NotRecorded)?;
    registry.apply(record);
    Ok(())
}

#[derive(Deserialize)]
struct After {
    #[serde(default)]
    after: u64,
}

async fn desired(
    State(api): State<Arc<Api>>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<After>,
) -> Result<Json<DesiredState>, ActionError> {
    let (id, key) = agent(&api, &headers, from).await?;
    let mut rx = api.desired.subscribe();
    let _ = tokio::time::timeout(Duration::from_secs(WATCH_SECS), rx.wait_for(|d| d.revision > q.after)).await;
    let state = rx.borrow().state_of(&id, &key);
    Ok(Json(state))
}

/// `GET /v1/agent/artifacts/SHA256`: a file the image carries, streamed, to accepted machines
/// inside their link.
async fn artifact(
    State(api): State<Arc<Api>>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(sha256): Path<String>,
) -> Result<Response, ActionError> {
    agent(&api, &headers, from).await?;
    // The shipped node image's, else an installed generation's.
    let path = match api.artifacts.get(&sha256) {
        Some(path) => path.clone(),
        None => {
            let generations = api.generations.clone();
            let wanted = sha256.clone();
            let found = tokio::task::spawn_blocking(move || generations.artifact_file(&wanted)).await.ok().flatten();
            found.ok_or(ActionError::NoArtifact(sha256))?
        }
    };
    let file =
        tokio::fs::File::open(&path).await.map_err(|source| ActionError::Artifact { path: path.clone(), source })?;
    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok(([(axum::http::header::CONTENT_LENGTH, len.to_string())], body).into_response())
}

fn admin(api: &Api, headers: &HeaderMap) -> Result<(), ActionError> {
    match bearer(headers) {
        Some(token) if secrets_equal(token, &api.identity.admin_token) => Ok(()),
        Some(_) => Err(ActionError::WrongAdminToken),
        None => Err(ActionError::NoAdminToken),
    }
}

/// A registered machine as the API and `oasis machines` show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MachineView {
    #[serde(flatten)]
    pub record: MachineRecord,
    pub last_heartbeat: Option<LastHeartbeatView>,
    /// Seconds since the last WireGuard handshake with this machine.
    pub handshake_age_secs: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LastHeartbeatView {
    pub at: u64,
    pub heartbeat: Heartbeat,
}

impl From<&LastHeartbeat> for LastHeartbeatView {
    fn from(h: &LastHeartbeat) -> Self {
        LastHeartbeatView { at: h.at, heartbeat: h.heartbeat.clone() }
    }
}

/// Every registered machine, with what the running appliance knows about its link.
pub async fn machine_views(api: &Api) -> Vec<MachineView> {
    let handshakes = handshake_ages(api).await;
    let registry = api.registry.lock().await;
    let mut views: Vec<MachineView> = registry
        .records()
        .map(|r| {
            let mut record = r.clone();
            // Nothing that authenticates leaves the appliance.
            record.credential_sha256 = None;
            record.recent_nonces.clear();
            MachineView {
                last_heartbeat: registry.heartbeat_of(&r.id).map(Into::into),
                handshake_age_secs: handshakes.get(&r.wireguard_key).map(|d| d.as_secs()),
                record,
            }
        })
        .collect();
    views.sort_by(|a, b| a.record.id.cmp(&b.record.id));
    views
}

/// The HTTPS door's operator: no cluster assembly behind it.
fn operator(api: &Arc<Api>) -> Operator {
    Operator { api: api.clone(), cluster: None }
}

/// `POST /v1/admin/update/{pause|resume|cancel}`: the rollout commands, with the admin token.
async fn rollout_command(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(word): Path<String>,
) -> Result<Answer, ActionError> {
    admin(&api, &headers)?;
    operator(&api).handle(crate::operator::rollout(&word)?).await
}

async fn list_machines(State(api): State<Arc<Api>>, headers: HeaderMap) -> Result<Answer, ActionError> {
    admin(&api, &headers)?;
    operator(&api).handle(Action::Registrations).await
}

async fn decide(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path((id, decision)): Path<(String, String)>,
) -> Result<Answer, ActionError> {
    admin(&api, &headers)?;
    operator(&api).handle(crate::operator::decide(&id, &decision)?).await
}

/// `POST /v1/machines/{id}/power/{status|on|off|cycle|pxe}` (`all` for every machine with a BMC).
async fn power(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path((id, op)): Path<(String, String)>,
) -> Result<Answer, ActionError> {
    admin(&api, &headers)?;
    operator(&api).handle(crate::operator::power(&id, &op)?).await
}

async fn remove(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ActionError> {
    admin(&api, &headers)?;
    operator(&api).handle(Action::Remove { machine: id }).await.map(|_| StatusCode::NO_CONTENT)
}

/// `POST /v1/admin/update`: an update bundle as the body, streamed into the installer
/// ([`crate::upload`]).
async fn upload_update(State(api): State<Arc<Api>>, headers: HeaderMap, body: Body) -> Result<Answer, ActionError> {
    admin(&api, &headers)?;
    let applied = crate::upload::apply_upload(&api.generations, &headers, body).await?;
    Ok(Answer::Applied(Box::new(applied)))
}

/// The TLS configuration for the API, from the appliance's identity.
pub fn tls_config(identity: &Identity) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let cert = CertificateDer::from(identity.tls_cert_der.clone());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.tls_key_der.clone()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves the router over TLS on `listener` under `guard` (connection caps, handshake, header,
/// body and send timeouts: see [`oasis_pxe::conn`]) until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, tls: Arc<rustls::ServerConfig>, router: Router, guard: Guard) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    conn::serve(listener, guard, move |tcp| acceptor.accept(tcp), router).await
}

/// The API's own server against slow and greedy clients over real TLS on loopback (issue 13,
/// defect 4). Clients bind their loopback source (127.0.0.2, .3, …; 127.0.1.0/24 stands for
/// the overlay) since the caps count per source. No assertion on durations: each check waits for
/// the server to act, with a bound only a server that never acts reaches.
#[cfg(test)]
mod slow_client_tests {
    use std::net::{Ipv4Addr, SocketAddr};
    use std::time::Duration;

    use oasis_pxe::conn::{ConnEvent, Listener, Timeouts};
    use oasis_pxe::conn_limit::{Caps, Prefix};
    use oasis_pxe::metrics::Metrics;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    use tokio::net::{TcpSocket, TcpStream};

    use super::*;
    use oasis_core::registry::Policy;

    const PATIENCE: Duration = Duration::from_secs(30);
    const NEVER: Duration = Duration::from_secs(3600);
    const SHORT: Duration = Duration::from_millis(200);

    struct Server {
        addr: SocketAddr,
        api: Arc<Api>,
        metrics: Arc<Metrics>,
        client: tokio_rustls::TlsConnector,
        _dir: tempfile::TempDir,
    }

    impl Server {
        fn count(&self, event: ConnEvent) -> u64 {
            self.metrics.connections.get(Listener::Api, event)
        }

        async fn wait_for(&self, what: &str, done: impl Fn(&Self) -> bool) {
            let waited = tokio::time::timeout(PATIENCE, async {
                while !done(self) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await;
            assert!(waited.is_ok(), "the API never {what}:\n{}", self.metrics.render());
        }

        async fn tcp_from(&self, from: Ipv4Addr) -> TcpStream {
            let socket = TcpSocket::new_v4().unwrap();
            socket.bind(SocketAddr::from((from, 0))).unwrap();
            socket.connect(self.addr).await.unwrap()
        }

        async fn tls_from(&self, from: Ipv4Addr) -> tokio_rustls::client::TlsStream<TcpStream> {
            let tcp = self.tcp_from(from).await;
            let name = rustls::pki_types::ServerName::try_from("oasis-appliance").unwrap();
            self.client.connect(name, tcp).await.expect("TLS handshake with the API")
        }

        /// Whether a connection from `from` is closed before its TLS handshake can finish.
        async fn refused(&self, from: Ipv4Addr) -> bool {
            let tcp = self.tcp_from(from).await;
            let name = rustls::pki_types::ServerName::try_from("oasis-appliance").unwrap();
            let handshake = tokio::time::timeout(PATIENCE, self.client.connect(name, tcp)).await;
            matches!(handshake, Ok(Err(_)))
        }

        /// `GET /v1/machines` with the admin token from `from`: the status.
        async fn list_from(&self, from: Ipv4Addr) -> u16 {
            let mut tls = self.tls_from(from).await;
            let request = format!(
                "GET /v1/machines HTTP/1.1\r\nHost: oasis\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
                self.api.identity.admin_token
            );
            tls.write_all(request.as_bytes()).await.unwrap();
            status_of(&read_all(&mut tls).await)
        }
    }

    fn status_of(raw: &[u8]) -> u16 {
        let head = String::from_utf8_lossy(raw);
        head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status in {head:?}"))
    }

    async fn read_all(stream: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
        let mut raw = Vec::new();
        let read = tokio::time::timeout(PATIENCE, async {
            let mut buf = [0u8; 4096];
            // A reset (or a TLS close without close_notify) ends the stream as EOF would.
            while let Ok(n @ 1..) = stream.read(&mut buf).await {
                raw.extend_from_slice(&buf[..n]);
            }
        })
        .await;
        assert!(read.is_ok(), "the API never closed the connection; it sent {:?}", String::from_utf8_lossy(&raw));
        raw
    }

    /// Whether the server closes `stream` within [`PATIENCE`].
    async fn closed_by_server(stream: &mut (impl AsyncRead + Unpin)) -> bool {
        let drain = async {
            let mut buf = [0u8; 4096];
            while let Ok(1..) = stream.read(&mut buf).await {}
        };
        tokio::time::timeout(PATIENCE, drain).await.is_ok()
    }

    async fn start(caps: Caps, timeouts: Timeouts) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let api = test_api(dir.path(), Policy::Manual);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::default());
        let guard = Guard::new(Listener::Api, caps, timeouts, metrics.clone());
        tokio::spawn(serve(listener, tls_config(&api.identity).unwrap(), router(api.clone()), guard));
        // The client trusts exactly the appliance's self-signed certificate.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(rustls::pki_types::CertificateDer::from(api.identity.tls_cert_der.clone())).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let client = tokio_rustls::TlsConnector::from(Arc::new(client));
        Server { addr, api, metrics, client, _dir: dir }
    }

    fn timeouts() -> Timeouts {
        Timeouts { handshake: NEVER, header: NEVER, body: NEVER, write_stall: NEVER, write_min_progress: 64 * 1024 }
    }

    fn ip(a: u8, b: u8) -> Ipv4Addr {
        Ipv4Addr::new(127, 0, a, b)
    }

    /// The complete head of a registration whose body is `len` bytes.
    fn register_head(len: usize) -> Vec<u8> {
        let head = "POST /v1/register HTTP/1.1\r\nHost: oasis\r\nContent-Type: application/json\r\n";
        format!("{head}Content-Length: {len}\r\n\r\n").into_bytes()
    }

    async fn slow_head(tls: &mut (impl AsyncWrite + Unpin)) {
        tls.write_all(b"POST /v1/register HTTP/1.1\r\nHost: oasis\r\nX-Slow: ").await.unwrap();
        tls.flush().await.unwrap();
    }

    #[tokio::test]
    async fn slow_handshakes_heads_and_bodies_are_cut_off_while_the_api_answers() {
        let timeouts = Timeouts { handshake: SHORT, header: SHORT, body: SHORT, ..timeouts() };
        let s = start(Caps::new(1024, 64), timeouts).await;
        let mut silent = Vec::new();
        for _ in 0..5 {
            silent.push(s.tcp_from(ip(0, 3)).await);
        }
        let mut slow = Vec::new();
        for _ in 0..10 {
            let mut tls = s.tls_from(ip(0, 4)).await;
            slow_head(&mut tls).await;
            slow.push(tls);
        }
        // A complete head, then a body that never comes.
        let mut withheld = s.tls_from(ip(0, 5)).await;
        withheld.write_all(&register_head(1000)).await.unwrap();
        withheld.write_all(b"{\"token\"").await.unwrap();

        for (i, tcp) in silent.iter_mut().enumerate() {
            assert!(closed_by_server(tcp).await, "silent connection {i} was never closed");
        }
        for (i, tls) in slow.iter_mut().enumerate() {
            assert!(closed_by_server(tls).await, "slow-header connection {i} was never closed");
        }
        let answer = read_all(&mut withheld).await;
        assert_eq!(status_of(&answer), 400, "{}", String::from_utf8_lossy(&answer));
        assert_eq!(s.count(ConnEvent::HandshakeTimeout), 5);
        assert_eq!(s.count(ConnEvent::HeaderTimeout), 10);
        assert_eq!(s.count(ConnEvent::BodyTimeout), 1);
        s.wait_for("released every connection", |s| s.metrics.connections.open(Listener::Api) == 0).await;
        assert_eq!(s.list_from(ip(0, 2)).await, 200);
    }

    #[tokio::test]
    async fn the_rack_never_takes_the_overlay_slots() {
        let overlay = Prefix::new(ip(1, 0), 24);
        let s = start(Caps::new(8, 2).with_reserve(overlay, 4), timeouts()).await;
        // The rack's share (4) held by requests whose bodies never come: busy, not evictable.
        let mut rack = Vec::new();
        for from in [ip(0, 3), ip(0, 3), ip(0, 4), ip(0, 4)] {
            let mut tls = s.tls_from(from).await;
            tls.write_all(&register_head(100)).await.unwrap();
            tls.flush().await.unwrap();
            rack.push(tls);
        }
        // A third connection from one rack address: closed at accept.
        assert!(s.refused(ip(0, 3)).await, "a third connection from one address was let in");
        // Another rack address, once the four requests are in flight: closed at accept too.
        s.wait_for("took the rack's requests", |s| s.metrics.connections.requests(Listener::Api) == 4).await;
        assert!(s.refused(ip(0, 5)).await, "the rack took a slot kept for the overlay");
        assert_eq!((s.count(ConnEvent::RefusedSource), s.count(ConnEvent::RefusedFull)), (1, 1));
        // The overlay still has its four: three held, and a real request answered on the fourth.
        let mut agents = Vec::new();
        for b in 2..5 {
            agents.push(s.tls_from(ip(1, b)).await);
        }
        assert_eq!(s.list_from(ip(1, 5)).await, 200);
        assert_eq!(s.metrics.connections.peak(Listener::Api), 8);
        assert_eq!((s.count(ConnEvent::RefusedFull), s.count(ConnEvent::Evicted)), (1, 0));
    }
}

/// An API on a fresh store in `dir` (no WireGuard, no artifacts), for tests of what sits on it
/// (here, and the console's menu in `oasis-boot` through the `test-support` feature).
#[cfg(any(test, feature = "test-support"))]
pub fn test_api(dir: &std::path::Path, policy: oasis_core::registry::Policy) -> Arc<Api> {
    test_api_with_power(dir, policy, crate::power::PowerControl::default())
}

/// [`test_api`] with these BMCs.
#[cfg(any(test, feature = "test-support"))]
pub fn test_api_with_power(
    dir: &std::path::Path,
    policy: oasis_core::registry::Policy,
    power: crate::power::PowerControl,
) -> Arc<Api> {
    let store = Store::open(dir).unwrap();
    let identity = Identity::load_or_create(&store, dir).unwrap();
    let overlay = oasis_core::registry::Overlay {
        appliance: Ipv4Addr::new(10, 99, 0, 1),
        prefix_len: 24,
        endpoint: "10.0.0.1:51820".parse().unwrap(),
        appliance_key: crate::wireguard::public_key(&identity.wireguard_private),
        keepalive_secs: 15,
    };
    let (desired, _) = watch::channel(Arc::default());
    let generations = Arc::new(crate::generations::NodeGenerations::new(
        store.clone(),
        dir,
        &dir.join("boot/node"),
        crate::generations::UpdateKeys::default(),
    ));
    Arc::new(Api {
        registry: Mutex::new(Registry::new(policy, overlay, vec![])),
        generations,
        store,
        identity,
        wireguard: None,
        desired,
        artifacts: HashMap::new(),
        full_dhcp: false,
        peers: PeerQueue::new(None),
        power: Arc::new(power),
        agent_power: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use axum::http::Request;
    use oasis_proto::ErrorBody;
    use tower::ServiceExt;

    use super::*;
    use oasis_core::registry::Policy;

    fn api(dir: &std::path::Path) -> Arc<Api> {
        test_api(dir, Policy::Auto)
    }

    async fn send(api: &Arc<Api>, method: &str, path: &str, auth: Option<&str>, body: Vec<u8>) -> (StatusCode, String) {
        let mut req = Request::builder().method(method).uri(path).header("content-type", "application/json");
        if let Some(token) = auth {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let mut req = req.body(Body::from(body)).unwrap();
        req.extensions_mut().insert(ConnectInfo(SocketAddr::from(([10, 0, 0, 100], 40000))));
        let res = router(api.clone()).oneshot(req).await.unwrap();
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn an_update_upload_needs_the_admin_token_and_a_size_within_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let api = api(dir.path());
        let (status, _) = send(&api, "POST", "/v1/admin/update", None, b"OASISBDL".to_vec()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let admin = api.identity.admin_token.clone();
        // Over the limit by its Content-Length: refused before a byte is read.
        let limit = api.generations.max_upload_bytes();
        let req = Request::builder()
            .method("POST")
            .uri("/v1/admin/update")
            .header("authorization", format!("Bearer {admin}"))
            .header("content-length", (limit + 1).to_string())
            .body(Body::empty())
            .unwrap();
        let res = router(api.clone()).oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
        // Within it, and larger than any other route takes: the installer answers (this test
        // appliance has no key to verify bundles with, a configuration to fix: 422).
        let body = [&b"OASISBDL"[..], &vec![0u8; 2 * MAX_BODY_BYTES]].concat();
        let (status, text) = send(&api, "POST", "/v1/admin/update", Some(&admin), body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{text}");
        assert!(text.contains("[update] trusted_keys"), "{text}");
    }

    #[tokio::test]
    async fn bodies_too_large_or_malformed_are_refused_with_an_error_body() {
        let dir = tempfile::tempdir().unwrap();
        let api = api(dir.path());
        let (status, body) = send(&api, "POST", "/v1/register", None, vec![b' '; MAX_BODY_BYTES + 1]).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
        assert!(serde_json::from_str::<ErrorBody>(&body).is_ok(), "{body}");
        let (status, body) = send(&api, "POST", "/v1/register", None, b"{\"token\": 12".to_vec()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(body.contains("error"), "{body}");
    }

    fn registration(token: &str, nonce: u8) -> Vec<u8> {
        let req = RegisterRequest {
            token: token.into(),
            nonce: format!("nonce-{nonce:016}"),
            boot_mac: "52:54:00:00:00:07".into(),
            wireguard_key: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [7u8; 32]),
            agent_version: "0.1.0".into(),
            inventory: oasis_proto::Inventory { cpus: 1, ..Default::default() },
        };
        serde_json::to_vec(&req).unwrap()
    }

    #[tokio::test]
    async fn in_full_mode_registrations_are_checked_against_the_lease_and_the_boot_token() {
        let dir = tempfile::tempdir().unwrap();
        let mut api = api(dir.path());
        Arc::get_mut(&mut api).unwrap().full_dhcp = true;
        let join = api.identity.join_token.clone();
        let mac: oasis_proto::MacAddr = "52:54:00:00:00:07".parse().unwrap();

        // `send` comes from 10.0.0.100, which nobody has leased yet.
        let (status, body) = send(&api, "POST", "/v1/register", None, registration(&join, 1)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert!(body.contains("holds no address from this appliance"), "{body}");
        let now = now();
        let lease = oasis_pxe::dhcp::Lease {
            ip: Ipv4Addr::new(10, 0, 0, 100),
            mac,
            state: oasis_pxe::dhcp::LeaseState::Bound,
            expires: now + 600,
            updated: now,
        };
        api.store.save_lease(lease).await.unwrap();
        let (status, body) = send(&api, "POST", "/v1/register", None, registration(&join, 2)).await;
        assert_eq!(status, StatusCode::OK, "{body}");

        // The token of this MAC's newest boot script, as the store has it, is accepted too.
        let store = api.store.clone();
        let token = oasis_core::registry::BootToken {
            sha256: oasis_core::registry::credential_hash("its-boot-token"),
            issued_to: Some(Ipv4Addr::new(10, 0, 0, 100)),
            issued_at: now,
        };
        tokio::task::spawn_blocking(move || store.save_boot_token_blocking(mac, token)).await.unwrap().unwrap();
        let (status, body) = send(&api, "POST", "/v1/register", None, registration("its-boot-token", 3)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, _) = send(&api, "POST", "/v1/register", None, registration("another-token", 4)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn admin_endpoints_need_the_admin_token() {
        let dir = tempfile::tempdir().unwrap();
        let api = api(dir.path());
        assert_eq!(send(&api, "GET", "/v1/machines", None, vec![]).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(send(&api, "GET", "/v1/machines", Some("guess"), vec![]).await.0, StatusCode::UNAUTHORIZED);
        let join = api.identity.join_token.clone();
        assert_eq!(send(&api, "GET", "/v1/machines", Some(&join), vec![]).await.0, StatusCode::UNAUTHORIZED);
        let admin = api.identity.admin_token.clone();
        let (status, body) = send(&api, "GET", "/v1/machines", Some(&admin), vec![]).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "[]"));
        let (status, _) = send(&api, "POST", "/v1/machines/nobody/accept", Some(&admin), vec![]).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    /// A registration of machine `mac-525400bb00NN` (NN = `mac`) with the join token.
    fn registration_from(api: &Api, mac: u8) -> Vec<u8> {
        let req = RegisterRequest {
            token: api.identity.join_token.clone(),
            nonce: format!("nonce-{mac:02x}-0000000000001"),
            boot_mac: format!("52:54:00:bb:00:{mac:02x}"),
            wireguard_key: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [mac; 32]),
            agent_version: "0.1.0".into(),
            inventory: oasis_proto::Inventory { cpus: 1, ..Default::default() },
        };
        serde_json::to_vec(&req).unwrap()
    }

    /// Registers pending machines `mac-525400bb00NN` for each NN in `macs`.
    async fn pending(api: &Arc<Api>, macs: &[u8]) {
        for &mac in macs {
            let (status, body) = send(api, "POST", "/v1/register", None, registration_from(api, mac)).await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    }

    #[tokio::test]
    async fn an_ambiguous_name_or_an_exhausted_pool_is_a_conflict_that_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let api = test_api(dir.path(), Policy::Manual);
        pending(&api, &[1, 2]).await;
        let admin = api.identity.admin_token.clone();

        let (status, body) = send(&api, "POST", "/v1/machines/mac-525400bb/accept", Some(&admin), vec![]).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert!(body.contains("mac-525400bb0001") && body.contains("mac-525400bb0002"), "{body}");
        let (status, body) = send(&api, "POST", "/v1/machines/nobody/accept", Some(&admin), vec![]).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

        // A /30: the appliance's address and one more.
        api.registry.lock().await.overlay.prefix_len = 30;
        let (status, body) = send(&api, "POST", "/v1/machines/mac-525400bb0001/accept", Some(&admin), vec![]).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, body) = send(&api, "POST", "/v1/machines/mac-525400bb0002/accept", Some(&admin), vec![]).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert!(body.contains("widen wireguard.prefix"), "{body}");
        let error: ErrorBody = serde_json::from_str(&body).unwrap();
        assert!(error.error.contains("/30"), "{body}");
        // The CLI, which reads the status from the admin socket, exits 2: what was asked must change.
        assert_eq!(crate::operator::exit_code_of(status), 2);
    }

    /// A WireGuard device that records changes and, when told to, holds the next addition until
    /// released.
    #[derive(Default)]
    struct HeldDevice {
        changes: std::sync::Mutex<Vec<String>>,
        hold_next_add: std::sync::atomic::AtomicBool,
        entered: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedSender<()>>>,
        release: std::sync::Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    }

    impl PeerDevice for HeldDevice {
        fn add_peer(&self, key: &str, _: Ipv4Addr) -> Result<(), crate::wireguard::WireguardError> {
            if self.hold_next_add.swap(false, std::sync::atomic::Ordering::SeqCst) {
                let _ = self.entered.lock().unwrap().as_ref().unwrap().send(());
                let release = self.release.lock().unwrap().take().unwrap();
                let _ = release.recv();
            }
            self.changes.lock().unwrap().push(format!("add {key}"));
            Ok(())
        }

        fn remove_peer(&self, key: &str) -> Result<(), crate::wireguard::WireguardError> {
            self.changes.lock().unwrap().push(format!("remove {key}"));
            Ok(())
        }
    }

    #[tokio::test]
    async fn peers_change_after_the_registry_lock_and_in_commit_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut api = test_api(dir.path(), Policy::Manual);
        let device = Arc::new(HeldDevice::default());
        Arc::get_mut(&mut api).unwrap().peers = PeerQueue::new(Some(device.clone() as Arc<dyn PeerDevice>));
        pending(&api, &[1]).await;
        let id = "mac-525400bb0001";
        let key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [1u8; 32]);
        device.changes.lock().unwrap().clear();

        let (entered_tx, mut entered) = tokio::sync::mpsc::unbounded_channel();
        let (release, release_rx) = std::sync::mpsc::channel();
        *device.entered.lock().unwrap() = Some(entered_tx);
        *device.release.lock().unwrap() = Some(release_rx);
        device.hold_next_add.store(true, std::sync::atomic::Ordering::SeqCst);
        let admin = api.identity.admin_token.clone();
        let accept = {
            let (api, admin) = (api.clone(), admin.clone());
            tokio::spawn(
                async move { send(&api, "POST", &format!("/v1/machines/{id}/accept"), Some(&admin), vec![]).await },
            )
        };
        entered.recv().await.expect("the accept's peer change started");
        // The device is busy with the accept's peer: the registry is free meanwhile.
        assert!(api.registry.try_lock().is_ok(), "the registry lock is held while the WireGuard peer changes");

        // A reject committed meanwhile changes its peer only after the accept's change.
        let reject = {
            let api = api.clone();
            tokio::spawn(
                async move { send(&api, "POST", &format!("/v1/machines/{id}/reject"), Some(&admin), vec![]).await },
            )
        };
        while api.registry.lock().await.get(id).unwrap().state != MachineState::Rejected {
            tokio::task::yield_now().await;
        }
        assert_eq!(*device.changes.lock().unwrap(), Vec::<String>::new(), "the reject's change ran first");
        release.send(()).unwrap();
        assert_eq!(accept.await.unwrap().0, StatusCode::OK);
        assert_eq!(reject.await.unwrap().0, StatusCode::OK);
        assert_eq!(*device.changes.lock().unwrap(), vec![format!("add {key}"), format!("remove {key}")]);
    }
}
