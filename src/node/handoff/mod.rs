//! Handoff: when this node stops, what it holds goes to the members that
//! own it once the node is gone, most valuable first, so that a rolling
//! restart or a scale-down does not empty 1/N of the cluster's cache.
//!
//! [`at_sigterm`] starts with the node, waits for SIGTERM
//! (`shutdown::leaving`) and holds the process's exit back until it is done
//! (`shutdown::hold_exit`, within `shutdown_grace`). Then, within
//! `cluster.handoff.timeout`:
//! 1. it tells every member that it is leaving (`announce::leaving`): they
//!    take it out of their rings at once, whatever the membership source;
//! 2. it takes itself out of its own ring (its app's misses go to the new
//!    owners from now on);
//! 3. it plans ([`plan`]): every fresh entry of its cache (the hot mirrors
//!    of others' keys stay), valued by how often it was used per second
//!    times how long it stays fresh ([`value`]), most valuable first, up
//!    to `cluster.handoff.max_bytes`, each for the member that owns its key
//!    on the ring without this node;
//! 4. it pushes: `HANDOFF` requests (signed, body digest included, see
//!    `peers.rs`) of at most [`BATCH_BYTES`] (or one larger entry), one at a
//!    time per member and origin, members in parallel. Each entry is read
//!    again from the cache just before it goes: one removed meanwhile (a
//!    purge, a write's invalidation) is not sent.
//!
//! The receiver ([`accept`]) keeps an entry only if it is for an origin it
//! serves, still fresh, within its own `cache.max_object_size`, not already
//! here fresh, and its key was not removed (purged, invalidated) since the
//! sender announced it was leaving; it goes into the store like any fill,
//! where the store's byte bound and admission policy apply. Only what a
//! store holds is ever sent, so nothing private is: stores hold shareable
//! responses only.

mod wire;

use crate::cache::keys;
use crate::cache::store::{CachedObject, Entry, Epoch, Store};
use crate::cluster::peers;
use crate::cluster::ring::Ring;
use crate::cluster::Cluster;
use crate::metrics;
use crate::net::origin::{OriginClient, OriginTarget};
use crate::node::Node;
use crate::rfc::cache_status::{CacheStatus, Detail};
use crate::shutdown;
use bytes::{Bytes, BytesMut};
use futures::future::join_all;
use pingora::http::RequestHeader;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

pub use wire::Malformed;

/// Target size of one `HANDOFF` request body.
pub const BATCH_BYTES: usize = 1024 * 1024;

/// The Cache-Status of the answers to notices and handoffs.
pub const ANSWERED: CacheStatus = CacheStatus::bypass(Detail::Membership);

/// The largest `HANDOFF` body a node reads: a batch, or one entry as large
/// as it stores.
pub fn max_batch_bytes(max_object_size: u64) -> usize {
    let object = usize::try_from(max_object_size).unwrap_or(usize::MAX);
    BATCH_BYTES.max(object).saturating_add(64 * 1024)
}

/// Wait for SIGTERM, then leave and hand over (see the module comment);
/// the process does not exit before this returns (or `shutdown_grace` ends).
pub async fn at_sigterm(node: Arc<Node>) {
    let _hold = shutdown::hold_exit();
    shutdown::leaving().await;
    let Some(cluster) = node.cluster().cloned() else {
        return;
    };
    let config = &node.config;
    let started = Instant::now();
    let deadline = started + config.cluster.handoff.time_bound(config.shutdown_grace);
    let client = cluster.peer_client();
    let origin = node.origins.default().key_prefix.clone();
    let within = cluster.peer_timeout.min(deadline - Instant::now());
    crate::cluster::announce::leaving(&client, &cluster, &origin, config.shutdown_delay, within)
        .await;
    shutdown::leave_announced();
    let after = cluster.leave();
    let max_bytes = config.cluster.handoff.max_bytes;
    if max_bytes == 0 {
        return;
    }
    let shipments = plan(node.store(), &after, max_bytes, Instant::now());
    let planned: usize = shipments.iter().map(|s| s.items.len()).sum();
    let sent = push(&client, &cluster, node.store(), shipments, deadline).await;
    log::info!(
        "handoff: {} of {planned} entries ({} bytes) handed to their next owners in {:?}",
        sent.entries.load(Ordering::Relaxed),
        sent.bytes.load(Ordering::Relaxed),
        started.elapsed()
    );
}

