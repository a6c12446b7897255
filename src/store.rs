//! The cache store: stored responses in moka, bounded by bytes.
//!
//! Every entry is weighed as key + headers + body + a fixed overhead, and
//! moka's `max_capacity` is the configured byte capacity, so the sum of
//! weights is the bound (moka applies it on its maintenance runs; the store
//! runs maintenance after every insert so the bound holds at all times, not
//! eventually). Each entry expires at the end of its *usable life*: its
//! freshness plus the longest window in which a stale copy may still serve
//! (stale-while-revalidate, stale-if-error, or revalidation when it carries
//! validators). Expiry is per entry, through moka's `Expiry`.
//!
//! Removals win over fills that were already under way: a fill takes an
//! [`Epoch`] before it fetches, and [`Store::insert_fetched`] refuses an
//! object fetched before a later removal of its key (a write's invalidation,
//! a purge), so a response read before the write cannot come back after it.
//! See [`Removals`] for how that stays bounded.
//!
//! `Vary` is handled with two kinds of entries under one cache: the plain key
//! holds either the object itself or a [`Entry::Variants`] marker listing the
//! request headers the origin varies on; the object then lives under the
//! variant key (plain key + a fingerprint of those request headers).

use crate::metrics;
use bytes::Bytes;
use http::HeaderName;
use moka::notification::RemovalCause;
use moka::sync::Cache;
use moka::Expiry;
use pingora::http::ResponseHeader;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// A stored response with everything needed to judge and serve it.
#[derive(Debug)]
pub struct CachedObject {
    /// Status and end-to-end headers as the origin sent them (no hop-by-hop
    /// headers, no Age: Age is computed when served).
    pub header: ResponseHeader,
    pub body: Bytes,
    /// Age the response already had when it arrived (RFC 9111 §4.2.3).
    pub initial_age: Duration,
    /// When the response arrived, on the monotonic clock.
    pub received_at: Instant,
    /// When the response arrived, on the wall clock (for logs and Date checks).
    pub received_wall: SystemTime,
    /// How long it is fresh, counted from its age zero.
    pub freshness: Duration,
    /// How long after freshness a stale copy may serve while revalidating.
    pub stale_while_revalidate: Duration,
    /// How long after freshness a stale copy may serve when the origin fails.
    pub stale_if_error: Duration,
    /// How long after freshness the entry is kept for conditional revalidation
    /// (zero when it has no ETag or Last-Modified).
    pub revalidation_window: Duration,
    /// Request headers the origin varies on (empty: none).
    pub vary: Vec<HeaderName>,
    /// Fingerprint of the request's values for `vary`: which variant this is.
    pub vary_fingerprint: u64,
}

impl CachedObject {
    /// The response's current age (RFC 9111 §4.2.3): initial age plus time resident here.
    pub fn age(&self, now: Instant) -> Duration {
        self.initial_age + now.saturating_duration_since(self.received_at)
    }

    pub fn is_fresh(&self, now: Instant) -> bool {
        self.age(now) < self.freshness
    }

    /// How far past freshness it is (zero while fresh).
    pub fn staleness(&self, now: Instant) -> Duration {
        self.age(now).saturating_sub(self.freshness)
    }

    /// Time from arrival until nothing can use it any more.
    fn usable_life(&self) -> Duration {
        let after_fresh = self
            .stale_while_revalidate
            .max(self.stale_if_error)
            .max(self.revalidation_window);
        (self.freshness + after_fresh)
            .saturating_sub(self.initial_age)
            .min(MAX_LIFE)
    }

    fn weight(&self, key: &str) -> u64 {
        let headers: usize = self
            .header
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum();
        (key.len() + headers + self.body.len() + ENTRY_OVERHEAD) as u64
    }
}

/// Bookkeeping per entry that is not in its bytes: moka's node, our struct, Arcs.
const ENTRY_OVERHEAD: usize = 256;
/// moka panics on expirations past 1000 years; nothing useful lives a year.
const MAX_LIFE: Duration = Duration::from_secs(365 * 24 * 3600);

/// What a key maps to.
#[derive(Debug, Clone)]
pub enum Entry {
    Object(Arc<CachedObject>),
    /// The origin varies this resource on these request headers; look up the
    /// variant key instead. `life` matches the variant that set it.
    Variants {
        headers: Arc<Vec<HeaderName>>,
        life: Duration,
    },
}

