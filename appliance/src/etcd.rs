//! The appliance's client of etcd: membership, status and a few keys, through etcd's v3 JSON
//! gateway (`POST /v3/...` on the client port, etcd 3.4).
//!
//! The gateway speaks proto3 JSON: 64-bit integers are strings, bytes are base64, fields at
//! their default value are left out, and the field names are a mix (`cluster_id` in headers,
//! `dbSize` in a status, `ID` and `peerURLs` in members); the answers are read accordingly. An
//! error comes back with a non-2xx status and the gRPC error in the body:
//! `{"error": "etcdserver: ...", "message": "etcdserver: ...", "code": 9}`. The errors the
//! membership planner acts on get their own [`EtcdError`] variant.
//!
//! Each call opens its own TLS connection (client certificate from the cluster CA, only the
//! cluster CA trusted, the member's IP address checked against its certificate) and is bounded
//! by [`CALL_TIMEOUT`], so an unreachable or stuck member never holds up the controller.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::Serialize;
use serde_json::json;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::pki::{ClusterCa, IssuedCert, PkiError};
use oasis_core::assembly::status::MemberStatus;

/// The longest any one call to etcd may take, connecting included.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// The common name of the appliance's client certificate.
pub const CLIENT_NAME: &str = "oasis-appliance";
/// The largest answer read; etcd's own request limit is 1.5 MiB.
const MAX_ANSWER_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// No answer from `endpoint`: `stage` is where the exchange broke ("connecting", "TLS
    /// handshake", ...), `source` what failed there.
    #[error(
        "cannot reach etcd at https://{endpoint} ({stage}); check that the member is running and its address is right"
    )]
    Unreachable { endpoint: SocketAddr, stage: &'static str, source: Option<Box<dyn std::error::Error + Send + Sync>> },
    #[error("etcd did not answer within {} s; the member may be overloaded or cut off", CALL_TIMEOUT.as_secs())]
    Timeout,
    #[error("etcd already has a learner; promote or remove it, then add the next member")]
    TooManyLearners,
    #[error("the learner has not caught up with the leader yet; promote it again later")]
    LearnerNotReady,
    #[error("etcd has no such member; it may have been removed already")]
    MemberNotFound,
    #[error("the member is a voter already; only a learner can be promoted")]
    NotLearner,
    #[error("etcd already has a member with this peer URL; list the members and use or remove it")]
    PeerUrlExists,
    /// etcd changes membership only when every voter has been connected to the member asked for
    /// the last 5 s (`--strict-reconfig-check`, on by default): right after a member starts or is
    /// promoted, the next change is refused with this for a few seconds.
    /// Adding or removing a voter needs enough members started (published) to keep quorum
    /// afterwards; a member added but not yet started counts against it.
    #[error("etcd refuses the change: too few members have started to keep quorum after it; retry once they are up")]
    NotEnoughStarted,
    /// A learner serves no reads or writes; a member just promoted answers this until it has
    /// applied its promotion.
    #[error("the member is a learner, which serves no reads or writes; ask a voter")]
    NotForLearner,
    #[error("etcd refuses membership changes until every voter has been connected for 5 s; retry shortly")]
    Unhealthy,
    #[error("etcd refused the request: {message}{}", code.map(|c| format!(" (gRPC code {c})")).unwrap_or_default())]
    Refused { code: Option<i32>, message: String },
    #[error("etcd's answer is not what etcd 3.4 sends: {0}")]
    BadAnswer(String),
    /// An answer to `path` that does not decode.
    #[error("etcd's answer to {path} is not what etcd 3.4 sends")]
    Undecodable { path: String, source: serde_json::Error },
    #[error("etcd's answer holds a value that is not base64")]
    NotBase64(#[source] base64::DecodeError),
}

/// A cluster member (`/v3/cluster/member/list`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    pub id: u64,
    /// Empty until the member has started and published itself.
    pub name: String,
    pub peer_urls: Vec<String>,
    /// Empty until the member has started and published itself.
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

impl Member {
    /// Whether the member has started: one added but never started has no name yet
    /// (`etcdctl member list` shows it as "unstarted").
    pub fn started(&self) -> bool {
        !self.name.is_empty()
    }
}

/// The appliance's etcd client.
#[derive(Clone)]
pub struct EtcdClient {
    tls: TlsConnector,
}

impl std::fmt::Debug for EtcdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdClient").finish_non_exhaustive()
    }
}

