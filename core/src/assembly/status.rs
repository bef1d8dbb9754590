//! The cluster as `oasis cluster status` and the API show it: built by [`ClusterStatus::observe`]
//! from what one controller tick observed, so a status never mixes two moments.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use oasis_proto::{Heartbeat, Role, ServiceState, ServiceStatus};
use serde::{Deserialize, Serialize};

use super::planner::{self, Assembly, Member};
use crate::k3s;

/// One member's view of itself (`/v3/maintenance/status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberStatus {
    pub member_id: u64,
    pub cluster_id: u64,
    /// The leader's member id as this member knows it; 0 when it knows none.
    pub leader: u64,
    pub raft_index: u64,
    pub raft_term: u64,
    /// The key-value store's revision at this member.
    pub revision: u64,
    pub db_size: u64,
    pub is_learner: bool,
    /// The etcd version, e.g. `3.4.23`.
    pub version: String,
    /// Alarms and other trouble the member reports (e.g. `NOSPACE`).
    pub errors: Vec<String>,
}

/// The cluster's health in one word, as the status, the console and scripts show it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// The controller has not published a status yet.
    #[default]
    Starting,
    /// Waiting for machines before roles are chosen.
    Waiting,
    Assembling,
    Healthy,
    /// Some voters are down; quorum holds.
    Degraded,
    #[serde(rename = "quorum lost")]
    QuorumLost,
}

impl Health {
    /// The word as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Starting => "starting",
            Health::Waiting => "waiting",
            Health::Assembling => "assembling",
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
            Health::QuorumLost => "quorum lost",
        }
    }
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One accepted machine as one tick saw it.
#[derive(Debug, Clone)]
pub struct MachineSeen<'a> {
    pub id: &'a str,
    /// Its WireGuard key (its boot).
    pub key: &'a str,
    pub role: Role,
    pub alive: bool,
    pub mesh_address: Ipv4Addr,
    /// `https://MESH_ADDRESS:2380`.
    pub peer_url: &'a str,
    /// Its etcd data does not survive a power cycle.
    pub volatile: bool,
    /// Its agent's last heartbeat.
    pub heartbeat: Option<&'a Heartbeat>,
    /// The etcd service it is told to run as of this tick: its generation and whether it runs.
    pub etcd_told: Option<(u64, bool)>,
}

/// What one controller tick observed, for the status.
#[derive(Debug, Clone)]
pub struct Observed<'a> {
    pub cluster: &'a str,
    /// The configured control-plane count.
    pub control_plane: usize,
    /// In choice order.
    pub machines: Vec<MachineSeen<'a>>,
    pub assembly: &'a Assembly,
    /// etcd's members as listed this tick (`None`: no member answered).
    pub members: Option<&'a [Member]>,
    /// The status of each machine whose etcd answered this tick.
    pub statuses: &'a HashMap<String, MemberStatus>,
    /// The planner found nothing to do.
    pub settled: bool,
    /// What the controller did last or waits for.
    pub progress: String,
    /// The node image carries etcd.
    pub etcd_bundled: bool,
    /// The node image carries a k3s bundle.
    pub kubernetes_bundled: bool,
}

/// The whole picture, published by the controller every tick.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub name: String,
    pub health: Health,
    /// What the controller did last or waits for.
    pub progress: String,
    /// `not bundled`, or what the k3s bundle runs.
    pub kubernetes: String,
    /// Control-plane places for the machines there are.
    pub control_plane_target: usize,
    pub machines: Vec<MachineRole>,
    pub members: Vec<MemberView>,
    pub mesh: Vec<MeshPair>,
    /// Unix time the cluster was first healthy with all its places filled.
    pub assembled_at: Option<u64>,
    /// Warnings for the operator (volatile etcd data, a missing artifact).
    pub warnings: Vec<String>,
    /// What the node rollout did last or waits for (`crate::rollout`); empty before the
    /// controller's first tick.
    #[serde(default)]
    pub rollout: String,
    /// The version every etcd member agrees to speak (`3.5.0` once all run 3.5).
    #[serde(default)]
    pub cluster_version: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineRole {
    pub id: String,
    pub role: String,
    pub alive: bool,
    pub mesh_address: Option<String>,
    /// The data disk as its agent reports it.
    #[serde(default)]
    pub data_disk: Option<String>,
    /// The etcd service's state as its agent reports it.
    pub etcd: Option<String>,
    /// The node generation its agent reports running.
    #[serde(default)]
    pub generation: Option<u64>,
    /// Its power as its BMC read last (`on`, `off`, `unknown` when the BMC did not answer);
    /// `None` without a BMC. The appliance fills it in when it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    /// Hex, as etcdctl prints it.
    pub id: String,
    pub machine: Option<String>,
    pub learner: bool,
    pub healthy: bool,
    pub leader: bool,
    pub db_size: Option<u64>,
    pub revision: Option<u64>,
    pub raft_index: Option<u64>,
    /// The etcd version the member runs (e.g. `3.5.16`), when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// One mesh link as one of its ends reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshPair {
    pub from: String,
    pub to: String,
    pub handshake_age_secs: Option<u64>,
}

