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
//!
//! Built on the demo's machinery (`ringside::demo`): the same sample origin,
//! the same child-process nodes, the same workload and counters.

mod churn;
mod etcd;

use clap::{Parser, Subcommand};
use ringside::demo::cluster::NodeOptions;
use ringside::demo::process::ringside_beside_examples;
use ringside::demo::report::{self, Setup};
use ringside::demo::sample_origin::{self, SampleOrigin};
use ringside::demo::workload::Workload;
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
    let origin_addr = ringside::demo::start_origin(&origin).await?;
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
         capacity {} per node; hot fraction {} in the cluster",
        args.requests,
        args.clients,
        n,
        args.keys,
        args.body_bytes,
        args.zipf_s,
        args.capacity,
        args.hot_fraction
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
    println!(
        "RESULT origin_requests cluster={} independent={} ratio={ratio:.3} hit_ratio cluster={:.3} independent={:.3}",
        cluster.phase.origin_requests,
        independent.phase.origin_requests,
        setups[0].hit_ratio().unwrap_or(f64::NAN),
        setups[1].hit_ratio().unwrap_or(f64::NAN),
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
