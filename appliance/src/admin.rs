//! The admin API on a Unix socket in the data directory (`oasis.sock`, mode 0600): how the CLI
//! reads a running appliance's state, since the store file is locked by `oasis serve`. Only
//! root (or the data directory's owner) can reach it, so it needs no token; the HTTP API with
//! bearer tokens for remote admins comes later.
//!
//! Routes, all JSON: `GET /v1/leases`, `GET /v1/machines`, `GET /v1/events?limit=N`,
//! `PUT /v1/machines/{mac}/boot/{network|local}`, `POST /v1/machines/{id}/{accept|reject}`,
//! `DELETE /v1/machines/{id}`, `GET /v1/cluster` (the cluster status), and
//! `GET /v1/cluster/kubeconfig` (with a k3s bundle), `GET|POST /v1/cluster/kv?via=MACHINE&key=K[&value=V]` (read or write one etcd key through one
//! member: how an operator, or a test, checks that the cluster really holds data). Each route is
//! an [`Action`] of the one [`Operator`]; a refusal is an `ErrorBody` with the status of the
//! operator table ([`ActionError::status`]).

use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post, put};
use axum::Router;
use serde::Deserialize;
use tokio::sync::watch;

use crate::api::{Api, MachineView};
use crate::etcd::EtcdClient;
use crate::operator::{self, Action, ActionError, Answer, Operator};
use crate::store::{BootMode, Machine};
use oasis_core::assembly::status::ClusterStatus;

/// File name of the socket inside the data directory.
pub const SOCKET_FILE: &str = "oasis.sock";

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_FILE)
}

/// Binds the admin socket, replacing a stale one left by a crashed server.
pub fn listen(data_dir: &Path) -> io::Result<tokio::net::UnixListener> {
    let path = socket_path(data_dir);
    if UnixStream::connect(&path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("another oasis serve answers on {}", path.display()),
        ));
    }
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = tokio::net::UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

#[derive(Deserialize)]
struct EventsQuery {
    limit: Option<usize>,
}

/// A machine as `oasis machines` shows it: what its network boots told the appliance, and its
/// registration if its agent registered.
#[derive(Debug, Clone, serde::Serialize, Deserialize)]
pub struct MachineEntry {
    #[serde(flatten)]
    pub netboot: Machine,
    pub registration: Option<MachineView>,
    /// Its power as its BMC read last (`[[power.bmc]]`); `None` without a BMC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power: Option<crate::power::PowerSeen>,
    /// Its BMC: the config's (`ipmi 10.0.2.3`), and what its agent read from its own BMC when
    /// that differs; `None` when neither knows one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bmc: Option<String>,
}

/// Joins netboot records and registrations by boot MAC; registrations without a netboot record
/// (a store from before a wipe) get an empty one.
pub fn machine_entries(netboots: Vec<Machine>, registrations: Vec<MachineView>) -> Vec<MachineEntry> {
    let mut entries: Vec<MachineEntry> = netboots
        .into_iter()
        .map(|netboot| MachineEntry { netboot, registration: None, power: None, bmc: None })
        .collect();
    for view in registrations {
        let mac = view.record.boot_mac;
        match entries.iter_mut().find(|e| e.netboot.mac == mac) {
            Some(entry) => entry.registration = Some(view),
            None => entries.push(MachineEntry {
                netboot: Machine {
                    mac,
                    arch: None,
                    vendor_class: None,
                    first_seen: view.record.first_registered,
                    last_seen: view.record.last_registered,
                    boot_count: 0,
                    last_ip: None,
                    boot: BootMode::Network,
                },
                registration: Some(view),
                power: None,
                bmc: None,
            }),
        }
    }
    entries.sort_by_key(|e| e.netboot.first_seen);
    entries
}

/// Adds each machine's power as its BMC read last; a machine with a BMC that never booted
/// (powered off since the rack arrived) is listed too, at the end.
pub fn with_power(mut entries: Vec<MachineEntry>, power: &crate::power::PowerControl) -> Vec<MachineEntry> {
    for entry in &mut entries {
        entry.power = power.seen(entry.netboot.mac);
        let own = entry.registration.as_ref().and_then(|v| v.record.inventory.bmc.as_ref());
        entry.bmc = power.link(entry.netboot.mac, own);
    }
    for mac in power.machines() {
        if !entries.iter().any(|e| e.netboot.mac == mac) {
            let netboot = Machine {
                mac,
                arch: None,
                vendor_class: None,
                first_seen: 0,
                last_seen: 0,
                boot_count: 0,
                last_ip: None,
                boot: BootMode::Network,
            };
            entries.push(MachineEntry {
                netboot,
                registration: None,
                power: power.seen(mac),
                bmc: power.link(mac, None),
            });
        }
    }
    entries
}

/// What the admin socket reaches of cluster assembly.
#[derive(Debug, Clone)]
pub struct ClusterHandle {
    pub status: watch::Receiver<Arc<ClusterStatus>>,
    pub etcd: EtcdClient,
    /// The admin kubeconfig, once k3s from a bundle has a server.
    pub kubeconfig: watch::Receiver<Option<String>>,
}

