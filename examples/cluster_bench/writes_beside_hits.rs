//! Writes beside hits (benches/README.md, "Writes beside hits"): how much a
//! steady stream of writes costs the hits of one node.
//!
//! One node in front of the sample origin, its cache warmed with `--keys`
//! items; `--clients` keep-alive clients then ask for a few hot items (all
//! hits) for `--secs` seconds, first alone, then beside a writer sending
//! PUTs to other items at up to `--writes-per-sec`. Every write invalidates
//! its URL: on a cache that removes a URL by scanning every entry, each
//! write costs the hits a pass over the whole cache.

use ringside::demo::client::Conn;
use ringside::demo::cluster::{NodeOptions, Nodes};
use ringside::demo::process::ringside_beside_examples;
use ringside::demo::sample_origin::SampleOrigin;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Items stored before the measurement (the entries a write's removal
    /// would scan).
    #[arg(long, default_value_t = 50_000)]
    keys: u64,
    #[arg(long, default_value_t = 8)]
    clients: usize,
    #[arg(long, default_value_t = 5)]
    secs: u64,
    #[arg(long, default_value_t = 1000)]
    writes_per_sec: u64,
    #[arg(long, default_value = "256MiB")]
    capacity: String,
    /// The ringside binary (default: next to this example's directory).
    #[arg(long)]
    ringside: Option<PathBuf>,
}

pub async fn run(args: Args) -> Result<(), String> {
    let exe = ringside_beside_examples(args.ringside.as_deref())?;
    let origin = SampleOrigin {
        delay: Duration::ZERO,
        max_age: 3600,
        body_bytes: 512,
        ..SampleOrigin::default()
    };
    let origin_addr = ringside::demo::start_origin(&origin, 0).await?;
    let options = NodeOptions {
        clustered: false,
        capacity: args.capacity.clone(),
        threads: 1,
        ..NodeOptions::default()
    };
    let mut nodes = Nodes::start(&exe, origin_addr, 1, &options).await?;
    let node = nodes.proxy_addrs()[0];
    warm(node, args.keys).await?;
    let alone = hits(node, &args, false).await;
    let beside = hits(node, &args, true).await;
    nodes.stop().await?;
    println!(
        "\nwrites beside hits: one node, {} items stored, {} clients on hot items, {} s each",
        args.keys, args.clients, args.secs
    );
    println!("hits/s alone {:.0}", alone.0);
    println!("hits/s beside {:.0} writes/s {:.0}", beside.0, beside.1);
    println!(
        "RESULT writes_beside_hits alone={:.0} beside={:.0} writes={:.0} ratio={:.3}",
        alone.0,
        beside.0,
        beside.1,
        beside.0 / alone.0.max(1.0)
    );
    Ok(())
}

/// Store items 0..keys, eight requests at a time.
async fn warm(node: SocketAddr, keys: u64) -> Result<(), String> {
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let next = next.clone();
            tokio::spawn(async move {
                let mut conn = Conn::connect(node).await.map_err(|e| e.to_string())?;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= keys {
                        return Ok::<(), String>(());
                    }
                    conn.request("GET", &format!("/items/{i}"), &[])
                        .await
                        .map_err(|e| e.to_string())?;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// Hits per second of the clients (and writes per second of the writer).
async fn hits(node: SocketAddr, args: &Args, with_writes: bool) -> (f64, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let hits = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..args.clients)
        .map(|c| {
            let (stop, hits) = (stop.clone(), hits.clone());
            tokio::spawn(async move {
                let Ok(mut conn) = Conn::connect(node).await else {
                    return;
                };
                let mut i = c as u64;
                while !stop.load(Ordering::Relaxed) {
                    i = (i + 1) % 16;
                    if conn
                        .request("GET", &format!("/items/{i}"), &[])
                        .await
                        .is_ok()
                    {
                        hits.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let writes = Arc::new(AtomicU64::new(0));
    let writer = with_writes.then(|| {
        let (stop, writes, keys, rate) =
            (stop.clone(), writes.clone(), args.keys, args.writes_per_sec);
        tokio::spawn(async move {
            let Ok(mut conn) = Conn::connect(node).await else {
                return;
            };
            let gap = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
            let mut next = Instant::now();
            let mut i = 1000u64;
            while !stop.load(Ordering::Relaxed) {
                i = 16 + (i * 7919 + 1) % keys.saturating_sub(16).max(1);
                if conn
                    .request("PUT", &format!("/items/{i}"), &[])
                    .await
                    .is_ok()
                {
                    writes.fetch_add(1, Ordering::Relaxed);
                }
                next += gap;
                tokio::time::sleep_until(next).await;
            }
        })
    });
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.secs)).await;
    stop.store(true, Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    for client in clients {
        let _ = client.await;
    }
    if let Some(writer) = writer {
        let _ = writer.await;
    }
    (
        hits.load(Ordering::Relaxed) as f64 / secs,
        writes.load(Ordering::Relaxed) as f64 / secs,
    )
}
