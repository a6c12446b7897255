//! Every stored key derived from a URL (a Vary variant, a copy keyed by
//! request headers), listed under the URL's key (`keys::url_of`): a purge or
//! a write's invalidation removes a URL and all of its copies by this index,
//! instead of scanning the whole cache for a prefix (which, beside a
//! thousand writes a second, took hits from 74k/s to 2.4k/s).
//!
//! Only derived keys are listed; a plain URL (most of the cache) costs
//! nothing here. The index learns a key when it is stored and forgets it
//! lazily: a key moka evicted stays listed until a sweep
//! ([`Families::sweep`]) drops every listed key the cache no longer holds,
//! which happens once the index lists twice the derived keys the cache held
//! at the last sweep (at least [`SWEEP_FLOOR`]). So it holds at most twice
//! the derived entries the store held at its last sweep, plus that floor,
//! and each derived entry is charged for two records in its weight
//! ([`RECORD_BYTES`] plus the key's bytes). Listing a key that is gone is
//! harmless (removing it again does nothing); a key the cache holds is never
//! missing from the index, because it is listed after it is stored, and a
//! sweep checks each key under the index's lock.

use super::Entry;
use crate::cache::keys;
use moka::sync::Cache;
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};

/// What one listed key costs: the key's bytes plus a set slot and, per
/// URL, a map entry (charged to every derived entry twice, see the module
/// doc).
pub const RECORD_BYTES: usize = 64;

/// Sweeps wait for at least this many records.
const SWEEP_FLOOR: usize = 1024;

#[derive(Default)]
pub struct Families {
    index: Mutex<Index>,
}

#[derive(Default)]
struct Index {
    by_url: HashMap<String, HashSet<String>>,
    records: usize,
    /// The next sweep starts when `records` reaches this.
    sweep_at: usize,
}

impl Families {
    /// List `key` (stored just now) under its URL, if it is derived from one.
    pub fn add(&self, key: &str, cache: &Cache<String, Entry>) {
        if keys::is_url(key) {
            return;
        }
        let mut index = self.index.lock();
        let url = keys::url_of(key);
        let added = match index.by_url.get_mut(url) {
            Some(family) => family.insert(key.to_owned()),
            None => {
                let family = HashSet::from([key.to_owned()]);
                index.by_url.insert(url.to_owned(), family);
                true
            }
        };
        index.records += usize::from(added);
        if index.records >= index.sweep_at.max(SWEEP_FLOOR) {
            sweep(&mut index, cache);
        }
    }

    /// The keys listed under `url`, no longer listed.
    pub fn take(&self, url: &str) -> HashSet<String> {
        let mut index = self.index.lock();
        let family = index.by_url.remove(url).unwrap_or_default();
        index.records -= family.len();
        family
    }

    /// How many keys are listed (some may be gone from the cache).
    #[cfg(test)]
    pub fn records(&self) -> usize {
        self.index.lock().records
    }

    /// Drop every listed key the cache no longer holds.
    #[cfg(test)]
    pub fn sweep(&self, cache: &Cache<String, Entry>) {
        sweep(&mut self.index.lock(), cache);
    }
}

/// Keep only the keys `cache` holds; the next sweep waits for twice as many.
fn sweep(index: &mut Index, cache: &Cache<String, Entry>) {
    index.by_url.retain(|_, family| {
        family.retain(|key| cache.contains_key(key));
        !family.is_empty()
    });
    index.records = index.by_url.values().map(HashSet::len).sum();
    index.sweep_at = 2 * index.records;
}
