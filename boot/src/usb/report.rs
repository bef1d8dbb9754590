//! The report the appliance writes back to the stick, in `oasis-report/`:
//!
//! | file | when |
//! |---|---|
//! | `result.txt` | always: applied, refused (why, with line numbers) or report only; the update bundle's fate; when; what else is here |
//! | `applied.toml` | a configuration was applied: exactly the text applied |
//! | `inventory.txt` | machines: id, serial, MACs, CPUs, memory, disks, state, role, power |
//! | `admin-token` | the supervisor passes it (first boot only); never removed by a later report |
//! | `cluster-status.txt` | `oasis serve` answers with a cluster status |
//! | `kubeconfig` | the cluster has one (a k3s bundle and a k3s server up) |
//!
//! Every file is written aside, synced and renamed, and the directory synced, so a stick pulled
//! mid-write holds each file whole, old or new. A file an earlier report wrote that this one does
//! not have (a refused config after an applied one) is removed, so the directory never mixes two
//! reports; except `admin-token`, which only the first boot can write.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use oasis_appliance::admin::{self, MachineEntry};
use oasis_core::assembly::status::ClusterStatus;

pub use oasis_image::usb_stick::REPORT_DIR;

pub const RESULT_FILE: &str = "result.txt";
pub const APPLIED_FILE: &str = "applied.toml";
pub const INVENTORY_FILE: &str = "inventory.txt";
pub const ADMIN_TOKEN_FILE: &str = "admin-token";
pub const CLUSTER_STATUS_FILE: &str = "cluster-status.txt";
pub const KUBECONFIG_FILE: &str = "kubeconfig";

/// What happened to the stick's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Outcome {
    /// Applied: the appliance now runs with `text`.
    Applied { text: String, signed: bool },
    /// Refused; the appliance keeps its last good configuration.
    Refused { reason: String },
    /// The stick offered no configuration (an export of the report).
    #[default]
    ReportOnly,
}

