//! The cache store: stored responses in moka, bounded by bytes.
//!
//! Every entry is weighed at what it really takes in memory (key, header
//! map, header text, body, the object and moka's own bookkeeping: see
//! [`footprint`]; a tiny object weighs about 1.5 KB, measured within 10 % of
//! what it allocates), and moka's `max_capacity` is the configured byte
//! capacity, so the sum of weights is the bound (moka applies it on its
//! maintenance runs; the store runs maintenance after every insert so the
//! bound holds at all times, not eventually). Each entry expires at the end of its *usable life*: its
//! freshness plus the longest window in which a stale copy may still serve
//! (stale-while-revalidate, stale-if-error, or revalidation when it carries
//! validators). Expiry is per entry, through moka's `Expiry`.
//!
//! Removals win over fills that were already under way: a fill takes an
//! [`Epoch`] before it fetches, and [`Store::insert_fetched`] refuses an
//! object fetched before a later removal of its key (a write's invalidation,
//! a purge), so a response read before the write cannot come back after it.
//! Removals are by URL: a write or purge removes the URL's key and every
//! key derived from it (variants, header-keyed copies), found by index
//! ([`families`]), and a fill of any of them that began before refuses to
//! store. See [`Removals`] for how that record stays bounded.
//!
//! `Vary` is handled with two kinds of entries under one cache: the plain key
//! holds either the object itself or a [`Entry::Variants`] marker listing the
//! request headers the origin varies on; the object then lives under the
//! variant key (plain key + a fingerprint of those request headers). The
//! marker lists the variants stored, and a URL keeps at most
//! `cache.max_variants` of them (see [`Store::insert`]), so a header with
//! ever-new values cannot crowd other URLs out of the cache.

mod admission;
mod families;
pub mod footprint;
mod object;
use crate::cache::keys;
use crate::metrics;
use http::HeaderName;
use moka::notification::RemovalCause;
use moka::ops::compute::Op;
use moka::sync::Cache;
use moka::Expiry;
pub use object::{ensure_date, has_body, CachedObject};
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Held by tests that fill stores by the thousand and by the one that
/// counts what an entry allocates: moka frees a store's memory later, on
/// whichever thread comes by, and those frees would blur the count.
#[cfg(test)]
pub(crate) static ALLOCATION_HEAVY_TESTS: Mutex<()> = Mutex::new(());

/// What a key maps to.
#[derive(Debug, Clone)]
pub enum Entry {
    Object(Arc<CachedObject>),
    /// The origin varies this resource on these request headers; look up the
    /// variant key instead. `life` matches the variant that set it.
    /// `variants` are the fingerprints of the variants stored, oldest first:
    /// at most the store's `max_variants` (see [`Store::insert`]).
    Variants {
        headers: Arc<Vec<HeaderName>>,
        life: Duration,
        variants: Arc<[u64]>,
    },
}

impl Entry {
    /// What the entry takes in memory, in bytes (see `footprint`).
    fn weight(&self, key: &str) -> u32 {
        let bytes = match self {
            Entry::Object(o) => footprint::object_weight(key, o),
            Entry::Variants {
                headers, variants, ..
            } => footprint::marker_weight(key, headers, variants.len()),
        };
        let listed = match keys::is_url(key) {
            true => 0,
            // Its records in the families index (see `families`): two at most.
            false => 2 * (key.len() + families::RECORD_BYTES),
        };
        u32::try_from(bytes + listed).unwrap_or(u32::MAX)
    }

    fn life(&self) -> Duration {
        match self {
            Entry::Object(o) => o.usable_life(),
            Entry::Variants { life, .. } => *life,
        }
    }
}

struct UsableLife;

// moka keeps its own clock, std's: entries expire in real time, which a
// paused test clock does not move (the freshness checks do follow it).
#[allow(clippy::disallowed_types)]
impl Expiry<String, Entry> for UsableLife {
    fn expire_after_create(
        &self,
        _: &String,
        value: &Entry,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.life())
    }

    fn expire_after_update(
        &self,
        _: &String,
        value: &Entry,
        _: std::time::Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.life())
    }
}

