//! Fencing a silent control-plane machine through its BMC, as pure decisions (the controller
//! observes, asks [`next`], acts, and records the [`Fence`] in the persisted assembly, so a
//! restarted appliance neither forgets a cycle nor repeats one):
//!
//! 1. silent for `[power] fence_after_secs`: power-cycled once, its next boot from the network;
//! 2. back (a heartbeat) after that: nothing more; the record stays an hour, and a machine that
//!    falls silent again within that hour is not cycled again (a flapping machine is not cycled
//!    in a loop): it waits for `[cluster] replace_after_secs` like a machine without a BMC;
//! 3. not back within `[power] fence_boot_secs` of the cycle: powered off (fenced, so that it
//!    cannot come back half-alive with a member's old data) and given up: the planner replaces
//!    its member with a spare.

use serde::{Deserialize, Serialize};

use crate::config::power::FencePolicy;

/// How long a cycled machine that came back is remembered: no second cycle within it.
pub const ONE_CYCLE_PER_SECS: u64 = 3600;

/// A machine's fencing so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    /// When it was power-cycled (Unix seconds).
    pub cycled_at: u64,
    /// When it heartbeated again after the cycle.
    #[serde(default)]
    pub back_at: Option<u64>,
    /// When it was powered off and given up.
    #[serde(default)]
    pub fenced_at: Option<u64>,
    /// It fell silent again within the hour and was left alone (said once).
    #[serde(default)]
    pub held: bool,
}

impl Fence {
    /// Given up: powered off after it did not come back, and not back since.
    pub fn given_up(&self) -> bool {
        self.fenced_at.is_some() && self.back_at.is_none_or(|back| back < self.fenced_at.unwrap_or(0))
    }
}

/// What the controller knows of the machine now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heard {
    /// It heartbeated within `dead_after`.
    pub alive: bool,
    /// Seconds since it was last heard from.
    pub silent_secs: u64,
}

/// The one thing to do about a machine's fencing now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FenceStep {
    Nothing,
    /// Next boot from the network, then a power cycle; record a new [`Fence`].
    Cycle {
        reason: String,
    },
    /// Back after its cycle: record when.
    Back,
    /// Power off and give it up.
    PowerOff {
        reason: String,
    },
    /// Silent again within the hour of its cycle: left alone; record that it was said.
    Hold {
        reason: String,
    },
    /// The hour is over: forget the record.
    Forget,
}

/// The next fencing step for one control-plane machine with a BMC.
pub fn next(policy: FencePolicy, record: Option<&Fence>, heard: Heard, now: u64) -> FenceStep {
    let (after, boot) = (policy.after.as_secs(), policy.boot.as_secs());
    let Some(fence) = record else {
        if !heard.alive && heard.silent_secs >= after {
            return FenceStep::Cycle {
                reason: format!(
                    "silent for {} s (fence_after_secs {after}): power-cycled once into a network boot",
                    heard.silent_secs
                ),
            };
        }
        return FenceStep::Nothing;
    };
    if heard.alive {
        if fence.back_at.is_none() || fence.fenced_at.is_some_and(|off| fence.back_at.is_some_and(|b| b < off)) {
            return FenceStep::Back;
        }
        if now.saturating_sub(fence.cycled_at) >= ONE_CYCLE_PER_SECS {
            return FenceStep::Forget;
        }
        return FenceStep::Nothing;
    }
    if fence.fenced_at.is_some() {
        return FenceStep::Nothing;
    }
    if fence.back_at.is_some() {
        if now.saturating_sub(fence.cycled_at) >= ONE_CYCLE_PER_SECS {
            return FenceStep::Forget;
        }
        if !fence.held && heard.silent_secs >= after {
            return FenceStep::Hold {
                reason: "silent again within an hour of its power cycle: not cycled again (a flapping machine is not \
                         cycled in a loop); it is given up once silent past replace_after_secs"
                    .to_string(),
            };
        }
        return FenceStep::Nothing;
    }
    if now.saturating_sub(fence.cycled_at) >= boot {
        return FenceStep::PowerOff {
            reason: format!(
                "not back within {boot} s of its power cycle (fence_boot_secs): powered off and given up; a spare \
                 takes its place"
            ),
        };
    }
    FenceStep::Nothing
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const POLICY: FencePolicy = FencePolicy { after: Duration::from_secs(120), boot: Duration::from_secs(600) };

    fn silent(secs: u64) -> Heard {
        Heard { alive: false, silent_secs: secs }
    }
    const ALIVE: Heard = Heard { alive: true, silent_secs: 0 };

    #[test]
    fn a_silent_machine_is_cycled_once_then_powered_off_when_it_does_not_come_back() {
        assert_eq!(next(POLICY, None, silent(60), 1000), FenceStep::Nothing, "dead but not for long");
        assert!(matches!(next(POLICY, None, silent(120), 1000), FenceStep::Cycle { .. }));
        let cycled = Fence { cycled_at: 1000, back_at: None, fenced_at: None, held: false };
        assert_eq!(next(POLICY, Some(&cycled), silent(500), 1500), FenceStep::Nothing, "its boot time");
        assert!(matches!(next(POLICY, Some(&cycled), silent(720), 1600), FenceStep::PowerOff { .. }));
        let fenced = Fence { fenced_at: Some(1600), ..cycled };
        assert!(fenced.given_up());
        assert_eq!(next(POLICY, Some(&fenced), silent(5000), 9000), FenceStep::Nothing, "never cycled again");
        // Someone powers it on: it is back (a spare now), no longer given up.
        assert_eq!(next(POLICY, Some(&fenced), ALIVE, 9000), FenceStep::Back);
        assert!(!Fence { back_at: Some(9000), ..fenced }.given_up());
    }

    #[test]
    fn a_machine_back_from_its_cycle_is_not_cycled_again_within_the_hour() {
        let cycled = Fence { cycled_at: 1000, back_at: None, fenced_at: None, held: false };
        assert_eq!(next(POLICY, Some(&cycled), ALIVE, 1200), FenceStep::Back);
        let back = Fence { back_at: Some(1200), ..cycled };
        assert_eq!(next(POLICY, Some(&back), ALIVE, 1300), FenceStep::Nothing);
        assert!(matches!(next(POLICY, Some(&back), silent(200), 1600), FenceStep::Hold { .. }));
        let held = Fence { held: true, ..back };
        assert_eq!(next(POLICY, Some(&held), silent(900), 2300), FenceStep::Nothing, "said once, then left alone");
        assert!(!held.given_up());
        assert_eq!(next(POLICY, Some(&held), silent(3000), 1000 + ONE_CYCLE_PER_SECS), FenceStep::Forget);
        assert_eq!(next(POLICY, Some(&back), ALIVE, 1000 + ONE_CYCLE_PER_SECS), FenceStep::Forget);
    }
}
