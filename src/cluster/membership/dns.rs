//! DNS membership: the members are the addresses one name resolves to, such
//! as a Kubernetes headless Service that lists the ready sidecar pods.
//!
//! A task polls the name every `interval` and publishes `ip:port` for every
//! A and AAAA record (port: `dns.port`, else `cluster.peer_listen`'s), with
//! this node added by [`normalize`]. It publishes only when the list
//! changed, and logs who joined and who left. The task owns the
//! `watch::Sender` and ends when every receiver has been dropped.
//!
//! With `dns.srv` the name's SRV records are asked instead (Consul's DNS
//! interface, Kubernetes' `_port._proto.service` names): each target's
//! addresses (from the answer's additional section, else looked up) with
//! the record's port, so members may listen on different ports. Weights
//! are relative: 0 counts as 1, all are divided by their greatest common
//! divisor and capped at 100 (Kubernetes gives every endpoint the same
//! share, which becomes 1). Priorities are ignored: every target is a
//! member. A target of `.` (RFC 2782: no service) or one whose name does
//! not resolve is no member; one whose lookup fails makes the poll fail.
//!
//! DNS is a poor witness of absence, so the list shrinks cautiously:
//! - A lookup that fails (timeout, SERVFAIL, refused, unreadable
//!   resolv.conf) keeps the previous list, is logged, and the next poll
//!   backs off. A DNS hiccup must not shrink the ring: every key owned by a
//!   vanished member would move, and move back a moment later.
//! - A and AAAA are asked separately, and a family whose query failed keeps
//!   its previous addresses, so a server that answers A but chokes on AAAA
//!   cannot make the IPv6 members "leave".
//! - "No such name" or an empty answer (for both families, or SRV records
//!   none of whose targets resolve) must persist over
//!   [`EMPTY_POLLS_TO_SHRINK`] consecutive polls before the list shrinks to
//!   this node alone: a Service briefly has no ready endpoints while it is
//!   being rewritten.
//!
//! The resolver is the one every lookup uses (`net/dns.rs`, hickory's):
//! with `dns.nameserver` it asks that server only, without it it follows
//! the system's configuration. Its cache is cleared before every poll so that `interval`, not the
//! records' TTL, decides how fresh the list is.

use super::{normalize, publish_if_changed, Member};
use crate::cluster::backoff;
use crate::config::{ClusterConfig, DnsMembership};
use crate::error;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use hickory_resolver::TokioResolver;
use log::{debug, info, warn};
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::sync::watch;

/// Consecutive "no such name / no addresses" answers before the list shrinks
/// to this node alone.
pub const EMPTY_POLLS_TO_SHRINK: u32 = 3;

/// Upper bound on the wait between polls while lookups keep failing (unless
/// `interval` itself is longer).
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Bound on one poll (both queries, every retry); hickory has its own
/// per-query timeouts, this only guards against a lookup that never ends.
const POLL_DEADLINE: Duration = Duration::from_secs(30);

/// Largest member weight (as in a static list).
const MAX_WEIGHT: u32 = 100;

pub async fn start(
    dns: DnsMembership,
    config: &ClusterConfig,
    me: Member,
) -> error::Result<watch::Receiver<Vec<Member>>> {
    let records = if dns.srv {
        Records::Srv
    } else {
        Records::Addresses {
            port: member_port(&dns, config),
        }
    };
    let nameserver = match &dns.nameserver {
        Some(ns) => Some(ns.parse::<SocketAddr>().map_err(|_| {
            let why = format!("cluster.membership.dns.nameserver {ns:?}: expected ip:port");
            error::Error::invalid(why)
        })?),
        None => None,
    };
    let (tx, rx) = watch::channel(normalize(Vec::new(), &me));
    let poller = Poller {
        known: vec![BTreeSet::new(); records.queries().len()],
        records,
        name: dns.name,
        nameserver,
        interval: dns.interval.max(Duration::from_millis(10)),
        me,
        resolver: None,
        empty_polls: 0,
        failed_polls: 0,
    };
    tokio::spawn(poller.run(tx));
    Ok(rx)
}

/// The peer port of every member found by address records: `port`, else
/// `cluster.peer_listen`'s.
fn member_port(dns: &DnsMembership, config: &ClusterConfig) -> u16 {
    dns.port.unwrap_or(config.peer_listen.port())
}