#[derive(Deserialize)]
struct KvQuery {
    via: String,
    key: String,
    value: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
struct UpdateQuery {
    path: PathBuf,
}

/// The admin socket's routes: each parses its request into an [`Action`] for the one
/// [`Operator`] and renders the [`Answer`] (JSON, or text for a kubeconfig or an etcd value).
pub fn router(api: Arc<Api>, cluster: ClusterHandle) -> Router {
    let op = Operator { api, cluster: Some(cluster) };
    async fn run(op: Operator, action: Result<Action, ActionError>) -> Result<Answer, ActionError> {
        op.handle(action?).await
    }
    Router::new()
        .route("/v1/cluster", get(|State(op): State<Operator>| run(op, Ok(Action::ClusterStatus))))
        .route("/v1/cluster/kubeconfig", get(|State(op): State<Operator>| run(op, Ok(Action::Kubeconfig))))
        .route(
            "/v1/cluster/kv",
            get(|State(op): State<Operator>, Query(q): Query<KvQuery>| {
                run(op, Ok(Action::KvGet { via: q.via, key: q.key }))
            })
            .post(|State(op): State<Operator>, Query(q): Query<KvQuery>| {
                let value = q.value.unwrap_or_default();
                run(op, Ok(Action::KvPut { via: q.via, key: q.key, value }))
            }),
        )
        .route("/v1/leases", get(|State(op): State<Operator>| run(op, Ok(Action::Leases))))
        .route("/v1/update", get(|State(op): State<Operator>| run(op, Ok(Action::UpdateStatus))))
        .route(
            "/v1/update/apply",
            post(|State(op): State<Operator>, Query(q): Query<UpdateQuery>| {
                run(op, Ok(Action::UpdateApply { path: q.path }))
            }),
        )
        .route(
            "/v1/update/{command}",
            post(|State(op): State<Operator>, UrlPath(word): UrlPath<String>| run(op, operator::rollout(&word))),
        )
        .route("/v1/machines", get(|State(op): State<Operator>| run(op, Ok(Action::Machines))))
        .route(
            "/v1/events",
            get(|State(op): State<Operator>, Query(q): Query<EventsQuery>| {
                run(op, Ok(Action::Events { limit: q.limit.unwrap_or(100) }))
            }),
        )
        .route(
            "/v1/machines/{mac}/boot/{mode}",
            put(|State(op): State<Operator>, UrlPath((mac, mode)): UrlPath<(String, String)>| {
                run(op, operator::set_boot(&mac, &mode))
            }),
        )
        .route(
            "/v1/machines/{id}/{decision}",
            post(|State(op): State<Operator>, UrlPath((id, decision)): UrlPath<(String, String)>| {
                run(op, operator::decide(&id, &decision))
            }),
        )
        .route(
            "/v1/machines/{id}/power/{op}",
            post(|State(op): State<Operator>, UrlPath((id, word)): UrlPath<(String, String)>| {
                run(op, operator::power(&id, &word))
            }),
        )
        .route(
            "/v1/machines/{id}",
            delete(|State(op): State<Operator>, UrlPath(id): UrlPath<String>| {
                run(op, Ok(Action::Remove { machine: id }))
            }),
        )
        .with_state(op)
}

/// How long a request to the admin socket may take, at most, to connect and to be answered: a
/// `serve` that hangs must not hang the CLI, the console or the supervisor with it. Generous:
/// an etcd call through the socket has its own, shorter, bound.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A request to the admin socket that did not get a good answer.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot reach oasis serve on {path}")]
    Connect { path: PathBuf, source: io::Error },
    #[error(
        "oasis serve on {path} did not answer within {} s: it may be hung; its log (or `oasis boot`'s \
         console) says more, and restarting it is safe",
        timeout.as_secs()
    )]
    Timeout { path: PathBuf, timeout: Duration },
    #[error("talking to oasis serve on {path} failed")]
    Io { path: PathBuf, source: io::Error },
    #[error("malformed response from oasis serve on {path}")]
    Malformed { path: PathBuf },
    /// The appliance answered with an error: its status and message.
    #[error("{message}")]
    Refused { status: StatusCode, message: String },
}

impl AdminError {
    /// The console's line for an action that failed: "oasis: WHAT: why", causes included.
    pub fn console_line(&self, what: &str) -> String {
        format!("oasis: {what}: {}", oasis_proto::error_chain(self))
    }

    /// The CLI's exit code (see [`operator::exit_code_of`]).
    pub fn exit_code(&self) -> i32 {
        match self {
            AdminError::Refused { status, .. } => operator::exit_code_of(*status),
            _ => 1,
        }
    }
}

/// A request to a running appliance. `Ok(None)` when none is running (no socket, or nobody
/// listening on it); the caller then reads the store directly. Bounded by [`REQUEST_TIMEOUT`].
pub fn request(data_dir: &Path, method: &str, path: &str) -> Result<Option<Vec<u8>>, AdminError> {
    request_within(data_dir, method, path, REQUEST_TIMEOUT)
}

