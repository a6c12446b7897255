//! `ringside demo`: see what ringside does in one command, with nothing set up.
//!
//! This module owns the demo's choreography. It starts a slow sample origin
//! in-process ([`sample_origin`]), starts ringside in front of it as a child
//! process (this same executable, on free local ports), drives an identical
//! workload twice — straight at the origin, then through ringside — with the
//! keep-alive [`client`], and prints the measurements side by side
//! ([`report`]). Ringside runs as a separate process, exactly as it would in
//! production, so the demo measures the real thing, not a library call.
//!
//! Every failure (a server that does not start, requests that fail) is
//! reported in words and makes the command exit non-zero; failed requests are
//! counted in the table, never hidden.

pub mod client;
pub mod report;
pub mod sample_origin;

use client::Conn;
use report::{PhaseResult, Report, RingsideView};
use sample_origin::SampleOrigin;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The Zipf exponent of the key popularity: a few hot keys, a long tail.
const ZIPF_S: f64 = 1.1;
/// The sample origin's `max-age`, in seconds.
const MAX_AGE: u32 = 5;
/// How long ringside gets to answer on its admin port.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long ringside gets to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// One request taking longer than this counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The last lines of ringside's output kept for error messages.
const LOG_LINES_KEPT: usize = 40;

/// Options of `ringside demo`.
#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Concurrent clients, each with its own keep-alive connection.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub clients: u32,
    /// Requests in each phase, shared among the clients.
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub requests: u64,
    /// How long the sample origin takes to answer, in milliseconds.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub delay_ms: u64,
    /// Distinct items (`/items/1` ... `/items/N`) the clients ask for.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub keys: u32,
}

/// Run the demo; exit 0 only if everything worked and no request failed.
pub fn run(args: &DemoArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("ringside demo: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(demo(args));
    // The sample origin's tasks are still parked on their sockets: drop them.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("\nringside demo failed: {why}");
            ExitCode::FAILURE
        }
    }
}

/// The whole demo; `Err` says what went wrong.
async fn demo(args: &DemoArgs) -> Result<(), String> {
    let origin = SampleOrigin {
        delay: Duration::from_millis(args.delay_ms),
        max_age: MAX_AGE,
        ..SampleOrigin::default()
    };
    println!("starting the sample origin and ringside ...");
    let origin_addr = start_origin(&origin).await?;
    let mut ringside = RingsideProcess::start(origin_addr)?;
    ringside.wait_until_ready().await?;
    println!(
        "sample origin on http://{origin_addr}; ringside on http://{} (admin http://{})",
        ringside.proxy_addr, ringside.admin_addr
    );

    let workload = Arc::new(Workload::new(args));
    let without = run_phase("without ringside", origin_addr, &workload, &origin).await;
    let with = run_phase("with ringside", ringside.proxy_addr, &workload, &origin).await;
    let metrics = settled_metrics(ringside.admin_addr, with.requests).await;
    let stopped = ringside.stop().await;

    let view = metrics.as_ref().ok();
    let report = Report {
        without: &without,
        with: &with,
        ringside: view,
    };
    println!("\n{}\n\n{}", headline(args, &origin), report.render());
    ringside.print_log();
    verdict(&without, &with, metrics.err(), stopped)
}

/// What was measured, in one line above the table.
fn headline(args: &DemoArgs, origin: &SampleOrigin) -> String {
    format!(
        "ringside demo: {} requests from {} clients over {} keys (Zipf s={ZIPF_S}); \
         origin answers in {} ms, max-age {} s",
        args.requests,
        args.clients,
        args.keys,
        origin.delay.as_millis(),
        origin.max_age
    )
}

/// Bind a free local port and serve the sample origin on it in the background.
async fn start_origin(origin: &SampleOrigin) -> Result<SocketAddr, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot start the sample origin: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot start the sample origin: {e}"))?;
    tokio::spawn(sample_origin::serve(listener, origin.clone()));
    Ok(addr)
}

