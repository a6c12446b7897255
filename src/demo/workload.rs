//! The demo's workload: Zipf-distributed `GET /items/{id}` requests from a
//! number of keep-alive clients, spread over one or more addresses (client
//! `i` talks to address `i % n`, as app replicas each talk to their own
//! sidecar), every request timed and checked.
//!
//! Every run of a [`Workload`] sends the same requests, from the same
//! clients, for the same keys in the same order (each client's random
//! sequence is seeded by its number), so phases compare like with like.
//!
//! For the cluster benchmarks a workload also runs as a steady load
//! ([`Workload::steady`]): its clients at a fixed rate, without end, to the
//! nodes that are up at each moment ([`Targets`]), while nodes restart.

use super::client::Conn;
use super::report::PhaseResult;
use super::sample_origin::SampleOrigin;
use parking_lot::RwLock;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// One request taking longer than this counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What every phase sends.
pub struct Workload {
    pub clients: u32,
    pub requests: u64,
    keys: ZipfKeys,
    /// Past this much time, a phase gives up on its remaining requests.
    phase_limit: Duration,
}

impl Workload {
    /// `requests` requests from `clients` clients over keys `1..=keys`
    /// (Zipf exponent `zipf_s`), against an origin answering in `delay`.
    pub fn new(clients: u32, requests: u64, keys: u32, zipf_s: f64, delay: Duration) -> Workload {
        let clients = clients.max(1);
        // Generous: three times what the slow direct phase should take.
        let per_client = requests.div_ceil(u64::from(clients));
        let per_client = u32::try_from(per_client).unwrap_or(u32::MAX);
        let expected = delay.saturating_mul(per_client);
        Workload {
            clients,
            requests,
            keys: ZipfKeys::new(keys, zipf_s),
            phase_limit: Duration::from_secs(60).max(expected.saturating_mul(3)),
        }
    }

    /// The fewest origin requests any cache could make for this workload:
    /// each cache holds the best set it could (its `objects` most requested
    /// keys, as they are requested in this very sequence), every first
    /// request of a key is a miss, and every request of a key outside the
    /// set is one. `caches` says how the requests meet caches.
    pub fn origin_lower_bound(&self, caches: BoundCaches) -> u64 {
        let objects = caches.objects() as usize;
        self.requests_per_key(caches)
            .into_iter()
            .map(|group| {
                let mut by_count: Vec<u64> = group.into_values().collect();
                by_count.sort_unstable_by(|a, b| b.cmp(a));
                let kept = objects.min(by_count.len());
                kept as u64 + by_count[kept..].iter().sum::<u64>()
            })
            .sum()
    }

    /// The origin requests of the best cache that learns nothing from the
    /// sequence but knows each key's popularity in advance: it holds the
    /// `objects` most probable keys from the start (keys `1..=objects`).
    /// With keys drawn independently, no online policy does better on
    /// average (Aho, Denning and Ullman's A0), so this is what an
    /// admission policy can hope for; [`Self::origin_lower_bound`] also
    /// knows which keys this very sequence happens to favour.
    pub fn origin_best_online(&self, caches: BoundCaches) -> u64 {
        let objects = caches.objects();
        self.requests_per_key(caches)
            .into_iter()
            .flat_map(|group| group.into_iter())
            .map(|(key, count)| if key <= objects { 1 } else { count })
            .sum()
    }

    /// How often each key is requested, per cache of `caches`.
    fn requests_per_key(&self, caches: BoundCaches) -> Vec<std::collections::HashMap<u64, u64>> {
        let groups = match caches {
            BoundCaches::Shared { .. } => 1,
            BoundCaches::PerAddress { addresses, .. } => addresses.max(1),
        };
        let mut counts = vec![std::collections::HashMap::<u64, u64>::new(); groups];
        for index in 0..self.clients {
            let group = &mut counts[index as usize % groups];
            let mut rng = SplitMix64::new(client_seed(index));
            for _ in 0..self.requests_for(index) {
                *group.entry(self.keys.sample(&mut rng)).or_default() += 1;
            }
        }
        counts
    }

    /// Request every key once (`clients` at a time, over `addrs`), so that
    /// the cache is warm; returns the requests that failed.
    pub async fn warm(&self, addrs: &[SocketAddr]) -> u64 {
        let keys = self.keys.cumulative.len() as u64;
        let lanes = u64::from(self.clients);
        let tasks: Vec<_> = (0..lanes)
            .map(|lane| {
                let addr = addrs[lane as usize % addrs.len()];
                tokio::spawn(async move {
                    let mut conn: Option<Conn> = None;
                    let mut failed = 0;
                    for id in (1 + lane..=keys).step_by(lanes as usize) {
                        if get_with_retry(&mut conn, addr, id).await.is_err() {
                            failed += 1;
                        }
                    }
                    failed
                })
            })
            .collect();
        let mut failed = 0;
        for task in tasks {
            failed += task.await.unwrap_or(1);
        }
        failed
    }

