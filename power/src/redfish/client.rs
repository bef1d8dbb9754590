//! One Redfish request at a time, blocking: a fresh TCP connection, TLS pinned by certificate
//! fingerprint (or plain HTTP where configured), one HTTP/1.1 request with Basic auth, the whole
//! exchange (name lookup to last body byte) under one deadline; and the one table that turns what
//! went wrong into a [`PowerError`].
//!
//! HTTP is hyper's HTTP/1 client connection over tokio-rustls on a current-thread tokio runtime
//! the driver owns, as the agent's API client does (`agent/src/client.rs`), rather than ureq 3:
//! ureq's rustls setup takes root certificates or no verification at all, with no place for a
//! verifier of our own (only its semver-exempt `unversioned` transport API would allow one), and
//! it would add its own HTTP stack beside hyper, which the workspace already builds. A connection
//! per request: power requests are seconds apart, BMCs hold few sessions, and every handshake
//! re-checks the pin.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONNECTION, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::document::{bounded, error_message, excerpt};
use super::pin::{certificate_fingerprint, format_fingerprint, wrong_certificate_in, FingerprintVerifier};
use super::Tls;
use crate::PowerError;

/// A BMC's answers are a few KiB; anything past this is not a Redfish document we read.
const MAX_BODY_BYTES: usize = 1 << 20;

/// Where the BMC is: scheme, host and port of the configured base URL.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub(crate) https: bool,
    /// As written in the URL (an IPv6 address keeps its brackets), for `Host:` and messages.
    authority: String,
    /// For connecting: no brackets.
    host: String,
    port: u16,
}

impl Endpoint {
    /// Reads `https://HOST[:PORT]` or `http://HOST[:PORT]` (a trailing `/` or `/redfish/v1` is
    /// allowed). No credentials in the URL: it is printed.
    pub(crate) fn parse(url: &str) -> Result<Endpoint, &'static str> {
        let uri: Uri = url.trim().parse().map_err(|_| "not a URL")?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("not an https:// (or http://) URL"),
        };
        let authority = uri.authority().ok_or("no host")?;
        if authority.as_str().contains('@') {
            return Err("it holds a user or password: give those in their own fields");
        }
        if !matches!(uri.path().trim_end_matches('/'), "" | "/redfish/v1") || uri.query().is_some() {
            return Err("it has a path: give only the scheme, host and port");
        }
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_string();
        if host.is_empty() {
            return Err("no host");
        }
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = if authority.port().is_some() { authority.to_string() } else { authority.host().to_string() };
        Ok(Endpoint { https, authority, host, port })
    }

    /// `https://host:port`, for messages and [`crate::PowerDriver::address`].
    pub(crate) fn url(&self) -> String {
        format!("{}://{}", if self.https { "https" } else { "http" }, self.authority)
    }
}

/// The connection settings of one BMC and the runtime its requests run on.
pub(crate) struct Client {
    pub(crate) endpoint: Endpoint,
    /// `None` for plain HTTP.
    tls: Option<(TlsConnector, Arc<FingerprintVerifier>)>,
    user: String,
    /// `Basic ...`, marked sensitive: never printed, not even by hyper.
    authorization: HeaderValue,
    pub(crate) timeout: Duration,
    runtime: tokio::runtime::Runtime,
}

/// A successful answer's body.
pub(crate) type Body = Bytes;