/// [`request`] with its bound given.
pub fn request_within(
    data_dir: &Path,
    method: &str,
    path: &str,
    timeout: Duration,
) -> Result<Option<Vec<u8>>, AdminError> {
    let socket = socket_path(data_dir);
    let timed_out = |e: &io::Error| matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut);
    let io_error = |source: io::Error| match timed_out(&source) {
        true => AdminError::Timeout { path: socket.clone(), timeout },
        false => AdminError::Io { path: socket.clone(), source },
    };
    let mut stream = match connect(&socket, timeout) {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused) => return Ok(None),
        Err(e) if timed_out(&e) => return Err(AdminError::Timeout { path: socket, timeout }),
        Err(source) => return Err(AdminError::Connect { path: socket, source }),
    };
    stream.set_read_timeout(Some(timeout)).map_err(io_error)?;
    stream.set_write_timeout(Some(timeout)).map_err(io_error)?;
    write!(stream, "{method} {path} HTTP/1.0\r\nHost: oasis\r\nContent-Length: 0\r\n\r\n").map_err(io_error)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).map_err(io_error)?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| AdminError::Malformed { path: socket.clone() })?;
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let body = response[split + 4..].to_vec();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<StatusCode>().ok())
        .ok_or_else(|| AdminError::Malformed { path: socket.clone() })?;
    if !status.is_success() {
        // An error body is an `ErrorBody`; anything else is shown as it came.
        let message = match serde_json::from_slice::<oasis_proto::ErrorBody>(&body) {
            Ok(e) => e.error,
            Err(_) => String::from_utf8_lossy(&body).into_owned(),
        };
        return Err(AdminError::Refused { status, message });
    }
    Ok(Some(body))
}

/// Connects to the socket at `path` within `timeout` (a server that stopped accepting leaves
/// connections in its backlog; a full backlog blocks a plain connect).
fn connect(path: &Path, timeout: Duration) -> io::Result<UnixStream> {
    let address = socket2::SockAddr::unix(path)?;
    let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
    socket.connect_timeout(&address, timeout)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use axum::response::IntoResponse;

    use super::*;
    use crate::store::StoreError;

    #[tokio::test]
    async fn a_damaged_store_is_answered_with_what_to_do_not_a_bare_500() {
        let path = PathBuf::from("/var/lib/oasis/oasis.redb");
        let damaged =
            StoreError::Record { path: path.clone(), table: "events", key: "#7".into(), fault: "its seal".into() };
        let res = ActionError::Store(damaged).into_response();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = axum::body::to_bytes(res.into_body(), 1 << 16).await.unwrap();
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("/var/lib/oasis/oasis.redb") && text.contains("events record #7"), "{text}");
        assert!(text.contains("--new-store"), "{text}");
        let full = ActionError::Store(StoreError::Full { dir: PathBuf::from("/var/lib/oasis") }).into_response();
        assert_eq!(full.status(), StatusCode::INSUFFICIENT_STORAGE);
    }

    #[test]
    fn a_serve_that_accepts_and_never_answers_is_given_up_on_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let listener = std::os::unix::net::UnixListener::bind(socket_path(dir.path())).unwrap();
        // Accepts, reads nothing, answers nothing, and keeps the connection open.
        let hung = std::thread::spawn(move || listener.accept().map(|(stream, _)| stream));
        let asked = {
            let dir = dir.path().to_path_buf();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _ = tx.send(request_within(&dir, "GET", "/v1/machines", Duration::from_millis(100)));
            });
            // A bound only a client without a timeout reaches.
            rx.recv_timeout(Duration::from_secs(60)).expect("the client waited for oasis serve forever")
        };
        let _held = hung.join().unwrap().unwrap();
        let e = asked.expect_err("no answer is not an answer");
        assert!(matches!(e, AdminError::Timeout { .. }), "{e:?}");
        let text = e.to_string();
        assert!(
            text.contains("did not answer") && text.contains("oasis.sock") && text.contains("restarting"),
            "{text}"
        );
        assert_eq!(e.exit_code(), 1);
    }

    #[test]
    fn a_refusal_from_serve_carries_its_status_and_message() {
        let dir = tempfile::tempdir().unwrap();
        let listener = std::os::unix::net::UnixListener::bind(socket_path(dir.path())).unwrap();
        let serve = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut head = [0u8; 1024];
            let _ = stream.read(&mut head).unwrap();
            let body = r#"{"error":"no machine \"x\": `oasis machines` lists them"}"#;
            write!(stream, "HTTP/1.0 404 Not Found\r\ncontent-length: {}\r\n\r\n{body}", body.len()).unwrap();
        });
        let e = request(dir.path(), "POST", "/v1/machines/x/accept").expect_err("a 404 is an error");
        serve.join().unwrap();
        assert_eq!(e.to_string(), "no machine \"x\": `oasis machines` lists them");
        assert_eq!(e.exit_code(), 2);
    }
}
