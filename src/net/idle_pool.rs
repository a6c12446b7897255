//! Idle keep-alive connections of the fill client, to origins and peers,
//! kept for the next fill to the same target.
//!
//! pingora's connector pool watches every idle connection with a task of
//! its own, spawned at each release, and checks the socket's peer address
//! (a `getpeername` call) at each reuse. For fills that is a large share of
//! a peer hop's cost: a hop reuses a connection for every request. This pool
//! keeps HTTP/1 connections in a plain list per target instead, and checks a
//! connection only when it is taken:
//! - a connection the other side closed (or sent unasked-for bytes on) is
//!   readable while idle; tokio knows that without a system call, and such
//!   a connection is dropped instead of used;
//! - one idle for longer than its idle timeout is dropped;
//! - a closed connection that still looks idle fails on use: the fill
//!   client then retries once on a *new* connection and empties the target's
//!   list (after a peer restarts, every connection to it is dead).
//!
//! Bounded: at most [`MAX_IDLE_PER_TARGET`] connections per target (the
//! oldest is closed first), targets whose connections all expired are
//! forgotten on the next sweep, and `ringside_fill_idle_connections` counts
//! what is held. HTTP/2 sessions stay in pingora's pool, which multiplexes
//! them.

use crate::metrics;
use futures::FutureExt;
use parking_lot::Mutex;
use pingora::protocols::Stream;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

/// Idle connections kept per target; more are closed, oldest first.
pub const MAX_IDLE_PER_TARGET: usize = 128;

/// Every this many releases, every target's expired connections are closed.
const SWEEP_EVERY: u64 = 1024;

/// Idle connections by target (pingora's `reuse_hash` of the peer, which
/// covers its address and TLS settings).
#[derive(Default)]
pub struct IdlePool {
    targets: Mutex<HashMap<u64, Vec<Idle>>>,
    releases: AtomicU64,
}

struct Idle {
    stream: Stream,
    until: Instant,
}

impl IdlePool {
    /// The most recently released usable connection to `target`, if any.
    /// Dead and expired ones met on the way are closed.
    pub fn take(&self, target: u64) -> Option<Stream> {
        let now = Instant::now();
        loop {
            let idle = self.targets.lock().get_mut(&target)?.pop()?;
            metrics::FILL_IDLE_CONNECTIONS.dec();
            let mut stream = idle.stream;
            if idle.until > now && still_idle(&mut stream) {
                return Some(stream);
            }
        }
    }

    /// Keep `stream` for the next fill to `target`, for up to `idle_timeout`.
    pub fn put(&self, target: u64, stream: Stream, idle_timeout: Duration) {
        let now = Instant::now();
        let idle = Idle {
            stream,
            until: now + idle_timeout,
        };
        let closed = {
            let mut targets = self.targets.lock();
            let list = targets.entry(target).or_default();
            let mut closed = expired(list, now);
            if list.len() >= MAX_IDLE_PER_TARGET {
                closed.push(list.remove(0));
            }
            list.push(idle);
            if self
                .releases
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(SWEEP_EVERY)
            {
                for list in targets.values_mut() {
                    closed.extend(expired(list, now));
                }
                targets.retain(|_, list| !list.is_empty());
            }
            closed
        };
        metrics::FILL_IDLE_CONNECTIONS.add(1 - closed.len() as i64);
        // Dropped (closed) outside the lock.
        drop(closed);
    }

    /// Close every idle connection to `target`: one of them turned out dead.
    pub fn clear(&self, target: u64) {
        let closed = self.targets.lock().remove(&target).unwrap_or_default();
        metrics::FILL_IDLE_CONNECTIONS.sub(closed.len() as i64);
    }
}

/// Remove the connections of `list` whose idle time is up (the list is in
/// release order, so they are at its front).
fn expired(list: &mut Vec<Idle>, now: Instant) -> Vec<Idle> {
    let live = list.iter().position(|idle| idle.until > now);
    list.drain(..live.unwrap_or(list.len())).collect()
}

/// Whether nothing arrived on an idle connection: no end of stream, no
/// bytes. Costs no system call unless the socket became readable.
fn still_idle(stream: &mut Stream) -> bool {
    let mut byte = [0u8; 1];
    // `unconstrained`: the cooperative budget could make a ready read pend.
    tokio::task::unconstrained(stream.read(&mut byte))
        .now_or_never()
        .is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A connected pair: our end as a pingora stream, and the other end.
    async fn pair() -> (Stream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (ours, theirs) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let ours = pingora::protocols::l4::stream::Stream::from(ours.unwrap());
        (Box::new(ours), theirs.unwrap().0)
    }

    #[tokio::test]
    async fn the_most_recent_connection_is_reused_and_each_once() {
        let pool = IdlePool::default();
        let (a, _a) = pair().await;
        let (b, _b) = pair().await;
        let (a_id, b_id) = (a.id(), b.id());
        pool.put(1, a, Duration::from_secs(60));
        pool.put(1, b, Duration::from_secs(60));
        assert_eq!(pool.take(1).map(|s| s.id()), Some(b_id));
        assert_eq!(pool.take(1).map(|s| s.id()), Some(a_id));
        assert!(pool.take(1).is_none());
        assert!(pool.take(2).is_none());
    }

    #[tokio::test]
    async fn a_connection_closed_or_written_to_while_idle_is_not_reused() {
        let pool = IdlePool::default();
        let (closed, theirs) = pair().await;
        let (chatty, mut chatty_theirs) = pair().await;
        pool.put(1, closed, Duration::from_secs(60));
        pool.put(2, chatty, Duration::from_secs(60));
        drop(theirs);
        chatty_theirs.write_all(b"unasked").await.unwrap();
        // Readiness reaches our ends through the reactor: poll until it has.
        let seen = async {
            while !(pool.peek_dead(1) && pool.peek_dead(2)) {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), seen)
            .await
            .expect("the reactor saw the close and the bytes");
        assert!(pool.take(1).is_none());
        assert!(pool.take(2).is_none());
    }

    #[tokio::test]
    async fn expired_connections_are_closed_and_the_list_is_bounded() {
        let pool = IdlePool::default();
        let (old, _old) = pair().await;
        pool.put(1, old, Duration::ZERO);
        assert!(pool.take(1).is_none(), "idle past its timeout");
        let mut ends = Vec::new();
        for _ in 0..MAX_IDLE_PER_TARGET + 3 {
            let (ours, theirs) = pair().await;
            ends.push(theirs);
            pool.put(7, ours, Duration::from_secs(60));
        }
        assert_eq!(pool.targets.lock()[&7].len(), MAX_IDLE_PER_TARGET);
        pool.clear(7);
        assert!(pool.take(7).is_none());
    }

    impl IdlePool {
        /// Whether the last connection of `target` would be refused now.
        fn peek_dead(&self, target: u64) -> bool {
            let mut targets = self.targets.lock();
            let Some(idle) = targets.get_mut(&target).and_then(|l| l.last_mut()) else {
                return true;
            };
            !still_idle(&mut idle.stream)
        }
    }
}
