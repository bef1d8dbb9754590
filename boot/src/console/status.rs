//! The status block: what a person at the console needs to see at a glance, in about a dozen
//! short lines. The machines and the cluster come from the running `oasis serve` (its admin
//! socket); the rack address and the admin token's fingerprint from the data directory.

use std::path::Path;

use oasis_proto::MachineState;
use sha2::{Digest, Sha256};

use crate::supervisor::CONFIG_FILE;
use oasis_appliance::admin::{self, MachineEntry};
use oasis_appliance::identity::{ADMIN_TOKEN_FILE, CERTIFICATE_FINGERPRINT_FILE};
use oasis_core::assembly::status::ClusterStatus;
use oasis_core::config::Config;

/// At most this many pending machines and warnings are listed; the rest are counted.
const LISTED: usize = 3;

/// What `oasis serve` answered.
#[derive(Debug, Clone)]
pub enum Serve {
    Answering {
        machines: Vec<MachineEntry>,
        cluster: Box<ClusterStatus>,
    },
    /// No server on the admin socket: starting, or restarting with a new configuration.
    NotRunning,
    /// It answered, but not usefully.
    Failed(String),
}

/// Everything one status block shows.
#[derive(Debug, Clone)]
pub struct View {
    pub serve: Serve,
    /// E.g. `10.0.0.1/24 on eth0`, or why it is unknown.
    pub rack_address: String,
    /// First 16 hex digits of the token's SHA-256, or why there is none.
    pub admin_token: String,
    /// The web page's address (`https://10.0.0.1:9443`), or why it is unknown.
    pub web: String,
    /// The SHA-256 of its certificate as browsers show it (`AB:CD:...`), or why there is none.
    pub certificate: String,
}

/// The first 16 hex digits of the SHA-256 of the admin token in `DATA_DIR/admin-token` (the
/// token itself, without the file's line ending; the log's 8-digit fingerprint is its prefix).
pub fn token_fingerprint(data_dir: &Path) -> std::io::Result<String> {
    let token = std::fs::read_to_string(data_dir.join(ADMIN_TOKEN_FILE))?;
    Ok(hex::encode(Sha256::digest(token.trim().as_bytes()))[..16].to_string())
}

fn get<T: serde::de::DeserializeOwned>(data_dir: &Path, path: &str) -> Result<Option<T>, String> {
    match admin::request(data_dir, "GET", path) {
        Ok(None) => Ok(None),
        Ok(Some(body)) => serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| format!("{path}: unreadable answer: {e}", e = oasis_proto::error_chain(&e))),
        Err(e) => Err(format!("{path}: {e}", e = oasis_proto::error_chain(&e))),
    }
}

/// Reads everything the block shows.
pub fn fetch(data_dir: &Path) -> View {
    let serve = match (get(data_dir, "/v1/machines"), get(data_dir, "/v1/cluster")) {
        (Ok(Some(machines)), Ok(Some(cluster))) => Serve::Answering { machines, cluster: Box::new(cluster) },
        (Ok(None), _) | (_, Ok(None)) => Serve::NotRunning,
        (Err(e), _) | (_, Err(e)) => Serve::Failed(e),
    };
    let (rack_address, web) = match Config::load(&data_dir.join(CONFIG_FILE)) {
        Ok(c) => (format!("{} on {}", c.rack_net(), c.interface), format!("https://{}:{}", c.address, c.api_port)),
        Err(e) => {
            let unknown = format!("unknown ({e})", e = oasis_proto::error_chain(&e));
            (unknown.clone(), unknown)
        }
    };
    let certificate = match std::fs::read_to_string(data_dir.join(CERTIFICATE_FINGERPRINT_FILE)) {
        Ok(text) => text.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            "none yet (oasis serve makes it when it first starts)".to_string()
        }
        Err(e) => format!("unreadable: {e}"),
    };
    let admin_token = match token_fingerprint(data_dir) {
        Ok(fingerprint) => format!("sha256 {fingerprint}"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            "none yet (oasis serve creates it when it first starts)".to_string()
        }
        Err(e) => format!("unreadable: {e}", e = oasis_proto::error_chain(&e)),
    };
    View { serve, rack_address, admin_token, web, certificate }
}

/// The pending machines, oldest first.
pub fn pending(machines: &[MachineEntry]) -> Vec<&MachineEntry> {
    machines
        .iter()
        .filter(|m| m.registration.as_ref().is_some_and(|r| r.record.state == MachineState::Pending))
        .collect()
}

/// One machine in a line: id, boot MAC and serial.
pub fn describe(entry: &MachineEntry) -> String {
    match &entry.registration {
        Some(view) => {
            let serial = view.record.inventory.system.serial.as_deref().unwrap_or("no serial");
            format!("{} ({}, serial {serial})", view.record.id, entry.netboot.mac)
        }
        None => format!("{} (not registered)", entry.netboot.mac),
    }
}