impl EtcdClient {
    /// A client with a fresh certificate from the cluster CA (common name [`CLIENT_NAME`]),
    /// trusting only that CA.
    pub fn new(ca: &ClusterCa) -> Result<EtcdClient, PkiError> {
        let cert = ca.issue(CLIENT_NAME, &[])?;
        EtcdClient::with_certificate(ca.ca_pem(), &cert)
    }

    /// A client presenting `cert`, trusting only the CA in `ca_pem`.
    pub fn with_certificate(ca_pem: &str, cert: &IssuedCert) -> Result<EtcdClient, PkiError> {
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(ca.map_err(|_| PkiError::NotPem("CA certificate"))?)?;
        }
        if roots.is_empty() {
            return Err(PkiError::NotPem("CA certificate"));
        }
        let (leaf, key) = cert.to_der()?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![leaf], key)?;
        Ok(EtcdClient { tls: TlsConnector::from(Arc::new(config)) })
    }

    /// The member's status, as the member at `ep` sees it.
    pub async fn status(&self, ep: SocketAddr) -> Result<MemberStatus, EtcdError> {
        let answer: wire::Status = self.call(ep, "/v3/maintenance/status", json!({})).await?;
        Ok(MemberStatus {
            member_id: answer.header.member_id.0,
            cluster_id: answer.header.cluster_id.0,
            leader: answer.leader.0,
            raft_index: answer.raft_index.0,
            raft_term: answer.raft_term.0,
            revision: answer.header.revision.0,
            db_size: answer.db_size.0,
            is_learner: answer.is_learner,
            version: answer.version,
            errors: answer.errors,
        })
    }

    /// Every member, learners included.
    pub async fn members(&self, ep: SocketAddr) -> Result<Vec<Member>, EtcdError> {
        let answer: wire::Members = self.call(ep, "/v3/cluster/member/list", json!({})).await?;
        Ok(answer.members.into_iter().map(Member::from).collect())
    }

    /// Adds a learner with peer URL `peer_url` (e.g. `https://10.98.0.3:2380`); the member is
    /// then started with `--initial-cluster-state existing`.
    pub async fn add_learner(&self, ep: SocketAddr, peer_url: &str) -> Result<Member, EtcdError> {
        let request = json!({ "peerURLs": [peer_url], "isLearner": true });
        let answer: wire::MemberAdded = self.call(ep, "/v3/cluster/member/add", request).await?;
        Ok(answer.member.into())
    }

    /// Promotes learner `id` to a voter; the members afterwards.
    pub async fn promote(&self, ep: SocketAddr, id: u64) -> Result<Vec<Member>, EtcdError> {
        let answer: wire::Members =
            self.call(ep, "/v3/cluster/member/promote", json!({ "ID": id.to_string() })).await?;
        Ok(answer.members.into_iter().map(Member::from).collect())
    }

    /// Removes member `id`; the members afterwards.
    pub async fn remove(&self, ep: SocketAddr, id: u64) -> Result<Vec<Member>, EtcdError> {
        let answer: wire::Members = self.call(ep, "/v3/cluster/member/remove", json!({ "ID": id.to_string() })).await?;
        Ok(answer.members.into_iter().map(Member::from).collect())
    }

    /// The cluster version the member at `ep` reports (`3.4.0`, `3.5.0`): what every member
    /// agrees to speak, raised only once all run the newer etcd.
    pub async fn cluster_version(&self, ep: SocketAddr) -> Result<String, EtcdError> {
        let body = match tokio::time::timeout(CALL_TIMEOUT, self.exchange(ep, "/version", None)).await {
            Ok(answer) => answer?,
            Err(_) => return Err(EtcdError::Timeout),
        };
        let answer: wire::Version = serde_json::from_slice(&body)
            .map_err(|source| EtcdError::Undecodable { path: "/version".into(), source })?;
        Ok(answer.etcdcluster)
    }

    /// Hands leadership to member `to`; `ep` must be the leader's (others answer "not leader").
    pub async fn move_leader(&self, ep: SocketAddr, to: u64) -> Result<(), EtcdError> {
        let request = json!({ "targetID": to.to_string() });
        let _: wire::Ignored = self.call(ep, "/v3/maintenance/transfer-leadership", request).await?;
        Ok(())
    }

    /// Writes `value` at `key`.
    pub async fn put(&self, ep: SocketAddr, key: &[u8], value: &[u8]) -> Result<(), EtcdError> {
        let request = json!({ "key": base64_of(key), "value": base64_of(value) });
        let _: wire::Ignored = self.call(ep, "/v3/kv/put", request).await?;
        Ok(())
    }

    /// Reads `key` (linearizable: the member checks with the leader first).
    pub async fn get(&self, ep: SocketAddr, key: &[u8]) -> Result<Option<Vec<u8>>, EtcdError> {
        let answer: wire::Range = self.call(ep, "/v3/kv/range", json!({ "key": base64_of(key) })).await?;
        let b64 = base64::engine::general_purpose::STANDARD;
        match answer.kvs.into_iter().next() {
            None => Ok(None),
            Some(kv) => {
                let value = b64.decode(kv.value).map_err(EtcdError::NotBase64)?;
                Ok(Some(value))
            }
        }
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        ep: SocketAddr,
        path: &str,
        request: serde_json::Value,
    ) -> Result<T, EtcdError> {
        let body = match tokio::time::timeout(CALL_TIMEOUT, self.exchange(ep, path, Some(request))).await {
            Ok(answer) => answer?,
            Err(_) => return Err(EtcdError::Timeout),
        };
        serde_json::from_slice(&body).map_err(|source| EtcdError::Undecodable { path: path.to_string(), source })
    }

    /// One request on its own connection (a POST of `request`, or a GET without one); the body
    /// of a 2xx answer, or the error in any other.
    async fn exchange(
        &self,
        ep: SocketAddr,
        path: &str,
        request: Option<serde_json::Value>,
    ) -> Result<Bytes, EtcdError> {
        let unreachable = |stage: &'static str| {
            move |e: Box<dyn std::error::Error + Send + Sync>| EtcdError::Unreachable {
                endpoint: ep,
                stage,
                source: Some(e),
            }
        };
        let tcp = TcpStream::connect(ep).await.map_err(|e| unreachable("connecting")(e.into()))?;
        let tls = self
            .tls
            .connect(ServerName::IpAddress(ep.ip().into()), tcp)
            .await
            .map_err(|e| unreachable("TLS handshake")(e.into()))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(tls))
            .await
            .map_err(|e| unreachable("HTTP handshake")(e.into()))?;
        let builder = Request::builder().uri(path).header(HOST, ep.to_string());
        let request = match request {
            Some(json) => builder
                .method(Method::POST)
                .header(CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(json.to_string()))),
            None => builder.method(Method::GET).body(Full::new(Bytes::new())),
        }
        .map_err(|e| unreachable("making the request")(e.into()))?;
        let answer = async move {
            let response =
                sender.send_request(request).await.map_err(|e| unreachable("sending the request")(e.into()))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| match e.is::<LengthLimitError>() {
                    true => EtcdError::BadAnswer(format!("{path}: an answer over {MAX_ANSWER_BYTES} bytes")),
                    false => unreachable("reading the answer")(e),
                })?
                .to_bytes();
            Ok::<_, EtcdError>((status, body))
        };
        // The connection is driven here rather than spawned, so that a call given up on (timeout)
        // closes it instead of leaving it open in the background.
        tokio::pin!(answer, connection);
        let (status, body) = tokio::select! {
            biased;
            answer = &mut answer => answer?,
            ended = &mut connection => match ended {
                Err(e) => return Err(unreachable("the connection")(e.into())),
                // Closed cleanly: whatever answer arrived is handed over (or its reading fails).
                Ok(()) => answer.await?,
            },
        };
        if status.is_success() {
            return Ok(body);
        }
        Err(gateway_error(status.as_u16(), &body))
    }
}