/// An entry to hand over.
struct Item {
    /// Where it is stored here (a variant under its variant key).
    stored_key: Arc<String>,
    /// Its plain key, which the ring places.
    plain_key: String,
    object: Arc<CachedObject>,
    value: f64,
    /// About what it takes on the wire.
    size: usize,
}

/// The entries for one member and one origin, most valuable first.
struct Shipment {
    to: String,
    origin: String,
    items: Vec<Item>,
}

/// What to send to whom: the fresh entries of `store`, most valuable
/// first, within `max_bytes`, each for its owner on `after` (the ring
/// without this node).
fn plan(store: &Store, after: &Ring, max_bytes: u64, now: Instant) -> Vec<Shipment> {
    let mut items: Vec<(String, Item)> = store
        .objects()
        .filter_map(|(stored_key, object)| {
            let remaining = object.remaining_freshness(now);
            // Partial entries (`proxy/partial.rs`) stay: a part is cheap to
            // fetch again and is worth little to its next owner.
            if remaining.is_zero() || object.header.status == http::StatusCode::PARTIAL_CONTENT {
                return None;
            }
            let plain_key = match object.vary.is_empty() {
                true => stored_key.as_str(),
                false => keys::plain_of_variant(&stored_key)?,
            }
            .to_owned();
            let to = after.owner(&plain_key)?.addr.clone();
            let item = Item {
                value: value(&object, remaining, now),
                size: wire::encoded_len(&plain_key, &object),
                stored_key,
                plain_key,
                object,
            };
            Some((to, item))
        })
        .collect();
    items.sort_by(|(_, a), (_, b)| b.value.total_cmp(&a.value));
    let mut budget = usize::try_from(max_bytes).unwrap_or(usize::MAX);
    let mut shipments: HashMap<(String, String), Vec<Item>> = HashMap::new();
    for (to, item) in items {
        if item.size > budget {
            continue;
        }
        budget -= item.size;
        let origin = keys::origin_prefix(&item.plain_key).to_owned();
        shipments.entry((to, origin)).or_default().push(item);
    }
    shipments
        .into_iter()
        .map(|((to, origin), items)| Shipment { to, origin, items })
        .collect()
}

/// What an entry is worth keeping: how often it was used per second here
/// (the fill and every hit; 10 s added to its time here so that a new
/// entry does not look busy), times how long it stays fresh.
fn value(object: &CachedObject, remaining: Duration, now: Instant) -> f64 {
    let resident = now.saturating_duration_since(object.received_at);
    let uses = object.hits() as f64 + 1.0;
    uses / (resident.as_secs_f64() + 10.0) * remaining.as_secs_f64()
}

/// Entries and bytes the members confirmed.
#[derive(Default)]
struct Sent {
    entries: AtomicUsize,
    bytes: AtomicUsize,
}

/// Send every shipment, members in parallel, until done or `deadline`.
async fn push(
    client: &OriginClient,
    cluster: &Cluster,
    store: &Store,
    shipments: Vec<Shipment>,
    deadline: Instant,
) -> Sent {
    let sent = Sent::default();
    let pushes = shipments
        .into_iter()
        .map(|s| push_shipment(client, cluster, store, s, deadline, &sent));
    if tokio::time::timeout_at(deadline, join_all(pushes))
        .await
        .is_err()
    {
        log::warn!("handoff: cluster.handoff.timeout reached; the rest is not handed over");
    }
    sent
}