    /// Run the clients without end, each at `rate` requests per second, to
    /// the nodes in `targets` (client `i` to target `i % len`, looked up for
    /// every request), until [`Steady::stop`].
    pub fn steady(self: &Arc<Self>, targets: Targets, rate: f64) -> Steady {
        let stop = Arc::new(AtomicBool::new(false));
        let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
        let clients = (0..self.clients)
            .map(|index| {
                let (workload, targets, stop) = (self.clone(), targets.clone(), stop.clone());
                tokio::spawn(steady_client(workload, targets, index, period, stop))
            })
            .collect();
        Steady { stop, clients }
    }

    /// Client `index`'s share of the requests.
    fn requests_for(&self, index: u32) -> u64 {
        let clients = u64::from(self.clients);
        let extra = u64::from(u64::from(index) < self.requests % clients);
        self.requests / clients + extra
    }
}

/// Run the workload, client `i` against `addrs[i % addrs.len()]`; the
/// origin's own counter says how many requests reached it.
pub async fn run_phase(
    name: &str,
    addrs: &[SocketAddr],
    workload: &Arc<Workload>,
    origin: &SampleOrigin,
) -> PhaseResult {
    let targets = addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "{name}: sending {} requests to {targets} ...",
        workload.requests
    );
    let hits_before = origin.hits();
    let started = Instant::now();
    let deadline = started + workload.phase_limit;
    let clients: Vec<_> = (0..workload.clients)
        .map(|index| {
            let addr = addrs[index as usize % addrs.len()];
            tokio::spawn(run_client(addr, workload.clone(), index, deadline))
        })
        .collect();
    let mut result = PhaseResult {
        requests: workload.requests,
        ..PhaseResult::default()
    };
    for (index, client) in (0..workload.clients).zip(clients) {
        let tally = client
            .await
            .unwrap_or_else(|e| Tally::lost(workload.requests_for(index), e));
        tally.add_to(&mut result);
    }
    result.elapsed = started.elapsed();
    result.origin_requests = origin.hits() - hits_before;
    println!("{name}: done in {:.1} s", result.elapsed.as_secs_f64());
    result
}

/// The nodes that take traffic now: a restarting node is taken out before
/// it stops and put back once it is ready, as readiness probes would.
pub type Targets = Arc<RwLock<Vec<SocketAddr>>>;

/// A steady load under way.
pub struct Steady {
    stop: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<Tally>>,
}

/// What a steady load did: requests answered, requests failed, the first failure.
pub struct SteadyResult {
    pub answered: u64,
    pub errors: u64,
    pub first_error: Option<String>,
}

impl Steady {
    /// Stop every client after its current request.
    pub async fn stop(self) -> SteadyResult {
        self.stop.store(true, Ordering::Relaxed);
        let mut result = SteadyResult {
            answered: 0,
            errors: 0,
            first_error: None,
        };
        for client in self.clients {
            let tally = client.await.unwrap_or_default();
            result.answered += tally.latencies.len() as u64;
            result.errors += tally.errors;
            result.first_error = result.first_error.or(tally.first_error);
        }
        result
    }
}

/// One steady client: a request every `period` (no catching up after a
/// slow one), to its current target, on a keep-alive connection.
async fn steady_client(
    workload: Arc<Workload>,
    targets: Targets,
    index: u32,
    period: Duration,
    stop: Arc<AtomicBool>,
) -> Tally {
    let mut rng = SplitMix64::new(0x57ea_d000 + u64::from(index));
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut conn: Option<(SocketAddr, Conn)> = None;
    let mut tally = Tally::default();
    while !stop.load(Ordering::Relaxed) {
        ticks.tick().await;
        let id = workload.keys.sample(&mut rng);
        let started = Instant::now();
        // A node taken out meanwhile: the request goes to the one in its place.
        let mut outcome = Err("no node to ask".to_owned());
        for _ in 0..2 {
            let Some(addr) = target(&targets, index) else {
                break;
            };
            let mut here = conn.take().filter(|(a, _)| *a == addr).map(|(_, c)| c);
            outcome = get_with_retry(&mut here, addr, id).await;
            conn = here.map(|c| (addr, c));
            if outcome.is_ok() {
                break;
            }
        }
        match outcome {
            Ok(()) => tally.latencies.push(started.elapsed()),
            Err(why) => tally.fail(why),
        }
    }
    tally
}

