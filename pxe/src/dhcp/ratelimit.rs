//! A per-client token bucket, so one chatty or hostile client cannot starve the others.

use std::collections::HashMap;
use std::time::Instant;

use oasis_proto::MacAddr;

/// Most clients tracked at once; past this, the oldest-idle are forgotten first.
const MAX_TRACKED: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Allows each client `burst` messages at once and `per_sec` a second after that.
#[derive(Debug)]
pub struct RateLimiter {
    per_sec: f64,
    burst: f64,
    buckets: HashMap<MacAddr, Bucket>,
}

impl RateLimiter {
    pub fn new(per_sec: u32, burst: u32) -> Self {
        Self { per_sec: f64::from(per_sec), burst: f64::from(burst.max(1)), buckets: HashMap::new() }
    }

    /// True if a message from `mac` at `now` is within its allowance (and takes one token).
    pub fn allow(&mut self, mac: MacAddr, now: Instant) -> bool {
        if self.buckets.len() >= MAX_TRACKED && !self.buckets.contains_key(&mac) {
            self.forget_idle(now);
        }
        let bucket = self.buckets.entry(mac).or_insert(Bucket { tokens: self.burst, last: now });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_sec).min(self.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Forgets clients whose bucket has refilled: they are indistinguishable from new ones.
    fn forget_idle(&mut self, now: Instant) {
        let full_after = self.burst / self.per_sec.max(f64::MIN_POSITIVE);
        self.buckets.retain(|_, b| now.saturating_duration_since(b.last).as_secs_f64() < full_after);
        if self.buckets.len() >= MAX_TRACKED {
            self.buckets.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn allows_a_burst_then_the_steady_rate_per_client() {
        let mut limiter = RateLimiter::new(2, 3);
        let t0 = Instant::now();
        let a = MacAddr([0, 0, 0, 0, 0, 1]);
        let b = MacAddr([0, 0, 0, 0, 0, 2]);
        assert!((0..3).all(|_| limiter.allow(a, t0)));
        assert!(!limiter.allow(a, t0), "burst spent");
        assert!(limiter.allow(b, t0), "other clients are unaffected");
        assert!(limiter.allow(a, t0 + Duration::from_millis(500)), "one token back after 1/rate");
        assert!(!limiter.allow(a, t0 + Duration::from_millis(500)));
    }
}