/// The byte-bounded cache of responses.
pub struct Store {
    cache: Cache<String, Entry>,
    /// Variants kept per URL (`cache.max_variants`).
    max_variants: usize,
    removals: Mutex<Removals>,
    /// The keys derived from each URL, so that removing a URL finds them.
    families: families::Families,
    /// Sizes moka's admission filter once the store fills (see `admission`).
    sketch: admission::SketchSizing,
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

    /// A removal of `url` (a URL's key: see `keys::url_of`).
    fn record_url(&mut self, url: &str) {
        let epoch = Epoch::next();
        let hash = self.hasher.hash_one(url);
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

    /// Whether `key` (or its URL) may have been removed after `since`.
    fn removed_since(&self, key: &str, since: Epoch) -> bool {
        since < self.forgotten
            || self
                .keys
                .get(&self.hasher.hash_one(keys::url_of(key)))
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
            .weigher(|key: &String, entry: &Entry| {
                admission::placeholder_weight(key).unwrap_or_else(|| entry.weight(key))
            })
            .expire_after(UsableLife)
            .eviction_listener(|key, _entry, cause| {
                if admission::is_placeholder(&key) {
                    return;
                }
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
            max_variants: crate::config::DEFAULT_MAX_VARIANTS,
            removals: Mutex::new(Removals::new()),
            families: Default::default(),
            sketch: admission::SketchSizing::default(),
        }
    }

    /// The same store keeping at most `max` variants per URL (at least one).
    pub fn with_max_variants(mut self, max: usize) -> Store {
        self.max_variants = max.max(1);
        self
    }

    /// The entry under `key`; the lookup counts as a request for `key` in
    /// the admission filter (see `admission`).
    pub fn get(&self, key: &str) -> Option<Entry> {
        self.cache.get(key)
    }

    /// The entry under `key`, without counting a miss as a request for it:
    /// for lookups that are not a client asking (a fill checking whether
    /// another stored it meanwhile), or for keys this store does not own.
    pub fn get_uncounted(&self, key: &str) -> Option<Entry> {
        if self.cache.contains_key(key) {
            self.cache.get(key)
        } else {
            None
        }
    }

    /// Store `object` under `key` (its plain key); for a varying response,
    /// `variant_key` is where the object goes and `key` gets the marker.
    ///
    /// Variants are bounded per URL: past `max_variants`, a new variant
    /// replaces the oldest one stored. (Not storing it instead would let
    /// whoever filled the slots first, say with random header values, keep
    /// every later variant out until they expire; replacing the oldest lets
    /// the variants clients use come back on their next miss, and either way
    /// one URL never holds more than its bound.) Variants a marker no longer
    /// lists, because the origin now varies on other headers or not at all,
    /// are removed with it.
    pub fn insert(&self, key: &str, variant_key: Option<String>, object: Arc<CachedObject>) {
        let dropped = match variant_key {
            None => self.put_plain(key, Entry::Object(object)),
            Some(variant_key) => {
                let dropped = self.track_variant(key, &object);
                self.cache
                    .insert(variant_key.clone(), Entry::Object(object));
                self.families.add(&variant_key, &self.cache);
                dropped
            }
        };
        // Listed once stored: a removal of the URL that finds it not listed
        // yet cannot have found it stored either.
        self.families.add(key, &self.cache);
        if !dropped.is_empty() {
            metrics::VARIANTS_REPLACED.inc_by(dropped.len() as u64);
        }
        for fingerprint in dropped {
            self.cache.invalidate(&keys::variant(key, fingerprint));
        }
        // Apply the byte bound now rather than at moka's next maintenance.
        self.cache.run_pending_tasks();
        self.sketch.after_insert(&self.cache);
    }

    /// Put `entry` under `key`; returns the variants of a marker it replaced.
    fn put_plain(&self, key: &str, entry: Entry) -> Vec<u64> {
        let mut dropped = Vec::new();
        self.cache.entry_by_ref(key).and_compute_with(|current| {
            if let Some(Entry::Variants { variants, .. }) = current.map(|e| e.into_value()) {
                dropped.extend_from_slice(&variants);
            }
            Op::Put(entry)
        });
        dropped
    }

    /// Record `object`'s variant in the marker under `key` (one update at a
    /// time per key); returns the variants it no longer lists.
    fn track_variant(&self, key: &str, object: &CachedObject) -> Vec<u64> {
        let mut dropped = Vec::new();
        self.cache.entry_by_ref(key).and_compute_with(|current| {
            let mut variants = match current.map(|e| e.into_value()) {
                Some(Entry::Variants {
                    headers, variants, ..
                }) if *headers == object.vary => variants.to_vec(),
                Some(Entry::Variants { variants, .. }) => {
                    dropped.extend_from_slice(&variants);
                    Vec::new()
                }
                _ => Vec::new(),
            };
            variants.retain(|v| *v != object.vary_fingerprint);
            variants.push(object.vary_fingerprint);
            let excess = variants.len().saturating_sub(self.max_variants);
            dropped.extend(variants.drain(..excess));
            Op::Put(Entry::Variants {
                headers: Arc::new(object.vary.clone()),
                life: object.usable_life(),
                variants: variants.into(),
            })
        });
        dropped
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
        let removals = self.removals.lock();
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

    /// Remove the URL `url` (a URL's key, `keys::url_of`) and every key
    /// derived from it: its variants, its header-keyed copies and theirs.
    /// Fills of any of them that began before do not store.
    pub fn remove_url(&self, url: &str) {
        let mut removals = self.removals.lock();
        removals.record_url(url);
        self.cache.invalidate(url);
        for key in self.families.take(url) {
            self.cache.invalidate(&key);
        }
    }

    /// Remove one stored key (a variant that may no longer be served, say);
    /// fills of its URL that began before do not store.
    pub fn remove(&self, key: &str) {
        let mut removals = self.removals.lock();
        removals.record_url(keys::url_of(key));
        self.cache.invalidate(key);
    }

    /// Remove every key starting with `prefix` (variants included, since
    /// their keys extend the plain key).
    pub fn remove_prefix(&self, prefix: &str) {
        self.removals.lock().record_prefix(prefix);
        let prefix = prefix.to_owned();
        if let Err(e) = self
            .cache
            .invalidate_entries_if(move |key, _| key.starts_with(&prefix))
        {
            log::error!("prefix invalidation failed: {e}");
        }
        self.cache.run_pending_tasks();
    }

    /// Every object stored, under its key (a variant under its variant key;
    /// the markers listing variants are left out): what a stopping node
    /// may hand over.
    pub fn objects(&self) -> impl Iterator<Item = (Arc<String>, Arc<CachedObject>)> + '_ {
        self.cache.iter().filter_map(|(key, entry)| match entry {
            Entry::Object(object) => Some((key, object)),
            Entry::Variants { .. } => None,
        })
    }

    pub fn entry_count(&self) -> u64 {
        self.sketch.real_entries(self.cache.entry_count())
    }

    pub fn weighted_bytes(&self) -> u64 {
        self.sketch.real_bytes(self.cache.weighted_size())
    }

    #[cfg(test)]
    pub fn capacity(&self) -> u64 {
        self.cache.policy().max_capacity().unwrap_or(0)
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
    use bytes::Bytes;
    use pingora::http::ResponseHeader;

    fn object(vary: &[&'static str], fingerprint: u64) -> Arc<CachedObject> {
        let header = ResponseHeader::build(200, None).unwrap();
        let mut object = CachedObject::fresh_for_tests(header, Bytes::from_static(b"x"));
        object.vary = vary.iter().map(|h| HeaderName::from_static(h)).collect();
        object.vary_fingerprint = fingerprint;
        Arc::new(object)
    }

    fn insert_variant(store: &Store, key: &str, vary: &[&'static str], fingerprint: u64) {
        let variant = keys::variant(key, fingerprint);
        store.insert(key, Some(variant), object(vary, fingerprint));
    }

    fn listed(store: &Store, key: &str) -> Vec<u64> {
        match store.get(key) {
            Some(Entry::Variants { variants, .. }) => variants.to_vec(),
            _ => Vec::new(),
        }
    }

    fn has_variant(store: &Store, key: &str, fingerprint: u64) -> bool {
        store.get(&keys::variant(key, fingerprint)).is_some()
    }

    #[test]
    fn variants_past_the_bound_replace_the_oldest() {
        let store = Store::new(1 << 20).with_max_variants(3);
        for fingerprint in 1..=5 {
            insert_variant(&store, "k", &["x-v"], fingerprint);
        }
        assert_eq!(listed(&store, "k"), [3, 4, 5]);
        assert!(!has_variant(&store, "k", 1) && !has_variant(&store, "k", 2));
        assert!((3..=5).all(|f| has_variant(&store, "k", f)));
        // Storing a listed variant again makes it the newest.
        insert_variant(&store, "k", &["x-v"], 3);
        insert_variant(&store, "k", &["x-v"], 6);
        assert_eq!(listed(&store, "k"), [5, 3, 6]);
        assert!(!has_variant(&store, "k", 4));
    }

    #[test]
    fn variants_no_marker_lists_are_removed() {
        let store = Store::new(1 << 20);
        insert_variant(&store, "k", &["x-v"], 1);
        insert_variant(&store, "k", &["x-v"], 2);
        // The origin now varies on another header: the old variants go.
        insert_variant(&store, "k", &["x-w"], 7);
        assert_eq!(listed(&store, "k"), [7]);
        assert!(!has_variant(&store, "k", 1) && !has_variant(&store, "k", 2));
        // It stops varying: the marker and its variants go.
        store.insert("k", None, object(&[], 0));
        assert!(matches!(store.get("k"), Some(Entry::Object(_))));
        assert!(!has_variant(&store, "k", 7));
    }

    #[test]
    fn removing_a_url_removes_its_variants_and_header_keyed_copies_by_index() {
        let store = Store::new(1 << 20);
        let url = "http://o:80/a";
        let keyed = format!("{url}\u{1f}x-tenant=t1");
        insert_variant(&store, url, &["x-v"], 1);
        insert_variant(&store, url, &["x-v"], 2);
        insert_variant(&store, &keyed, &["x-v"], 3);
        store.insert("http://o:80/b", None, object(&[], 0));
        store.remove_url(url);
        store.run_pending_tasks();
        assert!(store.get(url).is_none() && store.get(&keyed).is_none());
        assert!(!has_variant(&store, url, 1) && !has_variant(&store, &keyed, 3));
        assert!(store.get("http://o:80/b").is_some(), "another URL stays");
        assert_eq!(
            store.families.records(),
            0,
            "the family is forgotten with it"
        );
        // A fill of a copy that began before the removal does not store.
        let before = Epoch::now();
        store.remove_url(url);
        let variant = Some(keys::variant(&keyed, 4));
        assert!(!store.insert_fetched(before, &keyed, variant, object(&["x-v"], 4)));
    }

    #[test]
    fn the_families_index_forgets_what_the_cache_evicted() {
        let _heavy = ALLOCATION_HEAVY_TESTS.lock();
        // Room for a few hundred entries: most of 20,000 are evicted.
        let store = Store::new(256 << 10);
        for i in 0..20_000 {
            let url = format!("http://o:80/{i}");
            insert_variant(&store, &url, &["x-v"], 1);
        }
        store.run_pending_tasks();
        let held = store.cache.entry_count() as usize;
        assert!(held < 2_000, "{held}");
        let records = store.families.records();
        assert!(
            records <= 2 * held + 1024,
            "{records} records for {held} entries"
        );
        store.families.sweep(&store.cache);
        assert!(store.families.records() <= held);
    }

    #[test]
    fn a_removal_after_a_fill_started_wins() {
        let mut removals = Removals::new();
        let before = Epoch::now();
        removals.record_url("k");
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
            removals.record_url(&format!("k{i}"));
        }
        assert_eq!(removals.keys.len(), REMEMBERED_REMOVALS);
        // k0's record is gone: a fill as old as it can no longer prove it is
        // clean, so it does not store, whatever its key.
        assert!(removals.removed_since("k0", old_fill));
        assert!(removals.removed_since("unrelated", old_fill));
        assert!(!removals.removed_since("unrelated", Epoch::now()));
    }
}