/// Client `index`'s node now.
fn target(targets: &Targets, index: u32) -> Option<SocketAddr> {
    let targets = targets.read();
    targets.get(index as usize % targets.len().max(1)).copied()
}

/// `GET /items/{id}` on the connection in `slot` (connecting if there is
/// none), once more on a new connection if it fails (a keep-alive
/// connection the server closed meanwhile); the slot keeps the connection.
async fn get_with_retry(slot: &mut Option<Conn>, addr: SocketAddr, id: u64) -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..2 {
        let conn = match connected(slot, addr).await {
            Ok(conn) => conn,
            Err(e) => {
                last = format!("cannot connect to {addr}: {e}");
                *slot = None;
                continue;
            }
        };
        match timed_get_item(conn, id).await {
            Ok(_) => return Ok(()),
            Err(why) => {
                last = why;
                *slot = None;
            }
        }
    }
    Err(last)
}

/// What one client saw.
#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn fail(&mut self, why: String) {
        self.errors += 1;
        self.first_error.get_or_insert(why);
    }

    /// A client task that died: all its requests count as failed.
    fn lost(requests: u64, e: tokio::task::JoinError) -> Tally {
        Tally {
            latencies: Vec::new(),
            errors: requests,
            first_error: Some(format!("client task failed: {e}")),
        }
    }

    fn add_to(self, phase: &mut PhaseResult) {
        phase.latencies.extend(self.latencies);
        phase.errors += self.errors;
        if phase.first_error.is_none() {
            phase.first_error = self.first_error;
        }
    }
}

/// How the requests meet caches, for [`Workload::origin_lower_bound`].
#[derive(Debug, Clone, Copy)]
pub enum BoundCaches {
    /// One cache for every request (a cluster: its members' own areas
    /// together, each key kept once) holding `objects` objects.
    Shared { objects: u64 },
    /// One cache per address (client `i` uses address `i % addresses`),
    /// each holding `objects` objects.
    PerAddress { addresses: usize, objects: u64 },
}

impl BoundCaches {
    /// How many objects each cache holds.
    fn objects(self) -> u64 {
        match self {
            BoundCaches::Shared { objects } | BoundCaches::PerAddress { objects, .. } => objects,
        }
    }
}

/// The seed of client `index`'s key sequence.
fn client_seed(index: u32) -> u64 {
    0x5eed_0000 + u64::from(index)
}

/// One client: its share of the requests, one after the other, on one
/// keep-alive connection (reopened after a failure).
async fn run_client(
    addr: SocketAddr,
    workload: Arc<Workload>,
    index: u32,
    deadline: Instant,
) -> Tally {
    let mut rng = SplitMix64::new(client_seed(index));
    let mut conn: Option<Conn> = None;
    let mut tally = Tally::default();
    for _ in 0..workload.requests_for(index) {
        let id = workload.keys.sample(&mut rng);
        if Instant::now() > deadline {
            tally.fail(format!(
                "not sent: the phase ran past {} s",
                workload.phase_limit.as_secs()
            ));
            continue;
        }
        let conn = match connected(&mut conn, addr).await {
            Ok(conn) => conn,
            Err(e) => {
                tally.fail(format!("cannot connect to {addr}: {e}"));
                continue;
            }
        };
        match timed_get_item(conn, id).await {
            Ok(latency) => tally.latencies.push(latency),
            Err(why) => tally.fail(why),
        }
    }
    tally
}

/// The open connection in `slot`, connecting first if there is none.
async fn connected(slot: &mut Option<Conn>, addr: SocketAddr) -> std::io::Result<&mut Conn> {
    if slot.is_none() {
        *slot = Some(Conn::connect(addr).await?);
    }
    slot.as_mut()
        .ok_or_else(|| std::io::Error::other("no connection"))
}

