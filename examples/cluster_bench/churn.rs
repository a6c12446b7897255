//! Membership changes under load (benches/README.md, "Rolling restart"):
//!
//! - `rolling`: a warm 3-node cluster (static membership) under a steady
//!   Zipf load; each node in turn is taken out of the load, SIGTERMed and
//!   started again on its address, put back, and given `--gap-secs`;
//! - `scale-up`: the same load on 3 nodes with etcd membership, and a 4th
//!   node joins (and takes its share of the load);
//! - `double-fills`: cold keys asked on every node at once, and again a
//!   moment later, while a member joins and while one leaves (etcd).
//!
//! Each runs twice: with handoff and previous-owner lookups on (the
//! defaults) and off (`handoff.max_bytes: 0`, `previous_owner_window: 0s`).
//! Origin requests come from the sample origin's own counter.

use super::etcd::Etcd;
use parking_lot::RwLock;
use ringside::demo::client;
use ringside::demo::cluster::{Membership, NodeOptions, Nodes};
use ringside::demo::process::ringside_beside_examples;
use ringside::demo::sample_origin::SampleOrigin;
use ringside::demo::workload::{Steady, Targets, Workload};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

#[derive(clap::Args, Clone)]
pub struct ChurnArgs {
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Distinct items; all of them fit in the cluster (warm cache).
    #[arg(long, default_value_t = 2000)]
    keys: u32,
    #[arg(long, default_value_t = 4096)]
    body_bytes: usize,
    #[arg(long, default_value_t = 1.0)]
    zipf_s: f64,
    /// Steady clients, spread over the nodes that are up.
    #[arg(long, default_value_t = 16)]
    clients: u32,
    /// Requests per second of each steady client.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Seconds measured before the change, and after it.
    #[arg(long, default_value_t = 10)]
    settle_secs: u64,
    /// Seconds between one node's restart (or the join) and the next step.
    #[arg(long, default_value_t = 5)]
    gap_secs: u64,
    /// The origin's answer time for `double-fills` (fills straddle the change).
    #[arg(long, default_value_t = 1000)]
    fill_delay_ms: u64,
    /// cache.capacity of each node.
    #[arg(long, default_value = "64MiB")]
    capacity: String,
    /// `rolling`: etcd membership, each node coming back on new addresses
    /// (as pods do), instead of static membership on the same address.
    #[arg(long)]
    new_addresses: bool,
    /// The ringside binary (default: next to this example's directory).
    #[arg(long)]
    ringside: Option<PathBuf>,
}

/// What one run under load measured.
struct LoadResult {
    /// Origin requests per second before, during and after the change.
    rates: [f64; 3],
    during_secs: f64,
    /// Origin requests during and after the change beyond the rate before.
    extra: f64,
    answered: u64,
    errors: u64,
    first_error: Option<String>,
}

/// `rolling` and `scale-up`: both modes, a table, and the RESULT line.
pub async fn under_load(args: ChurnArgs, scale_up: bool) -> Result<(), String> {
    let name = match (scale_up, args.new_addresses) {
        (true, _) => "scale-up",
        (false, false) => "rolling",
        (false, true) => "rolling-new-addresses",
    };
    let mut results = Vec::new();
    for handoff in [true, false] {
        let result = match scale_up {
            true => scale_up_once(&args, handoff).await?,
            false => rolling_once(&args, handoff).await?,
        };
        results.push((handoff, result));
    }
    println!(
        "\n{name}: {} nodes, {} keys of {} bytes (Zipf s={}), {} clients x {} req/s, warm cache",
        args.nodes, args.keys, args.body_bytes, args.zipf_s, args.clients, args.rate
    );
    println!("handoff + previous owner | origin req/s before | during | after | during (s) | extra origin requests | client requests | errors");
    for (handoff, r) in &results {
        println!(
            "{:>24} | {:>19.1} | {:>6.1} | {:>5.1} | {:>10.1} | {:>21.0} | {:>15} | {}",
            if *handoff { "on" } else { "off" },
            r.rates[0],
            r.rates[1],
            r.rates[2],
            r.during_secs,
            r.extra,
            r.answered,
            r.errors
        );
    }
    let (on, off) = (&results[0].1, &results[1].1);
    let ratio = on.extra.max(0.0) / off.extra.max(1.0);
    println!(
        "RESULT {name} extra_on={:.0} extra_off={:.0} ratio={ratio:.3} errors_on={} errors_off={}",
        on.extra, off.extra, on.errors, off.errors
    );
    let errors: Vec<String> = results
        .iter()
        .filter_map(|(_, r)| r.first_error.clone())
        .collect();
    match errors.is_empty() {
        true => Ok(()),
        false => Err(format!("requests failed, first: {}", errors.join("; "))),
    }
}

