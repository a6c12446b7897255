//! Sizing moka's admission filter for a store weighed in bytes.
//!
//! When the store is full, moka admits a new entry only if its key was
//! asked for more often than the keys it would evict (TinyLFU), counting
//! requests in a frequency sketch. For a cache with a weigher, moka sizes
//! that sketch once, when the cache first reaches half its capacity, from
//! the number of entries then *times* how full it is (moka 0.12,
//! `enable_frequency_sketch`): about a quarter of the entries the full
//! cache will hold. With that few counters most keys share theirs, and the
//! counters are halved every ten counters' worth of requests, so the counts
//! are mostly noise and admission is close to plain LRU: on the Zipf
//! benchmark the store went to the origin 1.36 times as often as the best
//! possible set of keys would, exactly what LRU does.
//!
//! [`SketchSizing`] gets the size right through moka's own rule. When the
//! store first reaches 5 % of its capacity, a background thread adds
//! weightless placeholder entries until the store holds three times as
//! many entries as it will when full (at the mean weight so far), then
//! placeholders weighing enough to bring it to 90 % (the sketch is sized
//! from the count times that fraction; the 10 % left keeps real entries
//! from being evicted meanwhile). It runs moka's maintenance, which
//! enables the sketch at that size, and removes the placeholders.
//!
//! What it costs: the sketch keeps three `u64`s (sixteen 4-bit counters
//! each) per entry of the full store, rounded up to a power of two, so 24
//! to 48 bytes per entry, charged in every entry's weight
//! (`footprint::CACHE_ENTRY_BYTES`); whatever is stored later, it never
//! takes more than 1.2 % of the capacity (it is sized from the
//! placeholders, which are bounded below). The placeholders live for the
//! sizing only: about 550 bytes each, and never more than half the
//! capacity in all (objects under about 2 KB get fewer counters), while the
//! store is 5 % full, so the process stays below what it takes with a full
//! store. They take about 4 µs each to add and remove: for a 256 MiB store
//! of 1 KiB objects, 210,000 placeholders, about 100 MB for 0.8 s on a busy
//! core (a background thread, so no request waits). They never reach the
//! metrics or the handoff.
//!
//! If real entries reach half the capacity before the placeholders are in,
//! moka sizes the sketch its own way and this changes nothing: the
//! admission is then what it was without it, never worse.

use super::Entry;
use moka::sync::Cache;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Placeholder keys start with this; a real key starts with its origin.
const PLACEHOLDER_MARK: char = '\u{1e}';

/// The store's fill at which the sizing starts, in percent: early, so that
/// the placeholders (at most half the capacity) come and go while the store
/// is nearly empty and their memory is reused by the entries that follow,
/// and late enough for the mean weight so far to tell how many entries fit.
const START_AT_PERCENT: u64 = 5;

/// The fill the placeholders bring the store to, in percent.
const FILL_TO_PERCENT: u64 = 90;

/// Counters per entry of the full store, in 16-counter `u64`s (moka's rule
/// for a cache counted in entries is 1). More counters collide less, but
/// moka halves them only every ten counters' worth of requests, so they
/// also remember longer. Misses against the best possible on the tests
/// below (a Zipf run; the same with every key's popularity changed
/// halfway, counting the second half) for 1, 2, 3, 4 and 8: 1.18, 1.11,
/// 1.08, 1.07, 1.07; and 1.20, 1.16, 1.16, 1.16, then 1.96 at 8, which
/// still counted the old favourites when the new ones came. moka as it
/// sizes the sketch: 1.30 and 1.29.
const SKETCH_ENTRIES_PER_ENTRY: u64 = 3;

/// What a placeholder takes while it lives (moka's entry, its key):
/// measured about 550 bytes.
const PLACEHOLDER_BYTES: u64 = 640;

/// The most entries a full store is taken to hold, whatever the mean
/// weight so far suggests (the sketch itself is bounded by the placeholders
/// affordable: at most 1.2 % of the capacity).
const MAX_FULL_STORE_ENTRIES: u64 = 1 << 24;

/// Placeholders expire on their own after this, should the sizing thread
/// stop before removing them.
const PLACEHOLDER_LIFE: Duration = Duration::from_secs(600);