/// Everything that went wrong, in one message; `Ok` if nothing did.
fn verdict(
    without: &PhaseResult,
    with: &PhaseResult,
    metrics_error: Option<String>,
    stopped: Result<(), String>,
) -> Result<(), String> {
    let mut problems = Vec::new();
    if without.errors + with.errors > 0 {
        problems.push(format!(
            "{} request(s) failed (see the table)",
            without.errors + with.errors
        ));
    }
    problems.extend(metrics_error);
    problems.extend(stopped.err());
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// ringside's `/metrics`, once it has counted `requests` requests. ringside
/// counts a request just after sending its response, so the last few may
/// need a moment; after a second, take whatever it says.
async fn settled_metrics(admin: SocketAddr, requests: u64) -> Result<RingsideView, String> {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let view = fetch_metrics(admin).await?;
        if view.total() >= requests || Instant::now() > deadline {
            return Ok(view);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn fetch_metrics(admin: SocketAddr) -> Result<RingsideView, String> {
    let response = tokio::time::timeout(REQUEST_TIMEOUT, client::get(admin, "/metrics"))
        .await
        .map_err(|_| "ringside's /metrics did not answer in time".to_string())?
        .map_err(|e| format!("cannot read ringside's /metrics: {e}"))?;
    if response.status != 200 {
        return Err(format!("ringside's /metrics answered {}", response.status));
    }
    Ok(RingsideView::parse(&response.text()))
}

// ---------------------------------------------------------------------------
// The ringside child process
// ---------------------------------------------------------------------------

/// ringside, started as a child process of this executable. Dropping it
/// kills the process if it is still running.
struct RingsideProcess {
    child: Child,
    proxy_addr: SocketAddr,
    admin_addr: SocketAddr,
    /// The last lines ringside printed (stdout and stderr).
    log: Arc<Mutex<Vec<String>>>,
    /// The threads copying ringside's output into `log`.
    log_readers: Vec<std::thread::JoinHandle<()>>,
}

impl RingsideProcess {
    /// Start `ringside` on two free local ports, in front of `origin`.
    fn start(origin: SocketAddr) -> Result<RingsideProcess, String> {
        let (proxy_addr, admin_addr) = two_free_ports()?;
        let exe = std::env::current_exe()
            .map_err(|e| format!("cannot find the ringside executable: {e}"))?;
        let mut command = Command::new(&exe);
        command
            .arg("--listen")
            .arg(proxy_addr.to_string())
            .arg("--admin-listen")
            .arg(admin_addr.to_string())
            .arg("--origin")
            .arg(format!("http://{origin}"))
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // The demo must not pick up the caller's own ringside settings.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("RINGSIDE_") {
                command.env_remove(name);
            }
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start ringside ({}): {e}", exe.display()))?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut log_readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            log_readers.push(keep_lines(out, log.clone()));
        }
        if let Some(err) = child.stderr.take() {
            log_readers.push(keep_lines(err, log.clone()));
        }
        Ok(RingsideProcess {
            child,
            proxy_addr,
            admin_addr,
            log,
            log_readers,
        })
    }

    /// Wait until `/healthz` (admin up) and `/readyz` (proxy listener up)
    /// both answer 200, or fail with what was seen.
    async fn wait_until_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        for path in ["/healthz", "/readyz"] {
            self.wait_for_200(path, deadline).await?;
        }
        Ok(())
    }

    /// Poll `GET path` on the admin port until it answers 200.
    async fn wait_for_200(&mut self, path: &str, deadline: Instant) -> Result<(), String> {
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.wait_for_last_output().await;
                let why = format!("ringside exited during startup ({status})");
                return Err(self.with_log(why));
            }
            let last = match probe(self.admin_addr, path).await {
                Ok(200) => return Ok(()),
                Ok(status) => format!("status {status}"),
                Err(e) => e,
            };
            if Instant::now() > deadline {
                let why = format!(
                    "ringside did not answer 200 on http://{}{path} within {} s (last: {last})",
                    self.admin_addr,
                    STARTUP_TIMEOUT.as_secs()
                );
                return Err(self.with_log(why));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then wait; SIGKILL if it does not exit in time.
    async fn stop(&mut self) -> Result<(), String> {
        let pid = self.child.id().to_string();
        let signalled = Command::new("kill")
            .args(["-TERM", &pid])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let deadline = Instant::now() + STOP_TIMEOUT;
        while signalled && Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.wait_for_last_output().await;
                    if status.success() {
                        return Ok(());
                    }
                    return Err(format!("ringside exited with {status} after SIGTERM"));
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(_) => break,
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if signalled {
            Err(format!(
                "ringside did not exit within {} s of SIGTERM and was killed",
                STOP_TIMEOUT.as_secs()
            ))
        } else {
            Err("could not send SIGTERM to ringside (is `kill` installed?); killed it".into())
        }
    }

    /// After the process exited: give the log threads a moment to copy
    /// its last words (they end when the pipes close).
    async fn wait_for_last_output(&self) {
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline && !self.log_readers.iter().all(|t| t.is_finished()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn log_lines(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// `why`, followed by the last lines ringside printed.
    fn with_log(&self, why: String) -> String {
        let lines = self.log_lines();
        if lines.is_empty() {
            format!("{why}; it printed nothing")
        } else {
            format!("{why}; its last output:\n  {}", lines.join("\n  "))
        }
    }

    /// Show what ringside printed (warnings and errors only, at --log-level warn).
    fn print_log(&self) {
        let lines = self.log_lines();
        if !lines.is_empty() {
            println!("\nringside printed (last {} lines):", lines.len());
            for line in lines {
                println!("  {line}");
            }
        }
    }
}

impl Drop for RingsideProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Two distinct free ports on 127.0.0.1 (both bound at once, then released).
fn two_free_ports() -> Result<(SocketAddr, SocketAddr), String> {
    let bind = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| Ok((l.local_addr()?, l)))
            .map_err(|e| format!("cannot find a free local port: {e}"))
    };
    let (first, _held) = bind()?;
    let (second, _also_held) = bind()?;
    Ok((first, second))
}

/// Keep the last lines of `output` in `log`, on a thread of their own so
/// that the child never blocks on a full pipe.
fn keep_lines(
    output: impl Read + Send + 'static,
    log: Arc<Mutex<Vec<String>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines().map_while(Result::ok) {
            if let Ok(mut log) = log.lock() {
                if log.len() == LOG_LINES_KEPT {
                    log.remove(0);
                }
                log.push(line);
            }
        }
    })
}

