//! DHCP for the boot link: busybox `udhcpc` with the agent itself as its script.
//!
//! Why udhcpc and not our own client: udhcpc is already in the image (static busybox), and it is a
//! complete, long-used client: DISCOVER/REQUEST with retries, a raw packet socket so replies arrive
//! before the link has an address, renewal at T1 and rebinding at T2, NAK and lease expiry. Writing
//! and proving all of that again buys nothing here. What udhcpc does not do is touch the network:
//! it runs its script with `deconfig`, `bound`, `renew`, `leasefail` or `nak` and the lease in
//! environment variables, and the script is the agent (the link [`HOOK_NAME`] to `oasis-agent`),
//! which applies the lease through rtnetlink ([`run_hook`]) and records it in `STATE_DIR/lease`.
//! udhcpc keeps running for as long as the agent does ([`supervise`]), so leases are renewed; if it
//! dies it is restarted.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::network::{Netlink, NetworkError};

/// The name the agent has when udhcpc runs it as its script (a link to the agent in the image).
pub const HOOK_NAME: &str = "oasis-dhcp-event";
/// The hook's path in the node image.
pub const HOOK_PATH: &str = "/usr/libexec/oasis-dhcp-event";
/// Where the current lease is written (`STATE_DIR/lease`).
pub const STATE_DIR: &str = "/run/oasis";
/// The environment variable that tells the hook where [`STATE_DIR`] is.
pub const STATE_DIR_ENV: &str = "OASIS_STATE_DIR";

