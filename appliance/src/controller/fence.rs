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
use oasis_power::PowerState;

impl<E: Etcd, C: Clock> Controller<E, C> {
    /// One fencing step for each member's machine that needs one (see the module comment).
    /// Machines `in_rollout` are the rollout's: a reboot there is silent on purpose, and one that
    /// never comes back is the rollout's to fail and power-cycle.
    pub(super) async fn fence(
        &self,
        seen: &[Seen],
        assembly: &mut Assembly,
        in_rollout: &[oasis_proto::MacAddr],
        now: u64,
    ) -> Result<(), ControllerError> {
        let power = &self.api.power;
        let Some(policy) = power.fence_policy() else { return Ok(()) };
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
                    let why = format!("fencing: {reason}");
                    // The network boot first: a machine that hung in its OS starts afresh from the
                    // appliance. A BMC that refuses it still gets the cycle.
                    power.act(&self.api.store, mac, Some(id.clone()), PowerOp::Pxe, &why).await;
                    let cycle = power.act(&self.api.store, mac, Some(id.clone()), PowerOp::Cycle, &why).await;
                    if let Some(error) = cycle.error {
                        // A machine its BMC could not power on and that reads off will not come
                        // back by itself: waiting `fence_boot_secs` for it would only keep the
                        // cluster short of a voter for longer.
                        let status = power.act(&self.api.store, mac, Some(id.clone()), PowerOp::Status, &why).await;
                        if status.state == Some(PowerState::Off) {
                            if let Some(f) = assembly.fencing.get_mut(id) {
                                f.fenced_at = Some(now);
                            }
                            let message = format!(
                                "{id} could not be powered on by its BMC ({error}) and is off: given up now; a spare \
                                 takes its place"
                            );
                            let said = happening("machine-given-up", message);
                            self.api.store.save_assembly(assembly.clone(), vec![said]).await?;
                        }
                    }
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
