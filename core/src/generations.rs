//! Node generations: which node images the appliance keeps, which one the rack runs, and which
//! one each machine's boot script serves. Without I/O; `oasis_appliance::generations` keeps the
//! files and the store keeps a [`Generations`] record.
//!
//! Generation 0 is the node image the appliance shipped with (the boot root's `node/`); every
//! other generation is a verified update bundle, numbered by its sequence. The rack's
//! **current** generation is the one it runs; the **previous** one is kept for rollback; a newer
//! installed one is **available** (the next rollout's target); a **failed** one is never served
//! again by itself. [`Generations::keep`] says what stays on the data partition: the current, the
//! previous, the newest available, and every generation a machine is desired, attempting or
//! confirmed on; everything else is pruned.

use std::collections::{BTreeMap, BTreeSet};

use oasis_image::bundle::{BundleManifest, ARCHITECTURE};
use oasis_proto::MacAddr;
use serde::{Deserialize, Serialize};

use crate::rollout::Rollout;
use crate::update::Installed;

/// The generation the appliance shipped with: the boot root's node image, never pruned.
pub const SHIPPED: u64 = 0;

/// The record's format version.
pub const FORMAT: u32 = 1;

/// What a generation is to the rack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GenerationState {
    /// Installed and verified, not (yet) what the rack runs.
    Available,
    /// What the rack runs.
    Current,
    /// What the rack ran before; kept for rollback.
    Previous,
    /// Failed its gates on a machine; never served again by itself.
    Failed,
}

impl std::fmt::Display for GenerationState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GenerationState::Available => "available",
            GenerationState::Current => "current",
            GenerationState::Previous => "previous",
            GenerationState::Failed => "failed",
        })
    }
}

/// One installed generation (sequence above [`SHIPPED`]): what its verified manifest says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Generation {
    pub sequence: u64,
    /// The product version.
    pub version: String,
    pub kernel: String,
    pub agent: String,
    /// etcd's package version.
    pub etcd: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k3s: Option<String>,
    /// The id of the key that signed the bundle.
    pub key_id: String,
    /// When it was installed (unix time).
    pub installed_at: u64,
    /// Set once it failed its gates somewhere.
    #[serde(default)]
    pub failed: bool,
}

impl Generation {
    /// The generation a verified bundle with `manifest`, signed by `key_id`, installs at `now`.
    pub fn of(manifest: &BundleManifest, key_id: &str, now: u64) -> Generation {
        Generation {
            sequence: manifest.sequence,
            version: manifest.version.clone(),
            kernel: manifest.changes.kernel.clone(),
            agent: manifest.changes.agent.clone(),
            etcd: manifest.changes.etcd.clone(),
            k3s: manifest.changes.k3s.clone(),
            key_id: key_id.to_string(),
            installed_at: now,
            failed: false,
        }
    }
}

/// What one machine has been told to run, tried, confirmed and failed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineGenerations {
    /// The generation the controller chose for it; `None`: the rack's current one.
    #[serde(default)]
    pub desired: Option<u64>,
    /// The generation it was last booted into to try, and how many boots that took.
    #[serde(default)]
    pub attempted: Option<u64>,
    #[serde(default)]
    pub attempts: u32,
    /// The generation its agent last reported running and passing its gates.
    #[serde(default)]
    pub confirmed: Option<u64>,
    /// Generations that failed their gates on it.
    #[serde(default)]
    pub failed: BTreeSet<u64>,
}

/// The appliance's record of node generations (one store record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Generations {
    pub format: u32,
    /// The highest sequence ever installed (pruned ones included): the anti-rollback floor.
    pub highest_sequence: u64,
    /// What the rack runs ([`SHIPPED`] until a rollout finishes).
    pub current: u64,
    /// What it ran before, kept for rollback.
    pub previous: Option<u64>,
    /// Installed generations on the data partition, by ascending sequence.
    pub installed: Vec<Generation>,
    /// Per boot MAC.
    pub machines: BTreeMap<MacAddr, MachineGenerations>,
    /// The last rollout, running or ended (`crate::rollout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
}

impl Default for Generations {
    fn default() -> Self {
        Generations {
            format: FORMAT,
            highest_sequence: SHIPPED,
            current: SHIPPED,
            previous: None,
            installed: vec![],
            machines: BTreeMap::new(),
            rollout: None,
        }
    }
}

