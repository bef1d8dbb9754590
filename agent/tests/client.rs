//! The pinned HTTPS client against a real rustls server on 127.0.0.1 with an rcgen certificate.

use std::sync::Arc;

use oasis_agent::client::{ApiClient, ApiError, Endpoint};
use oasis_proto::{pin_of, Heartbeat, Inventory, MachineState, RegisterRequest, RegisterResponse};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

/// What the test server saw on one connection.
#[derive(Debug)]
enum Seen {
    /// The TLS handshake failed; no request byte was read.
    HandshakeFailed,
    Request(String),
}

/// A TLS server that answers every request with `status` and `body`, reporting what it saw.
struct Server {
    url: String,
    pin: String,
    seen: mpsc::UnboundedReceiver<Seen>,
}

async fn server(status: &'static str, body: &'static str) -> Server {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["oasis-appliance".into()]).unwrap().self_signed(&key).unwrap();
    let pin = pin_of(&key.public_key_der());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let (tx, seen) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                tx.send(Seen::HandshakeFailed).unwrap();
                continue;
            };
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = tls.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
                if complete(&request) {
                    break;
                }
            }
            let text = String::from_utf8_lossy(&request).into_owned();
            let answer = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tls.write_all(answer.as_bytes()).await;
            let _ = tls.shutdown().await;
            tx.send(Seen::Request(text)).unwrap();
        }
    });
    Server { url, pin, seen }
}

/// Whether `request` holds its headers and as many body bytes as its content-length says.
fn complete(request: &[u8]) -> bool {
    let text = String::from_utf8_lossy(request);
    let Some((head, body)) = text.split_once("\r\n\r\n") else { return false };
    let length = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap())
        })
        .unwrap_or(0);
    body.len() >= length
}

fn request() -> RegisterRequest {
    RegisterRequest {
        token: "join-token-secret".into(),
        nonce: "n1".into(),
        boot_mac: "52:54:00:12:34:56".into(),
        wireguard_key: "k".into(),
        agent_version: "0.1.0".into(),
        inventory: Inventory::default(),
    }
}

const PENDING: &str =
    r#"{"machine_id":"m-1","state":"pending","message":"waiting for an operator","credential":null,"link":null}"#;

#[tokio::test]
async fn the_pinned_appliance_is_trusted() {
    let mut server = server("200 OK", PENDING).await;
    let client = ApiClient::new(&server.url, &server.pin).unwrap();
    let answer = client.register(&request()).await.unwrap();
    assert_eq!(
        answer,
        RegisterResponse {
            machine_id: "m-1".into(),
            state: MachineState::Pending,
            message: "waiting for an operator".into(),
            credential: None,
            link: None,
            bmc_user: None,
        }
    );
    let Seen::Request(seen) = server.seen.recv().await.unwrap() else { panic!("handshake failed") };
    assert!(seen.starts_with("POST /v1/register HTTP/1.1\r\n"), "{seen}");
    assert!(seen.contains("join-token-secret"), "{seen}");
}

#[tokio::test]
async fn a_server_with_another_key_learns_nothing() {
    let mut server = server("200 OK", PENDING).await;
    let wrong = pin_of(b"some other key");
    let client = ApiClient::new(&server.url, &wrong).unwrap();
    match client.register(&request()).await {
        Err(ApiError::PinMismatch { expected, found, .. }) => {
            assert_eq!(expected, wrong);
            assert_eq!(found, server.pin);
        }
        other => panic!("expected a pin mismatch, got {other:?}"),
    }
    assert!(matches!(server.seen.recv().await.unwrap(), Seen::HandshakeFailed));
}