/// Errors of the DHCP client and its hook.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    /// udhcpc gave the hook an event or variable it cannot use.
    #[error("udhcpc called the hook with {0}; run the hook only from udhcpc")]
    BadEvent(String),
    /// udhcpc could not be started.
    #[error("cannot start {program}; the node image must have busybox with udhcpc")]
    Spawn {
        /// The program.
        program: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// No lease within the timeout.
    #[error("no DHCP lease on {interface} after {waited:?}; check that a DHCP server (the oasis appliance) answers on this network")]
    NoLease {
        /// The interface.
        interface: String,
        /// How long we waited.
        waited: Duration,
    },
    /// Applying the lease failed.
    #[error(transparent)]
    Network(#[from] NetworkError),
    /// The lease file could not be written or read.
    #[error("cannot write or read the DHCP state file {path}")]
    State {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A DHCP lease as udhcpc reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The interface.
    pub interface: String,
    /// The leased address.
    pub address: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// The first router, if any.
    pub router: Option<Ipv4Addr>,
    /// The lease time in seconds, if given.
    pub lease_secs: Option<u32>,
    /// The server that granted it.
    pub server: Option<Ipv4Addr>,
}

/// What udhcpc tells its script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Remove the addresses, bring the link up: udhcpc is starting or the lease is gone.
    Deconfig {
        /// The interface.
        interface: String,
    },
    /// A new lease.
    Bound(Lease),
    /// The lease was renewed (possibly with changed options).
    Renew(Lease),
    /// No lease this time round; udhcpc keeps trying.
    LeaseFail,
    /// The server said no; udhcpc starts again.
    Nak,
}

use oasis_host::prefix::prefix_len as prefix_of;

impl Event {
    /// Reads an event from udhcpc's argument and environment (`interface`, `ip`, `subnet` or
    /// `mask`, `router`, `lease`, `serverid`).
    pub fn from_udhcpc(action: &str, env: impl Fn(&str) -> Option<String>) -> Result<Event, DhcpError> {
        let bad = |what: String| DhcpError::BadEvent(what);
        let interface =
            || env("interface").filter(|i| !i.is_empty()).ok_or_else(|| bad(format!("`{action}` without $interface")));
        let ip = |name: &str| -> Result<Option<Ipv4Addr>, DhcpError> {
            match env(name) {
                None => Ok(None),
                Some(v) => {
                    let first = v.split_whitespace().next().unwrap_or("");
                    first.parse().map(Some).map_err(|_| bad(format!("${name}={v:?}")))
                }
            }
        };
        let lease = || -> Result<Lease, DhcpError> {
            let address = ip("ip")?.ok_or_else(|| bad(format!("`{action}` without $ip")))?;
            let prefix = match (env("mask"), ip("subnet")?) {
                (Some(m), _) => m.parse().ok().filter(|p| *p <= 32).ok_or_else(|| bad(format!("$mask={m:?}")))?,
                (None, Some(subnet)) => prefix_of(subnet).ok_or_else(|| bad(format!("$subnet={subnet}")))?,
                (None, None) => 32,
            };
            let lease_secs = match env("lease") {
                Some(l) => Some(l.parse().map_err(|_| bad(format!("$lease={l:?}")))?),
                None => None,
            };
            Ok(Lease {
                interface: interface()?,
                address,
                prefix,
                router: ip("router")?,
                lease_secs,
                server: ip("serverid")?,
            })
        };
        match action {
            "deconfig" => Ok(Event::Deconfig { interface: interface()? }),
            "bound" => Ok(Event::Bound(lease()?)),
            "renew" => Ok(Event::Renew(lease()?)),
            "leasefail" => Ok(Event::LeaseFail),
            "nak" => Ok(Event::Nak),
            other => Err(bad(format!("the unknown event {other:?}"))),
        }
    }
}

impl Lease {
    /// The lease file's contents: `key=value` lines.
    pub fn to_text(&self) -> String {
        let opt = |v: Option<Ipv4Addr>| v.map(|v| v.to_string()).unwrap_or_default();
        format!(
            "interface={}\naddress={}\nprefix={}\nrouter={}\nlease={}\nserver={}\n",
            self.interface,
            self.address,
            self.prefix,
            opt(self.router),
            self.lease_secs.map(|l| l.to_string()).unwrap_or_default(),
            opt(self.server)
        )
    }

    /// Reads what [`Lease::to_text`] wrote; `None` if it is incomplete.
    pub fn from_text(text: &str) -> Option<Lease> {
        let get = |key: &str| {
            text.lines().find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('='))).filter(|v| !v.is_empty())
        };
        Some(Lease {
            interface: get("interface")?.to_string(),
            address: get("address")?.parse().ok()?,
            prefix: get("prefix")?.parse().ok()?,
            router: get("router").and_then(|r| r.parse().ok()),
            lease_secs: get("lease").and_then(|r| r.parse().ok()),
            server: get("server").and_then(|r| r.parse().ok()),
        })
    }
}

fn write_state(dir: &Path, lease: Option<&Lease>) -> Result<(), DhcpError> {
    let path = dir.join("lease");
    let state = |source| DhcpError::State { path: path.clone(), source };
    std::fs::create_dir_all(dir).map_err(state)?;
    match lease {
        Some(lease) => {
            let tmp = dir.join(".lease.tmp");
            std::fs::write(&tmp, lease.to_text()).map_err(state)?;
            std::fs::rename(&tmp, &path).map_err(state)
        }
        None => match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(state(e)),
            _ => Ok(()),
        },
    }
}

