//! The demo's numbers: what each phase measured, what ringside says about
//! itself on `/metrics`, and the table that puts them side by side.
//!
//! Kept apart from the code that produces the numbers so that the arithmetic
//! (percentiles, ratios) and the parsing of the Prometheus text can be tested
//! without starting anything.

use super::prometheus;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// What one run of the workload measured.
#[derive(Debug, Clone, Default)]
pub struct PhaseResult {
    /// Requests the clients set out to send.
    pub requests: u64,
    /// Requests that failed: no response, a timeout, or a wrong answer.
    pub errors: u64,
    /// What went wrong first, for the message under the table.
    pub first_error: Option<String>,
    /// Requests that reached the origin, by the origin's own counter.
    pub origin_requests: u64,
    /// The latency of each successful request.
    pub latencies: Vec<Duration>,
    /// Wall time of the whole phase.
    pub elapsed: Duration,
}

impl PhaseResult {
    /// The `p`th percentile (0–100) of successful latencies, nearest rank.
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        percentile_of_sorted(&sorted, p)
    }
}

fn percentile_of_sorted(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// ringside's own account of the phase, from its `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RingsideView {
    /// `ringside_requests_total` summed over methods, by `result` label.
    pub requests: BTreeMap<String, u64>,
    /// `ringside_origin_requests_total` summed over status classes.
    pub origin_requests: u64,
    /// `ringside_singleflight_coalesced_total`.
    pub coalesced: u64,
    /// `ringside_hot_hits_total`: hits on local mirrors of others' keys.
    pub hot_hits: u64,
    /// `ringside_peer_served_total` (requests answered for other nodes, as
    /// the key's owner), by `result` label.
    pub peer_served: BTreeMap<String, u64>,
    /// `ringside_ring_members`.
    pub ring_members: u64,
    /// `ringside_cache_entries` and `ringside_cache_bytes`: this node's own keys.
    pub cache_entries: u64,
    pub cache_bytes: u64,
    /// `ringside_invalidation_peer_failures_total`: members that did not
    /// confirm a write's invalidation in time.
    pub invalidation_peer_failures: u64,
}

impl RingsideView {
    /// Read the counters the demo reports from Prometheus text.
    pub fn parse(metrics: &str) -> RingsideView {
        let mut view = RingsideView::default();
        for sample in prometheus::samples(metrics) {
            let (name, labels) = (sample.name, sample.labels);
            // Counters and gauges the demo reports are whole and not negative.
            if !(sample.value.is_finite() && sample.value >= 0.0) {
                continue;
            }
            let value = sample.value.round() as u64;
            match name {
                "ringside_requests_total" => {
                    let result = prometheus::label(labels, "result").unwrap_or("unknown");
                    *view.requests.entry(result.to_owned()).or_default() += value;
                }
                "ringside_origin_requests_total" => view.origin_requests += value,
                "ringside_singleflight_coalesced_total" => view.coalesced += value,
                "ringside_hot_hits_total" => view.hot_hits += value,
                "ringside_peer_served_total" => {
                    let result = prometheus::label(labels, "result").unwrap_or("unknown");
                    *view.peer_served.entry(result.to_owned()).or_default() += value;
                }
                "ringside_ring_members" => view.ring_members = value,
                "ringside_cache_entries" => view.cache_entries = value,
                "ringside_cache_bytes" => view.cache_bytes = value,
                "ringside_invalidation_peer_failures_total" => {
                    view.invalidation_peer_failures += value
                }
                _ => {}
            }
        }
        view
    }

    /// Requests answered with this `result` label.
    pub fn count(&self, result: &str) -> u64 {
        self.requests.get(result).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.requests.values().sum()
    }

    /// Requests answered for other nodes.
    pub fn served_for_peers(&self) -> u64 {
        self.peer_served.values().sum()
    }
}

/// One way of serving the workload, for the comparison table.
pub struct Setup<'a> {
    pub name: &'a str,
    pub phase: &'a PhaseResult,
    /// Each node's `/metrics`; `None` without ringside, empty when unreadable.
    pub nodes: Option<&'a [RingsideView]>,
}

impl Setup<'_> {
    /// Requests answered from a ringside cache (a local hit, a hot mirror,
    /// or the owner's cache via a peer hop), as a share of all requests.
    pub fn hit_ratio(&self) -> Option<f64> {
        let nodes = self.nodes.filter(|n| !n.is_empty())?;
        let local: u64 = nodes.iter().map(|v| v.count("hit")).sum();
        let via_owner: u64 = nodes
            .iter()
            .map(|v| v.peer_served.get("hit").copied().unwrap_or(0))
            .sum();
        ratio(local + via_owner, self.phase.requests)
    }
}