async fn rolling_once(args: &ChurnArgs, handoff: bool) -> Result<LoadResult, String> {
    let etcd = match args.new_addresses {
        true => Some(Etcd::start().await?),
        false => None,
    };
    let membership = match &etcd {
        Some(etcd) => Membership::Etcd {
            endpoint: etcd.url.clone(),
            prefix: format!("/ringside-rolling-{}/", u8::from(handoff)),
        },
        None => Membership::Static,
    };
    let options = node_options(args, handoff, membership);
    let mut run = Loaded::start(args, &options).await?;
    run.wait(args.settle_secs).await;
    run.mark();
    for i in 0..args.nodes {
        println!("  restarting node {}", i + 1);
        run.take_out(i);
        match etcd {
            Some(_) => run.nodes.replace(i).await?,
            None => run.nodes.restart(i).await?,
        }
        run.put_back(i);
        run.nodes.wait_for_ring(args.nodes).await?;
        run.wait(args.gap_secs).await;
    }
    run.finish(args.settle_secs).await
}

async fn scale_up_once(args: &ChurnArgs, handoff: bool) -> Result<LoadResult, String> {
    let etcd = Etcd::start().await?;
    let membership = Membership::Etcd {
        endpoint: etcd.url.clone(),
        prefix: format!("/ringside-bench-{}/", u8::from(handoff)),
    };
    let options = node_options(args, handoff, membership);
    let mut run = Loaded::start(args, &options).await?;
    run.wait(args.settle_secs).await;
    run.mark();
    println!("  adding node {}", args.nodes + 1);
    run.nodes.add().await?;
    let added = run.nodes.nodes.len() - 1;
    run.put_back(added);
    run.nodes.wait_for_ring(args.nodes + 1).await?;
    run.wait(args.gap_secs).await;
    run.finish(args.settle_secs).await
}

fn node_options(args: &ChurnArgs, handoff: bool, membership: Membership) -> NodeOptions {
    NodeOptions {
        capacity: args.capacity.clone(),
        handoff,
        membership,
        ..NodeOptions::default()
    }
}

/// A warm cluster under a steady load, with the origin counter read at
/// each mark: start, change begins, change over, end.
struct Loaded {
    nodes: Nodes,
    targets: Targets,
    steady: Steady,
    origin: SampleOrigin,
    marks: Vec<(Instant, u64)>,
}

impl Loaded {
    async fn start(args: &ChurnArgs, options: &NodeOptions) -> Result<Loaded, String> {
        let origin = SampleOrigin {
            delay: Duration::from_millis(2),
            max_age: 3600,
            body_bytes: args.body_bytes,
            ..SampleOrigin::default()
        };
        let origin_addr = ringside::demo::start_origin(&origin, 0).await?;
        let exe = ringside_beside_examples(args.ringside.as_deref())?;
        let nodes = Nodes::start(&exe, origin_addr, args.nodes, options).await?;
        let workload = Arc::new(Workload::new(
            args.clients,
            0,
            args.keys,
            args.zipf_s,
            origin.delay,
        ));
        let failed = workload.warm(&nodes.proxy_addrs()).await;
        if failed > 0 {
            return Err(format!("{failed} warm-up request(s) failed"));
        }
        let targets: Targets = Arc::new(RwLock::new(nodes.proxy_addrs()));
        let steady = workload.steady(targets.clone(), args.rate);
        let mut run = Loaded {
            nodes,
            targets,
            steady,
            origin,
            marks: Vec::new(),
        };
        // The load settles in (connections open) before the count starts.
        tokio::time::sleep(Duration::from_secs(2)).await;
        run.mark();
        Ok(run)
    }