/// The status of `GET path`, or why there was none.
async fn probe(addr: SocketAddr, path: &str) -> Result<u16, String> {
    match tokio::time::timeout(Duration::from_secs(1), client::get(addr, path)).await {
        Ok(Ok(response)) => Ok(response.status),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

// ---------------------------------------------------------------------------
// The workload
// ---------------------------------------------------------------------------

/// What every phase sends: the same requests, from the same clients, for the
/// same keys in the same order (each client's random sequence is seeded by
/// its number).
struct Workload {
    clients: u32,
    requests: u64,
    keys: ZipfKeys,
    /// Past this much time, a phase gives up on its remaining requests.
    phase_limit: Duration,
}

impl Workload {
    fn new(args: &DemoArgs) -> Workload {
        // Generous: three times what the slow direct phase should take.
        let per_client = args.requests.div_ceil(u64::from(args.clients));
        let per_client = u32::try_from(per_client).unwrap_or(u32::MAX);
        let expected = Duration::from_millis(args.delay_ms).saturating_mul(per_client);
        Workload {
            clients: args.clients,
            requests: args.requests,
            keys: ZipfKeys::new(args.keys, ZIPF_S),
            phase_limit: Duration::from_secs(60).max(expected.saturating_mul(3)),
        }
    }

    /// Client `index`'s share of the requests.
    fn requests_for(&self, index: u32) -> u64 {
        let clients = u64::from(self.clients);
        let extra = u64::from(u64::from(index) < self.requests % clients);
        self.requests / clients + extra
    }
}

/// Run the workload against `addr`; the origin's counter says how many
/// requests reached it.
async fn run_phase(
    name: &str,
    addr: SocketAddr,
    workload: &Arc<Workload>,
    origin: &SampleOrigin,
) -> PhaseResult {
    println!(
        "{name}: sending {} requests to {addr} ...",
        workload.requests
    );
    let hits_before = origin.hits();
    let started = Instant::now();
    let deadline = started + workload.phase_limit;
    let clients: Vec<_> = (0..workload.clients)
        .map(|index| tokio::spawn(run_client(addr, workload.clone(), index, deadline)))
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

/// One client: its share of the requests, one after the other, on one
/// keep-alive connection (reopened after a failure).
async fn run_client(
    addr: SocketAddr,
    workload: Arc<Workload>,
    index: u32,
    deadline: Instant,
) -> Tally {
    let mut rng = SplitMix64::new(0x5eed_0000 + u64::from(index));
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

    fn args(clients: u32, requests: u64) -> DemoArgs {
        DemoArgs {
            clients,
            requests,
            delay_ms: 50,
            keys: 200,
        }
    }

    #[test]
    fn requests_are_shared_exactly_among_clients() {
        let workload = Workload::new(&args(32, 3000));
        let total: u64 = (0..32).map(|i| workload.requests_for(i)).sum();
        assert_eq!(total, 3000);
        assert_eq!(workload.requests_for(0), 94);
        assert_eq!(workload.requests_for(31), 93);
        let few = Workload::new(&args(4, 2));
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
    fn a_single_key_always_draws_it() {
        let keys = ZipfKeys::new(1, ZIPF_S);
        let mut rng = SplitMix64::new(3);
        assert!((0..100).all(|_| keys.sample(&mut rng) == 1));
    }
}
