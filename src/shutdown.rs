//! How the process ends. SIGTERM first leaves the cluster (membership
//! sources that can deregister do: [`leaving`]) and waits `shutdown_delay`
//! (still serving, `/readyz` failing: see [`shutting_down`]), then pingora stops the
//! listeners, in-flight requests finish (counted by [`InFlight`]) and the
//! process exits as soon as none is left, or after `shutdown_grace` at the
//! latest. SIGINT exits at once, also during the delay. Work that must end
//! before the exit (the handoff of this node's entries) holds it back with
//! [`hold_exit`], within `shutdown_grace` too.

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// Requests being served right now (a guard per request).
pub struct InFlight;

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

impl InFlight {
    pub fn enter() -> InFlight {
        IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Work the exit waits for (within `shutdown_grace`), while it lives.
pub struct HoldExit;

static HOLDING_EXIT: AtomicUsize = AtomicUsize::new(0);

/// Hold the exit back until the guard is dropped.
pub fn hold_exit() -> HoldExit {
    HOLDING_EXIT.fetch_add(1, Ordering::Relaxed);
    HoldExit
}

impl Drop for HoldExit {
    fn drop(&mut self) {
        HOLDING_EXIT.fetch_sub(1, Ordering::Relaxed);
    }
}

static SHUTTING_DOWN: AtomicBool = AtomicBool::new(false);

/// Flipped to true once, at SIGTERM, for tasks that act on leaving.
static LEAVING: once_cell::sync::Lazy<tokio::sync::watch::Sender<bool>> =
    once_cell::sync::Lazy::new(|| tokio::sync::watch::channel(false).0);

/// Resolves once SIGTERM has arrived: a node that is leaving deregisters at
/// once (etcd membership revokes its lease) instead of letting peers route
/// to it until its registration expires.
pub async fn leaving() {
    let mut rx = LEAVING.subscribe();
    let _ = rx.wait_for(|leaving| *leaving).await;
}

/// Flipped once this node has told the other members that it leaves
/// (`announce.rs`), so that a source that deregisters (etcd) does so after
/// them: a member that hears of the leave from its source has had the
/// notice already, and knows the node still serves.
static ANNOUNCED: once_cell::sync::Lazy<tokio::sync::watch::Sender<bool>> =
    once_cell::sync::Lazy::new(|| tokio::sync::watch::channel(false).0);

/// The other members were told this node is leaving.
pub fn leave_announced() {
    ANNOUNCED.send_replace(true);
}

/// Resolves once SIGTERM has arrived and the others were told (or `within`
/// after SIGTERM, whichever comes first).
pub async fn left(within: Duration) {
    leaving().await;
    let mut rx = ANNOUNCED.subscribe();
    let _ = tokio::time::timeout(within, rx.wait_for(|told| *told)).await;
}

/// SIGTERM arrived: readiness fails and `leaving` resolves.
fn begin() {
    SHUTTING_DOWN.store(true, Ordering::Relaxed);
    LEAVING.send_replace(true);
}

/// SIGTERM has arrived: readiness fails from now on, while the listeners
/// still serve through `shutdown_delay` and the drain.
pub fn shutting_down() -> bool {
    SHUTTING_DOWN.load(Ordering::Relaxed)
}

/// SIGTERM: serve on for `delay`, then graceful, exiting when drained.
/// SIGINT: immediate, also during the delay.
pub struct DrainOnTerm {
    grace: Duration,
    delay: Duration,
}

impl DrainOnTerm {
    pub fn new(grace: Duration, delay: Duration) -> DrainOnTerm {
        DrainOnTerm { grace, delay }
    }
}

#[async_trait]
impl ShutdownSignalWatch for DrainOnTerm {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            log::error!("cannot install signal handlers");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = int.recv() => ShutdownSignal::FastShutdown,
            _ = term.recv() => {
                begin();
                if !self.delay.is_zero() {
                    log::info!("shutdown: serving for {:?} more (shutdown_delay)", self.delay);
                    tokio::select! {
                        _ = int.recv() => return ShutdownSignal::FastShutdown,
                        _ = tokio::time::sleep(self.delay) => {}
                    }
                }
                let grace = self.grace;
                std::thread::spawn(move || exit_when_drained(grace));
                ShutdownSignal::GracefulTerminate
            }
        }
    }
}

fn exit_when_drained(grace: Duration) {
    let started = Instant::now();
    // Give the listeners a moment to stop accepting.
    std::thread::sleep(Duration::from_millis(100));
    let busy = || IN_FLIGHT.load(Ordering::Relaxed) > 0 || HOLDING_EXIT.load(Ordering::Relaxed) > 0;
    while busy() && started.elapsed() < grace {
        std::thread::sleep(Duration::from_millis(20));
    }
    log::info!(
        "shutdown: drained with {} request(s) left after {:?}",
        IN_FLIGHT.load(Ordering::Relaxed),
        started.elapsed()
    );
    std::process::exit(0);
}