impl ClusterStatus {
    /// The status of what one tick observed.
    pub fn observe(o: &Observed<'_>) -> ClusterStatus {
        let members = member_views(o);
        let pool = o.machines.iter().filter(|m| m.alive || o.assembly.members.contains_key(m.id)).count();
        ClusterStatus {
            name: o.cluster.to_string(),
            health: health(o.assembly, &members, o.settled),
            progress: o.progress.clone(),
            kubernetes: kubernetes(o),
            control_plane_target: planner::places(o.control_plane, pool),
            machines: o.machines.iter().map(|m| machine_row(m, o.statuses.contains_key(m.id))).collect(),
            members,
            mesh: mesh(&o.machines),
            assembled_at: o.assembly.assembled_at,
            warnings: warnings(o),
            rollout: String::new(),
            cluster_version: None,
        }
    }

    /// The status for people, as `oasis cluster status` prints it.
    pub fn render(&self) -> String {
        let mut out = format!(
            "cluster {}: {}\nprogress: {}\nkubernetes: {}\ncontrol plane: {} place(s)\n",
            self.name, self.health, self.progress, self.kubernetes, self.control_plane_target
        );
        if !self.rollout.is_empty() {
            out += &format!("rollout: {}\n", self.rollout);
        }
        if let Some(version) = &self.cluster_version {
            out += &format!("etcd cluster version: {version}\n");
        }
        for w in &self.warnings {
            out += &format!("warning: {w}\n");
        }
        out += "\nMACHINE                          ROLE           UP   POWER   MESH ADDRESS     DATA DISK     ETCD\n";
        for m in &self.machines {
            out += &format!(
                "{:<32} {:<14} {:<4} {:<7} {:<16} {:<13} {}\n",
                m.id,
                m.role,
                if m.alive { "yes" } else { "no" },
                m.power.as_deref().unwrap_or("-"),
                m.mesh_address.as_deref().unwrap_or("-"),
                m.data_disk.as_deref().unwrap_or("-"),
                m.etcd.as_deref().unwrap_or("-")
            );
        }
        out +=
            "\nETCD MEMBER       MACHINE                          KIND     HEALTH     LEADER  DB SIZE     REVISION\n";
        for m in &self.members {
            out += &format!(
                "{:<17} {:<32} {:<8} {:<10} {:<7} {:<11} {}\n",
                m.id,
                m.machine.as_deref().unwrap_or("(unknown)"),
                if m.learner { "learner" } else { "voter" },
                if m.healthy { "healthy" } else { "unhealthy" },
                if m.leader { "yes" } else { "" },
                m.db_size.map(|b| format!("{:.1} KiB", b as f64 / 1024.0)).unwrap_or_else(|| "-".into()),
                m.revision.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
            );
        }
        if !self.mesh.is_empty() {
            out += "\nMESH (handshake age as the first machine reports it)\n";
            for p in &self.mesh {
                let age = p.handshake_age_secs.map(|s| format!("{s} s")).unwrap_or_else(|| "never".into());
                out += &format!("{} -> {}: {age}\n", p.from, p.to);
            }
        }
        out
    }
}

fn member_views(o: &Observed<'_>) -> Vec<MemberView> {
    let machine_of_peer = |url: &str| o.machines.iter().find(|m| m.peer_url == url).map(|m| m.id.to_string());
    let status_of = |id: u64| o.statuses.values().find(|s| s.member_id == id);
    o.members
        .unwrap_or_default()
        .iter()
        .map(|m| {
            let st = status_of(m.id);
            MemberView {
                id: format!("{:x}", m.id),
                machine: machine_of_peer(&m.peer_url),
                learner: m.learner,
                healthy: m.healthy,
                leader: o.statuses.values().any(|s| s.leader == m.id && s.leader != 0),
                db_size: st.map(|s| s.db_size),
                revision: st.map(|s| s.revision),
                raft_index: st.map(|s| s.raft_index),
                version: st.map(|s| s.version.clone()),
            }
        })
        .collect()
}