    fn mark(&mut self) {
        self.marks.push((Instant::now(), self.origin.hits()));
    }

    /// Let the load run `secs`.
    async fn wait(&mut self, secs: u64) {
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }

    /// No more load to node `i` (as its readiness probe failing would do).
    fn take_out(&self, i: usize) {
        let addr = self.nodes.nodes[i].proxy_addr;
        self.targets.write().retain(|a| *a != addr);
    }

    /// Node `i` takes load again.
    fn put_back(&self, i: usize) {
        let addr = self.nodes.nodes[i].proxy_addr;
        let mut targets = self.targets.write();
        if !targets.contains(&addr) {
            targets.push(addr);
            targets.sort();
        }
    }

    /// The change is over: measure `after_secs` more, stop everything.
    async fn finish(mut self, after_secs: u64) -> Result<LoadResult, String> {
        self.mark();
        tokio::time::sleep(Duration::from_secs(after_secs)).await;
        self.mark();
        let steady = self.steady.stop().await;
        self.nodes.stop().await?;
        let m = &self.marks;
        let rate = |a: usize, b: usize| {
            let secs = (m[b].0 - m[a].0).as_secs_f64();
            (m[b].1 - m[a].1) as f64 / secs
        };
        let rates = [rate(0, 1), rate(1, 2), rate(2, 3)];
        let since_change = (m[3].0 - m[1].0).as_secs_f64();
        Ok(LoadResult {
            rates,
            during_secs: (m[2].0 - m[1].0).as_secs_f64(),
            extra: (m[3].1 - m[1].1) as f64 - rates[0] * since_change,
            answered: steady.answered,
            errors: steady.errors,
            first_error: steady.first_error,
        })
    }
}

/// Origin fetches per cold key while the cluster changed.
struct Fills {
    keys: u64,
    fetches: u64,
    errors: u64,
}

impl Fills {
    fn per_key(&self) -> f64 {
        self.fetches as f64 / self.keys.max(1) as f64
    }
}

/// `double-fills`: both modes, a table, the RESULT line.
pub async fn double_fills(args: ChurnArgs) -> Result<(), String> {
    let mut rows = Vec::new();
    for handoff in [true, false] {
        rows.push((handoff, double_fills_once(&args, handoff).await?));
    }
    println!(
        "\ndouble fills: {} nodes (etcd), cold keys asked on every node at once and again {} ms later, \
         origin answering in {} ms; one member joins, then one leaves",
        args.nodes, ROUND_GAP.as_millis(), args.fill_delay_ms
    );
    println!("previous owner | join: keys | origin fetches | per key | leave: keys | origin fetches | per key");
    for (handoff, (join, leave)) in &rows {
        println!(
            "{:>14} | {:>10} | {:>14} | {:>7.3} | {:>11} | {:>14} | {:>7.3}",
            if *handoff { "on" } else { "off" },
            join.keys,
            join.fetches,
            join.per_key(),
            leave.keys,
            leave.fetches,
            leave.per_key()
        );
    }
    let (on, off) = (&rows[0].1, &rows[1].1);
    println!(
        "RESULT double-fills join_on={:.3} leave_on={:.3} join_off={:.3} leave_off={:.3}",
        on.0.per_key(),
        on.1.per_key(),
        off.0.per_key(),
        off.1.per_key()
    );
    let errors: u64 = rows.iter().map(|(_, (j, l))| j.errors + l.errors).sum();
    match errors {
        0 => Ok(()),
        n => Err(format!("{n} cold-key request(s) failed")),
    }
}

