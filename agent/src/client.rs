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
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use oasis_proto::{
    pin_of, DesiredState, ErrorBody, Heartbeat, RegisterRequest, RegisterResponse, API_PORT, DESIRED_PATH,
    HEARTBEAT_PATH, MAX_BODY_BYTES, REGISTER_PATH, WATCH_SECS,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
use serde::de::DeserializeOwned;
use serde::Serialize;
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
    #[error("cannot reach the appliance at {url}: {reason}")]
    Unreachable { url: String, reason: String },
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
        let bad = |detail: &str| ApiError::Unreachable {
            url: url.to_string(),
            reason: format!("{detail}; the kernel command line needs oasis.api=https://ADDRESS:{API_PORT}"),
        };
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
        let unreachable = |reason: String| ApiError::Unreachable { url: url.to_string(), reason };
        let tcp = TcpStream::connect((at.host.as_str(), at.port)).await.map_err(|e| unreachable(e.to_string()))?;
        let name = ServerName::try_from(at.host.clone()).map_err(|e| unreachable(e.to_string()))?;
        let tls = self.tls.connect(name, tcp).await.map_err(|e| match pin_mismatch_in(&e) {
            Some(found) => ApiError::PinMismatch { url: url.to_string(), expected: self.pin.clone(), found },
            None => unreachable(format!("TLS handshake failed: {e}")),
        })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(tls))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
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
        let request = request.body(Full::new(body)).map_err(|e| unreachable(e.to_string()))?;
        let response = sender.send_request(request).await.map_err(|e| unreachable(e.to_string()))?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), MAX_BODY_BYTES)
            .collect()
            .await
            .map_err(|e| ApiError::Malformed { path: path.to_string(), detail: format!("reading the body: {e}") })?
            .to_bytes();
        if status.is_success() {
            return Ok(bytes);
        }
        let message = match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => body.error,
            Err(_) if bytes.is_empty() => "no reason given".to_string(),
            Err(_) => String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
        };
        Err(ApiError::Refused { status: status.as_u16(), message })
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
