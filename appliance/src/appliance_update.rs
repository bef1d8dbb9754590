//! The appliance part of an installed bundle, as `oasis serve` sees it: the slot image kept with
//! its generation, and where the appliance's own update to it stands.
//!
//! `oasis serve` never writes a boot slot. It verifies the bundle, keeps its slot image with the
//! generation ([`crate::generations`]), and says here what is waiting; `oasis boot` (the
//! appliance's supervisor, `oasis_boot::self_update`) reads that through `oasis update status`,
//! writes the slot, reboots into it, and records in `DATA_DIR/appliance.json`
//! ([`crate::generations::APPLIANCE_FILE`]) what runs, whether it is committed, and how the
//! last trial ended. The node rollout to a generation that carries an appliance part waits until
//! the appliance has committed it ([`NodeGenerations::appliance_hold`]).

use std::path::PathBuf;

use oasis_core::update::{self, ApplianceUpdateState};
use oasis_image::bundle::{BundleManifest, Role};
use serde::{Deserialize, Serialize};

use crate::generations::{NodeGenerations, MANIFEST_FILE};

/// The newest generation's appliance part and where it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplianceUpdateView {
    /// The generation whose bundle carried it.
    pub sequence: u64,
    /// The appliance version it holds.
    pub version: String,
    /// The version the appliance runs now.
    pub running: String,
    /// The slot image, verified with the bundle.
    pub image: PathBuf,
    pub size: u64,
    pub sha256: String,
    /// The slot size it was made for.
    pub slot_bytes: u64,
    pub state: ApplianceUpdateState,
}

impl NodeGenerations {
    /// The appliance part of the newest installed generation, where it stands on this appliance;
    /// `None` when that generation carries none, or off an appliance.
    pub fn appliance_update(&self) -> Option<ApplianceUpdateView> {
        let here = self.appliance_here()?;
        // The newest installed generation: the last bundle applied, which the rollout goes to.
        let sequence = self.store().generations().ok()?.installed.iter().map(|g| g.sequence).max()?;
        let dir = self.path_of(sequence);
        let text = std::fs::read(dir.join(MANIFEST_FILE)).ok()?;
        let manifest: BundleManifest = match serde_json::from_slice(&text) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!("the manifest kept with generation {sequence} cannot be read: {e}");
                return None;
            }
        };
        let part = manifest.appliance.as_ref()?;
        let member = manifest.member(Role::ApplianceSlot)?;
        Some(ApplianceUpdateView {
            sequence,
            version: part.version.clone(),
            running: here.version.clone(),
            image: dir.join(&member.name),
            size: member.size,
            sha256: member.sha256.clone(),
            slot_bytes: part.slot_bytes,
            state: update::appliance_update_state(&part.version, &here),
        })
    }

    /// Why the node rollout must wait for the appliance, if it must: the newest generation
    /// updates the appliance too, and the appliance has not committed that update.
    pub fn appliance_hold(&self) -> Option<String> {
        let view = self.appliance_update()?;
        let what = format!("the appliance's own update to {} (generation {})", view.version, view.sequence);
        match view.state {
            ApplianceUpdateState::Committed => None,
            ApplianceUpdateState::FellBack { reason } => Some(format!(
                "the node rollout is held: {what} fell back to {running} ({reason}); apply a bundle with a working appliance version, or one without an appliance part",
                running = view.running
            )),
            state => Some(format!("the node rollout waits for {what}: {state}")),
        }
    }

    /// Records in the events how the appliance's last update to itself ended (committed, or
    /// fallen back and why), once: called at start and on every controller tick, it acts only
    /// when `oasis boot`'s record changed, and an event already in the store is not said again
    /// (`serve` starts again at every boot).
    pub fn announce_last_trial(&self) {
        let here = self.appliance_here();
        {
            let mut announced = self.announced.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if *announced == here {
                return;
            }
            announced.clone_from(&here);
        }
        let Some(here) = here else { return };
        let Some(trial) = &here.last_trial else { return };
        let (kind, message) = match &trial.fell_back {
            Some(reason) => (
                "appliance-fell-back",
                format!("the appliance's update to oasis {} was given up: {reason}", trial.version),
            ),
            None if trial.version == here.version && here.committed => (
                "appliance-committed",
                format!(
                    "the appliance's update from oasis {} to {} is committed (slot {})",
                    trial.from_version, trial.version, here.running
                ),
            ),
            None => return,
        };
        let store = self.store();
        let said = store.events(1000).map(|events| events.iter().any(|e| e.kind == kind && e.message == message));
        if !said.unwrap_or(false) {
            store.record_event(oasis_core::registry::Happening { kind, mac: None, message });
        }
    }
}