/// Applies one udhcpc event through rtnetlink and records the lease in `state_dir`.
pub async fn run_hook(event: &Event, state_dir: &Path) -> Result<(), DhcpError> {
    let net = Netlink::connect()?;
    let index_of = |name: String| {
        let net = net.clone();
        async move {
            let links = net.links().await?;
            links
                .into_iter()
                .find(|l| l.name == name)
                .ok_or_else(|| DhcpError::BadEvent(format!("the unknown interface {name:?}")))
        }
    };
    match event {
        Event::Deconfig { interface } => {
            let link = index_of(interface.clone()).await?;
            net.clear_ipv4(link.index).await?;
            net.set_up(&link).await?;
            write_state(state_dir, None)?;
            println!("oasis-agent: dhcp: {interface} deconfigured");
        }
        Event::Bound(lease) | Event::Renew(lease) => {
            let link = index_of(lease.interface.clone()).await?;
            net.apply_lease(link.index, lease).await?;
            write_state(state_dir, Some(lease))?;
            let what = if matches!(event, Event::Bound(_)) { "bound" } else { "renewed" };
            println!(
                "oasis-agent: dhcp: {what} {}/{} on {} via {} (lease {} s, server {})",
                lease.address,
                lease.prefix,
                lease.interface,
                lease.router.map(|r| r.to_string()).unwrap_or_else(|| "no router".into()),
                lease.lease_secs.map(|s| s.to_string()).unwrap_or_else(|| "?".into()),
                lease.server.map(|r| r.to_string()).unwrap_or_else(|| "?".into()),
            );
        }
        Event::LeaseFail => println!("oasis-agent: dhcp: no lease yet, udhcpc keeps asking"),
        Event::Nak => println!("oasis-agent: dhcp: the server refused the lease (NAK), starting over"),
    }
    Ok(())
}

/// How udhcpc is started.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The udhcpc program (`/bin/udhcpc`, a busybox link).
    pub udhcpc: PathBuf,
    /// The script: [`HOOK_PATH`].
    pub hook: PathBuf,
    /// Where the hook writes the lease.
    pub state_dir: PathBuf,
}

impl Default for ClientConfig {
    fn default() -> ClientConfig {
        ClientConfig { udhcpc: "/bin/udhcpc".into(), hook: HOOK_PATH.into(), state_dir: STATE_DIR.into() }
    }
}

/// Stops a udhcpc left running by an earlier agent (one that crashed and was restarted by `/init`),
/// so that never two clients manage one link. It is found by the pid file udhcpc writes (`-p`) and
/// only signalled if that process is still a udhcpc.
fn stop_stale_client(pid_file: &Path) {
    let Some(pid) = std::fs::read_to_string(pid_file).ok().and_then(|p| p.trim().parse::<i32>().ok()) else { return };
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    // busybox applets run as `busybox` or by their link name.
    if matches!(comm.trim(), "udhcpc" | "busybox") {
        tracing::info!(pid, "stopping the DHCP client of an earlier agent");
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
    }
    let _ = std::fs::remove_file(pid_file);
}

fn spawn_udhcpc(config: &ClientConfig, interface: &str) -> Result<tokio::process::Child, DhcpError> {
    let pid_file = config.state_dir.join("udhcpc.pid");
    stop_stale_client(&pid_file);
    let _ = std::fs::create_dir_all(&config.state_dir);
    let mut cmd = tokio::process::Command::new(&config.udhcpc);
    // -f: stay in the foreground (our child, renewing); -i: the boot link; -s: our hook; -p: pid file;
    // -t/-T: 5 discovers 2 s apart per round; -A 3: pause between rounds; no -n: retry for ever.
    cmd.args(["-f", "-i", interface, "-s"])
        .arg(&config.hook)
        .arg("-p")
        .arg(&pid_file)
        .args(["-t", "5", "-T", "2", "-A", "3"])
        .env(STATE_DIR_ENV, &config.state_dir)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd.spawn().map_err(|source| DhcpError::Spawn { program: config.udhcpc.display().to_string(), source })
}