/// How long after its first round a cold key is asked again.
const ROUND_GAP: Duration = Duration::from_millis(300);

async fn double_fills_once(args: &ChurnArgs, handoff: bool) -> Result<(Fills, Fills), String> {
    let etcd = Etcd::start().await?;
    let origin = SampleOrigin {
        delay: Duration::from_millis(args.fill_delay_ms),
        max_age: 3600,
        ..SampleOrigin::default()
    };
    let origin_addr = ringside::demo::start_origin(&origin, 0).await?;
    let membership = Membership::Etcd {
        endpoint: etcd.url.clone(),
        prefix: "/ringside-bench-fills/".into(),
    };
    let options = NodeOptions {
        // The leaving node answers peers for 2 s after SIGTERM.
        shutdown_delay: Duration::from_secs(2),
        ..node_options(args, handoff, membership)
    };
    let exe = ringside_beside_examples(args.ringside.as_deref())?;
    let mut nodes = Nodes::start(&exe, origin_addr, args.nodes, &options).await?;
    let targets: Targets = Arc::new(RwLock::new(nodes.proxy_addrs()));

    let probe = Probe::start(targets.clone(), 1_000_000, origin.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    nodes.add().await?;
    let added = nodes.nodes[nodes.nodes.len() - 1].proxy_addr;
    targets.write().push(added);
    nodes.wait_for_ring(args.nodes + 1).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let join = probe.stop().await;

    let probe = Probe::start(targets.clone(), 2_000_000, origin.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let leaving = nodes.nodes[1].proxy_addr;
    targets.write().retain(|a| *a != leaving);
    nodes.signal_stop(1);
    nodes.wait_for_ring_except(args.nodes, &[1]).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let leave = probe.stop().await;
    nodes.nodes[1].wait_stopped().await?;
    nodes.nodes.remove(1);
    nodes.stop().await?;
    Ok((join, leave))
}

/// Every 20 ms a new cold key, asked on every target at once and again
/// [`ROUND_GAP`] later.
struct Probe {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(u64, u64)>,
    origin: SampleOrigin,
    hits_before: u64,
}

impl Probe {
    fn start(targets: Targets, first_id: u64, origin: SampleOrigin) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let hits_before = origin.hits();
        let task = tokio::spawn(probe(targets, first_id, stop.clone()));
        Probe {
            stop,
            task,
            origin,
            hits_before,
        }
    }

    /// Stop asking for new keys, wait for every request, count.
    async fn stop(self) -> Fills {
        self.stop.store(true, Ordering::Relaxed);
        let (keys, errors) = self.task.await.unwrap_or((0, 1));
        Fills {
            keys,
            fetches: self.origin.hits() - self.hits_before,
            errors,
        }
    }
}

async fn probe(targets: Targets, first_id: u64, stop: Arc<AtomicBool>) -> (u64, u64) {
    let errors = Arc::new(AtomicU64::new(0));
    let mut requests = Vec::new();
    let mut ticks = tokio::time::interval(Duration::from_millis(20));
    let mut id = first_id;
    while !stop.load(Ordering::Relaxed) {
        ticks.tick().await;
        id += 1;
        let errors = errors.clone();
        let targets = targets.clone();
        requests.push(tokio::spawn(async move {
            for round in 0..2 {
                if round == 1 {
                    tokio::time::sleep(ROUND_GAP).await;
                }
                let now: Vec<SocketAddr> = targets.read().clone();
                let asks = now.into_iter().map(|addr| async move {
                    matches!(client::get(addr, &format!("/items/{id}")).await, Ok(r) if r.status == 200)
                });
                let failed = futures::future::join_all(asks).await.iter().filter(|ok| !**ok).count();
                errors.fetch_add(failed as u64, Ordering::Relaxed);
            }
        }));
    }
    let keys = requests.len() as u64;
    for request in requests {
        let _ = request.await;
    }
    (keys, errors.load(Ordering::Relaxed))
}
