//! `--max-rate`: one token bucket per WebSocket. Pure arithmetic on the loop's `now`.

use std::time::Instant;

use crate::config::RateLimit;

/// Tokens left and when they were last refilled. Starts full (a burst is allowed at once).
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokenBucket {
    tokens: f32,
    refilled: Instant,
}

impl TokenBucket {
    pub(crate) fn new(now: Instant) -> Self {
        TokenBucket {
            tokens: f32::MAX,
            refilled: now,
        }
    }

    /// Takes one token for a message arriving at `now`. False when the bucket is empty: the
    /// message is over the rate.
    pub(crate) fn take(&mut self, now: Instant, limit: &RateLimit) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        let tokens =
            ((self.tokens as f64).min(limit.burst) + elapsed * limit.per_second).min(limit.burst);
        if tokens >= 1.0 {
            self.tokens = (tokens - 1.0) as f32;
            true
        } else {
            self.tokens = tokens as f32;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OverRate;
    use std::time::Duration;

    fn limit(per_second: f64, burst: f64) -> RateLimit {
        RateLimit {
            per_second,
            burst,
            over: OverRate::Drop,
        }
    }

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let start = Instant::now();
        let limit = limit(10.0, 3.0);
        let mut bucket = TokenBucket::new(start);
        assert!(bucket.take(start, &limit));
        assert!(bucket.take(start, &limit));
        assert!(bucket.take(start, &limit));
        assert!(!bucket.take(start, &limit), "the burst is spent");
        // 10 per second: one token every 100 ms.
        assert!(!bucket.take(start + Duration::from_millis(50), &limit));
        assert!(bucket.take(start + Duration::from_millis(110), &limit));
        assert!(!bucket.take(start + Duration::from_millis(120), &limit));
    }

    #[test]
    fn a_quiet_spell_refills_no_more_than_the_burst() {
        let start = Instant::now();
        let limit = limit(100.0, 2.0);
        let mut bucket = TokenBucket::new(start);
        let later = start + Duration::from_secs(60);
        assert!(bucket.take(later, &limit));
        assert!(bucket.take(later, &limit));
        assert!(!bucket.take(later, &limit));
    }
}
