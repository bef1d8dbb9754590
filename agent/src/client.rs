//! The HTTPS client that talks to the appliance's API, trusting exactly one key: the pin from
//! the kernel command line.
//!
//! HTTP is hyper's HTTP/1 client connection over tokio-rustls rather than ureq: the agent links
//! tokio already (rtnetlink, the session), hyper is already in the workspace through axum, and
//! ureq 2 would add its own blocking stack plus `url`/`idna` (Unicode tables) and webpki root
//! certificates the agent never uses. Every call opens one connection, sends one request and
//! closes: calls are seconds apart, and a fresh handshake re-checks the pin each time.
//!
//! TLS: rustls with the ring provider (aws-lc needs cmake). The certificate is not checked
//! against any CA, name or validity period (a node has no clock it can trust before it talks to
//! the appliance); it is accepted only when the SHA-256 of its SubjectPublicKeyInfo equals the
//! pin, and the handshake signatures are still verified with the provider's algorithms, so only
//! the holder of the pinned private key can complete the handshake. A wrong key stops the
//! handshake before any request byte is written: a rogue server never sees the join token.

use std::fmt;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response, Uri};
use hyper_util::rt::TokioIo;
use oasis_proto::{
    pin_of, Artifact, DesiredState, ErrorBody, Heartbeat, RegisterRequest, RegisterResponse, API_PORT, ARTIFACTS_PATH,
    DESIRED_PATH, HEARTBEAT_PATH, MAX_BODY_BYTES, REGISTER_PATH, WATCH_SECS,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// How long a register or heartbeat call may take, connect to last byte.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a desired-state watch may take: the appliance holds it up to [`WATCH_SECS`].
pub const WATCH_TIMEOUT: Duration = Duration::from_secs(WATCH_SECS + 15);

/// Why a call to the appliance did not give an answer the agent can use.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "the server at {url} is not the appliance this machine was booted from: its key pin is \
         {found}, the kernel command line says {expected}. Nothing was sent to it. Check for a \
         second server on the rack network answering at that address, or boot this machine again \
         from the current appliance"
    )]
    PinMismatch { url: String, expected: String, found: String },
    /// No answer from `url`: `stage` is where the exchange broke ("connecting", "TLS
    /// handshake", ...), `source` what failed there.
    #[error("cannot reach the appliance at {url} ({stage})")]
    Unreachable { url: String, stage: &'static str, source: Box<dyn std::error::Error + Send + Sync> },
    /// `oasis.api=` is not an address the agent can call.
    #[error("cannot reach the appliance at {url}: {detail}; the kernel command line needs oasis.api=https://ADDRESS:{API_PORT}")]
    BadUrl { url: String, detail: &'static str },
    /// An artifact's download stopped part way.
    #[error("the download from {url} broke off after {received} bytes")]
    BrokeOff { url: String, received: u64, source: hyper::Error },
    #[error("the appliance at {url} did not answer within {} s", .after.as_secs())]
    Timeout { url: String, after: Duration },
    #[error("the appliance refused the request (HTTP {status}): {message}")]
    Refused { status: u16, message: String },
    #[error(
        "the appliance's answer to {path} is not understood ({detail}): the appliance and this \
         agent may be different versions; boot this machine again from the appliance"
    )]
    Malformed { path: String, detail: String },
}

/// Where the API is: the rack address from `oasis.api=`, or the appliance's overlay address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    host: String,
    port: u16,
}

impl Endpoint {
    /// Reads `https://HOST[:PORT]` (as [`oasis_proto::KernelArgs::api`] holds it).
    pub fn parse(url: &str) -> Result<Endpoint, ApiError> {
        let bad = |detail: &'static str| ApiError::BadUrl { url: url.to_string(), detail };
        let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
        if uri.scheme_str() != Some("https") {
            return Err(bad("not an https:// URL"));
        }
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        Ok(Endpoint { host, port: uri.port_u16().unwrap_or(443) })
    }

    /// The API inside the management link.
    pub fn overlay(appliance: Ipv4Addr) -> Endpoint {
        Endpoint { host: appliance.to_string(), port: API_PORT }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "https://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "https://{}:{}", self.host, self.port)
        }
    }
}

/// The appliance's API, reached over TLS pinned to one key.
#[derive(Clone)]
pub struct ApiClient {
    tls: TlsConnector,
    pin: String,
    rack: Endpoint,
}

impl fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiClient").field("pin", &self.pin).field("rack", &self.rack).finish()
    }
}

