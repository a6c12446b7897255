//! Singleflight: concurrent requests for one key share one load.
//!
//! The first caller of [`Group::join`] for a key becomes the *leader* and gets
//! a [`Flight`]; everyone arriving while that flight is open becomes a
//! *follower* and gets a [`Waiter`]. The leader publishes one value with
//! [`Flight::complete`]; every waiter receives a clone of it.
//!
//! The subtle parts, in the order they bite:
//! - A follower subscribes while holding the map lock, so it can never miss a
//!   value published between its look-up and its wait.
//! - The flight leaves the map *before* its value is published. A caller that
//!   arrives after that starts a new flight instead of reading an old value; the
//!   caller is expected to have stored anything reusable (in the cache) first.
//! - A flight can be *forgotten* ([`Group::forget_where`]): it leaves the
//!   map, its leader still completes it for the waiters it has, and callers
//!   after that start a new flight. A write's invalidation does this, so
//!   that a request arriving after the write never joins a load that began
//!   before it (and may bring what the origin had before the write). A
//!   flight only ever removes itself from the map, never its successor.
//! - A leader that is dropped without completing (its task panicked or was
//!   cancelled) publishes nothing; waiters see [`WaitError::Abandoned`] at once
//!   rather than waiting out their timeout, and may retry.
//! - Waiting is bounded, but by *silence*, not by the length of the load:
//!   [`Waiter::wait`] gives up once its timeout passes with neither a value
//!   nor a sign of life. A leader that is making progress (a response body
//!   still arriving, say) calls [`Flight::progress`], and every waiter's
//!   timeout starts over: a slow but healthy load is waited for, a stuck one
//!   is not.
//!
//! The leader should run its load in a spawned task that owns the `Flight`, so
//! that the load completes for the waiters even if the leader's own client
//! goes away. `fill.rs` is its one user, for origin and owner fetches alike.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// A set of in-flight loads, keyed.
pub struct Group<K, V> {
    flights: Mutex<HashMap<K, Shared<V>>>,
}

/// What the leader and its waiters share: the value to come, and a count of
/// the leader's signs of progress.
struct Shared<V> {
    value: watch::Receiver<Option<V>>,
    progress: Arc<AtomicU64>,
}

impl<V> Clone for Shared<V> {
    fn clone(&self) -> Self {
        Shared {
            value: self.value.clone(),
            progress: self.progress.clone(),
        }
    }
}

/// What [`Group::join`] made of the caller.
pub enum Join<K: Hash + Eq + Clone, V: Clone> {
    /// Nobody was loading this key: the caller must load it and complete the flight.
    Leader(Flight<K, V>),
    /// Someone is loading it: wait for their value.
    Follower(Waiter<V>),
}

/// The leader's side of a load. Completing or dropping it closes the flight.
pub struct Flight<K: Hash + Eq + Clone, V: Clone> {
    group: Arc<Group<K, V>>,
    key: K,
    sender: watch::Sender<Option<V>>,
    progress: Arc<AtomicU64>,
}

/// A follower's side of a load.
pub struct Waiter<V> {
    shared: Shared<V>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WaitError {
    #[error("the load did not finish in time")]
    Timeout,
    #[error("the leader gave up without a result")]
    Abandoned,
}

impl<K: Hash + Eq + Clone, V: Clone> Group<K, V> {
    pub fn new() -> Arc<Self> {
        Arc::new(Group {
            flights: Mutex::new(HashMap::new()),
        })
    }

    /// Join the flight for `key`, starting one if there is none.
    pub fn join(self: &Arc<Self>, key: K) -> Join<K, V> {
        let mut flights = self.flights.lock();
        if let Some(shared) = flights.get(&key) {
            return Join::Follower(Waiter {
                shared: shared.clone(),
            });
        }
        let (sender, value) = watch::channel(None);
        let progress = Arc::new(AtomicU64::new(0));
        let shared = Shared {
            value,
            progress: progress.clone(),
        };
        flights.insert(key.clone(), shared);
        Join::Leader(Flight {
            group: Arc::clone(self),
            key,
            sender,
            progress,
        })
    }