/// Per-node rows: what each node of `nodes` counted on its `/metrics`.
pub fn node_table(title: &str, nodes: &[RingsideView]) -> String {
    let mut out = format!(
        "{title}
"
    );
    let _ = writeln!(
        out,
        "  {:<8}{:>9}{:>8}{:>13}{:>11}{:>8}{:>18}{:>16}",
        "",
        "requests",
        "hits",
        "(hot mirror)",
        "peer hops",
        "misses",
        "served for peers",
        "origin fetches"
    );
    for (i, v) in nodes.iter().enumerate() {
        let _ = writeln!(
            out,
            "  {:<8}{:>9}{:>8}{:>13}{:>11}{:>8}{:>18}{:>16}",
            format!("node {}", i + 1),
            v.total(),
            v.count("hit"),
            v.hot_hits,
            v.count("peer"),
            v.count("miss"),
            v.served_for_peers(),
            v.origin_requests,
        );
    }
    out
}

/// The comparison table, the notes under it, and the takeaway.
pub fn comparison(setups: &[Setup]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<22}{:>9}{:>8}{:>17}{:>11}{:>10}{:>10}{:>8}",
        "", "requests", "errors", "origin requests", "hit ratio", "p50", "p99", "time"
    );
    for setup in setups {
        let hit_ratio = match (setup.nodes, setup.hit_ratio()) {
            (None, _) => "-".into(),
            (Some(_), Some(r)) => format!("{:.1} %", r * 100.0),
            (Some(_), None) => "?".into(),
        };
        out.push_str(&row(setup.name, setup.phase, hit_ratio));
    }
    out.push_str(
        "\norigin requests: counted by the sample origin itself.\n\
         hit ratio: requests answered from a ringside cache (a local hit, a hot mirror, or the\n\
         \x20 owner's cache via a peer hop) / requests sent, from the nodes' /metrics.\n",
    );
    for setup in setups {
        out.push_str(&counting_notes(setup));
        out.push_str(&error_notes(setup.name, setup.phase));
    }
    out.push('\n');
    out.push_str(&takeaway(setups));
    out
}

/// Where the nodes' own counts disagree with the clients' or the origin's.
fn counting_notes(setup: &Setup) -> String {
    let Some(nodes) = setup.nodes else {
        return String::new();
    };
    if nodes.is_empty() {
        return format!("{}: the nodes' /metrics could not be read\n", setup.name);
    }
    let mut out = String::new();
    let counted: u64 = nodes.iter().map(RingsideView::total).sum();
    if counted != setup.phase.requests {
        let _ = writeln!(
            out,
            "  note ({}): the nodes counted {counted} requests, the clients sent {}",
            setup.name, setup.phase.requests
        );
    }
    let fetched: u64 = nodes.iter().map(|v| v.origin_requests).sum();
    if fetched != setup.phase.origin_requests {
        let _ = writeln!(
            out,
            "  note ({}): the nodes counted {fetched} origin fetches, the origin counted {}",
            setup.name, setup.phase.origin_requests
        );
    }
    out
}

/// The first setup against each of the others, in one line each.
fn takeaway(setups: &[Setup]) -> String {
    let Some((first, others)) = setups.split_first() else {
        return String::new();
    };
    let mut out = String::new();
    for other in others {
        let (mine, theirs) = (first.phase.origin_requests, other.phase.origin_requests);
        let load = match mine {
            0 => format!(
                "the origin served none of the requests ({theirs} {})",
                other.name
            ),
            _ => format!(
                "{:.1}x fewer origin requests than {} ({theirs} -> {mine})",
                theirs as f64 / mine as f64,
                other.name
            ),
        };
        let median = match (other.phase.percentile(50.0), first.phase.percentile(50.0)) {
            (Some(a), Some(b)) => format!(", median latency {} -> {}", ms(a), ms(b)),
            _ => String::new(),
        };
        let _ = writeln!(out, "{}: {load}{median}.", first.name);
    }
    out
}