fn base64_of(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The error in a non-2xx answer of the gateway.
fn gateway_error(status: u16, body: &[u8]) -> EtcdError {
    let Ok(error) = serde_json::from_slice::<wire::Error>(body) else {
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]).trim().to_string();
        return EtcdError::BadAnswer(format!("HTTP {status}: {text:?}"));
    };
    let message = error.message.or(error.error).unwrap_or_default();
    let text = message.strip_prefix("etcdserver: ").unwrap_or(&message);
    // etcd's own messages (api/v3rpc/rpctypes/error.go), matched whole: the voter message is a
    // prefix of the "in sync" one.
    match text {
        "too many learner members in cluster" => EtcdError::TooManyLearners,
        "can only promote a learner member which is in sync with leader" => EtcdError::LearnerNotReady,
        "can only promote a learner member" => EtcdError::NotLearner,
        "member not found" => EtcdError::MemberNotFound,
        "Peer URLs already exists" => EtcdError::PeerUrlExists,
        "unhealthy cluster" => EtcdError::Unhealthy,
        "rpc not supported for learner" => EtcdError::NotForLearner,
        "re-configuration failed due to not enough started members" => EtcdError::NotEnoughStarted,
        _ if message.is_empty() => EtcdError::BadAnswer(format!("HTTP {status} with no error message")),
        _ => EtcdError::Refused { code: error.code, message },
    }
}

