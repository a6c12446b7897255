//! What a cached entry really costs in memory, and keeping that cost low.
//!
//! The store's byte bound is only as true as the weight it charges each
//! entry, and an entry is much more than its body: its key (held by moka),
//! its header map (one entry per header and an index table, see
//! [`head_bytes`]), its header names and values, the
//! [`CachedObject`] itself, and moka's bookkeeping for the entry (hash-table
//! bucket, entry info, access-order and timer-wheel nodes, frequency
//! sketch). [`object_weight`] charges all of it, with the fixed parts
//! measured: `weight_covers_what_an_entry_allocates` below counts what
//! storing entries allocates, and `benches/memory.sh` measures the
//! process's resident memory (see README, "Memory").
//!
//! Two things made a tiny entry cost about 6 KB while it was charged 443 B,
//! and both are undone before an object is stored:
//! - pingora parses a response head into header values that are slices of
//!   the connection's read buffer (4 KiB or more): a stored value kept that
//!   whole buffer alive. [`compact_head`] copies the values into one buffer
//!   of exactly their size.
//! - a body read in chunks grows its buffer by doubling, up to twice its
//!   size: [`exact_body`] copies a body with that much slack into an
//!   allocation of its own size, once, when it is stored.
//!
//! The key and the body are each one allocation of their own, and the
//! process's allocator (mimalloc) hands out blocks of a size class, not of
//! the size asked for: past 64 bytes four classes per power of two, so up
//! to a quarter more. An 8 KB key (8 217 bytes with its origin prefix)
//! takes a 10 KiB block; charged its length, a cache of such keys held
//! 1.25 times what it was charged. [`allocated`] charges the block.
//!
//! And one made a 1 KiB object cost 18 % more than it needed: a header map
//! filled one header at a time keeps room for a third more (seven headers:
//! room for twelve, 104 bytes each). [`compact_head`] stores a clone, whose
//! entries are allocated for exactly the headers it holds.

use super::CachedObject;
use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue};
use pingora::http::ResponseHeader;
use std::mem::size_of;

/// One header of a stored map: its entry (name, value, hash, links).
/// Measured: 104 bytes.
const HEADER_ENTRY_BYTES: usize = 104;

/// One more value of a header already present (a second Set-Cookie, say).
/// Measured: 72 bytes.
const EXTRA_VALUE_BYTES: usize = 72;

/// One slot of a header map's index table, which has room for a third
/// more headers than the map may hold.
const INDEX_SLOT_BYTES: usize = 4;

/// The count that shares a buffer of text among its slices: one for the
/// buffer of a stored head's values, one per header name (unless it is one
/// of the standard names in [`STATIC_NAMES`], which are static).
const SHARED_BUFFER_BYTES: usize = 24;

/// Standard header names that responses commonly carry: static in memory,
/// so charged nothing. Other standard names are charged like custom ones.
const STATIC_NAMES: [HeaderName; 13] = [
    header::AGE,
    header::CACHE_CONTROL,
    header::CONTENT_ENCODING,
    header::CONTENT_LENGTH,
    header::CONTENT_TYPE,
    header::DATE,
    header::ETAG,
    header::EXPIRES,
    header::LAST_MODIFIED,
    header::LOCATION,
    header::SERVER,
    header::SET_COOKIE,
    header::VARY,
];

/// What header name `name` holds in memory, at most.
fn name_bytes(name: &HeaderName) -> usize {
    match STATIC_NAMES.contains(name) {
        true => 0,
        false => name.as_str().len() + SHARED_BUFFER_BYTES,
    }
}

/// moka's own memory per entry (bucket, entry info, deque and timer nodes,
/// the `Arc` around the key), with what the allocator adds to those small
/// allocations, plus the entry's share of the admission filter's counters
/// (at most 48 bytes: see `admission`). Measured: moka allocates about 345
/// bytes per entry; with 576 here (before the filter was sized) a tiny
/// object weighed 1.86 KB where the process's resident memory grew by 1.85
/// KB per tiny object added (`benches/memory.sh`).
pub const CACHE_ENTRY_BYTES: usize = 576 + ADMISSION_FILTER_BYTES;

/// The admission filter's counters per entry of a full store, at most (see
/// `admission`: three `u64`s per entry, rounded up to a power of two).
const ADMISSION_FILTER_BYTES: usize = 48;

/// What every stored object costs besides its key, head and body.
const OBJECT_OVERHEAD: usize = CACHE_ENTRY_BYTES + size_of::<CachedObject>() + ARC_COUNTS;

/// The two reference counts in front of the value of an `Arc`.
const ARC_COUNTS: usize = 2 * size_of::<usize>();

/// The weight of `object` stored under `key`, in bytes.
pub fn object_weight(key: &str, object: &CachedObject) -> usize {
    let vary: usize = object.vary.iter().map(|h| h.as_str().len()).sum::<usize>()
        + object.vary.capacity() * size_of::<HeaderName>();
    let head = head_bytes(&object.header.headers);
    allocated(key.len()) + head + allocated(object.body.len()) + vary + OBJECT_OVERHEAD
}

