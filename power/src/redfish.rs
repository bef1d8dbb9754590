//! The Redfish driver: a BMC's ComputerSystem over HTTPS and JSON, blocking.
//!
//! Three resources are used. `GET /redfish/v1/Systems` finds the system (the only member, or the
//! one the config names), once per driver. `GET` of the system reads `PowerState` (and is the
//! status). `POST` of its `#ComputerSystem.Reset` action with `On`, `ForceOff` and, for a cycle,
//! `PowerCycle` where the BMC lists it, else `ForceRestart`. `PATCH` of its `Boot` with
//! `BootSourceOverrideTarget: Pxe, BootSourceOverrideEnabled: Once` sets the next boot, which is
//! then read back: BMCs are known to accept a one-time override and revert or ignore it.
//!
//! Every power request first reads the system: an action already done sends nothing (some BMCs
//! refuse `On` when on), and a cycle of a machine that is off sends `On` (off-then-on from off is
//! on; a hard reset of an off machine is refused or ignored by many BMCs).
//!
//! TLS trusts the BMC's certificate by its SHA-256 fingerprint ([`Tls`]; see `redfish/pin.rs`);
//! plain HTTP only when the config says so. Credentials go in HTTP Basic auth on each request
//! (no Redfish session to leak or to exhaust the BMC's few slots) and are never printed.

mod client;
mod document;
mod pin;

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use hyper::{Method, Uri};
use serde_json::json;

pub use pin::{certificate_fingerprint, format_fingerprint, parse_fingerprint};

use crate::{PowerAction, PowerDriver, PowerError, PowerState};
use client::{Client, Endpoint};
use document::{bounded, excerpt, Plan, System};

/// Where the systems are listed (the service root's `Systems`, fixed by the Redfish spec).
const SYSTEMS: &str = "/redfish/v1/Systems";

/// How the BMC's certificate is trusted.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    /// Only the certificate with this SHA-256 fingerprint (of its DER encoding).
    Pinned([u8; 32]),
    /// The first certificate seen, pinned for the driver's life; read it with
    /// [`Redfish::fingerprint`] and pin it in the config from then on.
    TrustOnFirstUse,
    /// No TLS: an `http://` URL, for a simulator that cannot do TLS. The password crosses the
    /// network readable.
    PlainHttp,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tls::Pinned(fingerprint) => write!(f, "Pinned({})", format_fingerprint(fingerprint)),
            Tls::TrustOnFirstUse => f.write_str("TrustOnFirstUse"),
            Tls::PlainHttp => f.write_str("PlainHttp"),
        }
    }
}

/// One BMC's Redfish settings.
#[derive(Clone)]
pub struct RedfishConfig {
    /// `https://HOST[:PORT]` (`http://` only with [`Tls::PlainHttp`]).
    pub url: String,
    pub user: String,
    pub password: String,
    /// The deadline of each request, connect to last byte.
    pub timeout: Duration,
    /// The system to control: its Id (`System.Embedded.1`) or path; `None` takes the only one.
    pub system: Option<String>,
    pub tls: Tls,
    /// Accept a boot override that reads back `Continuous` where `Once` was asked. Off by
    /// default (the next boot *only* is what was asked); sushy-tools' fake driver, and some
    /// BMCs, report every override as `Continuous`. With it on, such a machine boots from the
    /// network until something clears the override, which is harmless for machines that always
    /// netboot, as oasis's do.
    pub accept_continuous_pxe: bool,
}

impl fmt::Debug for RedfishConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedfishConfig")
            .field("url", &self.url)
            .field("user", &self.user)
            .field("timeout", &self.timeout)
            .field("system", &self.system)
            .field("tls", &self.tls)
            .field("accept_continuous_pxe", &self.accept_continuous_pxe)
            .finish_non_exhaustive()
    }
}

/// Why a [`RedfishConfig`] cannot make a driver.
#[derive(Debug, thiserror::Error)]
pub enum RedfishConfigError {
    #[error("the Redfish URL {url:?} cannot be used: {detail}; write it as https://HOST[:PORT]")]
    Url { url: String, detail: &'static str },
    #[error(
        "the Redfish URL {url} is plain http://: BMC credentials would cross the network readable; use https://, \
         or allow plain HTTP explicitly (only for a simulator)"
    )]
    PlainHttpNotAllowed { url: String },
    #[error(
        "the Redfish URL {url} is https:// but TLS is configured off: drop the plain-HTTP setting, or use http://"
    )]
    HttpsWithoutTls { url: String },
    #[error("cannot start the Redfish driver's I/O (a tokio runtime)")]
    Runtime(#[source] std::io::Error),
}