impl ApiClient {
    /// A client for the appliance at `api` (`https://HOST:PORT`) whose key has pin `pin`.
    pub fn new(api: &str, pin: &str) -> Result<ApiClient, ApiError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(PinVerifier { pin: pin.to_string(), provider: provider.clone() });
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports TLS 1.2 and 1.3")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(ApiClient { tls: TlsConnector::from(Arc::new(config)), pin: pin.to_string(), rack: Endpoint::parse(api)? })
    }

    /// `POST /v1/register` over the rack network.
    pub async fn register(&self, request: &RegisterRequest) -> Result<RegisterResponse, ApiError> {
        let body = self.call(&self.rack, Method::POST, REGISTER_PATH, None, Some(request), REQUEST_TIMEOUT).await?;
        decode(REGISTER_PATH, &body)
    }

    /// `POST /v1/agent/heartbeat` to the appliance at `at` (its overlay address once linked).
    pub async fn heartbeat(&self, at: &Endpoint, credential: &str, heartbeat: &Heartbeat) -> Result<(), ApiError> {
        self.call(at, Method::POST, HEARTBEAT_PATH, Some(credential), Some(heartbeat), REQUEST_TIMEOUT).await?;
        Ok(())
    }

    /// `GET /v1/agent/desired?after=N`: answered when the revision moves past `after`, or
    /// unchanged after [`WATCH_SECS`].
    pub async fn desired(&self, at: &Endpoint, credential: &str, after: u64) -> Result<DesiredState, ApiError> {
        let path = format!("{DESIRED_PATH}?after={after}");
        let body = self.call::<()>(at, Method::GET, &path, Some(credential), None, WATCH_TIMEOUT).await?;
        decode(DESIRED_PATH, &body)
    }

    async fn call<T: Serialize>(
        &self,
        at: &Endpoint,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<&T>,
        timeout: Duration,
    ) -> Result<Bytes, ApiError> {
        let url = format!("{at}{path}");
        let body = match body {
            Some(b) => Bytes::from(serde_json::to_vec(b).expect("wire types always serialize")),
            None => Bytes::new(),
        };
        match tokio::time::timeout(timeout, self.exchange(at, &url, method, path, bearer, body)).await {
            Ok(result) => result,
            Err(_) => Err(ApiError::Timeout { url, after: timeout }),
        }
    }

    async fn exchange(
        &self,
        at: &Endpoint,
        url: &str,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Bytes,
    ) -> Result<Bytes, ApiError> {
        let response = self.send(at, url, method, path, bearer, body).await?;
        Limited::new(response.into_body(), MAX_BODY_BYTES)
            .collect()
            .await
            .map(|collected| collected.to_bytes())
            .map_err(|e| ApiError::Malformed { path: path.to_string(), detail: format!("reading the body: {e}") })
    }

    /// Sends one request on a fresh pinned connection; a success answer is returned with its body
    /// unread, any other becomes [`ApiError::Refused`] with the appliance's reason.
    async fn send(
        &self,
        at: &Endpoint,
        url: &str,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Bytes,
    ) -> Result<Response<Incoming>, ApiError> {
        let unreachable = |stage: &'static str| {
            move |e: Box<dyn std::error::Error + Send + Sync>| ApiError::Unreachable {
                url: url.to_string(),
                stage,
                source: e,
            }
        };
        let tcp =
            TcpStream::connect((at.host.as_str(), at.port)).await.map_err(|e| unreachable("connecting")(e.into()))?;
        let name = ServerName::try_from(at.host.clone()).map_err(|e| unreachable("naming the server")(e.into()))?;
        let tls = self.tls.connect(name, tcp).await.map_err(|e| match pin_mismatch_in(&e) {
            Some(found) => ApiError::PinMismatch { url: url.to_string(), expected: self.pin.clone(), found },
            None => unreachable("TLS handshake")(e.into()),
        })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(tls))
            .await
            .map_err(|e| unreachable("HTTP handshake")(e.into()))?;
        // Drives the connection; it ends when the request, the response and `sender` are done.
        tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, format!("{}:{}", at.host, at.port))
            .header(CONTENT_TYPE, "application/json");
        if let Some(credential) = bearer {
            request = request.header(AUTHORIZATION, format!("Bearer {credential}"));
        }
        let request = request.body(Full::new(body)).map_err(|e| unreachable("making the request")(e.into()))?;
        let response = sender.send_request(request).await.map_err(|e| unreachable("sending the request")(e.into()))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let bytes = Limited::new(response.into_body(), MAX_BODY_BYTES)
            .collect()
            .await
            .map(|collected| collected.to_bytes())
            .unwrap_or_default();
        let message = match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => body.error,
            Err(_) if bytes.is_empty() => "no reason given".to_string(),
            Err(_) => String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
        };
        Err(ApiError::Refused { status: status.as_u16(), message })
    }

    /// `GET /v1/agent/artifacts/SHA256` from the appliance at `at`, streamed into a temporary file
    /// beside `artifact`'s destination `dest`, checked against its size and SHA-256 and only then
    /// renamed into place with its mode (written aside, fsynced, renamed, directory fsynced): a
    /// half-fetched or wrong file never sits at `dest`. `dest`'s directory must exist.
    pub async fn artifact(
        &self,
        at: &Endpoint,
        credential: &str,
        artifact: &Artifact,
        dest: &Path,
    ) -> Result<(), ArtifactError> {
        let path = format!("{ARTIFACTS_PATH}/{}", artifact.sha256);
        let url = format!("{at}{path}");
        let timeout = |after| ApiError::Timeout { url: url.clone(), after };
        let response = tokio::time::timeout(
            REQUEST_TIMEOUT,
            self.send(at, &url, Method::GET, &path, Some(credential), Bytes::new()),
        )
        .await
        .map_err(|_| timeout(REQUEST_TIMEOUT))??;
        let partial = PartialFile::new(dest);
        let mut body = response.into_body();
        let mut hasher = Sha256::new();
        let mut received: u64 = 0;
        let mut file = partial.file().await?;
        loop {
            let frame = match tokio::time::timeout(ARTIFACT_IDLE_TIMEOUT, body.frame()).await {
                Err(_) => return Err(timeout(ARTIFACT_IDLE_TIMEOUT).into()),
                Ok(None) => break,
                Ok(Some(Err(source))) => return Err(ApiError::BrokeOff { url, received, source }.into()),
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else { continue };
            received += data.len() as u64;
            if received > artifact.size {
                break;
            }
            hasher.update(&data);
            file.write_all(&data).await.map_err(|source| partial.failed(source))?;
        }
        if received != artifact.size {
            return Err(ArtifactError::WrongSize {
                sha256: artifact.sha256.clone(),
                expected: artifact.size,
                received,
            });
        }
        let found = hex::encode(hasher.finalize());
        if found != artifact.sha256 {
            return Err(ArtifactError::WrongHash { expected: artifact.sha256.clone(), found });
        }
        file.flush().await.map_err(|source| partial.failed(source))?;
        drop(file);
        partial.commit(artifact.mode).await
    }
}

