//! Cluster benchmarks for ringside (not tests): see benches/README.md.
//!
//!   cargo build --release --bin ringside --example cluster_bench
//!   target/release/examples/cluster_bench origin --listen 127.0.0.1:8000
//!       the demo's sample origin, for benches/peer_hop.sh
//!   target/release/examples/cluster_bench zipf
//!       origin requests and hit ratio of a 3-node cluster vs 3 independent
//!       caches, for a Zipf workload over more keys than one node holds
//!   target/release/examples/cluster_bench rolling | scale-up | double-fills
//!       origin requests while the membership changes, with handoff and
//!       previous-owner lookups on and off (see `churn.rs`)
//!   target/release/examples/cluster_bench writes
//!       read-your-writes under load, nodes killed (see `writes.rs`)
//!   target/release/examples/cluster_bench writes-beside-hits
//!       what a stream of writes costs one node's hits (`writes_beside_hits.rs`)
//!
//! Built on the demo's machinery (`ringside::demo`): the same sample origin,
//! the same child-process nodes, the same workload and counters.

mod churn;
mod etcd;
mod writes;
mod writes_beside_hits;

use clap::{Parser, Subcommand};
use ringside::demo::cluster::NodeOptions;
use ringside::demo::process::ringside_beside_examples;
use ringside::demo::report::{self, Setup};
use ringside::demo::sample_origin::{self, SampleOrigin};
use ringside::demo::workload::{BoundCaches, Workload};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the sample origin until killed.
    Origin {
        #[arg(long, default_value = "127.0.0.1:8000")]
        listen: String,
        #[arg(long, default_value_t = 20)]
        delay_ms: u64,
        #[arg(long, default_value_t = 3600)]
        max_age: u32,
        /// Pad every item to about this many bytes.
        #[arg(long, default_value_t = 1024)]
        body_bytes: usize,
    },
    /// Zipf workload over a key space larger than one node's capacity.
    Zipf(ZipfArgs),
    /// Restart every node in turn under a steady load (static membership).
    Rolling(churn::ChurnArgs),
    /// Add a node under a steady load (etcd membership).
    ScaleUp(churn::ChurnArgs),
    /// Cold keys on every node while a member joins and one leaves (etcd).
    DoubleFills(churn::ChurnArgs),
    /// Read-your-writes under load, one node killed at a time.
    Writes(writes::WritesArgs),
    /// Hits of one node alone and beside a stream of writes.
    WritesBesideHits(writes_beside_hits::Args),
}

#[derive(clap::Args)]
struct ZipfArgs {
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// cache.capacity of each node.
    #[arg(long, default_value = "4MiB")]
    capacity: String,
    #[arg(long, default_value_t = 16 * 1024)]
    body_bytes: usize,
    #[arg(long, default_value_t = 1500)]
    keys: u32,
    #[arg(long, default_value_t = 1.0)]
    zipf_s: f64,
    #[arg(long, default_value_t = 60_000)]
    requests: u64,
    #[arg(long, default_value_t = 24)]
    clients: u32,
    #[arg(long, default_value_t = 1)]
    delay_ms: u64,
    /// cluster.hot.fraction of the cluster's nodes.
    #[arg(long, default_value_t = 0.1)]
    hot_fraction: f64,
    /// cluster.hot.min_rate (requests/s on one node) of the cluster's nodes.
    #[arg(long, default_value_t = 1.0)]
    hot_min_rate: f64,
    /// Proxy worker threads of every node (both setups).
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// The ringside binary (default: next to this example's directory).
    #[arg(long)]
    ringside: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let outcome = match cli.command {
        Cmd::Origin {
            listen,
            delay_ms,
            max_age,
            body_bytes,
        } => runtime.block_on(origin(listen, delay_ms, max_age, body_bytes)),
        Cmd::Zipf(args) => runtime.block_on(zipf(args)),
        Cmd::Rolling(args) => runtime.block_on(churn::under_load(args, false)),
        Cmd::ScaleUp(args) => runtime.block_on(churn::under_load(args, true)),
        Cmd::DoubleFills(args) => runtime.block_on(churn::double_fills(args)),
        Cmd::Writes(args) => runtime.block_on(writes::run(args)),
        Cmd::WritesBesideHits(args) => runtime.block_on(writes_beside_hits::run(args)),
    };
    runtime.shutdown_timeout(Duration::from_millis(100));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("cluster_bench: {why}");
            ExitCode::FAILURE
        }
    }
}