impl Generations {
    /// The installed generation `sequence`, if on the data partition.
    pub fn get(&self, sequence: u64) -> Option<&Generation> {
        self.installed.iter().find(|g| g.sequence == sequence)
    }

    /// Whether `sequence` can be served: the shipped one, or an installed one.
    pub fn has(&self, sequence: u64) -> bool {
        sequence == SHIPPED || self.get(sequence).is_some()
    }

    /// The state of generation `sequence`.
    pub fn state(&self, sequence: u64) -> GenerationState {
        if sequence == self.current {
            GenerationState::Current
        } else if self.get(sequence).is_some_and(|g| g.failed) {
            GenerationState::Failed
        } else if Some(sequence) == self.previous {
            GenerationState::Previous
        } else {
            GenerationState::Available
        }
    }

    /// The newest installed generation above the current one that has not failed: the next
    /// rollout's target.
    pub fn target(&self) -> Option<&Generation> {
        self.installed.iter().filter(|g| g.sequence > self.current && !g.failed).max_by_key(|g| g.sequence)
    }

    /// What a new bundle is checked against ([`crate::update::check_update`]): the sequence
    /// floor with the etcd of every generation machines may run now or next, `shipped_etcd`
    /// being the shipped generation's. A bundle must pass against each.
    pub fn installed_for_check(&self, shipped_etcd: &str) -> Vec<Installed> {
        let etcd_of = |sequence: u64| match self.get(sequence) {
            Some(g) => g.etcd.clone(),
            None => shipped_etcd.to_string(),
        };
        let mut runs = vec![self.current];
        runs.extend(self.target().map(|g| g.sequence));
        runs.into_iter()
            .map(|sequence| Installed {
                sequence: self.highest_sequence,
                etcd_version: etcd_of(sequence),
                architecture: ARCHITECTURE.into(),
            })
            .collect()
    }

    /// The generations that stay on the data partition.
    pub fn keep(&self) -> BTreeSet<u64> {
        let mut keep = BTreeSet::from([SHIPPED, self.current]);
        keep.extend(self.previous);
        keep.extend(self.target().map(|g| g.sequence));
        for machine in self.machines.values() {
            keep.extend(machine.desired);
            keep.extend(machine.attempted);
            keep.extend(machine.confirmed);
        }
        keep
    }

    /// The record with `generation` installed and what is no longer kept dropped: the new
    /// record and the sequences to remove from the data partition.
    pub fn with_installed(&self, generation: Generation) -> (Generations, Vec<u64>) {
        let mut next = self.clone();
        next.highest_sequence = next.highest_sequence.max(generation.sequence);
        next.installed.retain(|g| g.sequence != generation.sequence);
        next.installed.push(generation);
        next.installed.sort_by_key(|g| g.sequence);
        let keep = next.keep();
        let pruned = next.installed.iter().map(|g| g.sequence).filter(|s| !keep.contains(s)).collect();
        next.installed.retain(|g| keep.contains(&g.sequence));
        (next, pruned)
    }

    /// The generation `mac`'s boot script serves: its desired one when set and still there,
    /// else the rack's current one.
    pub fn served(&self, mac: MacAddr) -> u64 {
        match self.machines.get(&mac).and_then(|m| m.desired) {
            Some(desired) if self.has(desired) => desired,
            _ => self.current,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::update::{check_update, UpdateRefusal};

    const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 1]);

    fn generation(sequence: u64, etcd: &str) -> Generation {
        Generation {
            sequence,
            version: format!("0.{sequence}.0"),
            kernel: "6.12.0".into(),
            agent: "a".into(),
            etcd: etcd.into(),
            k3s: None,
            key_id: "k".into(),
            installed_at: 1,
            failed: false,
        }
    }

    #[test]
    fn a_rack_with_only_the_shipped_generation_serves_it_to_everyone() {
        let g = Generations::default();
        assert_eq!(g.served(MAC), SHIPPED);
        assert_eq!(g.state(SHIPPED), GenerationState::Current);
        assert_eq!(g.keep(), BTreeSet::from([SHIPPED]));
    }