impl Entry {
    fn weight(&self, key: &str) -> u32 {
        let w = match self {
            Entry::Object(o) => o.weight(key),
            Entry::Variants { headers, .. } => {
                (key.len()
                    + ENTRY_OVERHEAD
                    + headers.iter().map(|h| h.as_str().len()).sum::<usize>())
                    as u64
            }
        };
        u32::try_from(w).unwrap_or(u32::MAX)
    }

    fn life(&self) -> Duration {
        match self {
            Entry::Object(o) => o.usable_life(),
            Entry::Variants { life, .. } => *life,
        }
    }
}

struct UsableLife;

impl Expiry<String, Entry> for UsableLife {
    fn expire_after_create(&self, _: &String, value: &Entry, _: Instant) -> Option<Duration> {
        Some(value.life())
    }

    fn expire_after_update(
        &self,
        _: &String,
        value: &Entry,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.life())
    }
}

/// The byte-bounded cache of responses.
pub struct Store {
    cache: Cache<String, Entry>,
    capacity: u64,
    removals: Mutex<Removals>,
}

/// A point in the order of removals, taken by a fill before it fetches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Epoch(u64);

/// Removal epochs are one sequence for the whole process, so one epoch taken
/// at a fill's start holds for whichever store the fill ends up using.
static EPOCH: AtomicU64 = AtomicU64::new(1);

impl Epoch {
    pub fn now() -> Epoch {
        Epoch(EPOCH.load(Ordering::SeqCst))
    }

    fn next() -> Epoch {
        Epoch(EPOCH.fetch_add(1, Ordering::SeqCst) + 1)
    }
}

/// The most recent removals, so that a fill can tell whether its key was
/// removed after it started fetching. Bounded: the oldest records are
/// forgotten, and `forgotten` remembers the newest epoch forgotten, so a
/// fill older than that cannot prove its key was not removed and does not
/// store (it still answers its clients). Never wrong, at worst one refetch.
struct Removals {
    /// By a hash of the key, so that a record costs the same for any key
    /// length (a collision only makes a fill not store: harmless).
    keys: HashMap<u64, Epoch>,
    prefixes: Vec<(String, Epoch)>,
    order: VecDeque<u64>,
    forgotten: Epoch,
    hasher: std::collections::hash_map::RandomState,
}

/// How many removed keys (and prefixes) are remembered: about 100 KiB.
const REMEMBERED_REMOVALS: usize = 4096;
const REMEMBERED_PREFIX_REMOVALS: usize = 64;

impl Removals {
    fn new() -> Removals {
        Removals {
            keys: HashMap::new(),
            prefixes: Vec::new(),
            order: VecDeque::new(),
            forgotten: Epoch(0),
            hasher: Default::default(),
        }
    }

    fn record_key(&mut self, key: &str) {
        let epoch = Epoch::next();
        let hash = self.hasher.hash_one(key);
        if self.keys.insert(hash, epoch).is_none() {
            self.order.push_back(hash);
        }
        while self.order.len() > REMEMBERED_REMOVALS {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(epoch) = self.keys.remove(&oldest) {
                self.forgotten = self.forgotten.max(epoch);
            }
        }
    }

    fn record_prefix(&mut self, prefix: &str) {
        self.prefixes.push((prefix.to_owned(), Epoch::next()));
        if self.prefixes.len() > REMEMBERED_PREFIX_REMOVALS {
            let (_, epoch) = self.prefixes.remove(0);
            self.forgotten = self.forgotten.max(epoch);
        }
    }

    /// Whether `key` may have been removed after `since`.
    fn removed_since(&self, key: &str, since: Epoch) -> bool {
        since < self.forgotten
            || self
                .keys
                .get(&self.hasher.hash_one(key))
                .is_some_and(|e| *e > since)
            || self
                .prefixes
                .iter()
                .any(|(p, e)| *e > since && key.starts_with(p.as_str()))
    }
}