/// Which records name the members.
#[derive(Debug, Clone, Copy)]
enum Records {
    /// A and AAAA, asked apart; every member on `port`, of weight 1.
    Addresses { port: u16 },
    /// SRV: each target's addresses with the record's port and weight.
    Srv,
}

impl Records {
    /// The queries of one poll, each answered (or failing) on its own.
    fn queries(self) -> &'static [RecordType] {
        match self {
            Records::Addresses { .. } => &[RecordType::A, RecordType::AAAA],
            Records::Srv => &[RecordType::SRV],
        }
    }
}

/// A member as DNS names it: peer address and weight.
type Found = (SocketAddr, u32);

/// What one query said.
#[derive(Debug)]
enum Answer {
    Members(BTreeSet<Found>),
    /// NXDOMAIN, or the name exists without records of this type.
    NoRecords,
    Failed(String),
}

struct Poller {
    records: Records,
    name: String,
    nameserver: Option<SocketAddr>,
    interval: Duration,
    me: Member,
    /// Built on the first poll, and again after a poll that could not build it
    /// (a missing resolv.conf may appear later).
    resolver: Option<TokioResolver>,
    /// Last known members of each query (in `records.queries()` order).
    known: Vec<BTreeSet<Found>>,
    /// Consecutive polls where every query said "no records".
    empty_polls: u32,
    /// Consecutive polls where no query answered at all.
    failed_polls: u32,
}

