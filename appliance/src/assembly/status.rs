//! The cluster as `oasis cluster status` and the API show it.

use serde::{Deserialize, Serialize};

/// The whole picture, published by the controller every tick.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub name: String,
    /// `waiting`, `assembling`, `healthy`, `degraded` or `quorum lost`.
    pub health: String,
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
}

/// One mesh link as one of its ends reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshPair {
    pub from: String,
    pub to: String,
    pub handshake_age_secs: Option<u64>,
}

impl ClusterStatus {
    /// The status for people, as `oasis cluster status` prints it.
    pub fn render(&self) -> String {
        let mut out = format!(
            "cluster {}: {}\nprogress: {}\nkubernetes: {}\ncontrol plane: {} place(s)\n",
            self.name, self.health, self.progress, self.kubernetes, self.control_plane_target
        );
        for w in &self.warnings {
            out += &format!("warning: {w}\n");
        }
        out += "\nMACHINE                          ROLE           UP   MESH ADDRESS     DATA DISK     ETCD\n";
        for m in &self.machines {
            out += &format!(
                "{:<32} {:<14} {:<4} {:<16} {:<13} {}\n",
                m.id,
                m.role,
                if m.alive { "yes" } else { "no" },
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