/// `GET /items/{id}`, checked to be the right item; its latency.
async fn timed_get_item(conn: &mut Conn, id: u64) -> Result<Duration, String> {
    let target = format!("/items/{id}");
    let started = Instant::now();
    let response = tokio::time::timeout(REQUEST_TIMEOUT, conn.request("GET", &target, &[]))
        .await
        .map_err(|_| {
            format!(
                "GET {target}: no answer within {} s",
                REQUEST_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| format!("GET {target}: {e}"))?;
    let latency = started.elapsed();
    if response.status != 200 {
        return Err(format!(
            "GET {target}: status {} {:?}",
            response.status,
            response.text()
        ));
    }
    if !response
        .body
        .starts_with(format!("{{\"id\":{id},").as_bytes())
    {
        return Err(format!(
            "GET {target}: wrong item in the body {:?}",
            response.text()
        ));
    }
    Ok(latency)
}

/// Keys `1..=n`, key `k` drawn with probability proportional to `1 / k^s`.
struct ZipfKeys {
    /// `cumulative[k - 1]`: the total weight of keys `1..=k`.
    cumulative: Vec<f64>,
}

impl ZipfKeys {
    fn new(n: u32, s: f64) -> ZipfKeys {
        let mut total = 0.0;
        let cumulative = (1..=n.max(1))
            .map(|k| {
                total += 1.0 / f64::from(k).powf(s);
                total
            })
            .collect();
        ZipfKeys { cumulative }
    }

    fn sample(&self, rng: &mut SplitMix64) -> u64 {
        let total = self.cumulative.last().copied().unwrap_or(0.0);
        let target = rng.next_unit() * total;
        let index = self.cumulative.partition_point(|&c| c <= target);
        index.min(self.cumulative.len() - 1) as u64 + 1
    }
}

/// A tiny, seedable pseudo-random generator (SplitMix64): reproducible
/// workloads without a `rand` dependency.
struct SplitMix64(u64);

impl SplitMix64 {
    fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn next_unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZIPF_S: f64 = 1.1;

    fn new_workload(clients: u32, requests: u64) -> Workload {
        Workload::new(clients, requests, 200, ZIPF_S, Duration::from_millis(50))
    }

    #[test]
    fn requests_are_shared_exactly_among_clients() {
        let workload = new_workload(32, 3000);
        let total: u64 = (0..32).map(|i| workload.requests_for(i)).sum();
        assert_eq!(total, 3000);
        assert_eq!(workload.requests_for(0), 94);
        assert_eq!(workload.requests_for(31), 93);
        let few = new_workload(4, 2);
        assert_eq!(
            (0..4).map(|i| few.requests_for(i)).collect::<Vec<_>>(),
            [1, 1, 0, 0]
        );
    }

    #[test]
    fn zipf_keys_stay_in_range_and_favour_the_first() {
        let keys = ZipfKeys::new(200, ZIPF_S);
        let mut rng = SplitMix64::new(1);
        let mut counts = vec![0u32; 201];
        for _ in 0..100_000 {
            let k = keys.sample(&mut rng);
            assert!((1..=200).contains(&k));
            counts[k as usize] += 1;
        }
        // Key 1 is about 2^1.1 ≈ 2.1 times as popular as key 2.
        let ratio = f64::from(counts[1]) / f64::from(counts[2]);
        assert!((1.9..2.4).contains(&ratio), "ratio {ratio}");
        assert!(counts[1] > counts[100] * 50);
    }

    #[test]
    fn same_seed_same_keys() {
        let keys = ZipfKeys::new(200, ZIPF_S);
        let draw = |seed| {
            let mut rng = SplitMix64::new(seed);
            (0..50).map(|_| keys.sample(&mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn the_lower_bound_counts_first_requests_and_what_does_not_fit() {
        let workload = new_workload(4, 2000);
        let holds_all = workload.origin_lower_bound(BoundCaches::Shared { objects: 1000 });
        let holds_none = workload.origin_lower_bound(BoundCaches::Shared { objects: 0 });
        assert_eq!(holds_none, 2000, "without room every request misses");
        assert!(
            holds_all <= 200,
            "with room for all, only first requests: {holds_all}"
        );
        let some = workload.origin_lower_bound(BoundCaches::Shared { objects: 20 });
        assert!(holds_all < some && some < holds_none);
        // Four caches each keeping 20 miss more than one keeping 80.
        let apart = workload.origin_lower_bound(BoundCaches::PerAddress {
            addresses: 4,
            objects: 20,
        });
        let shared = workload.origin_lower_bound(BoundCaches::Shared { objects: 80 });
        assert!(apart > shared, "{apart} <= {shared}");
    }

    #[test]
    fn the_best_online_cache_misses_at_least_the_lower_bound() {
        let workload = new_workload(4, 2000);
        for objects in [0, 20, 80, 1000] {
            let caches = BoundCaches::Shared { objects };
            let online = workload.origin_best_online(caches);
            let bound = workload.origin_lower_bound(caches);
            assert!(online >= bound, "{objects} objects: {online} < {bound}");
        }
        let none = BoundCaches::Shared { objects: 0 };
        assert_eq!(workload.origin_best_online(none), 2000);
        let all = BoundCaches::Shared { objects: 1000 };
        let all_keys = workload.origin_lower_bound(all);
        assert_eq!(
            workload.origin_best_online(all),
            all_keys,
            "room for every key"
        );
    }

    #[test]
    fn a_single_key_always_draws_it() {
        let keys = ZipfKeys::new(1, ZIPF_S);
        let mut rng = SplitMix64::new(3);
        assert!((0..100).all(|_| keys.sample(&mut rng) == 1));
    }
}
