//! Fills against fake upstreams, in process and on paused time: the owner,
//! the previous owner and the origin answer from memory, slowly, with a
//! refusal or not at all (groupcache's `fakePeers`). What is tested is the
//! fill's own logic: whom it asks in which order, what a failure or a
//! refusal leads to, where the answer is kept, and that a key is fetched
//! once however many wait for it. The end-to-end tests (`tests/cluster.rs`,
//! `tests/failures.rs`) keep what needs processes: the channel, the gates,
//! the clients.

use super::*;
use crate::cluster::ring::Ring;
use crate::config::{ClusterConfig, Config, MembershipConfig, OriginUrl, StaticMember};
use async_trait::async_trait;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::Duration;

const A: &str = "10.0.0.1:7070";
const B: &str = "10.0.0.2:7070";
const C: &str = "10.0.0.3:7070";
const ORIGIN: &str = "origin";
const BACKOFF: Duration = Duration::from_secs(2);

/// How a fake answers.
#[derive(Clone)]
enum Fake {
    /// 200, fresh for a minute, with `body`, after `after`.
    Answers { body: &'static str, after: Duration },
    /// A peer's gate refusing, for `reason` (`proxy/peer.rs`).
    Refuses(&'static str),
    /// Nobody there.
    Dead,
}

/// The origin and the peers, by address ([`ORIGIN`] for the origin).
#[derive(Default)]
struct Fakes {
    answers: Mutex<HashMap<&'static str, Fake>>,
    /// Who was asked, in order, and whether for a lookup.
    asked: Mutex<Vec<(String, bool)>>,
}

impl Fakes {
    fn with(answers: &[(&'static str, Fake)]) -> Arc<Fakes> {
        let fakes = Fakes::default();
        fakes.answers.lock().extend(answers.iter().cloned());
        Arc::new(fakes)
    }

    fn set(&self, who: &'static str, fake: Fake) {
        self.answers.lock().insert(who, fake);
    }

    fn asked(&self) -> Vec<(String, bool)> {
        self.asked.lock().clone()
    }

    async fn answer(&self, who: &str, lookup: bool) -> Result<OriginResponse, FetchError> {
        self.asked.lock().push((who.to_owned(), lookup));
        let fake = self.answers.lock().get(who).cloned().unwrap_or(Fake::Dead);
        match fake {
            Fake::Answers { body, after } => {
                tokio::time::sleep(after).await;
                let mut head = ResponseHeader::build(200, None).unwrap();
                head.insert_header("cache-control", "max-age=60").unwrap();
                Ok(OriginResponse::from_memory(head, Bytes::from(body)))
            }
            Fake::Refuses(reason) => {
                let status = if reason == peers::NOT_CACHED {
                    504
                } else {
                    403
                };
                let mut head = ResponseHeader::build(status, None).unwrap();
                head.insert_header(peers::REFUSED.clone(), reason).unwrap();
                Ok(OriginResponse::from_memory(head, Bytes::from("refused\n")))
            }
            Fake::Dead => Err(FetchError::Unreachable),
        }
    }
}

#[async_trait]
impl Upstream for Fakes {
    async fn origin(&self, _: &Job) -> Result<OriginResponse, FetchError> {
        self.answer(ORIGIN, false).await
    }

    async fn peer(
        &self,
        _: &Cluster,
        addr: &str,
        _: &Job,
        lookup: bool,
    ) -> Result<OriginResponse, FetchError> {
        self.answer(addr, lookup).await
    }

    async fn finish(&self, _: OriginResponse) {}
}

/// Node A of a static cluster of A, B and C, filling through `fakes`.
async fn node_a(fakes: Arc<Fakes>) -> Arc<Filler> {
    let config = ClusterConfig {
        enabled: true,
        advertise: A.into(),
        secret: "0123456789abcdef".into(),
        peer_backoff: BACKOFF,
        membership: MembershipConfig::Static(
            [A, B, C].map(|m| StaticMember::Addr(m.into())).to_vec(),
        ),
        ..ClusterConfig::default()
    };
    let cluster = Cluster::start(&config, 0, 8, Duration::from_secs(1))
        .await
        .unwrap();
    Arc::new(Filler {
        flights: Group::new(),
        upstream: fakes,
        store: Arc::new(Store::new(1 << 20)),
        cluster: Some(cluster),
        asking_previous: Default::default(),
    })
}

/// The `n`th key of the origin that `who` owns on `ring`.
fn owned_by(ring: &Ring, who: &str, n: usize) -> String {
    (0..)
        .map(|k| format!("http://o:80/k/{k}"))
        .filter(|k| ring.owner(k).unwrap().addr == who)
        .nth(n)
        .unwrap()
}

/// A GET of `key` as the proxy would hand it on: to its `owner`, or (for
/// a key this node owns since a change) first to its `previous` owner.
fn job(key: &str, owner: Option<&str>, previous: Option<&str>) -> Job {
    let config = Config::default();
    let url = OriginUrl::parse("http://o:80").unwrap();
    let path = key.trim_start_matches("http://o:80");
    Job {
        target: Arc::new(OriginTarget::new(url, &config)),
        request: RequestHeader::build("GET", path.as_bytes(), None).unwrap(),
        key: key.to_owned(),
        stale: None,
        rules: RuleOptions::default(),
        max_object_size: 1 << 20,
        owner: owner.map(str::to_owned),
        previous_owner: previous.map(str::to_owned),
        mirror: None,
        body: None,
        keep: true,
        interim: None,
    }
}

/// Fill `job` and wait for what every waiter gets.
async fn fill(filler: &Arc<Filler>, job: Job) -> Outcome {
    let key = job.key.clone();
    match start(filler, key, job, true) {
        Started::Leading(result) => match result.await.unwrap() {
            LeaderResult::Shared(outcome) => outcome,
            _ => panic!("a small fresh answer is shared whole"),
        },
        Started::Following(_) => panic!("nothing else fills this key"),
    }
}

fn body_and_source(outcome: &Outcome) -> (Bytes, Source) {
    match outcome {
        Outcome::Fetched { object, source, .. } => (object.body.clone(), *source),
        _ => panic!("expected a fetched answer"),
    }
}

fn answers(body: &'static str) -> Fake {
    Fake::Answers {
        body,
        after: Duration::ZERO,
    }
}

fn asked(who: &str, lookup: bool) -> (String, bool) {
    (who.to_owned(), lookup)
}

#[tokio::test(start_paused = true)]
async fn a_key_another_node_owns_comes_from_its_owner_and_is_not_kept_here() {
    let fakes = Fakes::with(&[(B, answers("from b")), (ORIGIN, answers("origin"))]);
    let a = node_a(fakes.clone()).await;
    let key = owned_by(&a.cluster.as_ref().unwrap().ring(), B, 0);
    let outcome = fill(&a, job(&key, Some(B), None)).await;
    assert_eq!(body_and_source(&outcome), ("from b".into(), Source::Owner));
    assert_eq!(fakes.asked(), [asked(B, false)], "the origin is not asked");
    assert!(
        a.store.get_uncounted(&key).is_none(),
        "the owner keeps it; this node keeps no copy (no hot mirror)"
    );
}

#[tokio::test(start_paused = true)]
async fn a_dead_owner_falls_through_to_the_origin_and_backs_off_until_it_may_answer() {
    let fakes = Fakes::with(&[(B, Fake::Dead), (ORIGIN, answers("origin"))]);
    let a = node_a(fakes.clone()).await;
    let cluster = a.cluster.clone().unwrap();
    let key = owned_by(&cluster.ring(), B, 0);
    let outcome = fill(&a, job(&key, Some(B), None)).await;
    assert_eq!(body_and_source(&outcome), ("origin".into(), Source::Origin));
    assert_eq!(fakes.asked(), [asked(B, false), asked(ORIGIN, false)]);
    assert!(
        a.store.get_uncounted(&key).is_some(),
        "what the origin answered in the owner's stead is kept here"
    );

    assert!(!cluster.health.is_available(B), "B is skipped now");
    tokio::time::advance(BACKOFF - Duration::from_millis(1)).await;
    assert!(!cluster.health.is_available(B), "for the whole backoff");
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(cluster.health.is_available(B), "then asked again");

    fakes.set(B, answers("b is back"));
    let next = owned_by(&cluster.ring(), B, 1);
    let outcome = fill(&a, job(&next, Some(B), None)).await;
    assert_eq!(
        body_and_source(&outcome),
        ("b is back".into(), Source::Owner)
    );
    assert!(cluster.health.is_available(B));
}

#[tokio::test(start_paused = true)]
async fn a_refusal_by_the_owners_gate_is_a_failure_never_the_clients_answer() {
    let fakes = Fakes::with(&[(B, Fake::Refuses("bad-signature")), (ORIGIN, answers("ok"))]);
    let a = node_a(fakes.clone()).await;
    let cluster = a.cluster.clone().unwrap();
    let key = owned_by(&cluster.ring(), B, 0);
    let outcome = fill(&a, job(&key, Some(B), None)).await;
    assert_eq!(body_and_source(&outcome), ("ok".into(), Source::Origin));
    assert_eq!(fakes.asked(), [asked(B, false), asked(ORIGIN, false)]);
    assert!(
        !cluster.health.is_available(B),
        "a refusing peer is skipped"
    );
}

#[tokio::test(start_paused = true)]
async fn a_previous_owner_without_a_copy_is_no_failure_and_the_origin_answers() {
    let fakes = Fakes::with(&[
        (C, Fake::Refuses(peers::NOT_CACHED)),
        (ORIGIN, answers("o")),
    ]);
    let a = node_a(fakes.clone()).await;
    let cluster = a.cluster.clone().unwrap();
    let key = owned_by(&cluster.ring(), A, 0);
    let outcome = fill(&a, job(&key, None, Some(C))).await;
    assert_eq!(body_and_source(&outcome), ("o".into(), Source::Origin));
    assert_eq!(fakes.asked(), [asked(C, true), asked(ORIGIN, false)]);
    assert!(cluster.health.is_available(C), "not cached is an answer");
}

#[tokio::test(start_paused = true)]
async fn a_previous_owners_copy_is_kept_by_the_new_owner_without_the_origin() {
    let fakes = Fakes::with(&[(C, answers("kept by c")), (ORIGIN, answers("origin"))]);
    let a = node_a(fakes.clone()).await;
    let key = owned_by(&a.cluster.as_ref().unwrap().ring(), A, 0);
    let outcome = fill(&a, job(&key, None, Some(C))).await;
    assert_eq!(
        body_and_source(&outcome),
        ("kept by c".into(), Source::PreviousOwner)
    );
    assert_eq!(fakes.asked(), [asked(C, true)]);
    assert!(a.store.get_uncounted(&key).is_some(), "A owns it now");
}

#[tokio::test(start_paused = true)]
async fn a_slow_owner_is_asked_once_for_everyone_waiting() {
    let slow = Fake::Answers {
        body: "slow",
        after: Duration::from_secs(5),
    };
    let fakes = Fakes::with(&[(B, slow)]);
    let a = node_a(fakes.clone()).await;
    let key = owned_by(&a.cluster.as_ref().unwrap().ring(), B, 0);
    let leader = tokio::spawn({
        let a = a.clone();
        let job = job(&key, Some(B), None);
        async move { fill(&a, job).await }
    });
    tokio::task::yield_now().await;
    let mut waiters = Vec::new();
    for _ in 0..50 {
        match start(&a, key.clone(), job(&key, Some(B), None), true) {
            Started::Following(waiter) => waiters.push(waiter.wait(Duration::from_secs(30))),
            Started::Leading(_) => panic!("the first fill is still under way"),
        }
    }
    for waited in futures::future::join_all(waiters).await {
        assert_eq!(body_and_source(&waited.unwrap()).0, "slow");
    }
    assert_eq!(body_and_source(&leader.await.unwrap()).0, "slow");
    assert_eq!(fakes.asked(), [asked(B, false)], "one ask for 51 requests");
}