impl From<wire::Member> for Member {
    fn from(m: wire::Member) -> Member {
        Member {
            id: m.id.0,
            name: m.name,
            peer_urls: m.peer_urls,
            client_urls: m.client_urls,
            is_learner: m.is_learner,
        }
    }
}

/// The gateway's JSON, as etcd 3.4 writes it. Every field may be absent (proto3 leaves out
/// defaults), so every field has a default.
mod wire {
    use serde::Deserialize;

    /// A uint64, which proto3 JSON writes as a string (a number is accepted too).
    #[derive(Debug, Default, Clone, Copy)]
    pub struct U64(pub u64);

    impl<'de> Deserialize<'de> for U64 {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<U64, D::Error> {
            #[derive(Deserialize)]
            #[serde(untagged)]
            enum Text {
                String(String),
                Number(u64),
            }
            match Text::deserialize(d)? {
                Text::Number(n) => Ok(U64(n)),
                Text::String(s) => {
                    s.parse().map(U64).map_err(|_| serde::de::Error::custom(format!("{s:?} is not a uint64")))
                }
            }
        }
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(default)]
    pub struct Header {
        #[serde(alias = "clusterId")]
        pub cluster_id: U64,
        #[serde(alias = "memberId")]
        pub member_id: U64,
        pub revision: U64,
    }

    /// `GET /version`.
    #[derive(Debug, Default, Deserialize)]
    #[serde(default)]
    pub struct Version {
        pub etcdcluster: String,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(default)]
    pub struct Status {
        pub header: Header,
        pub version: String,
        #[serde(rename = "dbSize", alias = "db_size")]
        pub db_size: U64,
        pub leader: U64,
        #[serde(rename = "raftIndex", alias = "raft_index")]
        pub raft_index: U64,
        #[serde(rename = "raftTerm", alias = "raft_term")]
        pub raft_term: U64,
        #[serde(rename = "isLearner", alias = "is_learner")]
        pub is_learner: bool,
        pub errors: Vec<String>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(default)]
    pub struct Member {
        #[serde(rename = "ID", alias = "id")]
        pub id: U64,
        pub name: String,
        #[serde(rename = "peerURLs", alias = "peer_urls", alias = "peerUrls")]
        pub peer_urls: Vec<String>,
        #[serde(rename = "clientURLs", alias = "client_urls", alias = "clientUrls")]
        pub client_urls: Vec<String>,
        #[serde(rename = "isLearner", alias = "is_learner")]
        pub is_learner: bool,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(default)]
    pub struct Members {
        pub members: Vec<Member>,
    }

    #[derive(Debug, Deserialize)]
    pub struct MemberAdded {
        pub member: Member,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(default)]
    pub struct Kv {
        pub value: String,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(default)]
    pub struct Range {
        pub kvs: Vec<Kv>,
    }

    /// An answer whose content does not matter, only that it is JSON.
    #[derive(Debug, Deserialize)]
    pub struct Ignored {}

