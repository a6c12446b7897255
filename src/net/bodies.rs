//! Request bodies arriving at once, per listener (`max_request_bodies`).
//!
//! A request with a body is proxied to the origin as it arrives, so while
//! its body trickles in it holds a client connection and an origin
//! connection. `request_body_timeout` cuts a body that stops; one that
//! keeps moving, a byte a second, is within its rights, and 150 of them
//! held every slot of `max_connections`. So a listener lets at most
//! `max_request_bodies` requests receive their bodies at once (a quarter of
//! the connections by default); the next is answered 503 at once, and
//! requests without a body are not affected. A slot is held from the
//! head to the body's last byte.

use crate::metrics;
use prometheus::{IntCounter, IntGauge};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// One listener's bodies in progress.
pub struct Bodies {
    max: usize,
    arriving: AtomicUsize,
    /// `ringside_request_bodies` and the `too-many-bodies` refusals.
    gauge: IntGauge,
    refused: IntCounter,
}

/// A body's place under the bound, given back when dropped.
pub struct BodySlot(Arc<Bodies>);

impl Bodies {
    /// At most `max` bodies at once on `listener` (its metrics label).
    pub fn new(max: usize, listener: &str) -> Arc<Bodies> {
        Arc::new(Bodies {
            max,
            arriving: AtomicUsize::new(0),
            gauge: metrics::request_bodies(listener),
            refused: metrics::request_refusals(listener, "too-many-bodies"),
        })
    }

    /// A slot for one more body, or None (counted) when all are taken.
    pub fn enter(self: &Arc<Self>) -> Option<BodySlot> {
        let taken = self
            .arriving
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            });
        match taken {
            Ok(_) => {
                self.gauge.inc();
                Some(BodySlot(self.clone()))
            }
            Err(_) => {
                self.refused.inc();
                None
            }
        }
    }
}

impl Drop for BodySlot {
    fn drop(&mut self) {
        self.0.arriving.fetch_sub(1, Ordering::AcqRel);
        self.0.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_max_bodies_and_slots_come_back() {
        let bodies = Bodies::new(2, "test");
        let first = bodies.enter().expect("a slot");
        let second = bodies.enter().expect("a slot");
        assert!(bodies.enter().is_none(), "past the bound");
        drop(first);
        let third = bodies.enter().expect("a slot given back");
        drop((second, third));
        assert_eq!(bodies.arriving.load(Ordering::Acquire), 0);
    }
}