/// How long an artifact download may go without receiving a byte.
pub const ARTIFACT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why an artifact is not in place.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(
        "artifact {sha256} should be {expected} bytes, the appliance sent {received}; the download \
         is retried, and if it keeps failing the appliance's copy is damaged: rebuild its image"
    )]
    WrongSize { sha256: String, expected: u64, received: u64 },
    #[error(
        "the artifact the appliance sent has SHA-256 {found}, not the {expected} it asked for; it \
         was discarded. If this repeats the appliance's copy is damaged: rebuild its image"
    )]
    WrongHash { expected: String, found: String },
    #[error("cannot write {}; check that the node's state directory is writable", .path.display())]
    Write { path: PathBuf, source: std::io::Error },
}

/// A download in progress: a temporary file beside its destination, removed unless committed.
#[derive(Debug)]
struct PartialFile {
    temp: PathBuf,
    dest: PathBuf,
    committed: bool,
}

impl PartialFile {
    fn new(dest: &Path) -> PartialFile {
        let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let temp = dest.with_file_name(format!(".{name}.partial"));
        PartialFile { temp, dest: dest.to_path_buf(), committed: false }
    }

    async fn file(&self) -> Result<tokio::io::BufWriter<tokio::fs::File>, ArtifactError> {
        let file = tokio::fs::File::create(&self.temp).await.map_err(|source| self.failed(source))?;
        Ok(tokio::io::BufWriter::with_capacity(256 * 1024, file))
    }

    fn failed(&self, source: std::io::Error) -> ArtifactError {
        ArtifactError::Write { path: self.temp.clone(), source }
    }

    /// Gives the file its mode, fsyncs it, renames it into place and fsyncs the directory.
    async fn commit(mut self, mode: u32) -> Result<(), ArtifactError> {
        let file = tokio::fs::File::open(&self.temp).await.map_err(|source| self.failed(source))?;
        file.set_permissions(std::fs::Permissions::from_mode(mode)).await.map_err(|source| self.failed(source))?;
        file.sync_all().await.map_err(|source| self.failed(source))?;
        tokio::fs::rename(&self.temp, &self.dest)
            .await
            .map_err(|source| ArtifactError::Write { path: self.dest.clone(), source })?;
        self.committed = true;
        if let Some(dir) = self.dest.parent() {
            let dir = tokio::fs::File::open(dir).await.map_err(|source| self.failed(source))?;
            dir.sync_all().await.map_err(|source| ArtifactError::Write { path: self.dest.clone(), source })?;
        }
        Ok(())
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

fn decode<T: DeserializeOwned>(path: &str, body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::Malformed { path: path.to_string(), detail: e.to_string() })
}

/// The pin a server presented, when that is why the handshake failed.
fn pin_mismatch_in(error: &std::io::Error) -> Option<String> {
    let rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) =
        error.get_ref()?.downcast_ref::<rustls::Error>()?
    else {
        return None;
    };
    inner.downcast_ref::<WrongKey>().map(|w| w.found.clone())
}

/// What [`PinVerifier`] reports through rustls when a server's key is not the pinned one.
#[derive(Debug, thiserror::Error)]
#[error("the server's key has pin {found}")]
struct WrongKey {
    found: String,
}

/// Accepts exactly the certificate whose public key has the pin; see the module comment.
#[derive(Debug)]
struct PinVerifier {
    pin: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        let found = pin_of(cert.subject_public_key_info().as_ref());
        if found == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(WrongKey { found })))))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