    #[derive(Debug, Default, Deserialize)]
    #[serde(default)]
    pub struct Error {
        pub error: Option<String>,
        pub message: Option<String>,
        pub code: Option<i32>,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_errors_map_to_what_the_planner_acts_on() {
        let body = |message: &str, code: i32| json!({ "error": message, "message": message, "code": code }).to_string();
        // As etcd 3.4.23 words them, with their gRPC codes.
        let cases = [
            ("etcdserver: too many learner members in cluster", 9, EtcdError::TooManyLearners),
            (
                "etcdserver: can only promote a learner member which is in sync with leader",
                9,
                EtcdError::LearnerNotReady,
            ),
            ("etcdserver: can only promote a learner member", 9, EtcdError::NotLearner),
            ("etcdserver: member not found", 5, EtcdError::MemberNotFound),
            ("etcdserver: Peer URLs already exists", 9, EtcdError::PeerUrlExists),
            ("etcdserver: unhealthy cluster", 14, EtcdError::Unhealthy),
            ("etcdserver: rpc not supported for learner", 14, EtcdError::NotForLearner),
            ("etcdserver: re-configuration failed due to not enough started members", 9, EtcdError::NotEnoughStarted),
        ];
        for (message, code, expected) in cases {
            let error = gateway_error(412, body(message, code).as_bytes());
            assert_eq!(std::mem::discriminant(&error), std::mem::discriminant(&expected), "{message} gave {error:?}");
        }
        let message = "etcdserver: request timed out";
        let other = gateway_error(503, body(message, 14).as_bytes());
        assert!(matches!(&other, EtcdError::Refused { code: Some(14), message: m } if m == message), "{other:?}");
        assert!(other.to_string().contains("request timed out"));
    }

    #[test]
    fn a_ca_that_is_not_pem_is_refused_up_front() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::load_or_create(&crate::store::Store::open(dir.path()).unwrap()).unwrap();
        let cert = ca.issue(CLIENT_NAME, &[]).unwrap();
        let refused = EtcdClient::with_certificate("not a certificate", &cert).unwrap_err();
        assert!(matches!(refused, PkiError::NotPem(_)), "{refused:?}");
        assert!(EtcdClient::with_certificate(ca.ca_pem(), &cert).is_ok());
    }

    /// The OS error stays the cause, typed, and the chain says it once after the endpoint.
    #[tokio::test]
    async fn an_endpoint_that_refuses_keeps_the_os_error_as_the_cause() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::load_or_create(&crate::store::Store::open(dir.path()).unwrap()).unwrap();
        let client = EtcdClient::new(&ca).unwrap();
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let err = client.status(closed).await.unwrap_err();
        let io = std::error::Error::source(&err).and_then(|s| s.downcast_ref::<std::io::Error>());
        assert_eq!(io.map(std::io::Error::kind), Some(std::io::ErrorKind::ConnectionRefused), "{err:?}");
        let text = oasis_proto::error_chain(&err);
        assert!(text.starts_with(&format!("cannot reach etcd at https://{closed} (connecting)")), "{text}");
        assert_eq!(text.matches(&io.unwrap().to_string()).count(), 1, "{text}");
    }

    #[test]
    fn an_answer_that_is_not_the_gateways_is_a_bad_answer() {
        assert!(matches!(gateway_error(404, b"Not Found\n"), EtcdError::BadAnswer(m) if m.contains("404")));
        assert!(matches!(gateway_error(500, b"{}"), EtcdError::BadAnswer(_)));
    }

    #[test]
    fn proto3_json_is_read_with_strings_for_uint64_and_defaults_left_out() {
        // As etcd 3.4.23 answers.
        let status: wire::Status = serde_json::from_str(
            r#"{"header":{"cluster_id":"15118495548433857066","member_id":"13668033151171901709","revision":"1",
            "raft_term":"2"},"version":"3.4.23","dbSize":"20480","leader":"13668033151171901709","raftIndex":"4",
            "raftTerm":"2","raftAppliedIndex":"4","dbSizeInUse":"16384"}"#,
        )
        .unwrap();
        assert_eq!(status.header.member_id.0, 13668033151171901709);
        assert_eq!(status.leader.0, 13668033151171901709);
        assert_eq!((status.raft_index.0, status.raft_term.0, status.db_size.0), (4, 2, 20480));
        assert!(!status.is_learner && status.errors.is_empty());
        let added: wire::MemberAdded = serde_json::from_str(
            r#"{"header":{"raft_term":"2"},"member":{"ID":"6186763266583488540",
            "peerURLs":["http://127.0.0.1:23802"],"isLearner":true},"members":[]}"#,
        )
        .unwrap();
        let member = Member::from(added.member);
        assert_eq!(member.id, 6186763266583488540);
        assert!(member.is_learner && !member.started() && member.client_urls.is_empty());
        assert!(serde_json::from_str::<wire::Status>(r#"{"leader":"x"}"#).is_err());
    }
}