/// The health word: from the roles, the voters that answered and whether the planner settled.
fn health(assembly: &Assembly, members: &[MemberView], settled: bool) -> Health {
    let voters = members.iter().filter(|m| !m.learner).count();
    let healthy = members.iter().filter(|m| !m.learner && m.healthy).count();
    if assembly.roles.is_empty() {
        Health::Waiting
    } else if voters == 0 && assembly.formed {
        // Formed, and no member answers: none is up.
        Health::QuorumLost
    } else if voters == 0 {
        Health::Assembling
    } else if healthy < planner::quorum(voters) {
        Health::QuorumLost
    } else if healthy < voters {
        Health::Degraded
    } else if settled {
        Health::Healthy
    } else {
        Health::Assembling
    }
}

fn warnings(o: &Observed<'_>) -> Vec<String> {
    let mut warnings = Vec::new();
    if !o.etcd_bundled {
        warnings.push("the node image carries no etcd: rebuild it with `oasis image build node`".into());
    }
    let volatile: Vec<&str> =
        o.machines.iter().filter(|m| o.assembly.members.contains_key(m.id) && m.volatile).map(|m| m.id).collect();
    if !volatile.is_empty() {
        warnings.push(format!(
            "etcd data on {} is in memory (tmpfs, no data disk): a member that powers off loses it and joins again",
            volatile.join(", ")
        ));
    }
    warnings
}

fn mesh(machines: &[MachineSeen<'_>]) -> Vec<MeshPair> {
    machines
        .iter()
        .filter_map(|m| Some((m, m.heartbeat?)))
        .flat_map(|(m, h)| {
            h.mesh.iter().map(move |p| MeshPair {
                from: m.id.to_string(),
                to: machines.iter().find(|o| o.key == p.key).map_or_else(|| p.key.clone(), |o| o.id.to_string()),
                handshake_age_secs: p.handshake_age_secs,
            })
        })
        .collect()
}

fn machine_row(m: &MachineSeen<'_>, etcd_answered: bool) -> MachineRole {
    let etcd_report = m.heartbeat.and_then(|h| h.services.iter().find(|x| x.name == "etcd"));
    MachineRole {
        id: m.id.to_string(),
        role: m.role.to_string(),
        alive: m.alive,
        mesh_address: (m.role != Role::Unassigned).then(|| m.mesh_address.to_string()),
        data_disk: m.heartbeat.and_then(|h| h.data_disk.as_ref()).map(|d| match &d.message {
            Some(msg) => format!("{}: {msg}", d.device),
            None if d.mounted => format!("{} mounted", d.device),
            None => d.device.clone(),
        }),
        etcd: etcd_column(etcd_report, m.etcd_told, etcd_answered),
        generation: m.heartbeat.and_then(|h| h.generation),
        power: None,
    }
}

/// A machine's etcd as this tick knows it. Its member answering this tick beats any report;
/// a report of another spec than the one the machine is told now is a heartbeat behind, and
/// says only what comes next.
fn etcd_column(report: Option<&ServiceStatus>, told: Option<(u64, bool)>, answered: bool) -> Option<String> {
    if answered {
        return Some("running".into());
    }
    let report = report?;
    if let Some((_, run)) = told.filter(|(generation, _)| *generation != report.generation) {
        return Some(if run { "starting" } else { "preparing" }.into());
    }
    let state = serde_json::to_value(report.state).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
    Some(match &report.message {
        // The agent's message may begin with the state already.
        Some(m) if report.state != ServiceState::Running && m.starts_with(&state) => m.clone(),
        Some(m) if report.state != ServiceState::Running => format!("{state}: {m}"),
        _ => state,
    })
}

fn kubernetes(o: &Observed<'_>) -> String {
    if !o.kubernetes_bundled {
        return "not bundled".into();
    }
    if o.assembly.assembled_at.is_none() {
        return "k3s bundled: starts once etcd is assembled".into();
    }
    let count = |role: Role| {
        let of_role: Vec<&MachineSeen<'_>> = o.machines.iter().filter(|m| m.role == role).collect();
        let running = of_role
            .iter()
            .filter(|m| {
                m.heartbeat.is_some_and(|h| {
                    h.services.iter().any(|s| s.name == k3s::SERVICE_NAME && s.state == ServiceState::Running)
                })
            })
            .count();
        (running, of_role.len())
    };
    let ((servers_up, servers), (agents_up, agents)) = (count(Role::ControlPlane), count(Role::Worker));
    format!("k3s: {servers_up} of {servers} server(s) and {agents_up} of {agents} agent(s) running")
}