fn row(name: &str, phase: &PhaseResult, hit_ratio: String) -> String {
    let p50 = phase.percentile(50.0).map_or("-".into(), ms);
    let p99 = phase.percentile(99.0).map_or("-".into(), ms);
    format!(
        "{:<22}{:>9}{:>8}{:>17}{:>11}{:>10}{:>10}{:>8}\n",
        name,
        phase.requests,
        phase.errors,
        phase.origin_requests,
        hit_ratio,
        p50,
        p99,
        format!("{:.1} s", phase.elapsed.as_secs_f64()),
    )
}

fn error_notes(name: &str, phase: &PhaseResult) -> String {
    match (&phase.first_error, phase.errors) {
        (Some(first), n) if n > 0 => {
            format!("{name}: {n} request(s) failed; the first: {first}\n")
        }
        _ => String::new(),
    }
}

fn ratio(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

/// Milliseconds, with two decimals below 1 ms where one would say little.
pub fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 1.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = r#"# HELP ringside_requests_total Client requests answered, by cache result and method.
# TYPE ringside_requests_total counter
ringside_requests_total{method="GET",result="hit"} 2790
ringside_requests_total{method="HEAD",result="hit"} 10
ringside_requests_total{method="GET",result="miss"} 200
ringside_requests_total{method="GET",result="error"} 0
ringside_origin_requests_total{status_class="2xx"} 140
ringside_origin_requests_total{status_class="error"} 1
ringside_singleflight_coalesced_total 59
ringside_request_duration_seconds_bucket{result="hit",le="0.00005"} 12
"#;

    #[test]
    fn metrics_are_summed_over_methods_and_classes() {
        let view = RingsideView::parse(METRICS);
        assert_eq!(view.count("hit"), 2800);
        assert_eq!(view.count("miss"), 200);
        assert_eq!(view.count("stale"), 0);
        assert_eq!(view.total(), 3000);
        assert_eq!(view.origin_requests, 141);
        assert_eq!(view.coalesced, 59);
    }

    #[test]
    fn label_order_does_not_matter() {
        let view = RingsideView::parse(r#"ringside_requests_total{result="hit",method="GET"} 3"#);
        assert_eq!(view.count("hit"), 3);
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let phase = PhaseResult {
            latencies: (1..=100).rev().map(Duration::from_millis).collect(),
            ..PhaseResult::default()
        };
        assert_eq!(phase.percentile(50.0), Some(Duration::from_millis(50)));
        assert_eq!(phase.percentile(99.0), Some(Duration::from_millis(99)));
        assert_eq!(phase.percentile(100.0), Some(Duration::from_millis(100)));
        assert_eq!(phase.percentile(0.0), Some(Duration::from_millis(1)));
        assert_eq!(PhaseResult::default().percentile(50.0), None);
    }

    #[test]
    fn cluster_counters_are_read() {
        let view = RingsideView::parse(
            "ringside_hot_hits_total 7\n\
             ringside_peer_served_total{result=\"hit\"} 40\n\
             ringside_peer_served_total{result=\"miss\"} 5\n\
             ringside_ring_members 3\n",
        );
        assert_eq!(view.hot_hits, 7);
        assert_eq!(view.served_for_peers(), 45);
        assert_eq!(view.ring_members, 3);
    }

    #[test]
    fn table_shows_errors_and_the_takeaway() {
        let without = PhaseResult {
            requests: 3000,
            origin_requests: 3000,
            latencies: vec![Duration::from_millis(50); 3000],
            elapsed: Duration::from_secs(5),
            ..PhaseResult::default()
        };
        let with = PhaseResult {
            requests: 3000,
            errors: 2,
            first_error: Some("timed out".into()),
            origin_requests: 150,
            latencies: vec![Duration::from_micros(200); 2998],
            elapsed: Duration::from_secs(1),
        };
        let view = RingsideView::parse(METRICS);
        let views = [view];
        let text = comparison(&[
            Setup {
                name: "cluster",
                phase: &with,
                nodes: Some(&views),
            },
            Setup {
                name: "no cache",
                phase: &without,
                nodes: None,
            },
        ]);
        assert!(text.contains("93.3 %"), "{text}");
        assert!(text.contains("50.0 ms"), "{text}");
        assert!(text.contains("0.20 ms"), "{text}");
        assert!(text.contains("cluster: 2 request(s) failed; the first: timed out"));
        assert!(text.contains("20.0x fewer origin requests than no cache (3000 -> 150)"));
        assert!(text.contains("the nodes counted 141 origin fetches, the origin counted 150"));
        let nodes = node_table("cluster", &views);
        assert!(nodes.contains("node 1"), "{nodes}");
    }
}
