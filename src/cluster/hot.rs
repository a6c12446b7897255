//! Hot keys: local mirrors of objects owned by other nodes that this node
//! asks for often.
//!
//! Without mirrors, a key everyone wants costs a peer hop on every node for
//! every miss, and its owner serves the whole cluster. With them, a node that
//! sees a key requested at `min_rate` or more keeps a copy in a small area
//! of its own (`fraction` of the capacity, a separate byte-bounded store), so
//! later requests are local hits. The copy's freshness comes from the owner's
//! response (its Age travels with it), so a mirror never outlives the owner's
//! object; moka expires it at the end of that same usable life.
//!
//! Rates are measured, not guessed: each request for a key owned elsewhere
//! bumps a counter in a two-window estimator (see [`Rate`]). The counters
//! live in a moka map keyed by a 64-bit hash of the key (never the key
//! itself, which may be 64 KiB long) and bounded in bytes: the hot area's
//! budget (`cluster.hot.fraction` of the capacity) pays for both, 1/8 of it
//! for the counters ([`TRACKED_KEY_BYTES`] each) and the rest for the
//! mirrors, so tracking many cold keys costs a fixed, counted amount. Two
//! keys whose hashes collide share a counter; the hash is keyed at random
//! per process, so nobody can aim for that.

use crate::cache::store::footprint::CACHE_ENTRY_BYTES;
use crate::cache::store::Store;
use moka::sync::Cache;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::time::Instant;

/// Length of one counting window.
const WINDOW_MS: u64 = 2000;
/// What tracking one key's rate takes: moka's entry and the `Rate` in its `Arc`.
pub const TRACKED_KEY_BYTES: u32 =
    (CACHE_ENTRY_BYTES + std::mem::size_of::<u64>() + 16 + std::mem::size_of::<Rate>()) as u32;
/// The hot area's budget is split: 1/TRACKER_SHARE for rates, the rest for mirrors.
const TRACKER_SHARE: u64 = 8;

pub struct HotKeys {
    /// Request rates by a hash of the key.
    rates: Cache<u64, Arc<Rate>>,
    hasher: RandomState,
    pub store: Arc<Store>,
    min_rate: f64,
    epoch: Instant,
}

/// Requests in the current and the previous window; the estimate slides
/// from one to the other so it does not drop to zero at a window boundary.
pub struct Rate {
    window: AtomicU64,
    current: AtomicU64,
    previous: AtomicU64,
}

impl Rate {
    fn touch(&self, now_ms: u64) -> f64 {
        let window = now_ms / WINDOW_MS;
        let seen = self.window.load(Ordering::Relaxed);
        if window != seen
            && self
                .window
                .compare_exchange(seen, window, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let carried = if window == seen + 1 {
                self.current.load(Ordering::Relaxed)
            } else {
                0
            };
            self.previous.store(carried, Ordering::Relaxed);
            self.current.store(0, Ordering::Relaxed);
        }
        let current = self.current.fetch_add(1, Ordering::Relaxed) + 1;
        let previous = self.previous.load(Ordering::Relaxed);
        let into_window = (now_ms % WINDOW_MS) as f64 / WINDOW_MS as f64;
        let events = current as f64 + previous as f64 * (1.0 - into_window);
        events / (WINDOW_MS as f64 / 1000.0)
    }
}

impl HotKeys {
    /// A hot area of `capacity_bytes` in all (rates and mirrors); mirrors
    /// keep at most `max_variants` variants per URL.
    pub fn new(capacity_bytes: u64, min_rate: f64, max_variants: usize) -> HotKeys {
        let tracker_bytes = capacity_bytes / TRACKER_SHARE;
        let mirror_bytes = capacity_bytes - tracker_bytes;
        HotKeys {
            rates: Cache::builder()
                .max_capacity(tracker_bytes)
                .weigher(|_, _| TRACKED_KEY_BYTES)
                .build(),
            hasher: RandomState::new(),
            store: Arc::new(Store::new(mirror_bytes.max(1)).with_max_variants(max_variants)),
            min_rate,
            epoch: Instant::now(),
        }
    }

    /// Count a request for `key`; true when it is hot enough to mirror.
    pub fn touch(&self, key: &str) -> bool {
        if !self.is_enabled() {
            return false;
        }
        let rate = self.rates.get_with(self.hasher.hash_one(key), || {
            Arc::new(Rate {
                window: AtomicU64::new(0),
                current: AtomicU64::new(0),
                previous: AtomicU64::new(0),
            })
        });
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        rate.touch(now_ms) >= self.min_rate
    }

    pub fn is_enabled(&self) -> bool {
        self.min_rate.is_finite()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_becomes_hot_only_past_the_rate() {
        let hot = HotKeys::new(1 << 20, 5.0, 32);
        // 5/s over a 2 s window needs 10 touches within the window.
        let results: Vec<bool> = (0..12).map(|_| hot.touch("k")).collect();
        assert!(!results[0]);
        assert!(results[11]);
        assert!(!hot.touch("cold"));
    }

    #[test]
    fn tracking_is_bounded_in_bytes_whatever_the_keys() {
        let capacity = 1 << 20;
        let hot = HotKeys::new(capacity, 5.0, 32);
        let long = "k".repeat(60 * 1024);
        for i in 0..2000 {
            hot.touch(&format!("{long}{i}"));
        }
        hot.rates.run_pending_tasks();
        let budget = capacity / TRACKER_SHARE;
        assert!(hot.rates.weighted_size() <= budget);
        let most = budget / u64::from(TRACKED_KEY_BYTES);
        assert!(
            hot.rates.entry_count() <= most,
            "{}",
            hot.rates.entry_count()
        );
        assert!(hot.store.capacity() + budget <= capacity);
    }

    #[test]
    fn nothing_is_tracked_while_mirroring_is_off() {
        let hot = HotKeys::new(0, f64::INFINITY, 32);
        assert!(!hot.touch("k"));
        hot.rates.run_pending_tasks();
        assert_eq!(hot.rates.entry_count(), 0);
    }

    #[test]
    fn the_estimate_slides_across_windows() {
        let rate = Rate {
            window: AtomicU64::new(0),
            current: AtomicU64::new(0),
            previous: AtomicU64::new(0),
        };
        for _ in 0..20 {
            rate.touch(1000);
        }
        // Just after the boundary the previous window still counts almost fully.
        let r = rate.touch(2010);
        assert!(r > 9.0, "{r}");
        // Two windows later, nothing is left of it.
        let r = rate.touch(6010);
        assert!(r < 1.0, "{r}");
    }
}