fn machines_line(machines: &[MachineEntry], cluster: &ClusterStatus) -> String {
    let count =
        |state| machines.iter().filter(|m| m.registration.as_ref().is_some_and(|r| r.record.state == state)).count();
    let registered = machines.iter().filter(|m| m.registration.is_some()).count();
    let up = cluster.machines.iter().filter(|m| m.alive).count();
    format!(
        "machines: {registered} registered ({} accepted, {} pending, {} rejected), {up} up; {} booted but not registered",
        count(MachineState::Accepted),
        count(MachineState::Pending),
        count(MachineState::Rejected),
        machines.len() - registered
    )
}

/// The machines with a BMC by power state, and which are off (they do not come back by
/// themselves); `None` when no machine has a BMC.
fn power_line(machines: &[MachineEntry]) -> Option<String> {
    let powered: Vec<(&MachineEntry, Option<oasis_power::PowerState>)> =
        machines.iter().filter_map(|m| m.power.as_ref().map(|p| (m, p.state))).collect();
    if powered.is_empty() {
        return None;
    }
    let count = |state| powered.iter().filter(|(_, s)| *s == state).count();
    let mut line = format!(
        "power: {} on, {} off, {} not read (of {} with a BMC)",
        count(Some(oasis_power::PowerState::On)),
        count(Some(oasis_power::PowerState::Off)),
        count(None),
        powered.len()
    );
    let off: Vec<String> = powered
        .iter()
        .filter(|(_, s)| *s == Some(oasis_power::PowerState::Off))
        .map(|(m, _)| m.registration.as_ref().map_or_else(|| m.netboot.mac.to_string(), |r| r.record.id.clone()))
        .collect();
    if !off.is_empty() {
        let more = off.len().saturating_sub(LISTED);
        let listed = off.into_iter().take(LISTED).collect::<Vec<_>>().join(", ");
        line += &format!("; off: {listed}");
        if more > 0 {
            line += &format!(" and {more} more");
        }
    }
    Some(line)
}

fn control_plane_line(cluster: &ClusterStatus) -> String {
    let placed = cluster.machines.iter().filter(|m| m.role == oasis_proto::Role::ControlPlane.to_string()).count();
    let workers = cluster.machines.iter().filter(|m| m.role == oasis_proto::Role::Worker.to_string()).count();
    let members = &cluster.members;
    format!(
        "control plane: {placed} of {} place(s), {workers} worker(s); etcd: {} member(s), {} healthy, {} learner(s)",
        cluster.control_plane_target,
        members.len(),
        members.iter().filter(|m| m.healthy).count(),
        members.iter().filter(|m| m.learner).count(),
    )
}