/// Send one member its entries for one origin, a batch at a time; stop at
/// the first batch it does not confirm.
async fn push_shipment(
    client: &OriginClient,
    cluster: &Cluster,
    store: &Store,
    shipment: Shipment,
    deadline: Instant,
    sent: &Sent,
) {
    let Shipment { to, origin, items } = shipment;
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        let (body, entries) = next_batch(&mut items, store, Instant::now());
        if entries == 0 {
            continue;
        }
        let Ok(request) = RequestHeader::build(peers::HANDOFF, b"/", None) else {
            return;
        };
        let bytes = body.len();
        let within = deadline.saturating_duration_since(Instant::now());
        match cluster
            .send_signed(client, request, &origin, &to, Some(body), within)
            .await
        {
            Ok(status) if status.is_success() => {
                sent.entries.fetch_add(entries, Ordering::Relaxed);
                sent.bytes.fetch_add(bytes, Ordering::Relaxed);
                metrics::HANDOFF_SENT_ENTRIES.inc_by(entries as u64);
                metrics::HANDOFF_SENT_BYTES.inc_by(bytes as u64);
            }
            outcome => {
                log::warn!("handoff: {to} did not take {entries} entries: {outcome:?}");
                return;
            }
        }
    }
}

/// The next batch: entries up to [`BATCH_BYTES`] (at least one), each still
/// stored as planned. Returns the body and how many entries it holds.
fn next_batch(
    items: &mut std::iter::Peekable<std::vec::IntoIter<Item>>,
    store: &Store,
    now: Instant,
) -> (Bytes, usize) {
    let mut body = BytesMut::new();
    let mut entries = 0;
    while let Some(item) = items.next_if(|i| entries == 0 || body.len() + i.size <= BATCH_BYTES) {
        let still_stored = matches!(store.get(&item.stored_key),
            Some(Entry::Object(object)) if Arc::ptr_eq(&object, &item.object));
        if still_stored {
            wire::encode(&mut body, &item.plain_key, &item.object, now);
            entries += 1;
        }
    }
    (body.freeze(), entries)
}

/// Keep what the member `from` handed over for `target`'s origin, as far as
/// this node's own rules allow (see the module comment). Returns how many
/// entries were stored.
pub fn accept(
    node: &Node,
    target: &OriginTarget,
    from: &str,
    batch: &Bytes,
) -> Result<usize, Malformed> {
    let now = Instant::now();
    let since = node
        .cluster()
        .and_then(|c| c.departure(from))
        .map_or_else(Epoch::now, |d| d.since);
    let mut stored = 0;
    for entry in wire::decode(batch, now)? {
        let result = keep(node, target, since, entry, now);
        metrics::observe_handoff_received(result);
        stored += usize::from(result == "stored");
    }
    Ok(stored)
}