/// Everything a report holds. [`gather`] fills the state of the running appliance; the
/// supervisor sets the outcome and, on first boot, the admin token.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub outcome: Outcome,
    /// Unix time of the report.
    pub at: u64,
    /// `None` when `oasis serve` could not be asked (see `notes`).
    pub machines: Option<Vec<MachineEntry>>,
    pub cluster: Option<ClusterStatus>,
    pub kubeconfig: Option<String>,
    pub admin_token: Option<String>,
    /// What became of the stick's update bundle, if it has one.
    pub bundle: Option<super::bundle::BundleOutcome>,
    /// The appliance's own version and slot, and its last update to itself (`oasis boot`'s
    /// `appliance.json`); none off a two-slot appliance.
    pub appliance: Option<oasis_core::update::ApplianceHere>,
    /// What could not be gathered, and why.
    pub notes: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot write the report to {path}; the stick may be read-only (ISO 9660), full or damaged")]
    Write { path: PathBuf, source: std::io::Error },
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The report of the appliance whose `oasis serve` has its admin socket in `data_dir`: its
/// machines, cluster status and kubeconfig, as much as it answers. Blocking (a Unix socket).
pub fn gather(data_dir: &Path) -> Report {
    let mut report = Report { at: now(), ..Report::default() };
    report.appliance = std::fs::read(data_dir.join(oasis_appliance::generations::APPLIANCE_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let ask = |path: &str| admin::request(data_dir, "GET", path);
    match ask("/v1/machines") {
        Ok(Some(body)) => match serde_json::from_slice(&body) {
            Ok(machines) => report.machines = Some(machines),
            Err(e) => report.notes.push(format!(
                "machines: the answer of oasis serve was not understood: {e}",
                e = oasis_proto::error_chain(&e)
            )),
        },
        Ok(None) => {
            report.notes.push("oasis serve is not running: no machines, cluster status or kubeconfig".into());
            return report;
        }
        Err(e) => report.notes.push(format!("machines: {e}", e = oasis_proto::error_chain(&e))),
    }
    match ask("/v1/cluster") {
        Ok(Some(body)) => match serde_json::from_slice(&body) {
            Ok(status) => report.cluster = Some(status),
            Err(e) => report.notes.push(format!(
                "cluster status: the answer of oasis serve was not understood: {e}",
                e = oasis_proto::error_chain(&e)
            )),
        },
        Ok(None) => report.notes.push("cluster status: oasis serve stopped answering".into()),
        Err(e) => report.notes.push(format!("cluster status: {e}", e = oasis_proto::error_chain(&e))),
    }
    // No kubeconfig is the usual case (no k3s bundle, or no server yet): the status says why.
    if let Ok(Some(body)) = ask("/v1/cluster/kubeconfig") {
        report.kubeconfig = Some(String::from_utf8_lossy(&body).into_owned());
    }
    report
}

/// The report's lines on the appliance itself: what runs, and how its last update went.
fn appliance_lines(here: &oasis_core::update::ApplianceHere) -> String {
    let state = if here.committed { "committed" } else { "on trial, not yet committed" };
    let mut out = format!("appliance: oasis {} in boot slot {} ({state})\n", here.version, here.running);
    match &here.last_trial {
        Some(t) if t.fell_back.is_some() => {
            let reason = t.fell_back.as_deref().unwrap_or_default();
            out += &format!("appliance update: to oasis {} FELL BACK: {reason}\n", t.version);
        }
        Some(t) if t.version == here.version && here.committed => {
            out += &format!("appliance update: from oasis {} to {}, committed\n", t.from_version, t.version);
        }
        _ => {}
    }
    out
}

/// UTC `YYYY-MM-DD HH:MM:SS` of a Unix time (the appliance has no time zone data).
fn utc(t: u64) -> String {
    let (days, secs) = (t / 86400, t % 86400);
    // Civil from days, Howard Hinnant's algorithm.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", secs / 3600, secs % 3600 / 60, secs % 60)
}

impl Report {
    /// The files of this report, by name.
    pub fn files(&self) -> Vec<(&'static str, String)> {
        let mut files = vec![];
        if let Outcome::Applied { text, .. } = &self.outcome {
            files.push((APPLIED_FILE, text.clone()));
        }
        if let Some(machines) = &self.machines {
            files.push((INVENTORY_FILE, oasis_appliance::inventory::text(machines, self.cluster.as_ref())));
        }
        if let Some(token) = &self.admin_token {
            files.push((ADMIN_TOKEN_FILE, format!("{token}\n")));
        }
        if let Some(status) = &self.cluster {
            files.push((CLUSTER_STATUS_FILE, status.render()));
        }
        if let Some(kubeconfig) = &self.kubeconfig {
            files.push((KUBECONFIG_FILE, kubeconfig.clone()));
        }
        let result = self.result(&files.iter().map(|(name, _)| *name).collect::<Vec<_>>());
        files.insert(0, (RESULT_FILE, result));
        files
    }

    fn result(&self, others: &[&str]) -> String {
        let mut out = match &self.outcome {
            Outcome::Applied { signed, .. } => format!(
                "applied: the configuration on this stick{} is what the appliance runs now (a copy is in {APPLIED_FILE})\n",
                if *signed { ", signed with the trusted key," } else { "" }
            ),
            Outcome::Refused { reason } => format!(
                "refused: the configuration on this stick was not applied; the appliance keeps its last good configuration\n\
                 why: {}\n",
                reason.replace('\n', "\n     ")
            ),
            Outcome::ReportOnly => "report: this stick offered no oasis.toml; the appliance's state follows\n".into(),
        };
        if let Some(here) = &self.appliance {
            out += &appliance_lines(here);
        }
        if let Some(bundle) = &self.bundle {
            out += &bundle.line();
            out.push('\n');
        }
        out += &format!("when: {} (unix time {})\n", utc(self.at), self.at);
        if let Some(status) = &self.cluster {
            out += &format!("cluster: {} ({})\n", status.health, status.progress);
        }
        if let Some(machines) = &self.machines {
            out += &format!("machines: {}\n", machines.len());
        }
        for note in &self.notes {
            out += &format!("note: {note}\n");
        }
        if !others.is_empty() {
            out += &format!("files: {}\n", others.join(", "));
        }
        out
    }
}

/// Writes `report` to `oasis-report/` on the stick mounted at `stick_root`.
pub fn write_report(stick_root: &Path, report: &Report) -> Result<(), ReportError> {
    let dir = stick_root.join(REPORT_DIR);
    let fail = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ReportError::Write { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(fail(&dir))?;
    let files = report.files();
    for (name, contents) in &files {
        let path = dir.join(name);
        oasis_image::manifest::write_atomic(&path, contents.as_bytes())
            .map_err(|e| ReportError::Write { path: path.clone(), source: std::io::Error::other(e.to_string()) })?;
    }
    for stale in [APPLIED_FILE, INVENTORY_FILE, CLUSTER_STATUS_FILE, KUBECONFIG_FILE] {
        if files.iter().all(|(name, _)| *name != stale) {
            match std::fs::remove_file(dir.join(stale)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(fail(&dir.join(stale))(e)),
            }
        }
    }
    std::fs::File::open(&dir).and_then(|d| d.sync_all()).map_err(fail(&dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::bundle::BundleOutcome;
    use super::*;
    use oasis_appliance::api::MachineView;
    use oasis_appliance::store::{BootMode, Machine};
    use oasis_core::assembly::status::MachineRole;
    use oasis_core::registry::MachineRecord;
    use oasis_proto::{Disk, Inventory, MachineState, Nic, System};

    fn machine(id: &str, mac: &str, registered: bool) -> MachineEntry {
        let mac: oasis_proto::MacAddr = mac.parse().unwrap();
        let netboot = Machine {
            mac,
            arch: None,
            vendor_class: None,
            first_seen: 1,
            last_seen: 2,
            boot_count: 1,
            last_ip: None,
            boot: BootMode::Network,
        };
        let registration = registered.then(|| MachineView {
            record: MachineRecord {
                id: id.into(),
                state: MachineState::Accepted,
                boot_mac: mac,
                wireguard_key: String::new(),
                inventory: Inventory {
                    system: System { serial: Some(format!("SN-{id}")), ..Default::default() },
                    cpus: 4,
                    memory_bytes: 8 << 30,
                    disks: vec![Disk { name: "vda".into(), size_bytes: 20 << 30, model: None, rotational: false }],
                    nics: vec![
                        Nic { name: "eth0".into(), mac: mac.to_string(), driver: None, speed_mbps: None, link: true },
                        Nic {
                            name: "eth1".into(),
                            mac: "52:54:00:00:01:99".into(),
                            driver: None,
                            speed_mbps: None,
                            link: false,
                        },
                    ],
                    ..Default::default()
                },
                agent_version: "test".into(),
                overlay: None,
                credential_sha256: None,
                first_registered: 1,
                last_registered: 2,
                reason: String::new(),
                recent_nonces: vec![],
                reprovision: None,
            },
            last_heartbeat: None,
            handshake_age_secs: None,
        });
        MachineEntry { netboot, registration, power: None, bmc: None }
    }

    /// `entry` with a BMC that read it on.
    fn powered(mut entry: MachineEntry) -> MachineEntry {
        let state = Some(oasis_power::PowerState::On);
        entry.power = Some(oasis_appliance::power::PowerSeen { state, error: None, at: 1 });
        entry
    }

    fn cluster() -> ClusterStatus {
        ClusterStatus {
            name: "rack".into(),
            health: oasis_core::assembly::status::Health::Healthy,
            progress: "nothing to do".into(),
            machines: vec![MachineRole {
                id: "m1".into(),
                role: "control-plane".into(),
                alive: true,
                mesh_address: None,
                data_disk: None,
                etcd: None,
                generation: None,
                power: Some("on".into()),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn an_applied_report_has_every_file() {
        let stick = tempfile::tempdir().unwrap();
        let report = Report {
            outcome: Outcome::Applied { text: "[network]\n".into(), signed: true },
            at: 1_764_115_200,
            machines: Some(vec![
                powered(machine("m1", "52:54:00:00:00:01", true)),
                machine("", "52:54:00:00:00:02", false),
            ]),
            cluster: Some(cluster()),
            kubeconfig: Some("apiVersion: v1\n".into()),
            admin_token: Some("secret-token".into()),
            bundle: None,
            appliance: Some(oasis_core::update::ApplianceHere {
                running: "B".into(),
                version: "0.17.0".into(),
                committed: true,
                slot_bytes: 1 << 30,
                last_trial: Some(oasis_core::update::LastTrial {
                    version: "0.17.0".into(),
                    from_version: "0.16.0".into(),
                    fell_back: None,
                }),
                reboot_at: None,
            }),
            notes: vec![],
        };
        write_report(stick.path(), &report).unwrap();
        let dir = stick.path().join(REPORT_DIR);
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
        let result = read(RESULT_FILE);
        assert!(
            result.starts_with("applied: the configuration on this stick, signed with the trusted key,"),
            "{result}"
        );
        assert!(result.contains("when: 2025-11-26 00:00:00 UTC"), "{result}");
        assert!(result.contains("appliance: oasis 0.17.0 in boot slot B (committed)"), "{result}");
        assert!(result.contains("appliance update: from oasis 0.16.0 to 0.17.0, committed"), "{result}");
        assert!(result.contains("cluster: healthy") && result.contains("machines: 2"), "{result}");
        assert_eq!(read(APPLIED_FILE), "[network]\n");
        assert_eq!(read(ADMIN_TOKEN_FILE), "secret-token\n");
        assert_eq!(read(KUBECONFIG_FILE), "apiVersion: v1\n");
        assert!(read(CLUSTER_STATUS_FILE).starts_with("cluster rack: healthy"));
        let inventory = read(INVENTORY_FILE);
        let lines: Vec<&str> = inventory.lines().collect();
        let header: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(header, ["ID", "SERIAL", "MACS", "CPUS", "MEMORY", "DISKS", "STATE", "ROLE", "POWER"]);
        let m1: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            m1,
            [
                "m1",
                "SN-m1",
                "52:54:00:00:00:01,52:54:00:00:01:99",
                "4",
                "8.0G",
                "vda:20.0G",
                "accepted",
                "control-plane",
                "on"
            ]
        );
        assert!(lines[2].contains("52:54:00:00:00:02") && lines[2].contains("not registered"), "{inventory}");
        let mut names: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(
            names,
            ["admin-token", "applied.toml", "cluster-status.txt", "inventory.txt", "kubeconfig", "result.txt"]
        );
    }

    #[test]
    fn a_refusal_replaces_the_earlier_report_but_keeps_the_admin_token() {
        let stick = tempfile::tempdir().unwrap();
        let first = Report {
            outcome: Outcome::Applied { text: "x".into(), signed: false },
            admin_token: Some("t".into()),
            machines: Some(vec![]),
            ..Report::default()
        };
        write_report(stick.path(), &first).unwrap();
        let refused = Report {
            outcome: Outcome::Refused {
                reason: "oasis.toml is not valid: unknown field `rnage` (line 6)\nmore".into(),
            },
            at: 0,
            notes: vec!["oasis serve is not running".into()],
            bundle: Some(BundleOutcome::Refused { reason: "two.bundle: cut short\nagain".into() }),
            appliance: Some(oasis_core::update::ApplianceHere {
                running: "A".into(),
                version: "0.16.0".into(),
                committed: true,
                slot_bytes: 1 << 30,
                last_trial: Some(oasis_core::update::LastTrial {
                    version: "0.17.0".into(),
                    from_version: "0.16.0".into(),
                    fell_back: Some("it did not pass its health check".into()),
                }),
                reboot_at: None,
            }),
            ..Report::default()
        };
        write_report(stick.path(), &refused).unwrap();
        let dir = stick.path().join(REPORT_DIR);
        let result = std::fs::read_to_string(dir.join(RESULT_FILE)).unwrap();
        assert!(result.starts_with("refused: "), "{result}");
        assert!(result.contains("why: oasis.toml is not valid: unknown field `rnage` (line 6)\n     more"), "{result}");
        assert!(
            result.contains("when: 1970-01-01 00:00:00 UTC") && result.contains("note: oasis serve is not running")
        );
        assert!(
            result.contains("\nbundle: refused, nothing installed: two.bundle: cut short\n     again\nwhen: "),
            "{result}"
        );
        assert!(
            result.contains("appliance update: to oasis 0.17.0 FELL BACK: it did not pass its health check\n"),
            "{result}"
        );
        assert!(!dir.join(APPLIED_FILE).exists() && !dir.join(INVENTORY_FILE).exists());
        assert_eq!(std::fs::read_to_string(dir.join(ADMIN_TOKEN_FILE)).unwrap(), "t\n");
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "no temporary files left");
    }

    #[test]
    fn a_read_only_stick_is_an_error_that_says_so() {
        let stick = tempfile::tempdir().unwrap();
        std::fs::write(stick.path().join(REPORT_DIR), "a file in the way").unwrap();
        let err = write_report(stick.path(), &Report::default()).unwrap_err().to_string();
        assert!(err.contains("read-only (ISO 9660)"), "{err}");
    }

    #[test]
    fn gather_without_a_running_appliance_says_so() {
        let data = tempfile::tempdir().unwrap();
        let report = gather(data.path());
        assert!(report.machines.is_none() && report.cluster.is_none());
        assert_eq!(report.notes, ["oasis serve is not running: no machines, cluster status or kubeconfig"]);
        assert!(report.at > 0);
    }
}
