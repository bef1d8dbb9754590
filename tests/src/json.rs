//! Typed readers of `oasis … --json`: what the CLI prints, read back into the appliance's own
//! serde types, so a test says `status.health == Health::Healthy` instead of poking at
//! `serde_json::Value`s, and a renamed field fails to compile here instead of silently
//! comparing `null`. The paths of those types are all in this file's `pub use` lines.

use serde::de::DeserializeOwned;

pub use oasis_appliance::admin::MachineEntry;
pub use oasis_appliance::api::MachineView;
pub use oasis_appliance::generations::UpdateStatus;
pub use oasis_appliance::store::Event;
pub use oasis_core::assembly::status::{ClusterStatus, Health, MachineRole, MemberView, MeshPair};
pub use oasis_proto::MachineState;
pub use oasis_pxe::dhcp::{Lease, LeaseState};

use crate::Appliance;

/// Reads `text`, what `command` printed, as a `T`; a failure shows the command and the text.
pub fn parse<T: DeserializeOwned>(command: &str, text: &str) -> T {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("`{command}` printed what is not its JSON ({e}):\n{text}"))
}

impl Appliance {
    /// `oasis leases --json`.
    pub fn leases(&self) -> Vec<Lease> {
        parse("oasis leases --json", &self.cli(&["leases", "--json"]))
    }

    /// `oasis machines --json`.
    pub fn machines(&self) -> Vec<MachineEntry> {
        parse("oasis machines --json", &self.cli(&["machines", "--json"]))
    }

    /// The registrations among `oasis machines --json`, in its order.
    pub fn registrations(&self) -> Vec<MachineView> {
        self.machines().into_iter().filter_map(|m| m.registration).collect()
    }

    /// `oasis cluster status --json`.
    pub fn cluster_status(&self) -> ClusterStatus {
        parse("oasis cluster status --json", &self.cli(&["cluster", "status", "--json"]))
    }

    /// `oasis update status --json`.
    pub fn update_status(&self) -> UpdateStatus {
        parse("oasis update status --json", &self.cli(&["update", "status", "--json"]))
    }

    /// `oasis events --json --limit LIMIT`: the last `limit` events.
    pub fn events(&self, limit: usize) -> Vec<Event> {
        parse("oasis events --json", &self.cli(&["events", "--json", "--limit", &limit.to_string()]))
    }
}

/// The machines of the voting etcd members, sorted.
pub fn voters(status: &ClusterStatus) -> Vec<String> {
    let mut v: Vec<String> = status.members.iter().filter(|m| !m.learner).filter_map(|m| m.machine.clone()).collect();
    v.sort();
    v
}