/// The lower bounds on origin requests of both setups, and what the best
/// online cache (which knows each key's popularity in advance) would make.
struct Bounds {
    objects_per_node: u64,
    cluster: u64,
    independent: u64,
    cluster_online: u64,
    independent_online: u64,
}

/// How many objects fit a node (capacity over the mean weight of what the
/// independent caches, full at the end, hold), and the best either setup
/// could do with that room: the cluster keeps each key once in its
/// members' own areas (the hot area holds copies), each independent cache
/// keeps its own.
fn lower_bounds(
    args: &ZipfArgs,
    workload: &Workload,
    independent: &[report::RingsideView],
) -> Result<Bounds, String> {
    let capacity = ringside::config::parse_size(&args.capacity)
        .ok_or_else(|| format!("bad --capacity {:?}", args.capacity))?;
    let bytes: u64 = independent.iter().map(|v| v.cache_bytes).sum();
    let entries: u64 = independent.iter().map(|v| v.cache_entries).sum();
    let weight = bytes.checked_div(entries).unwrap_or(1).max(1);
    let objects_per_node = capacity / weight;
    let own_area = (capacity as f64 * (1.0 - args.hot_fraction)) as u64 / weight;
    let nodes = args.nodes as u64;
    let cluster = BoundCaches::Shared {
        objects: own_area * nodes,
    };
    let independent = BoundCaches::PerAddress {
        addresses: args.nodes,
        objects: objects_per_node,
    };
    Ok(Bounds {
        objects_per_node,
        cluster: workload.origin_lower_bound(cluster),
        independent: workload.origin_lower_bound(independent),
        cluster_online: workload.origin_best_online(cluster),
        independent_online: workload.origin_best_online(independent),
    })
}

async fn origin(
    listen: String,
    delay_ms: u64,
    max_age: u32,
    body_bytes: usize,
) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let opts = SampleOrigin {
        delay: Duration::from_millis(delay_ms),
        max_age,
        body_bytes,
        ..SampleOrigin::default()
    };
    println!("sample origin on http://{listen}");
    sample_origin::serve(listener, opts).await;
    Ok(())
}