impl Poller {
    async fn run(mut self, tx: watch::Sender<Vec<Member>>) {
        loop {
            // Every receiver gone means nobody wants the list any more; end
            // the task (and drop the sender) instead of polling for no one.
            let delay = tokio::select! {
                _ = tx.closed() => return,
                delay = self.poll(&tx) => delay,
            };
            tokio::select! {
                _ = tx.closed() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One poll; returns how long to wait before the next.
    async fn poll(&mut self, tx: &watch::Sender<Vec<Member>>) -> Duration {
        let answers = match self.look_up().await {
            Ok(answers) => answers,
            Err(why) => return self.failed(&why),
        };
        let failures = match self.update(answers) {
            Ok(failures) => failures,
            Err(why) => return self.failed(&why),
        };
        self.note_answers(&failures);
        self.publish(tx);
        self.interval
    }

    /// Every query's answer, asked together, within the deadline.
    async fn look_up(&mut self) -> error::Result<Vec<Answer>> {
        let resolver = match &self.resolver {
            Some(r) => r,
            None => self
                .resolver
                .insert(build_resolver(self.nameserver, self.interval)?),
        };
        // Fresh answers every poll: the cache would otherwise hide changes
        // for the records' TTL, which is not what `interval` promises.
        resolver.clear_cache();
        let lookups = async {
            match self.records {
                Records::Addresses { port } => {
                    let (a, aaaa) = tokio::join!(
                        lookup(resolver, &self.name, RecordType::A, port),
                        lookup(resolver, &self.name, RecordType::AAAA, port)
                    );
                    vec![a, aaaa]
                }
                Records::Srv => vec![lookup_srv(resolver, &self.name).await],
            }
        };
        tokio::time::timeout(POLL_DEADLINE, lookups)
            .await
            .map_err(|_| dns_error(format!("no answer within {POLL_DEADLINE:?}")))
    }

    /// Take in one poll's answers. Ok: the queries that failed (and kept
    /// their members); Err: nothing usable came back.
    fn update(&mut self, answers: Vec<Answer>) -> error::Result<Vec<String>> {
        let mut failures = Vec::new();
        let mut any_records = false;
        let mut no_records = 0;
        for (query, answer) in self.records.queries().iter().zip(&answers) {
            match answer {
                Answer::Members(_) => any_records = true,
                Answer::NoRecords => no_records += 1,
                Answer::Failed(e) => failures.push(format!("{query}: {e}")),
            }
        }
        if any_records {
            self.take_answers(answers);
        } else if no_records == answers.len() {
            self.count_empty_poll();
        } else {
            // At least one query failed, none found records: keep the list,
            // leave the empty streak as it is, back off.
            return Err(dns_error(failures.join("; ")));
        }
        Ok(failures)
    }

    /// The name resolves, so every query's answer stands, "none" included;
    /// only a query that failed keeps what it had.
    fn take_answers(&mut self, answers: Vec<Answer>) {
        for (answer, known) in answers.into_iter().zip(&mut self.known) {
            match answer {
                Answer::Members(found) => *known = found,
                Answer::NoRecords => known.clear(),
                Answer::Failed(_) => {}
            }
        }
        if self.empty_polls > 0 {
            info!("membership (dns {}): the name resolves again", self.name);
        }
        self.empty_polls = 0;
    }

    /// Every query said "no records": after a few such polls in a row the
    /// list shrinks to this node (one empty answer may be a blip).
    fn count_empty_poll(&mut self) {
        self.empty_polls = self.empty_polls.saturating_add(1);
        if self.empty_polls <= EMPTY_POLLS_TO_SHRINK {
            info!(
                "membership (dns {}): no addresses ({} of {} polls before the list shrinks to this node)",
                self.name, self.empty_polls, EMPTY_POLLS_TO_SHRINK
            );
        }
        if self.empty_polls >= EMPTY_POLLS_TO_SHRINK {
            self.known.iter_mut().for_each(BTreeSet::clear);
        }
    }

    /// Log a recovery from failed polls, or a query that failed this time.
    fn note_answers(&mut self, failures: &[String]) {
        if failures.is_empty() {
            if self.failed_polls > 0 {
                info!(
                    "membership (dns {}): lookups answer again after {} failed polls",
                    self.name, self.failed_polls
                );
            }
            self.failed_polls = 0;
        } else {
            // One family answered, the other failed and kept its addresses.
            debug!(
                "membership (dns {}): partial lookup failure, that query keeps its members: {}",
                self.name,
                failures.join("; ")
            );
        }
    }

    fn publish(&self, tx: &watch::Sender<Vec<Member>>) {
        let members = self
            .known
            .iter()
            .flatten()
            .map(|(addr, weight)| Member::new(addr.to_string(), *weight))
            .collect();
        let source = format!("dns {}", self.name);
        publish_if_changed(tx, normalize(members, &self.me), &source);
    }

    /// Log a failed poll and return the backed-off delay before the next.
    fn failed(&mut self, why: &error::Error) -> Duration {
        self.failed_polls = self.failed_polls.saturating_add(1);
        let delay = backoff(self.interval, self.failed_polls);
        // Loud on the first failure, then once in a while: a DNS outage
        // should not flood the log at the polling rate.
        if self.failed_polls == 1 || self.failed_polls.is_multiple_of(20) {
            warn!(
                "membership (dns {}): lookup failed ({} in a row), keeping the current members, next try in {:?}: {}",
                self.name, self.failed_polls, delay, why
            );
        } else {
            debug!(
                "membership (dns {}): lookup failed again: {}",
                self.name, why
            );
        }
        delay
    }
}

/// The delay before the next poll after `failures` failed in a row: the
/// usual interval counts as the first step, so one failure waits twice it;
/// capped at `max(interval, MAX_BACKOFF)`.
fn backoff(interval: Duration, failures: u32) -> Duration {
    backoff::after(failures.saturating_add(1), interval, MAX_BACKOFF)
}

fn build_resolver(
    nameserver: Option<SocketAddr>,
    interval: Duration,
) -> error::Result<TokioResolver> {
    // A poll should end well before the next is due; 5 s (resolv.conf's
    // default) at most.
    let timeout = interval.clamp(Duration::from_millis(500), Duration::from_secs(5));
    crate::net::dns::build(nameserver, timeout)
}

fn dns_error(why: String) -> error::Error {
    error::Error::new(error::Kind::Dns, why)
}

/// The members `name`'s A or AAAA records name, each on `port`.
async fn lookup(
    resolver: &TokioResolver,
    name: &str,
    record_type: RecordType,
    port: u16,
) -> Answer {
    match resolver.lookup(name, record_type).await {
        Ok(lookup) => {
            let found: BTreeSet<Found> = lookup
                .answers()
                .iter()
                .filter_map(|record| address(&record.data))
                .map(|ip| (SocketAddr::new(ip, port), 1))
                .collect();
            if found.is_empty() {
                Answer::NoRecords
            } else {
                Answer::Members(found)
            }
        }
        Err(e) => classify(e),
    }
}

/// The address an A or AAAA record holds (None for others, such as the
/// CNAMEs on the way to the addresses).
fn address(data: &RData) -> Option<IpAddr> {
    match data {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
        _ => None,
    }
}

/// One SRV record: where its target listens, and its weight.
struct Target {
    name: Name,
    port: u16,
    weight: u16,
}

/// The members `name`'s SRV records name: each target's addresses, with the
/// record's port and (relative) weight.
async fn lookup_srv(resolver: &TokioResolver, name: &str) -> Answer {
    let lookup = match resolver.lookup(name, RecordType::SRV).await {
        Ok(lookup) => lookup,
        Err(e) => return classify(e),
    };
    let targets: Vec<Target> = lookup
        .answers()
        .iter()
        .filter_map(|record| match &record.data {
            RData::SRV(srv) if !srv.target.is_root() => Some(Target {
                name: srv.target.clone(),
                port: srv.port,
                weight: srv.weight,
            }),
            _ => None,
        })
        .collect();
    // Addresses the server sent along (Consul does; Kubernetes may not).
    let mut glue: HashMap<&Name, Vec<IpAddr>> = HashMap::new();
    for record in lookup.additionals() {
        if let Some(ip) = address(&record.data) {
            glue.entry(&record.name).or_default().push(ip);
        }
    }
    let weights = relative_weights(&targets.iter().map(|t| t.weight).collect::<Vec<_>>());
    let mut found = BTreeSet::new();
    for (target, weight) in targets.iter().zip(weights) {
        let ips = match glue.get(&target.name) {
            Some(ips) => ips.clone(),
            None => match resolver.lookup_ip(target.name.clone()).await {
                Ok(ips) => ips.iter().collect(),
                // Gone from DNS: no member (its SRV record will follow).
                Err(e) if e.is_no_records_found() => Vec::new(),
                Err(e) => return Answer::Failed(format!("target {}: {e}", target.name)),
            },
        };
        found.extend(
            ips.into_iter()
                .map(|ip| (SocketAddr::new(ip, target.port), weight)),
        );
    }
    if found.is_empty() {
        Answer::NoRecords
    } else {
        Answer::Members(found)
    }
}

/// SRV weights as ring weights: 0 counts as 1, all divided by their
/// greatest common divisor, at most [`MAX_WEIGHT`].
fn relative_weights(weights: &[u16]) -> Vec<u32> {
    let weights: Vec<u32> = weights.iter().map(|w| u32::from(*w).max(1)).collect();
    let divisor = weights.iter().copied().reduce(gcd).unwrap_or(1);
    weights
        .iter()
        .map(|w| (w / divisor).min(MAX_WEIGHT))
        .collect()
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn classify(e: NetError) -> Answer {
    if e.is_no_records_found() {
        Answer::NoRecords
    } else {
        Answer::Failed(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let i = Duration::from_millis(200);
        assert_eq!(backoff(i, 1), Duration::from_millis(400));
        assert_eq!(backoff(i, 3), Duration::from_millis(1600));
        assert_eq!(backoff(i, 1000), MAX_BACKOFF);
        // An interval above the cap is never shortened.
        let long = Duration::from_secs(60);
        assert_eq!(backoff(long, 5), long);
    }

    #[test]
    fn srv_weights_are_relative_and_bounded() {
        // Kubernetes: every endpoint the same share.
        assert_eq!(relative_weights(&[33, 33, 33]), vec![1, 1, 1]);
        assert_eq!(relative_weights(&[10, 20, 30]), vec![1, 2, 3]);
        assert_eq!(relative_weights(&[0, 0]), vec![1, 1]);
        assert_eq!(relative_weights(&[0, 5]), vec![1, 5]);
        assert_eq!(relative_weights(&[1, 65535]), vec![1, 100]);
        assert!(relative_weights(&[]).is_empty());
    }

    #[test]
    fn publish_only_on_change() {
        let me = Member::new("10.0.0.9:7070", 1);
        let (tx, mut rx) = watch::channel(normalize(Vec::new(), &me));
        rx.mark_unchanged();
        let two = normalize(vec![Member::new("10.0.0.1:7070", 1)], &me);
        assert!(publish_if_changed(&tx, two.clone(), "test"));
        assert!(rx.has_changed().unwrap_or(false));
        rx.mark_unchanged();
        assert!(!publish_if_changed(&tx, two, "test"));
        assert!(!rx.has_changed().unwrap_or(true));
    }
}