impl Client {
    pub(crate) fn new(
        endpoint: Endpoint,
        tls: &Tls,
        user: &str,
        password: &str,
        timeout: Duration,
    ) -> std::io::Result<Client> {
        let pinned = match tls {
            Tls::PlainHttp => None,
            Tls::Pinned(fingerprint) => Some(Some(*fingerprint)),
            Tls::TrustOnFirstUse => Some(None),
        };
        let tls = pinned.map(|pinned| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let verifier = Arc::new(FingerprintVerifier::new(pinned, provider.clone()));
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("the ring provider supports TLS 1.2 and 1.3")
                .dangerous()
                .with_custom_certificate_verifier(verifier.clone())
                .with_no_client_auth();
            (TlsConnector::from(Arc::new(config)), verifier)
        });
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let mut authorization =
            HeaderValue::from_str(&format!("Basic {token}")).expect("base64 is a valid header value");
        authorization.set_sensitive(true);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        Ok(Client { endpoint, tls, user: user.to_string(), authorization, timeout, runtime })
    }

    /// The fingerprint of the certificate trusted now (see [`super::Redfish::fingerprint`]).
    pub(crate) fn fingerprint(&self) -> Option<[u8; 32]> {
        self.tls.as_ref().and_then(|(_, verifier)| verifier.fingerprint())
    }

    /// Sends `method path` (with `body` as JSON) and returns the body of a 2xx answer; `what`
    /// names the request in a refusal ("power on"). Blocks up to the timeout.
    pub(crate) fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        what: &str,
    ) -> Result<Body, PowerError> {
        let body = body.map(|b| Bytes::from(b.to_string()));
        let exchange = async {
            match tokio::time::timeout(self.timeout, self.exchange(method, path, body)).await {
                Ok(result) => result,
                Err(_) => Err(self.unreachable()),
            }
        };
        // A runtime cannot be entered from inside another: a caller on a tokio worker (which
        // should have used spawn_blocking) gets the request run on a thread of its own instead
        // of a panic.
        let (status, bytes) = if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::scope(|s| {
                s.spawn(|| self.runtime.block_on(exchange)).join().unwrap_or_else(|p| std::panic::resume_unwind(p))
            })?
        } else {
            self.runtime.block_on(exchange)?
        };
        self.judge(status, bytes, what)
    }

    /// The one table from HTTP status to outcome.
    fn judge(&self, status: StatusCode, body: Bytes, what: &str) -> Result<Body, PowerError> {
        if status.is_success() {
            return Ok(body);
        }
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(PowerError::Credentials { address: self.endpoint.url(), user: self.user.clone() });
        }
        let reason = match error_message(&body) {
            Some(message) => message,
            None if body.is_empty() => "no reason given".to_string(),
            None => format!("no Redfish error message, the body starts {}", excerpt(&body)),
        };
        Err(PowerError::Refused {
            address: self.endpoint.url(),
            action: what.to_string(),
            detail: format!("HTTP {}: {reason}", status.as_u16()),
        })
    }

    fn unreachable(&self) -> PowerError {
        PowerError::Unreachable { address: self.endpoint.url(), timeout: self.timeout }
    }

    pub(crate) fn protocol(&self, detail: String) -> PowerError {
        let protocol = if self.endpoint.https { "Redfish over HTTPS" } else { "Redfish over HTTP" };
        PowerError::Protocol { address: self.endpoint.url(), protocol, detail }
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<(StatusCode, Bytes), PowerError> {
        let tcp = TcpStream::connect((self.endpoint.host.as_str(), self.endpoint.port))
            .await
            .map_err(|_| self.unreachable())?;
        // One small request per connection, written in a few TLS records: without this, Nagle
        // holds the last one for the BMC's delayed ACK (40 ms on Linux) on every request.
        let _ = tcp.set_nodelay(true);
        let request = self.request(method, path, body)?;
        let response = match &self.tls {
            None => self.send(tcp, request).await?,
            Some((connector, verifier)) => {
                let name = ServerName::try_from(self.endpoint.host.clone())
                    .map_err(|_| self.protocol(format!("{:?} is not a host name", self.endpoint.host)))?;
                let tls = connector.connect(name, tcp).await.map_err(|e| self.handshake_failed(&e))?;
                let presented = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec());
                let Some(der) = presented else {
                    return Err(self.protocol("the TLS handshake completed without a certificate".to_string()));
                };
                verifier
                    .completed(certificate_fingerprint(&der))
                    .map_err(|w| self.wrong_certificate(&w.found, &w.pinned))?;
                self.send(tls, request).await?
            }
        };
        let status = response.status();
        let bytes = Limited::new(response.into_body(), MAX_BODY_BYTES).collect().await.map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                self.protocol(format!("its answer to {path} is larger than {MAX_BODY_BYTES} bytes"))
            } else {
                self.unreachable()
            }
        })?;
        Ok((status, bytes.to_bytes()))
    }

    fn request(&self, method: Method, path: &str, body: Option<Bytes>) -> Result<Request<Full<Bytes>>, PowerError> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.endpoint.authority.as_str())
            .header(ACCEPT, "application/json")
            .header("OData-Version", "4.0")
            .header(USER_AGENT, "oasis")
            .header(CONNECTION, "close")
            .header(AUTHORIZATION, self.authorization.clone());
        if body.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        request
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|_| self.protocol(format!("{:?} is not a path a request can be made to", bounded(path))))
    }

    async fn send<IO>(&self, io: IO, request: Request<Full<Bytes>>) -> Result<Response<Incoming>, PowerError>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(|e| self.http_failed(&e))?;
        // Drives the connection; it ends when the request, the answer and `sender` are done.
        tokio::spawn(connection);
        sender.send_request(request).await.map_err(|e| self.http_failed(&e))
    }

    /// A parse error is an answer that is not HTTP; anything else is no (whole) answer.
    fn http_failed(&self, error: &hyper::Error) -> PowerError {
        if error.is_parse() || error.is_parse_status() || error.is_parse_too_large() {
            self.protocol(format!("its answer is not HTTP/1.1 ({error})"))
        } else {
            self.unreachable()
        }
    }

    /// A TLS error is an answer that is not TLS (or a certificate not pinned); a plain I/O error
    /// (reset, closed before a word) is no answer.
    fn handshake_failed(&self, error: &std::io::Error) -> PowerError {
        if let Some(wrong) = wrong_certificate_in(error) {
            return self.wrong_certificate(&wrong.found, &wrong.pinned);
        }
        match error.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
            Some(tls) => self.protocol(format!("the TLS handshake failed: {tls}")),
            None => self.unreachable(),
        }
    }

    fn wrong_certificate(&self, found: &[u8; 32], pinned: &[u8; 32]) -> PowerError {
        PowerError::Certificate {
            address: self.endpoint.url(),
            found: format_fingerprint(found),
            pinned: format_fingerprint(pinned),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_scheme_host_and_port_only() {
        let e = Endpoint::parse("https://10.1.2.3").unwrap();
        assert_eq!(
            (e.https, e.host.as_str(), e.port, e.url()),
            (true, "10.1.2.3", 443, "https://10.1.2.3".to_string())
        );
        let e = Endpoint::parse("https://[fd00::5]:8443/redfish/v1/").unwrap();
        assert_eq!((e.host.as_str(), e.port, e.url()), ("fd00::5", 8443, "https://[fd00::5]:8443".to_string()));
        let e = Endpoint::parse("http://bmc1:8000/").unwrap();
        assert_eq!((e.https, e.port, e.url()), (false, 8000, "http://bmc1:8000".to_string()));
        assert!(Endpoint::parse("https://root:calvin@10.1.2.3").unwrap_err().contains("user or password"));
        assert!(Endpoint::parse("ftp://10.1.2.3").is_err());
        assert!(Endpoint::parse("10.1.2.3").is_err());
        assert!(Endpoint::parse("https://10.1.2.3/redfish/v1/Systems").unwrap_err().contains("path"));
    }
}
