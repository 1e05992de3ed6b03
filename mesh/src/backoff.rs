//! Exponential backoff with jitter, for anything that retries a remote peer (CA, control plane,
//! node agent). Jitter spreads the retries of many agents that lost the same peer at the same
//! moment, so its return is not met by a synchronized stampede.

use std::time::Duration;

/// Backoff parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackoffPolicy {
    /// First delay.
    pub initial: Duration,
    /// Ceiling for the delay before jitter.
    pub max: Duration,
    /// Each delay is multiplied by a factor drawn from `1 ± jitter` (0.2 = ±20 %).
    pub jitter: f64,
}

impl Default for BackoffPolicy {
    /// 1 s doubling to 150 s, ±20 %: what upstream ztunnel uses towards its CA.
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(150),
            jitter: 0.2,
        }
    }
}

/// The delays of one run of failures; [`Backoff::reset`] after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: BackoffPolicy,
    next: Duration,
}

impl Backoff {
    /// Starts at `policy.initial`.
    pub fn new(policy: BackoffPolicy) -> Self {
        Self {
            policy,
            next: policy.initial,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (base * 2).min(self.policy.max);
        let jitter = self.policy.jitter.clamp(0.0, 1.0);
        base.mul_f64(1.0 + jitter * (2.0 * fastrand::f64() - 1.0))
    }

    /// Back to the initial delay.
    pub fn reset(&mut self) {
        self.next = self.policy.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_within_jitter_and_caps() {
        let policy = BackoffPolicy::default();
        let mut backoff = Backoff::new(policy);
        let mut base = 1.0_f64;
        for _ in 0..12 {
            let d = backoff.next_delay().as_secs_f64();
            assert!(
                d >= base * 0.8 - 1e-9 && d <= base * 1.2 + 1e-9,
                "{d} not within 20% of {base}"
            );
            base = (base * 2.0).min(150.0);
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(1200));
    }
}
