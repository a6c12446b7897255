//! `ringside demo`: see what ringside does in one command, with nothing set up.
//!
//! This module owns the demo's choreography. It starts a slow sample origin
//! in-process ([`sample_origin`]), then a local ringside cluster in front of
//! it ([`cluster`]: `--nodes` child processes of this same executable, on
//! free local ports, sharing one cache on a consistent-hash ring), and drives
//! a Zipf workload with clients spread over the nodes, as app replicas would
//! each talk to their own sidecar ([`workload`]). It then runs the same
//! workload against the same number of independent ringside processes
//! (cluster disabled) and, unless `--no-baseline`, straight at the origin,
//! and prints per-node counters and a comparison table ([`report`]).
//! Ringside runs as separate processes, exactly as in production, so the
//! demo measures the real thing; its numbers come from the origin's own
//! counter and the nodes' `/metrics`.
//!
//! Every failure (a server that does not start, requests that fail) is
//! reported in words and makes the command exit non-zero; failed requests are
//! counted in the table, never hidden.

pub mod client;
pub mod cluster;
pub mod process;
pub mod prometheus;
pub mod report;
pub mod sample_origin;
pub mod workload;

use cluster::{NodeOptions, Nodes};
use report::{PhaseResult, RingsideView, Setup};
use sample_origin::SampleOrigin;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use workload::Workload;

/// The Zipf exponent of the key popularity: a few hot keys, a long tail.
const ZIPF_S: f64 = 1.1;
/// The sample origin's `max-age`, in seconds.
const MAX_AGE: u32 = 5;

/// Options of `ringside demo`.
#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Concurrent clients, each with its own keep-alive connection, spread over the nodes.
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
    /// ringside nodes (cluster members, and independent caches for comparison).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub nodes: u32,
    /// Skip the phase without ringside (clients straight at the slow origin).
    #[arg(long)]
    pub no_baseline: bool,
    /// Listen on consecutive local ports from this one (the sample origin,
    /// then each node's app, admin and peer ports: 1 + 3 x --nodes ports,
    /// reused by each setup in turn), for a machine that allows only a known
    /// range. Default: free ports the OS picks.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub base_port: Option<u16>,
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

/// What one ringside setup (cluster or independent caches) measured.
pub struct NodesRun {
    pub phase: PhaseResult,
    /// Each node's `/metrics` after the phase; empty if unreadable.
    pub views: Vec<RingsideView>,
    /// Problems reading metrics or stopping the nodes.
    pub problems: Vec<String>,
    /// The CPU time the nodes used during the phase, all together (None
    /// where `/proc` cannot be read).
    pub cpu: Option<Duration>,
}

/// The whole demo; `Err` says what went wrong.
async fn demo(args: &DemoArgs) -> Result<(), String> {
    let origin = SampleOrigin {
        delay: Duration::from_millis(args.delay_ms),
        max_age: MAX_AGE,
        ..SampleOrigin::default()
    };
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find the ringside executable: {e}"))?;
    let n = args.nodes as usize;
    if let Some(base) = args.base_port {
        process::check_ports_from(base, 1 + 3 * n)?;
    }
    let origin_port = args.base_port.unwrap_or(0);
    let origin_addr = start_origin(&origin, origin_port).await?;
    println!("sample origin on http://{origin_addr}");
    let workload = Arc::new(Workload::new(
        args.clients,
        args.requests,
        args.keys,
        ZIPF_S,
        origin.delay,
    ));
    let cluster_opts = NodeOptions {
        base_port: args.base_port.map(|p| p + 1),
        ..NodeOptions::default()
    };
    let independent_opts = NodeOptions {
        clustered: false,
        ..cluster_opts.clone()
    };
    let cluster_name = format!("{n}-node cluster");
    let independent_name = format!("{n} independent caches");
    let cluster = run_nodes(
        &cluster_name,
        &exe,
        origin_addr,
        n,
        &cluster_opts,
        &workload,
        &origin,
    )
    .await?;
    let independent = run_nodes(
        &independent_name,
        &exe,
        origin_addr,
        n,
        &independent_opts,
        &workload,
        &origin,
    )
    .await?;
    let baseline = match args.no_baseline {
        true => None,
        false => Some(workload::run_phase("no cache", &[origin_addr], &workload, &origin).await),
    };

    println!("\n{}\n", headline(args, &origin));
    let setups = report_setups(
        (&cluster_name, &cluster),
        (&independent_name, &independent),
        baseline.as_ref(),
    );
    let problems = [cluster.problems.clone(), independent.problems.clone()].concat();
    verdict(&setups, problems)
}