/// Starts udhcpc on `interface` and waits until its hook has recorded a lease; then keeps udhcpc
/// running (restarting it if it exits) in a background task so the lease is renewed.
pub async fn start(config: ClientConfig, interface: &str, timeout: Duration) -> Result<Lease, DhcpError> {
    let lease_path = config.state_dir.join("lease");
    let _ = std::fs::remove_file(&lease_path);
    let child = spawn_udhcpc(&config, interface)?;
    tokio::spawn(supervise(config.clone(), interface.to_string(), child));
    let start = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(&lease_path) {
            if let Some(lease) = Lease::from_text(&text).filter(|l| l.interface == interface) {
                return Ok(lease);
            }
        }
        if start.elapsed() > timeout {
            return Err(DhcpError::NoLease { interface: interface.to_string(), waited: timeout });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits on udhcpc and restarts it whenever it exits.
pub async fn supervise(config: ClientConfig, interface: String, mut child: tokio::process::Child) {
    loop {
        let status = child.wait().await;
        tracing::warn!(interface, ?status, "udhcpc exited; restarting it in 2 s");
        tokio::time::sleep(Duration::from_secs(2)).await;
        child = loop {
            match spawn_udhcpc(&config, &interface) {
                Ok(child) => break child,
                Err(e) => {
                    tracing::error!("{}", crate::drivers::error_chain(&e));
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn bound_reads_udhcpc_variables() {
        let e = env(&[
            ("interface", "eth0"),
            ("ip", "10.0.0.123"),
            ("subnet", "255.255.255.0"),
            ("router", "10.0.0.1 10.0.0.2"),
            ("lease", "3600"),
            ("serverid", "10.0.0.1"),
        ]);
        let lease = Lease {
            interface: "eth0".into(),
            address: "10.0.0.123".parse().unwrap(),
            prefix: 24,
            router: Some("10.0.0.1".parse().unwrap()),
            lease_secs: Some(3600),
            server: Some("10.0.0.1".parse().unwrap()),
        };
        assert_eq!(Event::from_udhcpc("bound", &e).unwrap(), Event::Bound(lease.clone()));
        assert_eq!(Event::from_udhcpc("renew", &e).unwrap(), Event::Renew(lease.clone()));
        assert_eq!(Lease::from_text(&lease.to_text()), Some(lease));
        // busybox's own prefix variable wins over the dotted mask.
        let e = env(&[("interface", "eth0"), ("ip", "10.1.2.3"), ("mask", "16"), ("subnet", "255.255.255.0")]);
        let Event::Bound(lease) = Event::from_udhcpc("bound", &e).unwrap() else { panic!() };
        assert_eq!((lease.prefix, lease.router, lease.lease_secs), (16, None, None));
    }

    #[test]
    fn other_events_and_bad_input() {
        assert_eq!(
            Event::from_udhcpc("deconfig", env(&[("interface", "eth1")])).unwrap(),
            Event::Deconfig { interface: "eth1".into() }
        );
        assert_eq!(Event::from_udhcpc("leasefail", env(&[])).unwrap(), Event::LeaseFail);
        assert_eq!(Event::from_udhcpc("nak", env(&[])).unwrap(), Event::Nak);
        for (action, vars) in [
            ("bound", &[("interface", "eth0")][..]),
            ("bound", &[("interface", "eth0"), ("ip", "10.0.0.300")][..]),
            ("bound", &[("interface", "eth0"), ("ip", "10.0.0.3"), ("subnet", "255.0.255.0")][..]),
            ("deconfig", &[][..]),
            ("reboot", &[("interface", "eth0")][..]),
        ] {
            let err = Event::from_udhcpc(action, env(vars)).unwrap_err();
            assert!(err.to_string().contains("udhcpc"), "{err}");
        }
    }

    #[test]
    fn masks_to_prefixes() {
        assert_eq!(prefix_of("255.255.255.0".parse().unwrap()), Some(24));
        assert_eq!(prefix_of("255.255.255.255".parse().unwrap()), Some(32));
        assert_eq!(prefix_of("0.0.0.0".parse().unwrap()), Some(0));
        assert_eq!(prefix_of("255.255.0.255".parse().unwrap()), None);
    }

    #[test]
    fn lease_state_is_written_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let lease = Lease::from_text("interface=eth0\naddress=10.0.0.5\nprefix=24\n").unwrap();
        write_state(dir.path(), Some(&lease)).unwrap();
        assert_eq!(Lease::from_text(&std::fs::read_to_string(dir.path().join("lease")).unwrap()), Some(lease));
        write_state(dir.path(), None).unwrap();
        assert!(!dir.path().join("lease").exists());
        write_state(dir.path(), None).unwrap();
    }
}
