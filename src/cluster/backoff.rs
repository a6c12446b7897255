//! Exponential backoff: the one rule every retry in the cluster follows.
//! After `n` failures in a row, wait `base` doubled `n - 1` times, never
//! more than a cap. DNS membership polls, etcd's watch and lease, peers
//! skipped after they fail and join announcements all wait this way; etcd's
//! retries add jitter ([`Backoff`]), so that many sidecars do not retry a
//! recovering etcd in lockstep.

use rand::Rng;
use std::time::Duration;

/// The delay after `failures` failures in a row (counting from 1): `base`,
/// doubled for each failure after the first, at most `cap` (or `base`, if
/// that is larger).
pub fn after(failures: u32, base: Duration, cap: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(31);
    base.saturating_mul(1u32 << doublings).min(cap.max(base))
}

/// A retry loop's backoff, jittered: each delay is 50-100 % of [`after`]'s
/// for the failures so far.
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            failures: 0,
        }
    }

    /// One more failure: how long to wait before the next try.
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let full = after(self.failures, self.base, self.cap);
        full.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
    }

    /// A success: the next failure waits `base` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_per_failure_up_to_the_cap() {
        let delays: Vec<_> = (1..=6).map(|n| after(n, 100 * MS, 1000 * MS)).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000].map(|n| n * MS));
        assert_eq!(
            after(0, 100 * MS, 1000 * MS),
            100 * MS,
            "no failure yet: the base"
        );
        assert_eq!(after(u32::MAX, 100 * MS, 1000 * MS), 1000 * MS);
        assert_eq!(
            after(3, 5000 * MS, 1000 * MS),
            5000 * MS,
            "a base above the cap stays"
        );
    }

    #[test]
    fn jittered_delays_grow_and_reset() {
        let mut b = Backoff::new(100 * MS, 400 * MS);
        let d: Vec<_> = (0..5).map(|_| b.next_delay()).collect();
        assert!(d[0] >= 50 * MS && d[0] <= 100 * MS, "{:?}", d[0]);
        assert!(d[1] >= 100 * MS && d[1] <= 200 * MS, "{:?}", d[1]);
        assert!(d[4] >= 200 * MS && d[4] <= 400 * MS, "{:?}", d[4]);
        b.reset();
        assert!(b.next_delay() <= 100 * MS);
    }
}
