//! The admin API on a Unix socket in the data directory (`oasis.sock`, mode 0600): how the CLI
//! reads a running appliance's state, since the store file is locked by `oasis serve`. Only
//! root (or the data directory's owner) can reach it, so it needs no token; the HTTP API with
//! bearer tokens for remote admins comes later.
//!
//! Routes, all JSON: `GET /v1/leases`, `GET /v1/machines`, `GET /v1/events?limit=N`,
//! `PUT /v1/machines/{mac}/boot/{network|local}`, `POST /v1/machines/{id}/{accept|reject}`,
//! `DELETE /v1/machines/{id}`, `GET /v1/cluster` (the cluster status), and
//! `GET /v1/cluster/kubeconfig` (with a k3s bundle), `GET|POST /v1/cluster/kv?via=MACHINE&key=K[&value=V]` (read or write one etcd key through one
//! member: how an operator, or a test, checks that the cluster really holds data).

use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use oasis_pxe::mac::MacAddr;
use serde::Deserialize;

use std::sync::Arc;

use tokio::sync::watch;

use crate::api::{self, Api, MachineView};
use crate::assembly::status::ClusterStatus;
use crate::etcd::EtcdClient;
use crate::store::{BootMode, Machine, Store, StoreError};

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

struct ApiError(StoreError);

impl IntoResponse for ApiError {
    /// The store's own message, which says what is wrong and what to do; damage was logged and
    /// counted by the store.
    fn into_response(self) -> Response {
        let status = match &self.0 {
            StoreError::Full { .. } => StatusCode::INSUFFICIENT_STORAGE,
            e if e.is_damage() => StatusCode::SERVICE_UNAVAILABLE,
            StoreError::Reopening { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, self.0.to_string()).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self(e)
    }
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
}

/// Joins netboot records and registrations by boot MAC; registrations without a netboot record
/// (a store from before a wipe) get an empty one.
pub fn machine_entries(netboots: Vec<Machine>, registrations: Vec<MachineView>) -> Vec<MachineEntry> {
    let mut entries: Vec<MachineEntry> =
        netboots.into_iter().map(|netboot| MachineEntry { netboot, registration: None }).collect();
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
            }),
        }
    }
    entries.sort_by_key(|e| e.netboot.first_seen);
    entries
}

#[derive(Clone)]
struct Admin {
    store: Store,
    api: Arc<Api>,
    cluster: ClusterHandle,
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

/// One etcd read or write through the member on machine `via`.
async fn kv(a: &Admin, q: KvQuery, write: bool) -> Response {
    let overlay = match a.api.registry.lock().await.find(&q.via) {
        Ok(record) => record.overlay,
        Err(e) => return (StatusCode::NOT_FOUND, e).into_response(),
    };
    let Some(overlay) = overlay else {
        return (StatusCode::CONFLICT, format!("{} has no management address: it is not accepted", q.via))
            .into_response();
    };
    let ep = std::net::SocketAddr::from((overlay, oasis_proto::ETCD_CLIENT_PORT));
    let result = if write {
        let value = q.value.unwrap_or_default();
        a.cluster.etcd.put(ep, q.key.as_bytes(), value.as_bytes()).await.map(|()| Some(value.into_bytes()))
    } else {
        a.cluster.etcd.get(ep, q.key.as_bytes()).await
    };
    match result {
        Ok(Some(value)) => (StatusCode::OK, value).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, format!("no key {:?}", q.key)).into_response(),
        Err(e) => (StatusCode::BAD_GATEWAY, format!("etcd on {}: {e}", q.via)).into_response(),
    }
}