/// The block, one line per fact, starting with `oasis status:`.
pub fn render(view: &View) -> String {
    let mut lines = Vec::new();
    match &view.serve {
        Serve::Answering { machines, cluster } => {
            let name = if cluster.name.is_empty() { "(unnamed)" } else { &cluster.name };
            let health = cluster.health.as_str();
            lines.push(format!("oasis status: cluster {name} {health}"));
            if !cluster.progress.is_empty() {
                lines.push(format!("progress: {}", cluster.progress));
            }
            if !cluster.rollout.is_empty() {
                lines.push(format!("rollout: {}", cluster.rollout));
            }
            lines.push(machines_line(machines, cluster));
            let pending = pending(machines);
            for entry in pending.iter().take(LISTED) {
                lines.push(format!("pending: {} ([a] accepts it)", describe(entry)));
            }
            if pending.len() > LISTED {
                lines.push(format!("pending: and {} more", pending.len() - LISTED));
            }
            lines.extend(power_line(machines));
            lines.push(control_plane_line(cluster));
            if !cluster.kubernetes.is_empty() {
                lines.push(format!("kubernetes: {}", cluster.kubernetes));
            }
            for warning in cluster.warnings.iter().take(LISTED) {
                lines.push(format!("warning: {warning}"));
            }
            if cluster.warnings.len() > LISTED {
                lines.push(format!("warning: and {} more (oasis cluster status)", cluster.warnings.len() - LISTED));
            }
        }
        Serve::NotRunning => lines
            .push("oasis status: oasis serve is not running (starting, or restarting with a new configuration)".into()),
        Serve::Failed(why) => lines.push(format!("oasis status: oasis serve does not answer properly: {why}")),
    }
    lines.push(format!("rack address: {}", view.rack_address));
    lines.push(format!("admin token: {}", view.admin_token));
    // The fingerprint (95 characters) on a line of its own, to compare with the browser's.
    lines.push(format!("web page: {} (log in with the admin token); its certificate's SHA-256:", view.web));
    lines.push(format!("  {}", view.certificate));
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/console");

    fn fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
        let path = Path::new(FIXTURES).join(name);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn view(machines: &str, cluster: &str) -> View {
        View {
            serve: Serve::Answering { machines: fixture(machines), cluster: fixture(cluster) },
            rack_address: "10.0.0.1/24 on eth0".into(),
            admin_token: "sha256 0123456789abcdef".into(),
            web: "https://10.0.0.1:9443".into(),
            certificate:
                "20:11:0D:01:23:4F:09:12:CA:C7:C5:74:5C:87:E3:9F:CC:3A:92:65:C5:41:1F:A6:CC:FD:52:99:9F:B1:02:DB".into(),
        }
    }

    fn golden(name: &str, actual: &str) {
        oasis_testkit::assert_golden(Path::new(FIXTURES).join(name), actual);
    }

    #[test]
    fn a_healthy_cluster_with_a_pending_machine() {
        let view = view("machines.json", "cluster-healthy.json");
        let text = render(&view);
        golden("status-healthy.txt", &text);
        assert!(text.starts_with("oasis status: cluster rack-7 healthy\n"), "{text}");
        assert!(
            text.contains("rollout: generation 2 failed on m2 (gate 'its services running'); back on generation 1"),
            "{text}"
        );
        assert!(text
            .contains("machines: 4 registered (3 accepted, 1 pending, 0 rejected), 3 up; 1 booted but not registered"));
        assert!(text.contains("pending: 4c4c4544-0044-3910-8052-b4c04f4d3334 (52:54:00:00:00:04, serial SN-4)"));
        assert!(
            text.contains("control plane: 3 of 3 place(s), 0 worker(s); etcd: 3 member(s), 3 healthy, 0 learner(s)\n")
        );
        assert!(text.lines().all(|l| l.len() <= 100), "lines a terminal shows whole:\n{text}");
        assert!(text.lines().count() <= 15, "a short block:\n{text}");
        let Serve::Answering { machines, .. } = &view.serve else { unreachable!() };
        assert_eq!(pending(machines).len(), 1);
    }

    #[test]
    fn machines_with_a_bmc_are_counted_by_power_and_those_off_named() {
        let mut view = view("machines.json", "cluster-healthy.json");
        assert!(!render(&view).contains("power:"), "no line without a BMC");
        let Serve::Answering { machines, .. } = &mut view.serve else { unreachable!() };
        let seen = |state| Some(oasis_appliance::power::PowerSeen { state, error: None, at: 1 });
        machines[0].power = seen(Some(oasis_power::PowerState::On));
        machines[1].power = seen(Some(oasis_power::PowerState::Off));
        machines[2].power = seen(None);
        let off = machines[1].registration.as_ref().map(|r| r.record.id.clone()).unwrap();
        let text = render(&view);
        assert!(text.contains(&format!("power: 1 on, 1 off, 1 not read (of 3 with a BMC); off: {off}\n")), "{text}");
    }

    #[test]
    fn a_cluster_still_waiting_and_a_server_that_is_not_running() {
        let text = render(&view("machines-none.json", "cluster-waiting.json"));
        golden("status-waiting.txt", &text);
        assert!(text.contains("machines: 0 registered (0 accepted, 0 pending, 0 rejected), 0 up; 0 booted"));
        let down = View { serve: Serve::NotRunning, ..view("machines-none.json", "cluster-waiting.json") };
        let text = render(&down);
        assert!(text.starts_with("oasis status: oasis serve is not running"), "{text}");
        assert!(text.contains("rack address: 10.0.0.1/24 on eth0\nadmin token: sha256 0123456789abcdef\n"));
    }

    #[test]
    fn the_fingerprint_is_of_the_token_and_the_files_are_read_from_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(ADMIN_TOKEN_FILE), "secret-token\n").unwrap();
        let want = hex::encode(Sha256::digest(b"secret-token"));
        assert_eq!(token_fingerprint(dir.path()).unwrap(), want[..16]);
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "[network]\ninterface = \"eth1\"\naddress = \"10.0.0.1\"\n[dhcp]\nmode = \"proxy\"\n",
        )
        .unwrap();
        let view = fetch(dir.path());
        assert!(matches!(view.serve, Serve::NotRunning), "no socket: {view:?}");
        assert_eq!(view.rack_address, "10.0.0.1/24 on eth1");
        assert_eq!(view.admin_token, format!("sha256 {}", &want[..16]));
        let empty = tempfile::tempdir().unwrap();
        let view = fetch(empty.path());
        assert!(view.rack_address.starts_with("unknown ("), "{}", view.rack_address);
        assert!(view.admin_token.starts_with("none yet"), "{}", view.admin_token);
    }
}
