//! The controller's side of fencing ([`oasis_core::assembly::fence`] decides): for each etcd
//! member's machine with a BMC, the next step is recorded in the persisted assembly, then done
//! through [`crate::power::PowerControl`]. A cycle is recorded before the power goes, so an
//! appliance restarted in between never cycles a machine twice. The power actions run in tasks
//! beside the ticks (a cycle waits up to a minute for the machine to read on); what one finds
//! that changes the assembly (a machine its BMC could not power on) is handed to the next tick,
//! which alone writes the assembly.

use std::sync::Arc;

use oasis_core::assembly::fence::{self, Fence, FenceStep, Heard};
use oasis_core::assembly::planner::Assembly;
use oasis_core::registry::Happening;
use oasis_proto::MacAddr;

use super::world::{Clock, Etcd};
use super::{Controller, ControllerError, Seen};
use crate::power::PowerOp;
use oasis_power::PowerState;

/// A fencing cycle whose power-on failed, with the machine then reading off: it cannot come
/// back by itself.
#[derive(Debug)]
pub(super) struct CycleFailed {
    id: String,
    mac: MacAddr,
    /// The cycle's `cycled_at`: an outcome of an older cycle changes nothing.
    cycled_at: u64,
    error: String,
}

impl<E: Etcd, C: Clock> Controller<E, C> {
    /// One fencing step for each member's machine that needs one (see the module comment).
    /// Machines `in_rollout` are the rollout's: a reboot there is silent on purpose, and one that
    /// never comes back is the rollout's to fail and power-cycle.
    pub(super) async fn fence(
        &mut self,
        seen: &[Seen],
        assembly: &mut Assembly,
        in_rollout: &[MacAddr],
        now: u64,
    ) -> Result<(), ControllerError> {
        let Some(policy) = self.api.power.fence_policy() else { return Ok(()) };
        self.given_up_at_their_cycle(assembly, now).await?;
        let power = Arc::clone(&self.api.power);
        for s in seen {
            let (id, mac) = (&s.record.id, s.record.boot_mac);
            let fenced_before = assembly.fencing.contains_key(id);
            if !power.has(mac) || !(assembly.members.contains_key(id) || fenced_before) {
                continue;
            }
            if in_rollout.contains(&mac) && !fenced_before {
                continue;
            }
            if power.kept_off(mac) {
                // An operator powered it off: oasis does not power it back on behind their back.
                // Silent, it is given up after `[cluster] replace_after_secs` like any machine.
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
                    self.spawn_cycle(id, mac, now, format!("fencing: {reason}"));
                }
                FenceStep::Back => {
                    if let Some(f) = assembly.fencing.get_mut(id) {
                        f.back_at = Some(now);
                    }
                    let said = happening("machine-back", format!("{id} heartbeats again after its power cycle"));
                    self.api.store.save_assembly(assembly.clone(), vec![said]).await?;
                }
                FenceStep::PowerOff { reason } => {
                    if let Some(f) = assembly.fencing.get_mut(id) {
                        f.fenced_at = Some(now);
                    }
                    // Given up whether or not the power-off works: etcd never lets a removed
                    // member back in, so a machine that could not be powered off cannot rejoin
                    // with its old data (a failed power-off is its own event, `power-failed`).
                    let said = happening("machine-given-up", format!("{id} {reason}; powering it off"));
                    self.api.store.save_assembly(assembly.clone(), vec![said]).await?;
                    let (api, id, why) = (Arc::clone(&self.api), Some(id.clone()), format!("fencing: {reason}"));
                    self.power_tasks.spawn(async move {
                        api.power.act(&api.store, mac, id, PowerOp::Off, &why).await;
                    });
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

impl<E: Etcd, C: Clock> Controller<E, C> {
    /// The cycle itself, into a network boot, in a task. A cycle that failed with the machine
    /// reading off is handed to the next tick.
    fn spawn_cycle(&mut self, id: &str, mac: MacAddr, cycled_at: u64, why: String) {
        let (api, outcomes, id) = (Arc::clone(&self.api), Arc::clone(&self.fence_outcomes), id.to_string());
        self.power_tasks.spawn(async move {
            let (power, store, named) = (&api.power, &api.store, Some(id.clone()));
            let cycle = power.cycle_from_network(store, mac, named.clone(), &why).await;
            if let Some(error) = cycle.error {
                if power.act(store, mac, named, PowerOp::Status, &why).await.state == Some(PowerState::Off) {
                    let failed = CycleFailed { id, mac, cycled_at, error };
                    outcomes.lock().unwrap_or_else(|e| e.into_inner()).push(failed);
                }
            }
        });
    }

    /// Gives up the machines whose cycle could not power them on: waiting `fence_boot_secs`
    /// for them would only keep the cluster short of a voter for longer.
    async fn given_up_at_their_cycle(&self, assembly: &mut Assembly, now: u64) -> Result<(), ControllerError> {
        let failed = std::mem::take(&mut *self.fence_outcomes.lock().unwrap_or_else(|e| e.into_inner()));
        for CycleFailed { id, mac, cycled_at, error } in failed {
            let Some(f) = assembly.fencing.get_mut(&id).filter(|f| f.cycled_at == cycled_at && f.fenced_at.is_none())
            else {
                continue;
            };
            f.fenced_at = Some(now);
            let message = format!(
                "{id} could not be powered on by its BMC ({error}) and is off: given up now; a spare takes its place"
            );
            let said = Happening { kind: "machine-given-up", mac: Some(mac), message };
            self.api.store.save_assembly(assembly.clone(), vec![said]).await?;
        }
        Ok(())
    }
}

/// When the machine was last heard from: a heartbeat, or a registration.
pub(super) fn heard_at(s: &Seen) -> u64 {
    s.heartbeat.as_ref().map_or(0, |h| h.at).max(s.record.last_registered)
}