    #[test]
    fn installing_keeps_current_previous_and_the_newest_available_and_prunes_the_rest() {
        let (g, pruned) = Generations::default().with_installed(generation(1, "3.5.16"));
        assert!(pruned.is_empty());
        assert_eq!(g.state(1), GenerationState::Available);
        // A newer bundle supersedes an available one that never ran anywhere.
        let (g, pruned) = g.with_installed(generation(2, "3.5.16"));
        assert_eq!(pruned, vec![1]);
        assert_eq!(g.installed.iter().map(|g| g.sequence).collect::<Vec<_>>(), vec![2]);
        assert_eq!(g.highest_sequence, 2);
        // After a rollout to 2, 2 is current and 0 previous: installing 3 keeps both.
        let rolled = Generations { current: 2, previous: Some(SHIPPED), ..g };
        let (g, pruned) = rolled.with_installed(generation(3, "3.5.17"));
        assert!(pruned.is_empty());
        assert_eq!(
            (g.state(2), g.state(0), g.state(3)),
            (GenerationState::Current, GenerationState::Previous, GenerationState::Available)
        );
        // A later rollout to 3 makes 2 previous; installing 4 prunes nothing kept and keeps two on disk plus the target.
        let rolled = Generations { current: 3, previous: Some(2), ..g };
        let (g, pruned) = rolled.with_installed(generation(4, "3.5.17"));
        assert!(pruned.is_empty(), "{pruned:?}");
        let rolled = Generations { current: 4, previous: Some(3), ..g };
        let (g, pruned) = rolled.with_installed(generation(5, "3.5.17"));
        assert_eq!(pruned, vec![2]);
        assert_eq!(g.installed.iter().map(|g| g.sequence).collect::<Vec<_>>(), vec![3, 4, 5]);
    }

    #[test]
    fn a_generation_a_machine_is_on_or_desired_on_is_never_pruned() {
        let (mut g, _) = Generations::default().with_installed(generation(1, "3.5.16"));
        g.machines.insert(MAC, MachineGenerations { desired: Some(1), ..Default::default() });
        assert_eq!(g.served(MAC), 1);
        let (g, pruned) = g.with_installed(generation(2, "3.5.16"));
        assert!(pruned.is_empty());
        assert_eq!(g.served(MAC), 1, "its desired generation is still served");
        assert_eq!(g.served(MacAddr([2; 6])), SHIPPED, "everyone else gets the current one");
    }

    #[test]
    fn a_desired_generation_that_is_gone_falls_back_to_the_current_one() {
        let mut g = Generations::default();
        g.machines.insert(MAC, MachineGenerations { desired: Some(9), ..Default::default() });
        assert_eq!(g.served(MAC), SHIPPED);
    }

    #[test]
    fn a_failed_generation_is_not_the_target_and_not_kept() {
        let (mut g, _) = Generations::default().with_installed(generation(1, "3.5.16"));
        g.installed[0].failed = true;
        assert_eq!(g.state(1), GenerationState::Failed);
        assert!(g.target().is_none());
        let (g, pruned) = g.with_installed(generation(2, "3.5.16"));
        assert_eq!(pruned, vec![1]);
        assert_eq!(g.target().map(|g| g.sequence), Some(2));
    }

    #[test]
    fn new_bundles_are_checked_against_the_floor_and_every_etcd_the_rack_may_run() {
        let manifest = |sequence: u64, etcd: &str| BundleManifest {
            product: oasis_image::bundle::PRODUCT.into(),
            version: "v".into(),
            sequence,
            architecture: ARCHITECTURE.into(),
            changes: oasis_image::bundle::Changes {
                kernel: "k".into(),
                agent: "a".into(),
                etcd: etcd.into(),
                k3s: None,
            },
            members: vec![],
            appliance: None,
        };
        let passes = |g: &Generations, m: &BundleManifest| {
            g.installed_for_check("3.4.23-4+b4").iter().map(|i| check_update(i, m)).collect::<Result<Vec<_>, _>>()
        };
        let (g, _) = Generations::default().with_installed(generation(1, "3.5.16"));
        assert!(matches!(passes(&g, &manifest(1, "3.5.16")), Err(UpdateRefusal::NotNewer { installed: 1, .. })));
        assert!(passes(&g, &manifest(2, "3.5.17")).is_ok());
        // 3.6 is one minor above the target but two above what the rack runs.
        assert!(matches!(passes(&g, &manifest(2, "3.6.0")), Err(UpdateRefusal::EtcdMinorSkipped { .. })));
        // A pruned generation's sequence is still the floor.
        let (g, _) = g.with_installed(generation(2, "3.5.16"));
        let g = Generations { installed: vec![], ..g };
        assert!(matches!(passes(&g, &manifest(2, "3.5.16")), Err(UpdateRefusal::NotNewer { installed: 2, .. })));
    }
}