    /// Wait on the flight for `key` if there is one; never start one.
    pub fn follow(&self, key: &K) -> Option<Waiter<V>> {
        let shared = self.flights.lock().get(key)?.clone();
        Some(Waiter { shared })
    }

    /// Forget every flight whose key `matches`: later callers start new
    /// flights, while the forgotten ones still complete for their waiters.
    /// Scans the flights under way (a table as large as the loads in flight).
    pub fn forget_where(&self, mut matches: impl FnMut(&K) -> bool) {
        self.flights.lock().retain(|key, _| !matches(key));
    }

    /// Number of keys being loaded right now.
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.flights.lock().len()
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Flight<K, V> {
    pub fn key(&self) -> &K {
        &self.key
    }

    /// Tell the waiters the load is still moving: their timeouts start over.
    pub fn progress(&self) {
        self.progress.fetch_add(1, Ordering::Relaxed);
    }

    /// Publish the value to every waiter and close the flight.
    pub fn complete(self, value: V) {
        self.leave_the_map();
        self.sender.send_replace(Some(value));
        // Drop runs next and finds the flight gone.
    }

    /// Remove this flight from the map, if it is still there: a forgotten
    /// flight's key may hold a newer flight by now, which stays.
    fn leave_the_map(&self) {
        let mut flights = self.group.flights.lock();
        if let Some(shared) = flights.get(&self.key) {
            if shared.value.same_channel(&self.sender.subscribe()) {
                flights.remove(&self.key);
            }
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Drop for Flight<K, V> {
    fn drop(&mut self) {
        // Completed flights left the map already. An abandoned one leaves it
        // here, and dropping `sender` wakes the waiters with Abandoned.
        self.leave_the_map();
    }
}

impl<V: Clone> Waiter<V> {
    /// Wait for the leader's value, giving up when `timeout` passes without
    /// the value or any [`Flight::progress`].
    pub async fn wait(mut self, timeout: Duration) -> Result<V, WaitError> {
        loop {
            let seen = self.shared.progress.load(Ordering::Relaxed);
            let wait = self.shared.value.wait_for(|value| value.is_some());
            match tokio::time::timeout(timeout, wait).await {
                Err(_) if self.shared.progress.load(Ordering::Relaxed) != seen => continue,
                Err(_) => return Err(WaitError::Timeout),
                Ok(Err(_)) => return Err(WaitError::Abandoned),
                Ok(Ok(value)) => return value.clone().ok_or(WaitError::Abandoned),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn concurrent_joins_share_one_load() {
        let group: Arc<Group<&str, u32>> = Group::new();
        let loads = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let group = group.clone();
            let loads = loads.clone();
            tasks.push(tokio::spawn(async move {
                match group.join("k") {
                    Join::Leader(flight) => {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        flight.complete(7);
                        7
                    }
                    Join::Follower(w) => w.wait(Duration::from_secs(5)).await.unwrap(),
                }
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), 7);
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        assert_eq!(group.in_flight(), 0);
    }

    #[tokio::test]
    async fn follow_waits_on_a_flight_but_never_starts_one() {
        let group: Arc<Group<u8, u8>> = Group::new();
        assert!(group.follow(&1).is_none());
        assert_eq!(group.in_flight(), 0, "following started nothing");
        let Join::Leader(flight) = group.join(1) else {
            panic!("first join leads")
        };
        let waiter = group.follow(&1).expect("a flight to follow");
        flight.complete(9);
        assert_eq!(waiter.wait(Duration::from_secs(5)).await, Ok(9));
        assert!(group.follow(&1).is_none(), "completed flights are gone");
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_flight_releases_waiters_at_once() {
        let group: Arc<Group<u8, u8>> = Group::new();
        let Join::Leader(flight) = group.join(1) else {
            panic!("first join leads")
        };
        let Join::Follower(waiter) = group.join(1) else {
            panic!("second join follows")
        };
        let started = tokio::time::Instant::now();
        drop(flight);
        assert_eq!(
            waiter.wait(Duration::from_secs(10)).await,
            Err(WaitError::Abandoned)
        );
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(
            matches!(group.join(1), Join::Leader(_)),
            "a new flight can start"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_is_bounded() {
        let group: Arc<Group<u8, u8>> = Group::new();
        let _flight = group.join(1);
        let Join::Follower(waiter) = group.join(1) else {
            panic!("second join follows")
        };
        assert_eq!(
            waiter.wait(Duration::from_millis(30)).await,
            Err(WaitError::Timeout)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn progress_keeps_waiters_waiting_and_silence_ends_the_wait() {
        let group: Arc<Group<u8, u8>> = Group::new();
        let Join::Leader(flight) = group.join(1) else {
            panic!("first join leads")
        };
        let Join::Follower(waiter) = group.join(1) else {
            panic!("second join follows")
        };
        let started = tokio::time::Instant::now();
        let waiting = tokio::spawn(waiter.wait(Duration::from_secs(1)));
        // Five seconds of load, a sign of life every 600 ms: longer than the
        // timeout in total, never silent for as long as the timeout.
        for _ in 0..8 {
            tokio::time::sleep(Duration::from_millis(600)).await;
            flight.progress();
        }
        flight.complete(3);
        assert_eq!(waiting.await.unwrap(), Ok(3));
        assert!(started.elapsed() >= Duration::from_millis(4800));

        // A load that goes silent: the wait ends one timeout after the last progress.
        let Join::Leader(stuck) = group.join(2) else {
            panic!()
        };
        let Join::Follower(waiter) = group.join(2) else {
            panic!()
        };
        let started = tokio::time::Instant::now();
        let waiting = tokio::spawn(waiter.wait(Duration::from_secs(1)));
        tokio::time::sleep(Duration::from_millis(700)).await;
        stuck.progress();
        assert_eq!(waiting.await.unwrap(), Err(WaitError::Timeout));
        assert!(started.elapsed() >= Duration::from_millis(1700));
    }

    #[tokio::test]
    async fn after_completion_the_next_join_leads_again() {
        let group: Arc<Group<u8, u8>> = Group::new();
        let Join::Leader(flight) = group.join(1) else {
            panic!()
        };
        flight.complete(1);
        assert!(matches!(group.join(1), Join::Leader(_)));
    }

    #[tokio::test]
    async fn a_forgotten_flight_serves_its_waiters_and_later_callers_start_anew() {
        let group: Arc<Group<&str, u8>> = Group::new();
        let Join::Leader(old) = group.join("a/1") else {
            panic!("first join leads")
        };
        let Join::Follower(before) = group.join("a/1") else {
            panic!("second join follows")
        };
        let Join::Leader(_other) = group.join("b/1") else {
            panic!("another key leads")
        };
        group.forget_where(|key| key.starts_with("a/"));
        let Join::Leader(new) = group.join("a/1") else {
            panic!("after the flight is forgotten, the next caller leads")
        };
        let Join::Follower(after) = group.join("a/1") else {
            panic!("and the one after follows the new flight")
        };
        old.complete(1);
        assert_eq!(before.wait(Duration::from_secs(5)).await, Ok(1));
        assert_eq!(
            group.in_flight(),
            2,
            "the old flight left the new one in place"
        );
        new.complete(2);
        assert_eq!(after.wait(Duration::from_secs(5)).await, Ok(2));
        assert!(
            matches!(group.join("b/1"), Join::Follower(_)),
            "b/1 was not forgotten"
        );
    }

    #[tokio::test]
    async fn keys_are_independent() {
        let group: Arc<Group<u8, u8>> = Group::new();
        let _a = group.join(1);
        assert!(matches!(group.join(2), Join::Leader(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn the_load_outlives_the_leaders_caller() {
        // The leader hands its flight to a spawned task and then goes away (as
        // a disconnected client would): the waiter still gets the value.
        let group: Arc<Group<u8, u8>> = Group::new();
        let Join::Leader(flight) = group.join(1) else {
            panic!()
        };
        let Join::Follower(waiter) = group.join(1) else {
            panic!()
        };
        let (spawned_tx, spawned_rx) = tokio::sync::oneshot::channel();
        let caller = tokio::spawn(async move {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                flight.complete(9);
            });
            let _ = spawned_tx.send(());
            std::future::pending::<()>().await;
        });
        spawned_rx.await.unwrap();
        caller.abort();
        assert_eq!(waiter.wait(Duration::from_secs(5)).await, Ok(9));
    }
}
