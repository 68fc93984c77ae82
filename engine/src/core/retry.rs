//! Retry delays: exponential backoff, capped, with relative jitter from the injected RNG.

use rand::RngCore;

use crate::definition::RetryPolicy;

/// Delay before the attempt after `failed_attempt` (1-based):
/// `min(initial_delay × backoff^(failed_attempt−1), max_delay)`, scaled by a factor drawn
/// uniformly from `[1 − jitter, 1 + jitter]`. The jitter draw always consumes exactly one `u64`
/// so the RNG stream does not depend on the policy.
pub fn retry_delay_ms(policy: &RetryPolicy, failed_attempt: u32, rng: &mut dyn RngCore) -> u64 {
    assert!(failed_attempt >= 1, "attempts are 1-based");
    let draw = rng.next_u64();
    let exponent = i32::try_from(failed_attempt - 1).unwrap_or(i32::MAX);
    let base = policy.initial_delay.as_millis() as f64 * policy.backoff.powi(exponent);
    let capped = base.min(policy.max_delay.as_millis() as f64);
    // 53 random bits give a uniform float in [0, 1).
    let unit = (draw >> 11) as f64 / (1u64 << 53) as f64;
    let factor = 1.0 + policy.jitter * (2.0 * unit - 1.0);
    let delay = (capped * factor).round();
    debug_assert!(delay.is_finite() && delay >= 0.0);
    delay as u64
}

/// The longest delay [`retry_delay_ms`] can give under `policy`: `max_delay` at full jitter.
/// A backoff re-armed after a restart never waits longer than this.
pub fn max_retry_delay_ms(policy: &RetryPolicy) -> u64 {
    (policy.max_delay.as_millis() as f64 * (1.0 + policy.jitter.max(0.0))).ceil() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::DurationMs;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn policy(jitter: f64) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 10,
            initial_delay: DurationMs(100),
            backoff: 2.0,
            max_delay: DurationMs(1_000),
            jitter,
            non_retryable: vec![],
        }
    }

    #[test]
    fn grows_exponentially_then_caps() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let delays: Vec<u64> = (1..=6)
            .map(|a| retry_delay_ms(&policy(0.0), a, &mut rng))
            .collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1_000, 1_000]);
    }

    #[test]
    fn jitter_stays_in_bounds_and_is_seeded() {
        let mut a = ChaCha8Rng::seed_from_u64(7);
        let mut b = ChaCha8Rng::seed_from_u64(7);
        for attempt in 1..=50 {
            let d = retry_delay_ms(&policy(0.2), attempt % 4 + 1, &mut a);
            let base = [100.0, 200.0, 400.0, 800.0][(attempt % 4) as usize];
            assert!(
                (base * 0.8..=base * 1.2).contains(&(d as f64)),
                "{d} vs {base}"
            );
            assert_eq!(d, retry_delay_ms(&policy(0.2), attempt % 4 + 1, &mut b));
        }
    }
}