/// What the allocator takes for an allocation of `n` bytes: mimalloc's
/// size class (its `_mi_bin`: whole words up to 8 of them, then four
/// classes per power of two; past 64 KiB, whole 4 KiB pages).
pub fn allocated(n: usize) -> usize {
    const WORD: usize = size_of::<usize>();
    let words = n.div_ceil(WORD);
    if words <= 8 {
        return words * WORD;
    }
    if n > 64 * 1024 {
        return n.next_multiple_of(4096);
    }
    let w = words - 1;
    let top = usize::BITS - 1 - w.leading_zeros();
    let step = 1usize << (top - 2);
    ((w >> (top - 2)) + 1) * step * WORD
}

/// The weight of a `Vary` marker under `key` listing `headers`, which
/// tracks `variants` stored variants.
pub fn marker_weight(key: &str, headers: &[HeaderName], variants: usize) -> usize {
    let names: usize = headers.iter().map(|h| h.as_str().len()).sum();
    allocated(key.len())
        + names
        + std::mem::size_of_val(headers)
        + variants * size_of::<u64>()
        + 2 * ARC_COUNTS
        + CACHE_ENTRY_BYTES
}

/// What a stored header map ([`compact_head`]) takes beyond its own struct:
/// one entry per header, the values beyond a header's first, its index
/// table (sized by capacity: a third more slots than it may hold), and its
/// names and values.
pub fn head_bytes(headers: &HeaderMap) -> usize {
    let names: usize = headers.keys().map(name_bytes).sum();
    let values: usize = headers.values().map(HeaderValue::len).sum::<usize>() + SHARED_BUFFER_BYTES;
    let text = names + values;
    let index_slots = headers.capacity() * 4 / 3;
    let extra_values = headers.len() - headers.keys_len();
    headers.keys_len() * HEADER_ENTRY_BYTES
        + extra_values * EXTRA_VALUE_BYTES
        + index_slots * INDEX_SLOT_BYTES
        + text
}

/// A head as it is stored: its values copied into one buffer of their exact
/// size, in a map with room for exactly its headers. The values stay slices
/// of one shared buffer, so cloning the head on a hit costs what it did
/// before.
///
/// A map filled header by header keeps room for a third more headers than
/// it was sized for, and more after growing (a 7-header head: 12 entries of
/// 104 bytes); a clone of it allocates its entries for exactly what it
/// holds. For a head of a few headers that is a sixth of a 1 KiB object's
/// whole cost.
pub fn compact_head(parts: http::response::Parts) -> ResponseHeader {
    let mut parts = parts;
    let size: usize = parts.headers.values().map(HeaderValue::len).sum();
    let mut text = BytesMut::with_capacity(size);
    for value in parts.headers.values() {
        text.extend_from_slice(value.as_bytes());
    }
    let text = text.freeze();
    let mut headers = HeaderMap::with_capacity(parts.headers.len());
    let mut at = 0;
    for (name, value) in &parts.headers {
        let end = at + value.len();
        // The bytes were a valid value a moment ago; keep the original if not.
        let mut copy =
            HeaderValue::from_maybe_shared(text.slice(at..end)).unwrap_or_else(|_| value.clone());
        copy.set_sensitive(value.is_sensitive());
        headers.append(name.clone(), copy);
        at = end;
    }
    parts.headers = headers.clone();
    ResponseHeader::from(parts)
}

/// A body as it is stored: in an allocation of about its own size.
pub fn exact_body(body: BytesMut) -> Bytes {
    let slack = body.capacity() - body.len();
    if slack > body.len() / 16 + 64 {
        Bytes::copy_from_slice(&body)
    } else {
        body.freeze()
    }
}

#[cfg(test)]
mod tests {
    //! The weights against what storing entries really allocates, counted
    //! per thread by a test allocator (moka does its work on the caller's
    //! thread, so the test's own thread sees all of it).

    use super::*;
    use crate::cache::store::Store;
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;
    use std::sync::Arc;

    struct Counting;

    thread_local! {
        static NET: Cell<isize> = const { Cell::new(0) };
    }

