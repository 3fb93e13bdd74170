//! Throttling failed authentications (issue #10): a token bucket per source
//! address and per access key, consulted *before* the store lookup, the SK's
//! decryption and the HMAC, and charged only by failures.
//!
//! Not governor's keyed limiter: governor charges on every check and cannot
//! say "would allow" without charging, and here only failures may cost.
//! Kept in memory per replica: it is a brake on hammering, not a security
//! state (that is the per-key lock, stored and shared by replicas).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Most keys tracked; beyond, buckets that have refilled are forgotten.
const MAX_KEYS: usize = 100_000;

struct Bucket {
    tokens: f64,
    at: Instant,
}

pub struct FailureThrottle {
    capacity: f64,
    per_sec: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl FailureThrottle {
    /// `per_minute` failures a minute, with a burst of the same number.
    pub fn new(per_minute: u32) -> Self {
        let capacity = f64::from(per_minute.max(1));
        FailureThrottle {
            capacity,
            per_sec: capacity / 60.0,
            buckets: Mutex::default(),
        }
    }

    fn refill(&self, b: &mut Bucket, now: Instant) {
        let secs = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + secs * self.per_sec).min(self.capacity);
        b.at = now;
    }

    /// Whether another attempt under `key` is allowed (charges nothing).
    pub fn allows(&self, key: &str, now: Instant) -> bool {
        let mut map = self.buckets.lock().expect("throttle lock");
        match map.get_mut(key) {
            None => true,
            Some(b) => {
                self.refill(b, now);
                b.tokens >= 1.0
            }
        }
    }

    /// Charges one failure to `key`.
    pub fn fail(&self, key: &str, now: Instant) {
        let mut map = self.buckets.lock().expect("throttle lock");
        if map.len() >= MAX_KEYS && !map.contains_key(key) {
            let cap = self.capacity;
            let per_sec = self.per_sec;
            map.retain(|_, b| {
                let secs = now.saturating_duration_since(b.at).as_secs_f64();
                b.tokens + secs * per_sec < cap
            });
            if map.len() >= MAX_KEYS {
                return;
            }
        }
        let b = map.entry(key.to_owned()).or_insert(Bucket {
            tokens: self.capacity,
            at: now,
        });
        self.refill(b, now);
        b.tokens = (b.tokens - 1.0).max(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn failures_beyond_the_burst_are_refused_until_refilled() {
        let t = FailureThrottle::new(3);
        let now = Instant::now();
        for _ in 0..3 {
            assert!(t.allows("ip:a", now));
            t.fail("ip:a", now);
        }
        assert!(!t.allows("ip:a", now));
        assert!(t.allows("ip:b", now), "other keys are not charged");
        // 3 a minute: one more after 20 s.
        assert!(!t.allows("ip:a", now + Duration::from_secs(19)));
        assert!(t.allows("ip:a", now + Duration::from_secs(21)));
    }

    #[test]
    fn checking_costs_nothing() {
        let t = FailureThrottle::new(1);
        let now = Instant::now();
        for _ in 0..10 {
            assert!(t.allows("k", now));
        }
        t.fail("k", now);
        assert!(!t.allows("k", now));
    }
}