/// Store one handed-over entry, or say why not.
fn keep(
    node: &Node,
    target: &OriginTarget,
    since: Epoch,
    entry: wire::Decoded,
    now: Instant,
) -> &'static str {
    let wire::Decoded { key, object } = entry;
    if keys::origin_prefix(&key) != target.key_prefix {
        return "origin";
    }
    if !object.is_fresh(now) {
        return "stale";
    }
    if object.body.len() as u64 > node.config.cache.max_object_size {
        return "too_large";
    }
    if object.header.status == http::StatusCode::PARTIAL_CONTENT {
        // A part is never handed over (see `plan`); one stored under a
        // plain key would answer a request for the whole.
        return "partial";
    }
    let variant = object.variant_key(&key);
    let here = node.store().get(variant.as_deref().unwrap_or(&key));
    if matches!(here, Some(Entry::Object(o)) if o.is_fresh(now)) {
        return "present";
    }
    let object = Arc::new(object.ready_to_serve());
    match node.store().insert_fetched(since, &key, variant, object) {
        true => "stored",
        false => "removed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ring::Member;
    use pingora::http::ResponseHeader;

    fn object(hits: u64, fresh_for: u64, body: usize) -> Arc<CachedObject> {
        Arc::new(CachedObject {
            header: ResponseHeader::build(200, None).unwrap(),
            body: Bytes::from(vec![b'x'; body]),
            initial_age: Duration::ZERO,
            received_at: Instant::now(),
            freshness: Duration::from_secs(fresh_for),
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            revalidation_window: Duration::from_secs(300),
            vary: Vec::new(),
            vary_fingerprint: 0,
            hits: hits.into(),
            overridden: false,
        })
    }

    fn ring(addrs: &[&str]) -> Ring {
        Ring::new(addrs.iter().map(|a| Member::new(*a, 1)).collect(), "k", 64)
    }

    #[test]
    fn the_most_valuable_entries_go_first_within_the_byte_bound() {
        let store = Store::new(1 << 30);
        let size = wire::encoded_len("http://o:80/x/0", &object(0, 60, 10_000));
        for i in 0..10u64 {
            // Hits and freshness both count: 9 hits for 60 s, ... 0 hits.
            store.insert(
                &format!("http://o:80/x/{i}"),
                None,
                object(9 - i, 60, 10_000),
            );
        }
        store.insert("http://o:80/stale", None, object(100, 0, 10));
        store.run_pending_tasks();
        let now = Instant::now();
        let shipments = plan(&store, &ring(&["b:1"]), (size * 4) as u64, now);
        assert_eq!(shipments.len(), 1);
        let keys: Vec<&str> = shipments[0]
            .items
            .iter()
            .map(|i| i.plain_key.as_str())
            .collect();
        assert_eq!(
            keys,
            [
                "http://o:80/x/0",
                "http://o:80/x/1",
                "http://o:80/x/2",
                "http://o:80/x/3"
            ]
        );
        assert_eq!(shipments[0].to, "b:1");
        assert_eq!(shipments[0].origin, "http://o:80");
    }

    #[test]
    fn each_entry_goes_to_its_owner_on_the_ring_without_this_node() {
        let store = Store::new(1 << 30);
        for i in 0..200 {
            store.insert(&format!("http://o:80/k/{i}"), None, object(1, 60, 10));
        }
        store.run_pending_tasks();
        let after = ring(&["b:1", "c:1"]);
        let shipments = plan(&store, &after, u64::MAX, Instant::now());
        assert_eq!(shipments.len(), 2, "both members get some");
        for shipment in &shipments {
            for item in &shipment.items {
                assert_eq!(after.owner(&item.plain_key).unwrap().addr, shipment.to);
            }
        }
        let total: usize = shipments.iter().map(|s| s.items.len()).sum();
        assert_eq!(total, 200);
        assert!(
            plan(&store, &ring(&[]), u64::MAX, Instant::now()).is_empty(),
            "alone: nobody to hand to"
        );
    }

    #[test]
    fn batches_hold_entries_still_stored_and_stay_near_their_size() {
        let store = Store::new(1 << 30);
        for i in 0..8 {
            store.insert(&format!("http://o:80/b/{i}"), None, object(1, 60, 300_000));
        }
        store.run_pending_tasks();
        let mut shipments = plan(&store, &ring(&["b:1"]), u64::MAX, Instant::now());
        let items = std::mem::take(&mut shipments[0].items);
        store.remove(&items[0].plain_key);
        let mut items = items.into_iter().peekable();
        let mut batches = Vec::new();
        while items.peek().is_some() {
            batches.push(next_batch(&mut items, &store, Instant::now()));
        }
        let entries: usize = batches.iter().map(|(_, n)| n).sum();
        assert_eq!(entries, 7, "the removed entry is not sent");
        assert!(batches.iter().all(|(body, _)| body.len() <= BATCH_BYTES));
        assert!(batches.len() >= 3);
    }
}
