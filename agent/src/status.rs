//! The status block the agent prints on the machine's console, for whoever stands at the rack.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use oasis_proto::Role;

/// What the block shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub machine_id: Option<String>,
    /// The boot interface and its address, e.g. `ens3 10.0.0.23/24`.
    pub address: String,
    /// `registering`, `pending`, `rejected`, `linked`, ...
    pub state: String,
    /// Whether the last call to the appliance got an answer.
    pub appliance_reachable: Option<bool>,
    pub handshake_age: Option<Duration>,
    /// The role the appliance gave the machine, once it has given one.
    pub role: Option<Role>,
    /// Mesh peers with a recent handshake, and all mesh peers; `None` without a mesh.
    pub mesh: Option<(usize, usize)>,
    /// Each service and its state, e.g. `("etcd", "running")`.
    pub services: Vec<(String, String)>,
    pub last_error: Option<String>,
}

/// Renders `status` as a few lines.
pub fn render(status: &Status) -> String {
    let mut out = String::from("---- oasis node agent ----\n");
    let reach = match status.appliance_reachable {
        None => "not tried yet",
        Some(true) => "reachable",
        Some(false) => "UNREACHABLE",
    };
    let handshake = match status.handshake_age {
        None => "none yet".to_string(),
        Some(age) => format!("{} s ago", age.as_secs()),
    };
    let _ = writeln!(out, "machine    {}", status.machine_id.as_deref().unwrap_or("(not registered)"));
    let _ = writeln!(out, "address    {}", status.address);
    let _ = writeln!(out, "state      {}", status.state);
    let _ = writeln!(out, "appliance  {reach}");
    let _ = writeln!(out, "wireguard  handshake {handshake}");
    if let Some(role) = status.role {
        let _ = writeln!(out, "role       {role}");
    }
    if let Some((up, total)) = status.mesh {
        let _ = writeln!(out, "mesh       {up}/{total} peers up");
    }
    for (name, state) in &status.services {
        let _ = writeln!(out, "service    {name} {state}");
    }
    if let Some(error) = &status.last_error {
        let _ = writeln!(out, "last error {error}");
    }
    out
}

/// Writes `block` to the console device (`/dev/console` on a node). `/dev/console` is only the
/// last `console=` of the kernel command line, so for it the block goes to every active console
/// instead (`/sys/class/tty/console/active`, e.g. the screen and the serial port): someone at the
/// rack may be looking at either. A console that cannot be written is not a reason to stop: the
/// error goes to the log instead.
pub fn print_to(console: &Path, block: &str) {
    for target in console_devices(console, Path::new("/sys/class/tty/console/active")) {
        let written =
            std::fs::OpenOptions::new().append(true).open(&target).and_then(|mut f| f.write_all(block.as_bytes()));
        if let Err(e) = written {
            tracing::warn!(
                "cannot write the status block to {}: {e}",
                target.display(),
                e = oasis_proto::error_chain(&e)
            );
        }
    }
}

/// The devices behind `console`: every active console for `/dev/console`, else itself.
fn console_devices(console: &Path, active: &Path) -> Vec<std::path::PathBuf> {
    if console != Path::new(crate::CONSOLE) {
        return vec![console.to_path_buf()];
    }
    match std::fs::read_to_string(active) {
        Ok(names) if !names.trim().is_empty() => {
            names.split_whitespace().map(|name| Path::new("/dev").join(name)).collect()
        }
        _ => vec![console.to_path_buf()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_linked_machine() {
        let status = Status {
            machine_id: Some("m-3f2a".into()),
            address: "ens3 10.0.0.23/24".into(),
            state: "linked".into(),
            appliance_reachable: Some(true),
            handshake_age: Some(Duration::from_millis(12_900)),
            last_error: None,
            ..Status::default()
        };
        assert_eq!(
            render(&status),
            "---- oasis node agent ----\n\
             machine    m-3f2a\n\
             address    ens3 10.0.0.23/24\n\
             state      linked\n\
             appliance  reachable\n\
             wireguard  handshake 12 s ago\n"
        );
    }

    #[test]
    fn a_cluster_member() {
        let status = Status {
            machine_id: Some("m-3f2a".into()),
            address: "ens3 10.0.0.23/24".into(),
            state: "linked".into(),
            appliance_reachable: Some(true),
            role: Some(Role::ControlPlane),
            mesh: Some((2, 3)),
            services: vec![("etcd".into(), "running".into()), ("k3s".into(), "exited (restarts 2)".into())],
            last_error: Some("configuring oasis-mesh: adding address failed".into()),
            ..Status::default()
        };
        assert!(render(&status).ends_with(
            "wireguard  handshake none yet\n\
             role       control-plane\n\
             mesh       2/3 peers up\n\
             service    etcd running\n\
             service    k3s exited (restarts 2)\n\
             last error configuring oasis-mesh: adding address failed\n"
        ));
    }

    #[test]
    fn a_machine_that_cannot_reach_the_appliance_says_why() {
        let status = Status {
            address: "ens3 (no address)".into(),
            state: "registering".into(),
            appliance_reachable: Some(false),
            last_error: Some("cannot reach the appliance at https://10.0.0.1:9443: connection refused".into()),
            ..Status::default()
        };
        let block = render(&status);
        assert!(block.contains("machine    (not registered)\n"), "{block}");
        assert!(block.contains("appliance  UNREACHABLE\n"), "{block}");
        assert!(block.contains("wireguard  handshake none yet\n"), "{block}");
        assert!(block.ends_with("last error cannot reach the appliance at https://10.0.0.1:9443: connection refused\n"));
    }

    #[test]
    fn printing_appends_to_the_console_file() {
        let dir = tempfile::tempdir().unwrap();
        let console = dir.path().join("console");
        std::fs::write(&console, "earlier\n").unwrap();
        print_to(&console, "block\n");
        assert_eq!(std::fs::read_to_string(&console).unwrap(), "earlier\nblock\n");
        print_to(&dir.path().join("missing/console"), "lost\n");
    }

    #[test]
    fn dev_console_means_every_active_console() {
        let dir = tempfile::tempdir().unwrap();
        let active = dir.path().join("active");
        std::fs::write(&active, "tty0 ttyS0\n").unwrap();
        let devices = console_devices(Path::new(crate::CONSOLE), &active);
        assert_eq!(devices, [Path::new("/dev/tty0"), Path::new("/dev/ttyS0")]);
        assert_eq!(console_devices(Path::new(crate::CONSOLE), &dir.path().join("none")), [Path::new("/dev/console")]);
        assert_eq!(console_devices(&active, &active), [active.as_path()]);
    }
}