/// Starts the sizing once per store.
#[derive(Default)]
pub struct SketchSizing {
    started: AtomicBool,
    placeholders: Arc<Placeholders>,
    /// The sizing's thread (tests wait for it).
    thread: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// The placeholders in the store while the sizing runs, so that the size
/// gauges leave them out.
#[derive(Default)]
struct Placeholders {
    entries: AtomicU64,
    bytes: AtomicU64,
}

impl SketchSizing {
    /// Called after every insert: one relaxed load until the store is 5 %
    /// full, then the sizing starts on its own thread.
    pub fn after_insert(&self, cache: &Cache<String, Entry>) {
        if self.started.load(Ordering::Relaxed) {
            return;
        }
        let Some(capacity) = cache.policy().max_capacity() else {
            return;
        };
        let start_at = capacity / 100 * START_AT_PERCENT;
        if start_at == 0
            || cache.weighted_size() < start_at
            || self.started.swap(true, Ordering::Relaxed)
        {
            return;
        }
        let cache = cache.clone();
        let placeholders = Arc::clone(&self.placeholders);
        let spawned = std::thread::Builder::new()
            .name("ringside-sketch".into())
            .spawn(move || size_sketch(&cache, capacity, &placeholders));
        match spawned {
            Ok(thread) => *self.thread.lock() = Some(thread),
            Err(e) => {
                log::warn!("admission filter left at moka's size: cannot start a thread: {e}")
            }
        }
    }

    /// `entries` without the placeholders (while the sizing runs).
    pub fn real_entries(&self, entries: u64) -> u64 {
        entries.saturating_sub(self.placeholders.entries.load(Ordering::Relaxed))
    }

    /// `bytes` without the placeholders' weight (while the sizing runs).
    pub fn real_bytes(&self, bytes: u64) -> u64 {
        bytes.saturating_sub(self.placeholders.bytes.load(Ordering::Relaxed))
    }

    /// Whether the sizing has started; if so, wait for it to end.
    #[cfg(test)]
    pub fn wait(&self) -> bool {
        if let Some(thread) = self.thread.lock().take() {
            thread.join().unwrap();
        }
        self.started.load(Ordering::Relaxed)
    }
}

/// The weight of a placeholder entry (its key says it); `None` for a real key.
pub fn placeholder_weight(key: &str) -> Option<u32> {
    let rest = key.strip_prefix(PLACEHOLDER_MARK)?;
    let (_, weight) = rest.rsplit_once(' ')?;
    weight.parse().ok()
}

pub fn is_placeholder(key: &str) -> bool {
    key.starts_with(PLACEHOLDER_MARK)
}

fn placeholder_key(n: u64, weight: u32) -> String {
    format!("{PLACEHOLDER_MARK}sketch {n} {weight}")
}

/// Bring the entry count to a full store's and the fill to 90 %, let moka
/// size its sketch from that, then take the placeholders out again.
fn size_sketch(cache: &Cache<String, Entry>, capacity: u64, placeholders: &Placeholders) {
    let started = Instant::now();
    let entries = cache.entry_count().max(1);
    let weighted = cache.weighted_size().max(1);
    let full_store = ((u128::from(entries) * u128::from(capacity)) / u128::from(weighted))
        .min(u128::from(MAX_FULL_STORE_ENTRIES)) as u64;
    // moka sizes the sketch for entries × fill: count enough entries for
    // three full stores at 90 % fill, with placeholders taking at most half
    // the capacity (tiny objects get fewer counters, about 1.5 per entry).
    let wanted = full_store * SKETCH_ENTRIES_PER_ENTRY * 100 / FILL_TO_PERCENT;
    let affordable = capacity / 2 / PLACEHOLDER_BYTES;
    let weightless = wanted.min(affordable).saturating_sub(entries);
    let filler = weights_to_fill((capacity / 100 * FILL_TO_PERCENT).saturating_sub(weighted));
    let weightless_keys = || (0..weightless).map(|n| placeholder_key(n, 0));
    let filler_keys = || {
        let numbers = weightless..;
        numbers
            .zip(&filler)
            .map(|(n, weight)| placeholder_key(n, *weight))
    };
    let marker = Entry::Variants {
        headers: Arc::new(Vec::new()),
        life: PLACEHOLDER_LIFE,
        variants: Arc::new([]),
    };
    let filler_bytes = filler.iter().map(|w| u64::from(*w)).sum();
    let count = weightless + filler.len() as u64;
    placeholders.entries.store(count, Ordering::Relaxed);
    placeholders.bytes.store(filler_bytes, Ordering::Relaxed);
    for key in weightless_keys().chain(filler_keys()) {
        cache.insert(key, marker.clone());
    }
    // moka's maintenance sizes the sketch here. The filler goes first, as
    // real entries could only be evicted while it holds 90 % of the room.
    cache.run_pending_tasks();
    for key in filler_keys().chain(weightless_keys()) {
        cache.invalidate(&key);
    }
    cache.run_pending_tasks();
    placeholders.entries.store(0, Ordering::Relaxed);
    placeholders.bytes.store(0, Ordering::Relaxed);
    log::info!(
        "admission filter sized for {} keys ({full_store} entries fit) in {} ms",
        (entries + weightless) * FILL_TO_PERCENT / 100,
        started.elapsed().as_millis()
    );
}

/// `bytes` as weights of at most `u32::MAX` each (what moka weighs in).
fn weights_to_fill(mut bytes: u64) -> Vec<u32> {
    let mut weights = Vec::new();
    while bytes > 0 {
        let weight = u32::try_from(bytes).unwrap_or(u32::MAX);
        weights.push(weight);
        bytes -= u64::from(weight);
    }
    weights
}

#[cfg(test)]
mod tests {
    use super::super::{CachedObject, Store};
    use super::*;
    use std::collections::HashMap;