/// Print the nodes' tables and the comparison; the setups compared.
fn report_setups<'a>(
    (cluster_name, cluster): (&'a str, &'a NodesRun),
    (independent_name, independent): (&'a str, &'a NodesRun),
    baseline: Option<&'a report::PhaseResult>,
) -> Vec<Setup<'a>> {
    println!("{}", report::node_table(cluster_name, &cluster.views));
    println!(
        "{}",
        report::node_table(independent_name, &independent.views)
    );
    let mut setups = vec![
        Setup {
            name: cluster_name,
            phase: &cluster.phase,
            nodes: Some(&cluster.views),
        },
        Setup {
            name: independent_name,
            phase: &independent.phase,
            nodes: Some(&independent.views),
        },
    ];
    if let Some(phase) = baseline {
        setups.push(Setup {
            name: "no cache",
            phase,
            nodes: None,
        });
    }
    print!("{}", report::comparison(&setups));
    setups
}

/// Start `n` nodes, run the workload over them, read their metrics, stop them.
pub async fn run_nodes(
    name: &str,
    exe: &Path,
    origin_addr: SocketAddr,
    n: usize,
    options: &NodeOptions,
    workload: &Arc<Workload>,
    origin: &SampleOrigin,
) -> Result<NodesRun, String> {
    println!("{name}: starting {n} ringside process(es) ...");
    let mut nodes = Nodes::start(exe, origin_addr, n, options).await?;
    let cpu_before = nodes.cpu_time();
    let phase = workload::run_phase(name, &nodes.proxy_addrs(), workload, origin).await;
    let cpu = nodes
        .cpu_time()
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    let mut problems = Vec::new();
    let views = nodes
        .settled_metrics(phase.requests)
        .await
        .unwrap_or_else(|e| {
            problems.push(e);
            Vec::new()
        });
    problems.extend(nodes.stop().await.err());
    nodes.print_logs();
    Ok(NodesRun {
        phase,
        views,
        problems,
        cpu,
    })
}

/// What was measured, in one line above the tables.
fn headline(args: &DemoArgs, origin: &SampleOrigin) -> String {
    format!(
        "ringside demo: {} requests from {} clients (spread over {} nodes) over {} keys \
         (Zipf s={ZIPF_S}); origin answers in {} ms, max-age {} s",
        args.requests,
        args.clients,
        args.nodes,
        args.keys,
        origin.delay.as_millis(),
        origin.max_age
    )
}

/// Bind local `port` (0: a free one) and serve the sample origin on it in
/// the background.
pub async fn start_origin(origin: &SampleOrigin, port: u16) -> Result<SocketAddr, String> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| match port {
            0 => format!("cannot start the sample origin: {e}"),
            _ => format!("--base-port {port}: cannot start the sample origin on it: {e}"),
        })?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot start the sample origin: {e}"))?;
    tokio::spawn(sample_origin::serve(listener, origin.clone()));
    Ok(addr)
}

/// Everything that went wrong, in one message; `Ok` if nothing did.
fn verdict(setups: &[Setup], mut problems: Vec<String>) -> Result<(), String> {
    let failed: u64 = setups.iter().map(|s| s.phase.errors).sum();
    if failed > 0 {
        problems.insert(0, format!("{failed} request(s) failed (see the table)"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}
