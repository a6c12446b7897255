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
use std::sync::Arc;
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

    pub fn remove(&self, key: &str) {
        self.cache.invalidate(key);
    }

    /// Remove every key starting with `prefix` (variants included, since
    /// their keys extend the plain key).
    pub fn remove_prefix(&self, prefix: &str) {
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