    fn object() -> Arc<CachedObject> {
        let header = pingora::http::ResponseHeader::build(200, None).unwrap();
        let body = bytes::Bytes::from_static(&[b'x'; 1024]);
        Arc::new(CachedObject::fresh_for_tests(header, body))
    }

    /// Zipf (s = 1) key ranks from a fixed seed.
    fn zipf_sequence(keys: usize, requests: usize) -> Vec<usize> {
        let cumulative: Vec<f64> = (1..=keys)
            .scan(0.0, |sum, rank| {
                *sum += 1.0 / rank as f64;
                Some(*sum)
            })
            .collect();
        let total = cumulative[keys - 1];
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        (0..requests)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let u = (state >> 11) as f64 / (1u64 << 53) as f64 * total;
                cumulative.partition_point(|c| *c < u)
            })
            .collect()
    }

    /// Misses if the store held, from the start, the keys asked for most.
    fn best_possible_misses(sequence: &[usize], fits: usize) -> usize {
        let mut counts: HashMap<usize, usize> = HashMap::new();
        for key in sequence {
            *counts.entry(*key).or_default() += 1;
        }
        let mut by_count: Vec<usize> = counts.into_values().collect();
        by_count.sort_unstable_by(|a, b| b.cmp(a));
        let kept = fits.min(by_count.len());
        kept + by_count[kept..].iter().sum::<usize>()
    }

    /// A store that holds `fits` of the test's objects.
    fn store_for(fits: u64) -> Store {
        let probe = Store::new(1 << 30);
        probe.insert("https://o/items/00000", None, object());
        probe.run_pending_tasks();
        Store::new(probe.weighted_bytes() * fits)
    }

    /// Ask `store` for each key of `ranks` in turn, storing it on a miss
    /// as a fill would; returns the misses.
    fn misses(store: &Store, ranks: &[usize]) -> usize {
        let mut misses = 0;
        for rank in ranks {
            let key = format!("https://o/items/{rank:05}");
            if store.get(&key).is_some() {
                continue;
            }
            misses += 1;
            store.insert(&key, None, object());
            // Wait for the sizing once it starts, so that every run is the same.
            store.sketch.wait();
        }
        misses
    }

    /// `misses` on `sequence` are fewer than `limit` times the best possible.
    fn assert_near_best(misses: usize, sequence: &[usize], limit: f64) {
        let best = best_possible_misses(sequence, FITS as usize);
        let ratio = misses as f64 / best as f64;
        assert!(
            ratio < limit,
            "{misses} misses against {best} at best: {ratio:.3}"
        );
    }

    const KEYS: usize = 20_000;
    const FITS: u64 = 1000;

    fn heavy() -> parking_lot::MutexGuard<'static, ()> {
        let lock = &super::super::ALLOCATION_HEAVY_TESTS;
        lock.lock()
    }

    #[test]
    fn a_full_store_keeps_the_keys_asked_for_most() {
        let _heavy = heavy();
        let store = store_for(FITS);
        let sequence = zipf_sequence(KEYS, 150_000);
        let misses = misses(&store, &sequence);
        assert!(store.sketch.wait(), "the admission filter was sized");
        // Without the sizing: 1.30.
        assert_near_best(misses, &sequence, 1.15);
    }

    #[test]
    fn a_full_store_follows_a_change_in_what_is_asked_for() {
        let _heavy = heavy();
        let store = store_for(FITS);
        let before = zipf_sequence(KEYS, 75_000);
        // The same popularity over other keys: yesterday's favourites cold.
        let after: Vec<usize> = zipf_sequence(KEYS, 75_000)
            .iter()
            .map(|rank| (rank + KEYS / 4) % KEYS)
            .collect();
        misses(&store, &before);
        let misses = misses(&store, &after);
        // Without the sizing: 1.29; with a sketch that remembers too long: 1.96.
        assert_near_best(misses, &after, 1.22);
    }

    #[test]
    fn placeholder_keys_carry_their_weight() {
        assert_eq!(placeholder_weight(&placeholder_key(7, 0)), Some(0));
        assert_eq!(
            placeholder_weight(&placeholder_key(8, u32::MAX)),
            Some(u32::MAX)
        );
        assert!(is_placeholder(&placeholder_key(1, 5)));
        assert_eq!(placeholder_weight("https://api.example/items/1 5"), None);
        assert!(!is_placeholder("https://api.example/items/1"));
    }
}