/// A Redfish BMC's driver; see the module comment.
pub struct Redfish {
    client: Client,
    wanted: Option<String>,
    /// The system's path once found.
    system: Mutex<Option<String>>,
    accept_continuous_pxe: bool,
}

impl fmt::Debug for Redfish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redfish")
            .field("url", &self.client.endpoint.url())
            .field("system", &self.wanted)
            .field("fingerprint", &self.fingerprint().map(|fp| format_fingerprint(&fp)))
            .finish_non_exhaustive()
    }
}

impl Redfish {
    /// Checks `config` and makes the driver; nothing is sent until the first request.
    pub fn new(config: RedfishConfig) -> Result<Redfish, RedfishConfigError> {
        let endpoint = Endpoint::parse(&config.url)
            .map_err(|detail| RedfishConfigError::Url { url: redacted(&config.url), detail })?;
        match (endpoint.https, config.tls) {
            (false, Tls::Pinned(_) | Tls::TrustOnFirstUse) => {
                return Err(RedfishConfigError::PlainHttpNotAllowed { url: endpoint.url() })
            }
            (true, Tls::PlainHttp) => return Err(RedfishConfigError::HttpsWithoutTls { url: endpoint.url() }),
            _ => {}
        }
        let client = Client::new(endpoint, &config.tls, &config.user, &config.password, config.timeout)
            .map_err(RedfishConfigError::Runtime)?;
        let wanted = config.system.filter(|s| !s.trim().is_empty());
        Ok(Redfish { client, wanted, system: Mutex::new(None), accept_continuous_pxe: config.accept_continuous_pxe })
    }

    /// The SHA-256 fingerprint of the certificate this driver trusts: the pin, or with
    /// [`Tls::TrustOnFirstUse`] the certificate of the first completed handshake (`None` before
    /// one, and over plain HTTP). Pin it in the config to trust only that certificate.
    pub fn fingerprint(&self) -> Option<[u8; 32]> {
        self.client.fingerprint()
    }

    /// The system's path: the configured one, or found in the Systems collection (once).
    fn system(&self) -> Result<String, PowerError> {
        let mut cached = self.system.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(path) = cached.as_ref() {
            return Ok(path.clone());
        }
        let path = match self.wanted.as_deref() {
            Some(path) if path.starts_with('/') => path.trim_end_matches('/').to_string(),
            wanted => {
                let body = self.client.call(Method::GET, SYSTEMS, None, "list its systems")?;
                let members = document::members(&body).map_err(|e| self.not_redfish(SYSTEMS, &e, &body))?;
                document::choose_system(&members, wanted).map_err(|detail| {
                    PowerError::Unsupported(format!("the BMC at {}: {detail}", self.client.endpoint.url()))
                })?
            }
        };
        *cached = Some(path.clone());
        Ok(path)
    }

    fn read_system(&self, path: &str) -> Result<System, PowerError> {
        let body = self.client.call(Method::GET, path, None, "read its system")?;
        System::parse(&body).map_err(|e| self.not_redfish(path, &e, &body))
    }

    fn not_redfish(&self, path: &str, problem: &str, body: &[u8]) -> PowerError {
        self.client.protocol(format!("GET {} answered {problem}; it starts {}", bounded(path), excerpt(body)))
    }

    fn state_of(&self, path: &str, system: &System) -> Result<PowerState, PowerError> {
        system.power_state().map_err(|e| self.client.protocol(format!("GET {} answered {e}", bounded(path))))
    }
}