#[tokio::test]
async fn a_refusal_carries_the_servers_message() {
    let server =
        server("401 Unauthorized", r#"{"error":"the join token is wrong: boot from the appliance again"}"#).await;
    let client = ApiClient::new(&server.url, &server.pin).unwrap();
    match client.register(&request()).await {
        Err(ApiError::Refused { status, message }) => {
            assert_eq!(status, 401);
            assert_eq!(message, "the join token is wrong: boot from the appliance again");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn an_answer_that_is_not_the_protocol_is_malformed() {
    let server = server("200 OK", r#"{"state":"sideways"}"#).await;
    let client = ApiClient::new(&server.url, &server.pin).unwrap();
    assert!(matches!(client.register(&request()).await, Err(ApiError::Malformed { .. })));
}

#[tokio::test]
async fn a_closed_port_is_unreachable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    drop(listener);
    let client = ApiClient::new(&url, &pin_of(b"k")).unwrap();
    assert!(matches!(client.register(&request()).await, Err(ApiError::Unreachable { .. })));
}

/// The OS error stays the typed cause, and the heartbeat's text says it once after the stage.
#[tokio::test]
async fn an_unreachable_appliance_keeps_the_os_error_as_the_cause() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    drop(listener);
    let client = ApiClient::new(&url, &pin_of(b"k")).unwrap();
    let err = client.register(&request()).await.unwrap_err();
    let io = std::error::Error::source(&err).and_then(|s| s.downcast_ref::<std::io::Error>());
    assert_eq!(io.map(std::io::Error::kind), Some(std::io::ErrorKind::ConnectionRefused), "{err:?}");
    let text = oasis_proto::error_chain(&err);
    assert!(text.starts_with(&format!("cannot reach the appliance at {url}/v1/register (connecting): ")), "{text}");
    assert_eq!(text.matches(&io.unwrap().to_string()).count(), 1, "{text}");
}

#[tokio::test]
async fn agent_calls_carry_the_credential() {
    let mut server = server("200 OK", r#"{"revision":7,"role":"unassigned"}"#).await;
    let client = ApiClient::new(&server.url, &server.pin).unwrap();
    let at = Endpoint::parse(&server.url).unwrap();
    let desired = client.desired(&at, "cred-1", 6).await.unwrap();
    assert_eq!(desired.revision, 7);
    let Seen::Request(seen) = server.seen.recv().await.unwrap() else { panic!() };
    assert!(seen.starts_with("GET /v1/agent/desired?after=6 HTTP/1.1\r\n"), "{seen}");
    assert!(seen.to_ascii_lowercase().contains("authorization: bearer cred-1"), "{seen}");

    let beat = Heartbeat {
        phase: "linked".into(),
        uptime_secs: 3,
        last_error: None,
        applied_revision: 7,
        ..Heartbeat::default()
    };
    client.heartbeat(&at, "cred-1", &beat).await.unwrap();
    let Seen::Request(seen) = server.seen.recv().await.unwrap() else { panic!() };
    assert!(seen.starts_with("POST /v1/agent/heartbeat HTTP/1.1\r\n"), "{seen}");
    assert!(seen.contains(r#""phase":"linked""#), "{seen}");
}

#[test]
fn endpoints_parse_the_kernel_argument() {
    assert_eq!(Endpoint::parse("https://10.0.0.1:9443").unwrap().to_string(), "https://10.0.0.1:9443");
    assert_eq!(Endpoint::parse("https://appliance").unwrap().to_string(), "https://appliance:443");
    assert!(Endpoint::parse("http://10.0.0.1:9443").is_err());
    assert_eq!(Endpoint::overlay("10.99.0.1".parse().unwrap()).to_string(), "https://10.99.0.1:9443");
}

mod artifacts {
    use std::os::unix::fs::PermissionsExt;

    use oasis_agent::client::ArtifactError;
    use oasis_proto::Artifact;
    use sha2::{Digest, Sha256};

    use super::*;

    const CONTENT: &str = "#!/bin/sh\necho an artifact\n";

    fn artifact(content: &str, path: &str) -> Artifact {
        Artifact {
            sha256: hex::encode(Sha256::digest(content.as_bytes())),
            size: content.len() as u64,
            path: path.into(),
            mode: 0o750,
        }
    }

    /// The directory holds exactly `names`: nothing half-written is left beside them.
    fn assert_holds(dir: &std::path::Path, names: &[&str]) {
        let mut found: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        found.sort();
        assert_eq!(found, names);
    }

    #[tokio::test]
    async fn an_artifact_is_fetched_by_hash_with_the_credential_and_given_its_mode() {
        let mut server = server("200 OK", CONTENT).await;
        let client = ApiClient::new(&server.url, &server.pin).unwrap();
        let at = Endpoint::parse(&server.url).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("tool");
        let wanted = artifact(CONTENT, "/var/lib/oasis/bin/tool");
        client.artifact(&at, "cred-1", &wanted, &dest).await.unwrap();
        assert_eq!(std::fs::read_to_string(&dest).unwrap(), CONTENT);
        assert_eq!(std::fs::metadata(&dest).unwrap().permissions().mode() & 0o7777, 0o750);
        assert_holds(dir.path(), &["tool"]);
        let Seen::Request(seen) = server.seen.recv().await.unwrap() else { panic!() };
        assert!(seen.starts_with(&format!("GET /v1/agent/artifacts/{} HTTP/1.1\r\n", wanted.sha256)), "{seen}");
        assert!(seen.to_ascii_lowercase().contains("authorization: bearer cred-1"), "{seen}");
    }

    #[tokio::test]
    async fn a_wrong_hash_names_both_and_leaves_nothing() {
        let server = server("200 OK", "#!/bin/sh\necho something else\n").await;
        let client = ApiClient::new(&server.url, &server.pin).unwrap();
        let at = Endpoint::parse(&server.url).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tool"), "the old one").unwrap();
        let wanted = artifact(CONTENT, "/var/lib/oasis/bin/tool");
        // Same length, other bytes: only the hash can tell.
        let wanted = Artifact { size: "#!/bin/sh\necho something else\n".len() as u64, ..wanted };
        let error = client.artifact(&at, "c", &wanted, &dir.path().join("tool")).await.unwrap_err();
        let ArtifactError::WrongHash { expected, found } = &error else { panic!("{error}") };
        assert_eq!(expected, &wanted.sha256);
        assert_eq!(found, &hex::encode(Sha256::digest(b"#!/bin/sh\necho something else\n")));
        let text = error.to_string();
        assert!(text.contains(&wanted.sha256) && text.contains(found.as_str()), "{text}");
        assert_eq!(std::fs::read_to_string(dir.path().join("tool")).unwrap(), "the old one");
        assert_holds(dir.path(), &["tool"]);
    }

    #[tokio::test]
    async fn a_short_or_long_body_is_refused() {
        for body in ["short", "a body much longer than the artifact should ever be, by far"] {
            let server = server("200 OK", body).await;
            let client = ApiClient::new(&server.url, &server.pin).unwrap();
            let at = Endpoint::parse(&server.url).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let wanted = Artifact { size: 20, ..artifact(CONTENT, "/var/lib/oasis/x") };
            let error = client.artifact(&at, "c", &wanted, &dir.path().join("x")).await.unwrap_err();
            assert!(matches!(error, ArtifactError::WrongSize { expected: 20, .. }), "{error}");
            assert_holds(dir.path(), &[]);
        }
    }

    #[tokio::test]
    async fn an_unknown_artifact_is_the_appliance_refusal() {
        let server = server("404 Not Found", r#"{"error":"no artifact with that hash"}"#).await;
        let client = ApiClient::new(&server.url, &server.pin).unwrap();
        let at = Endpoint::parse(&server.url).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let error = client.artifact(&at, "c", &artifact(CONTENT, "/var/lib/oasis/x"), &dir.path().join("x")).await;
        assert!(
            matches!(&error, Err(ArtifactError::Api(ApiError::Refused { status: 404, message })) if message == "no artifact with that hash"),
            "{error:?}"
        );
        assert_holds(dir.path(), &[]);
    }
}