    fn count(delta: isize) {
        let _ = NET.try_with(|n| n.set(n.get() + delta));
    }

    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            count(layout.size() as isize);
            System.alloc(layout)
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            count(-(layout.size() as isize));
            System.dealloc(ptr, layout)
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
            count(new as isize - layout.size() as isize);
            System.realloc(ptr, layout, new)
        }
    }

    #[global_allocator]
    static ALLOCATOR: Counting = Counting;

    fn net() -> isize {
        NET.with(Cell::get)
    }

    /// A head as pingora hands it over: values sliced out of a 4 KiB read buffer.
    fn parsed_head(i: usize) -> http::response::Parts {
        let mut read_buffer = BytesMut::with_capacity(4096);
        let values = [
            "Sat, 29 Nov 2026 01:00:00 GMT".to_owned(),
            "max-age=3600".to_owned(),
            i.to_string(),
            "10".to_owned(),
        ];
        for v in &values {
            read_buffer.extend_from_slice(v.as_bytes());
        }
        let read_buffer = read_buffer.freeze();
        let mut head = ResponseHeader::build(200, Some(4)).unwrap();
        let mut at = 0;
        for (name, v) in ["date", "cache-control", "x-origin-count", "content-length"]
            .iter()
            .zip(&values)
        {
            let value = HeaderValue::from_maybe_shared(read_buffer.slice(at..at + v.len()));
            head.append_header(*name, value.unwrap()).unwrap();
            at += v.len();
        }
        let mut parts: http::response::Parts = head.into();
        parts.headers.insert("age", HeaderValue::from_static("0"));
        parts
            .headers
            .insert("cache-status", HeaderValue::from_static("ringside; hit"));
        parts
    }

    fn object(header: ResponseHeader) -> Arc<CachedObject> {
        let body = exact_body(BytesMut::from(&b"xxxxxxxxxx"[..]));
        Arc::new(CachedObject::fresh_for_tests(header, body))
    }

    /// Bytes allocated (net) per entry for `n` tiny objects, and the weight
    /// charged for each. The store is returned, not dropped: moka frees a
    /// dropped cache's memory later, on whichever thread comes by, which
    /// would blur the next measurement.
    fn allocated_per_entry(n: usize, head: impl Fn(usize) -> ResponseHeader) -> (f64, f64, Store) {
        let store = Store::new(1 << 40);
        let before = net();
        for i in 0..n {
            let key = format!("http://127.0.0.1:8000/tiny/{i}?size=10&cc=max-age%3D3600");
            store.insert(&key, None, object(head(i)));
        }
        store.run_pending_tasks();
        let per_entry = (net() - before) as f64 / n as f64;
        let weight = store.weighted_bytes() as f64 / n as f64;
        (per_entry, weight, store)
    }

    /// One test, so that no other measurement runs beside it in this module.
    #[test]
    fn weight_covers_what_an_entry_allocates() {
        let _quiet = crate::cache::store::ALLOCATION_HEAVY_TESTS.lock();
        let n = 20_000;
        let (raw, _, raw_store) = allocated_per_entry(n, |i| ResponseHeader::from(parsed_head(i)));
        let (allocated, weight, store) = allocated_per_entry(n, |i| compact_head(parsed_head(i)));
        eprintln!("tiny entry: {raw:.0} bytes allocated raw, {allocated:.0} compacted, weighed {weight:.0}");
        assert!(raw > 4096.0, "a raw head keeps its read buffer: {raw}");
        assert!(allocated < raw - 3000.0, "compacted {allocated}, raw {raw}");
        assert!(
            weight >= allocated,
            "weighed {weight}, allocated {allocated}"
        );
        assert!(
            weight <= allocated * 1.3,
            "weighed {weight}, allocated only {allocated}: the weight overcharges"
        );
        drop((raw_store, store));
    }

    #[test]
    fn a_stored_head_is_charged_what_its_map_allocates() {
        let value = HeaderValue::from_static("v");
        for n in [1, 3, 6, 7, 12, 40] {
            let mut parts = ResponseHeader::build(200, None).unwrap().as_owned_parts();
            for i in 0..n {
                let name = HeaderName::try_from(format!("x-header-{i}")).unwrap();
                parts.headers.append(name, value.clone());
            }
            // Two more Set-Cookies: values beyond a header's first.
            parts.headers.append("set-cookie", value.clone());
            parts.headers.append("set-cookie", value.clone());
            parts.headers.append("set-cookie", value.clone());
            let head = compact_head(parts);
            let charged = head_bytes(&head.headers);
            // What the stored head holds is what dropping it frees.
            let before = net();
            drop(head);
            let allocated = (before - net()) as usize;
            assert!(
                allocated <= charged && charged <= allocated * 5 / 4 + 64,
                "{n} headers: allocated {allocated}, charged {charged}"
            );
        }
    }

    #[test]
    fn allocations_are_charged_at_the_allocators_size_classes() {
        // mimalloc's classes: 8-byte words up to 64 bytes, then 80, 96, 112, 128, 160...
        for (n, class) in [
            (0, 0),
            (1, 8),
            (10, 16),
            (64, 64),
            (65, 80),
            (72, 80),
            (81, 96),
            (129, 160),
            (1024, 1024),
            (1025, 1280),
            (8192, 8192),
            (8217, 10240),
            (16385, 20480),
            (65536, 65536),
            (65537, 69632),
        ] {
            assert_eq!(allocated(n), class, "{n} bytes");
        }
        for n in 0..100_000 {
            let class = allocated(n);
            assert!(class >= n && class <= n + n / 4 + 8 + 4096, "{n}: {class}");
        }
    }

    #[test]
    fn a_body_keeps_no_more_than_a_little_slack() {
        // As a buffer that doubled while the body came in.
        let mut grown = BytesMut::with_capacity(100_000);
        grown.extend_from_slice(&[b'x'; 50_000]);
        let before = net();
        let body = exact_body(grown);
        assert_eq!(body.len(), 50_000);
        assert!(net() - before < 0, "the slack was given back");
        let exact = BytesMut::with_capacity(100);
        assert_eq!(exact_body(exact).len(), 0);
    }
}