pub fn router(store: Store, api: Arc<Api>, cluster: ClusterHandle) -> Router {
    Router::new()
        .route(
            "/v1/cluster",
            get(|State(a): State<Admin>| async move { Json(a.cluster.status.borrow().as_ref().clone()) }),
        )
        .route(
            "/v1/cluster/kubeconfig",
            get(|State(a): State<Admin>| async move {
                match a.cluster.kubeconfig.borrow().clone() {
                    Some(config) => (StatusCode::OK, config).into_response(),
                    None => (
                        StatusCode::NOT_FOUND,
                        "no kubeconfig: the node image has no k3s bundle, or no k3s server is up yet (oasis cluster status)",
                    )
                        .into_response(),
                }
            }),
        )
        .route(
            "/v1/cluster/kv",
            get(|State(a): State<Admin>, Query(q): Query<KvQuery>| async move { kv(&a, q, false).await })
                .post(|State(a): State<Admin>, Query(q): Query<KvQuery>| async move { kv(&a, q, true).await }),
        )
        .route("/v1/leases", get(|State(a): State<Admin>| async move { Ok::<_, ApiError>(Json(a.store.leases()?)) }))
        .route(
            "/v1/machines",
            get(|State(a): State<Admin>| async move {
                let views = api::machine_views(&a.api).await;
                Ok::<_, ApiError>(Json(machine_entries(a.store.machines()?, views)))
            }),
        )
        .route(
            "/v1/events",
            get(|State(a): State<Admin>, Query(q): Query<EventsQuery>| async move {
                Ok::<_, ApiError>(Json(a.store.events(q.limit.unwrap_or(100))?))
            }),
        )
        .route("/v1/machines/{mac}/boot/{mode}", put(set_boot))
        .route(
            "/v1/machines/{id}/{decision}",
            post(|State(a): State<Admin>, UrlPath((id, decision)): UrlPath<(String, String)>| async move {
                api::decide_machine(&a.api, &id, &decision).await.map(Json)
            }),
        )
        .route(
            "/v1/machines/{id}",
            delete(|State(a): State<Admin>, UrlPath(id): UrlPath<String>| async move {
                api::remove_machine(&a.api, &id).await.map(Json)
            }),
        )
        .with_state(Admin { store, api, cluster })
}

async fn set_boot(
    State(Admin { store, .. }): State<Admin>,
    UrlPath((mac, mode)): UrlPath<(String, String)>,
) -> Response {
    let Ok(mac) = mac.parse::<MacAddr>() else {
        return (StatusCode::BAD_REQUEST, format!("{mac:?} is not a MAC address")).into_response();
    };
    let mode = match mode.as_str() {
        "network" => BootMode::Network,
        "local" => BootMode::Local,
        other => {
            return (StatusCode::BAD_REQUEST, format!("boot mode {other:?} is not network or local")).into_response()
        }
    };
    match store.set_boot_mode(mac, mode).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => ApiError(e).into_response(),
    }
}

/// A request to a running appliance. `Ok(None)` when none is running (no socket, or nobody
/// listening on it); the caller then reads the store directly.
pub fn request(data_dir: &Path, method: &str, path: &str) -> io::Result<Option<Vec<u8>>> {
    let mut stream = match UnixStream::connect(socket_path(data_dir)) {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused) => return Ok(None),
        Err(e) => return Err(e),
    };
    write!(stream, "{method} {path} HTTP/1.0\r\nHost: oasis\r\nContent-Length: 0\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed response from oasis serve"))?;
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let body = response[split + 4..].to_vec();
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if !status.starts_with('2') {
        return Err(io::Error::other(format!("oasis serve answered {status}: {}", String::from_utf8_lossy(&body))));
    }
    Ok(Some(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_damaged_store_is_answered_with_what_to_do_not_a_bare_500() {
        let path = PathBuf::from("/var/lib/oasis/oasis.redb");
        let damaged =
            StoreError::Record { path: path.clone(), table: "events", key: "#7".into(), fault: "its seal".into() };
        let res = ApiError(damaged).into_response();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = axum::body::to_bytes(res.into_body(), 1 << 16).await.unwrap();
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("/var/lib/oasis/oasis.redb") && text.contains("events record #7"), "{text}");
        assert!(text.contains("--new-store"), "{text}");
        let full = ApiError(StoreError::Full { dir: PathBuf::from("/var/lib/oasis") }).into_response();
        assert_eq!(full.status(), StatusCode::INSUFFICIENT_STORAGE);
    }
}
