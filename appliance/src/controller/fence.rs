//! The controller's side of fencing ([`oasis_core::assembly::fence`] decides): for each etcd
//! member's machine with a BMC, the next step is done through [`crate::power::PowerControl`]
//! and recorded in the persisted assembly. A cycle is recorded before the power goes, so an
//! appliance restarted in between never cycles a machine twice.

use oasis_core::assembly::fence::{self, Fence, FenceStep, Heard};
use oasis_core::assembly::planner::Assembly;
use oasis_core::registry::Happening;

use super::world::{Clock, Etcd};
use super::{Controller, ControllerError, Seen};
use crate::power::PowerOp;

impl<E: Etcd, C: Clock> Controller<E, C> {
    /// One fencing step for each member's machine that needs one (see the module comment).
    pub(super) async fn fence(&self, seen: &[Seen], assembly: &mut Assembly, now: u64) -> Result<(), ControllerError> {
        let power = &self.api.power;
        let Some(policy) = power.fence_policy() else { return Ok(()) };
        for s in seen {
            let (id, mac) = (&s.record.id, s.record.boot_mac);
            let fenced_before = assembly.fencing.contains_key(id);
            if !power.has(mac) || !(assembly.members.contains_key(id) || fenced_before) {
                continue;
            }
            let heard = Heard { alive: self.alive(s, now), silent_secs: now.saturating_sub(heard_at(s)) };
            let happening = |kind, message: String| Happening { kind, mac: Some(mac), message };
            match fence::next(policy, assembly.fencing.get(id), heard, now) {
                FenceStep::Nothing => continue,
                FenceStep::Cycle { reason } => {
                    assembly
                        .fencing
                        .insert(id.clone(), Fence { cycled_at: now, back_at: None, fenced_at: None, held: false });
                    let said = happening("machine-fenced", format!("{id} {reason}"));
                    self.api.store.save_assembly(assembly.clone(), vec![said]).await?;
                    let why = format!("fencing: {reason}");
                    // The network boot first: a machine that hung in its OS starts afresh from the
                    // appliance. A BMC that refuses it still gets the cycle.
                    power.act(&self.api.store, mac, Some(id.clone()), PowerOp::Pxe, &why).await;
                    power.act(&self.api.store, mac, Some(id.clone()), PowerOp::Cycle, &why).await;
                }
                FenceStep::Back => {
                    if let Some(f) = assembly.fencing.get_mut(id) {
                        f.back_at = Some(now);
                    }
                    let said = happening("machine-back", format!("{id} heartbeats again after its power cycle"));
                    self.api.store.save_assembly(assembly.clone(), vec![said]).await?;
                }
                FenceStep::PowerOff { reason } => {
                    let why = format!("fencing: {reason}");
                    let off = power.act(&self.api.store, mac, Some(id.clone()), PowerOp::Off, &why).await;
                    if let Some(f) = assembly.fencing.get_mut(id) {
                        f.fenced_at = Some(now);
                    }
                    // Given up either way: etcd never lets a removed member back in, so a machine
                    // that could not be powered off cannot rejoin with its old data.
                    let message = match off.error {
                        None => format!("{id} {reason}"),
                        Some(e) => format!("{id} {reason} (the power-off failed: {e}; check the machine)"),
                    };
                    self.api
                        .store
                        .save_assembly(assembly.clone(), vec![happening("machine-given-up", message)])
                        .await?;
                }
                FenceStep::Hold { reason } => {
                    if let Some(f) = assembly.fencing.get_mut(id) {
                        f.held = true;
                    }
                    let said = happening("machine-fenced", format!("{id} {reason}"));
                    self.api.store.save_assembly(assembly.clone(), vec![said]).await?;
                }
                FenceStep::Forget => {
                    assembly.fencing.remove(id);
                    self.api.store.save_assembly(assembly.clone(), vec![]).await?;
                }
            }
        }
        Ok(())
    }
}

/// When the machine was last heard from: a heartbeat, or a registration.
pub(super) fn heard_at(s: &Seen) -> u64 {
    s.heartbeat.as_ref().map_or(0, |h| h.at).max(s.record.last_registered)
}