impl Store {
    pub fn new(capacity_bytes: u64) -> Store {
        let cache = Cache::builder()
            .max_capacity(capacity_bytes)
            .weigher(|key: &String, entry: &Entry| entry.weight(key))
            .expire_after(UsableLife)
            .eviction_listener(|_key, _entry, cause| {
                metrics::observe_eviction(match cause {
                    RemovalCause::Size => "size",
                    RemovalCause::Expired => "expired",
                    RemovalCause::Replaced => "replaced",
                    RemovalCause::Explicit => "explicit",
                })
            })
            .support_invalidation_closures()
            .build();
        Store {
            cache,
            capacity: capacity_bytes,
            removals: Mutex::new(Removals::new()),
        }
    }

    pub fn get(&self, key: &str) -> Option<Entry> {
        self.cache.get(key)
    }

    /// Store `object` under `key` (its plain key); for a varying response,
    /// `variant_key` is where the object goes and `key` gets the marker.
    pub fn insert(&self, key: &str, variant_key: Option<String>, object: Arc<CachedObject>) {
        match variant_key {
            None => self.cache.insert(key.to_owned(), Entry::Object(object)),
            Some(variant_key) => {
                let marker = Entry::Variants {
                    headers: Arc::new(object.vary.clone()),
                    life: object.usable_life(),
                };
                self.cache.insert(key.to_owned(), marker);
                self.cache.insert(variant_key, Entry::Object(object));
            }
        }
        // Apply the byte bound now rather than at moka's next maintenance.
        self.cache.run_pending_tasks();
    }

    /// Store what a fill fetched, unless its key (or the variant's) was
    /// removed after `since`, the epoch the fill took before fetching.
    /// Returns whether it was stored.
    pub fn insert_fetched(
        &self,
        since: Epoch,
        key: &str,
        variant_key: Option<String>,
        object: Arc<CachedObject>,
    ) -> bool {
        let removals = self.removals();
        let removed = removals.removed_since(key, since)
            || variant_key
                .as_deref()
                .is_some_and(|v| removals.removed_since(v, since));
        if !removed {
            // Under the lock: a removal cannot fall between the check and the insert.
            self.insert(key, variant_key, object);
        }
        !removed
    }

    pub fn remove(&self, key: &str) {
        let mut removals = self.removals();
        removals.record_key(key);
        self.cache.invalidate(key);
    }

    fn removals(&self) -> std::sync::MutexGuard<'_, Removals> {
        self.removals.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remove every key starting with `prefix` (variants included, since
    /// their keys extend the plain key).
    pub fn remove_prefix(&self, prefix: &str) {
        self.removals().record_prefix(prefix);
        let prefix = prefix.to_owned();
        if let Err(e) = self
            .cache
            .invalidate_entries_if(move |key, _| key.starts_with(&prefix))
        {
            log::error!("prefix invalidation failed: {e}");
        }
        self.cache.run_pending_tasks();
    }

    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    pub fn weighted_bytes(&self) -> u64 {
        self.cache.weighted_size()
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Apply moka's pending work now (evictions, expiries, counts).
    pub fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks();
    }

    /// Copy the store's size into the gauges (called before each scrape).
    pub fn update_gauges(&self) {
        self.cache.run_pending_tasks();
        metrics::CACHE_ENTRIES.set(self.entry_count() as i64);
        metrics::CACHE_BYTES.set(self.weighted_bytes() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removal_after_a_fill_started_wins() {
        let mut removals = Removals::new();
        let before = Epoch::now();
        removals.record_key("k");
        let after = Epoch::now();
        assert!(removals.removed_since("k", before));
        assert!(
            !removals.removed_since("k", after),
            "fetched after the removal"
        );
        assert!(!removals.removed_since("other", before));
        removals.record_prefix("/items/");
        assert!(removals.removed_since("/items/1", after));
        assert!(!removals.removed_since("/users/1", after));
    }

    #[test]
    fn forgetting_old_removals_makes_old_fills_not_store() {
        let mut removals = Removals::new();
        let old_fill = Epoch::now();
        for i in 0..=REMEMBERED_REMOVALS {
            removals.record_key(&format!("k{i}"));
        }
        assert_eq!(removals.keys.len(), REMEMBERED_REMOVALS);
        // k0's record is gone: a fill as old as it can no longer prove it is
        // clean, so it does not store, whatever its key.
        assert!(removals.removed_since("k0", old_fill));
        assert!(removals.removed_since("unrelated", old_fill));
        assert!(!removals.removed_since("unrelated", Epoch::now()));
    }
}