impl PowerDriver for Redfish {
    fn kind(&self) -> &'static str {
        "redfish"
    }

    fn address(&self) -> String {
        self.client.endpoint.url()
    }

    fn status(&self) -> Result<PowerState, PowerError> {
        let path = self.system()?;
        let system = self.read_system(&path)?;
        self.state_of(&path, &system)
    }

    fn power(&self, action: PowerAction) -> Result<(), PowerError> {
        let path = self.system()?;
        let system = self.read_system(&path)?;
        let state = self.state_of(&path, &system)?;
        let reset = match system.plan(action, state) {
            Plan::Nothing => return Ok(()),
            Plan::Reset(reset) => reset,
            Plan::NotOffered { listed } => {
                return Err(PowerError::Unsupported(format!(
                    "the BMC at {} offers no reset that would {action} a machine that is {state}: it lists {}",
                    self.address(),
                    listed.join(", ")
                )))
            }
        };
        let target = path_of(&system.reset_target(&path));
        let what = format!("power {action} ({reset})");
        self.client.call(Method::POST, &target, Some(&json!({ "ResetType": reset })), &what)?;
        Ok(())
    }

    fn pxe_once(&self) -> Result<(), PowerError> {
        let path = self.system()?;
        let boot = json!({ "Boot": { "BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once" } });
        let what = "set the next boot to the network (Pxe, Once)";
        self.client.call(Method::PATCH, &path, Some(&boot), what)?;
        let system = self.read_system(&path)?;
        let (target, enabled) = system.boot_override();
        let once = enabled == Some("Once") || (self.accept_continuous_pxe && enabled == Some("Continuous"));
        if target == Some("Pxe") && once {
            return Ok(());
        }
        let shown = |v: Option<&str>| v.map(bounded).unwrap_or_else(|| "nothing".to_string());
        Err(PowerError::NotApplied {
            address: self.address(),
            action: what.to_string(),
            found: format!("BootSourceOverrideTarget {}, BootSourceOverrideEnabled {}", shown(target), shown(enabled)),
        })
    }
}

/// `url` with any user and password in it replaced, for an error message.
fn redacted(url: &str) -> String {
    let start = url.find("://").map(|i| i + 3).unwrap_or(0);
    let end = url[start..].find('/').map(|i| start + i).unwrap_or(url.len());
    match url[start..end].rfind('@') {
        Some(at) => format!("{}USER:PASSWORD{}", &url[..start], &url[start + at..]),
        None => url.to_string(),
    }
}

/// The path of an action target, which a BMC may give as a whole URL.
fn path_of(target: &str) -> String {
    match target.parse::<Uri>() {
        Ok(uri) if uri.scheme().is_some() => uri.path().to_string(),
        _ => target.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str, tls: Tls) -> RedfishConfig {
        RedfishConfig {
            url: url.to_string(),
            user: "admin".to_string(),
            password: "hunter2-secret".to_string(),
            timeout: Duration::from_secs(5),
            system: None,
            tls,
            accept_continuous_pxe: false,
        }
    }

    #[test]
    fn debug_output_never_holds_the_password() {
        let config = config("https://10.0.0.9", Tls::Pinned([0xab; 32]));
        let shown = format!("{config:?} {:?}", Redfish::new(config.clone()).unwrap());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("AB:AB") && shown.contains("https://10.0.0.9"), "{shown}");
    }

    #[test]
    fn plain_http_only_when_asked_for_and_tls_only_over_https() {
        let plain = Redfish::new(config("http://127.0.0.1:8000", Tls::TrustOnFirstUse)).unwrap_err();
        assert!(matches!(plain, RedfishConfigError::PlainHttpNotAllowed { .. }), "{plain}");
        let off = Redfish::new(config("https://127.0.0.1", Tls::PlainHttp)).unwrap_err();
        assert!(matches!(off, RedfishConfigError::HttpsWithoutTls { .. }), "{off}");
        let driver = Redfish::new(config("http://127.0.0.1:8000", Tls::PlainHttp)).unwrap();
        assert_eq!(
            (driver.kind(), driver.address(), driver.fingerprint()),
            ("redfish", "http://127.0.0.1:8000".into(), None)
        );
        let bad = Redfish::new(config("https://admin:pw@10.0.0.9", Tls::TrustOnFirstUse)).unwrap_err();
        let shown = bad.to_string();
        assert!(!shown.contains("pw") && shown.contains("https://USER:PASSWORD@10.0.0.9"), "{shown}");
    }

    #[test]
    fn a_caller_inside_a_tokio_runtime_gets_an_answer_not_a_panic() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Redfish::new(config(&format!("https://127.0.0.1:{port}"), Tls::TrustOnFirstUse)).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let result = runtime.block_on(async { driver.status() });
        assert!(matches!(result, Err(PowerError::Unreachable { .. })), "{result:?}");
    }

    #[test]
    fn action_targets_given_as_urls_become_paths() {
        assert_eq!(
            path_of("/redfish/v1/Systems/1/Actions/ComputerSystem.Reset"),
            "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset"
        );
        assert_eq!(
            path_of("https://10.0.0.9/redfish/v1/Systems/1/Actions/ComputerSystem.Reset"),
            "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset"
        );
    }
}
