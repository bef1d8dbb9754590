//! A cap on log lines per second for paths a flood can reach (style rule 14). What is not logged
//! is still counted in [`crate::metrics::Metrics`]; the limiter only says how many lines it held
//! back, once, when the next second opens.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Allows at most `per_second` lines in each one-second window.
#[derive(Debug)]
pub struct LogLimit {
    /// The service whose lines these are (`tftp`, `dhcp`), for the line about suppressed ones.
    service: &'static str,
    per_second: u32,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    window_start: Instant,
    used: u32,
    suppressed: u64,
}

impl LogLimit {
    pub fn new(service: &'static str, per_second: u32) -> Self {
        Self { service, per_second, state: Mutex::new(State { window_start: Instant::now(), used: 0, suppressed: 0 }) }
    }

    /// True when the caller may log a line now.
    pub fn allow(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        if now.duration_since(state.window_start) >= Duration::from_secs(1) {
            if state.suppressed > 0 {
                tracing::warn!(
                    suppressed = state.suppressed,
                    "{}: log lines suppressed by the rate limit",
                    self.service
                );
            }
            *state = State { window_start: now, used: 0, suppressed: 0 };
        }
        if state.used < self.per_second {
            state.used += 1;
            true
        } else {
            state.suppressed += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_lines_per_window() {
        let limit = LogLimit::new("test", 3);
        let allowed = (0..100).filter(|_| limit.allow()).count();
        // All 100 calls take far less than a second, except on a badly stalled machine, where a
        // new window may open once more.
        assert!((3..=6).contains(&allowed), "{allowed}");
    }
}
