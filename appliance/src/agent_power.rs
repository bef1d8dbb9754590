//! Power for a machine without a BMC, through its own agent: a cycle is a reboot the agent does
//! from inside (services stopped, data disk unmounted, through the firmware, so the machine boots
//! from the network as always), an off is a power-off it does the same way. Both are a
//! [`RebootRequest`] addressed to the machine's current boot, published with its desired state
//! by the controller; the next boot has another key and ignores it, so nothing repeats.
//!
//! What it cannot do is said plainly: power a machine on (nobody is inside to ask; press its
//! button: Wake-on-LAN is not built in), choose its next boot (it boots as its firmware says, the
//! network for oasis machines), or reach a machine that stopped heartbeating.

use std::collections::HashMap;
use std::sync::Mutex;

use oasis_core::registry::{Happening, LastHeartbeat, MachineRecord};
use oasis_power::PowerState;
use oasis_proto::RebootRequest;

use crate::api::Api;
use crate::power::{PowerOp, PowerReport};

/// Heard from within this long, a machine's agent can act (three heartbeats).
const ALIVE_WITHIN_SECS: u64 = 3 * oasis_proto::HEARTBEAT_SECS;

/// The power requests operators made through agents, by machine id.
#[derive(Debug, Default)]
pub struct AgentPower {
    requests: Mutex<HashMap<String, RebootRequest>>,
}

impl AgentPower {
    /// The request for `id`'s boot `key`, if any; a request for an earlier boot goes (it was
    /// done: the machine booted again).
    pub fn request_for(&self, id: &str, key: &str) -> Option<RebootRequest> {
        let mut requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        match requests.get(id) {
            Some(r) if r.boot == key => Some(r.clone()),
            Some(_) => {
                requests.remove(id);
                None
            }
            None => None,
        }
    }

    /// Runs `op` on `record`'s machine through its agent: see the module comment.
    pub fn act(
        &self,
        api: &Api,
        record: &MachineRecord,
        heartbeat: Option<&LastHeartbeat>,
        op: PowerOp,
        now: u64,
    ) -> PowerReport {
        let silence = silence(heartbeat, now);
        let alive = silence.is_none();
        let mut report = PowerReport {
            machine: record.boot_mac,
            id: Some(record.id.clone()),
            bmc: "agent (no BMC)".into(),
            op,
            state: alive.then_some(PowerState::On),
            error: None,
            millis: 0,
        };
        let refused = match op {
            PowerOp::Status => silence.as_deref().map(not_heard),
            PowerOp::On => Some(
                "it has no BMC: oasis cannot power it on; press its power button (Wake-on-LAN is not built in)".into(),
            ),
            PowerOp::Pxe => Some(
                "it has no BMC: its next boot is what its firmware boots first (the network, for a machine oasis \
                 netboots)"
                    .into(),
            ),
            PowerOp::Cycle | PowerOp::Off if !alive => silence.as_deref().map(not_heard),
            PowerOp::Cycle | PowerOp::Off if rebooting(api, record) => {
                Some("a node rollout is rebooting it now: wait for `oasis update status` to move on".into())
            }
            PowerOp::Cycle | PowerOp::Off => None,
        };
        if let Some(error) = refused {
            report.error = Some(error);
            if op != PowerOp::Status {
                api.store.record_event(Happening {
                    kind: "power-failed",
                    mac: Some(record.boot_mac),
                    message: format!(
                        "{} power {op} through its agent (an operator) refused: {}",
                        record.id,
                        report.error.as_deref().unwrap_or("")
                    ),
                });
            }
            return report;
        }
        if op == PowerOp::Status {
            return report;
        }
        let request = RebootRequest {
            // The generation it runs: a reboot through the firmware boots what its script names.
            generation: heartbeat.and_then(|h| h.heartbeat.generation).unwrap_or(0),
            boot: record.wireguard_key.clone(),
            kexec: false,
            power_off: op == PowerOp::Off,
            wipe_data: false,
        };
        self.requests.lock().unwrap_or_else(|e| e.into_inner()).insert(record.id.clone(), request);
        report.state = None;
        let (kind, what) = match op {
            PowerOp::Off => ("power-off", "to power off"),
            _ => ("power-cycle", "to reboot through its firmware"),
        };
        api.store.record_event(Happening {
            kind,
            mac: Some(record.boot_mac),
            message: format!("{} asked through its agent (no BMC) {what} (an operator)", record.id),
        });
        report
    }
}

/// How long the agent whose last heartbeat is `heartbeat` has been silent at `now`, in words
/// (`never heard from`, `not heard from for 40 s`), once too long for it to act; `None` while it
/// is heard.
pub fn silence(heartbeat: Option<&LastHeartbeat>, now: u64) -> Option<String> {
    match heartbeat.map(|h| now.saturating_sub(h.at)) {
        Some(secs) if secs <= ALIVE_WITHIN_SECS => None,
        Some(secs) => Some(format!("not heard from for {secs} s")),
        None => Some("never heard from".into()),
    }
}

fn not_heard(since: &str) -> String {
    format!("{since}: without a BMC its power cannot be read or changed from here; someone at the rack can")
}

/// Whether the desired state published for the machine asks its current boot to reboot (a rollout).
fn rebooting(api: &Api, record: &MachineRecord) -> bool {
    let published = api.desired.borrow();
    published.states.get(&record.id).is_some_and(|(key, state)| {
        *key == record.wireguard_key && state.reboot.as_ref().is_some_and(|r| r.boot == *key)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_for_one_boot_and_goes_once_the_machine_booted_again() {
        let power = AgentPower::default();
        let request =
            RebootRequest { generation: 0, boot: "key-1".into(), kexec: false, power_off: true, wipe_data: false };
        power.requests.lock().unwrap().insert("m1".into(), request.clone());
        assert_eq!(power.request_for("m1", "key-1"), Some(request));
        assert_eq!(power.request_for("m2", "key-1"), None);
        assert_eq!(power.request_for("m1", "key-2"), None, "the next boot is not asked");
        assert!(power.requests.lock().unwrap().is_empty(), "and the request is gone");
    }
}