async fn zipf(args: ZipfArgs) -> Result<(), String> {
    let exe = ringside_beside_examples(args.ringside.as_deref())?;
    let origin = SampleOrigin {
        delay: Duration::from_millis(args.delay_ms),
        max_age: 3600,
        body_bytes: args.body_bytes,
        ..SampleOrigin::default()
    };
    let origin_addr = ringside::demo::start_origin(&origin, 0).await?;
    let workload = Arc::new(Workload::new(
        args.clients,
        args.requests,
        args.keys,
        args.zipf_s,
        origin.delay,
    ));
    let cluster_opts = NodeOptions {
        clustered: true,
        capacity: args.capacity.clone(),
        hot_fraction: args.hot_fraction,
        hot_min_rate: args.hot_min_rate,
        threads: args.threads,
        ..NodeOptions::default()
    };
    let independent_opts = NodeOptions {
        clustered: false,
        ..cluster_opts.clone()
    };
    let n = args.nodes;
    let (cluster_name, independent_name) = (
        format!("{n}-node cluster"),
        format!("{n} independent caches"),
    );
    let run = |name: String, opts: NodeOptions| {
        let (exe, workload, origin) = (exe.clone(), workload.clone(), origin.clone());
        async move {
            ringside::demo::run_nodes(&name, &exe, origin_addr, n, &opts, &workload, &origin).await
        }
    };
    let cluster = run(cluster_name.clone(), cluster_opts).await?;
    let independent = run(independent_name.clone(), independent_opts).await?;

    println!(
        "\nzipf: {} requests from {} clients over {} nodes; {} keys of {} bytes (Zipf s={}); \
         capacity {} per node; hot fraction {} and min rate {}/s in the cluster",
        args.requests,
        args.clients,
        n,
        args.keys,
        args.body_bytes,
        args.zipf_s,
        args.capacity,
        args.hot_fraction,
        args.hot_min_rate
    );
    println!("\n{}", report::node_table(&cluster_name, &cluster.views));
    println!(
        "{}",
        report::node_table(&independent_name, &independent.views)
    );
    let setups = [
        Setup {
            name: &cluster_name,
            phase: &cluster.phase,
            nodes: Some(&cluster.views),
        },
        Setup {
            name: &independent_name,
            phase: &independent.phase,
            nodes: Some(&independent.views),
        },
    ];
    print!("{}", report::comparison(&setups));
    let ratio =
        cluster.phase.origin_requests as f64 / independent.phase.origin_requests.max(1) as f64;
    let bounds = lower_bounds(&args, &workload, &independent.views)?;
    println!(
        "\nlower bound on origin requests (each setup holding its best set: the most requested \
         keys that fit, {} objects per node):\n  cluster {} (measured {:.3}x of it)\n  \
         independent {} (measured {:.3}x of it)",
        bounds.objects_per_node,
        bounds.cluster,
        cluster.phase.origin_requests as f64 / bounds.cluster.max(1) as f64,
        bounds.independent,
        independent.phase.origin_requests as f64 / bounds.independent.max(1) as f64,
    );
    let cpu_per_request = |run: &ringside::demo::NodesRun| {
        run.cpu
            .map(|cpu| cpu.as_secs_f64() * 1e6 / run.phase.requests.max(1) as f64)
    };
    let (cluster_cpu, independent_cpu) = (cpu_per_request(&cluster), cpu_per_request(&independent));
    if let (Some(c), Some(i)) = (cluster_cpu, independent_cpu) {
        println!(
            "CPU time of the nodes per request (user and system): cluster {c:.1} us, \
             independent {i:.1} us ({:.2}x)",
            c / i
        );
    }
    let of = |measured: u64, reference: u64| measured as f64 / reference.max(1) as f64;
    println!(
        "best online cache (each key's popularity known in advance, nothing learnt):\n  \
         cluster {} ({:.3}x the bound; measured {:.3}x of it)\n  \
         independent {} ({:.3}x the bound; measured {:.3}x of it)",
        bounds.cluster_online,
        of(bounds.cluster_online, bounds.cluster),
        of(cluster.phase.origin_requests, bounds.cluster_online),
        bounds.independent_online,
        of(bounds.independent_online, bounds.independent),
        of(independent.phase.origin_requests, bounds.independent_online),
    );
    println!(
        "RESULT origin_requests cluster={} independent={} ratio={ratio:.3} hit_ratio cluster={:.3} independent={:.3} bound cluster={} independent={} best_online cluster={} independent={} cpu_us cluster={:.1} independent={:.1} time cluster={:.1}s independent={:.1}s",
        cluster.phase.origin_requests,
        independent.phase.origin_requests,
        setups[0].hit_ratio().unwrap_or(f64::NAN),
        setups[1].hit_ratio().unwrap_or(f64::NAN),
        bounds.cluster,
        bounds.independent,
        bounds.cluster_online,
        bounds.independent_online,
        cluster_cpu.unwrap_or(f64::NAN),
        independent_cpu.unwrap_or(f64::NAN),
        cluster.phase.elapsed.as_secs_f64(),
        independent.phase.elapsed.as_secs_f64(),
    );
    let mut problems = [cluster.problems, independent.problems].concat();
    let failed = cluster.phase.errors + independent.phase.errors;
    if failed > 0 {
        problems.push(format!("{failed} request(s) failed"));
    }
    match problems.is_empty() {
        true => Ok(()),
        false => Err(problems.join("; ")),
    }
}
