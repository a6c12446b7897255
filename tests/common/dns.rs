//! A tiny authoritative DNS server for the tests, on a free UDP port of
//! 127.0.0.1 (and TCP on the same port, for truncated answers).
//!
//! It answers for one name, whose records the test changes at run time
//! ([`DnsServer::set`]), or stops answering, or says NXDOMAIN. The name
//! may hold SRV records instead ([`Mode::Srv`]); then it also answers A
//! queries for their targets.

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use parking_lot::Mutex;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

#[derive(Clone, Debug)]
pub enum Mode {
    /// Answer A and AAAA queries for the name with these addresses.
    Answer(Vec<Ipv4Addr>, Vec<Ipv6Addr>),
    /// Say NXDOMAIN for the next `n` A queries (and the AAAA queries
    /// meanwhile), then go back to answering.
    NxDomainFor(u32, Vec<Ipv4Addr>),
    /// NXDOMAIN for good.
    NxDomain,
    /// Drop every query (the resolver times out).
    Silent,
    /// Answer SRV queries for the name with these records; A queries for
    /// their targets with the targets' addresses. With `glue`, the
    /// addresses come in the SRV answer's additional section instead (as
    /// Consul sends them), and the targets' own names say NXDOMAIN: a
    /// client that skips that section finds no member.
    Srv { records: Vec<Srv>, glue: bool },
}

/// One SRV record, and the address of its target.
#[derive(Clone, Debug)]
pub struct Srv {
    /// Fully qualified, e.g. `node-a.peers.test.`.
    pub target: String,
    pub port: u16,
    pub weight: u16,
    pub addr: Ipv4Addr,
}

impl Srv {
    pub fn new(target: &str, port: u16, weight: u16, addr: Ipv4Addr) -> Srv {
        Srv {
            target: target.to_string(),
            port,
            weight,
            addr,
        }
    }
}

/// Answers over UDP and, on the same port, over TCP (for truncated answers).
pub struct DnsServer {
    pub addr: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    /// A queries answered NXDOMAIN, A queries answered with records, A
    /// queries left unanswered (silent), SRV queries left unanswered.
    counts: Arc<Mutex<(u32, u32, u32, u32)>>,
    /// Answer UDP queries with TC=1 and no records, as for an answer too
    /// large for UDP: the client must ask again over TCP.
    pub truncate_udp: Arc<AtomicBool>,
    pub tcp_queries: Arc<AtomicU32>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl DnsServer {
    /// Start answering for `name` (fully qualified, e.g. `peers.test.`).
    pub async fn start(name: &str, mode: Mode) -> DnsServer {
        let name: Arc<str> = Arc::from(name);
        // A UDP port whose number is free for TCP too.
        let (socket, listener) = loop {
            let socket = UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("bind a UDP port");
            let addr = socket.local_addr().expect("local addr");
            if let Ok(listener) = TcpListener::bind(addr).await {
                break (socket, listener);
            }
        };
        let addr = socket.local_addr().expect("local addr");
        let mode = Arc::new(Mutex::new(mode));
        let counts = Arc::new(Mutex::new((0, 0, 0, 0)));
        let truncate_udp = Arc::new(AtomicBool::new(false));
        let tcp_queries = Arc::new(AtomicU32::new(0));
        let (m, c, t, n) = (
            mode.clone(),
            counts.clone(),
            truncate_udp.clone(),
            name.clone(),
        );
        let udp = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                let Ok(query) = Message::from_vec(&buf[..len]) else {
                    continue;
                };
                let truncate = t.load(Ordering::SeqCst);
                if let Some(answer) = respond(&n, &query, &m, &c, truncate) {
                    let _ = socket.send_to(&answer, peer).await;
                }
            }
        });
        let (m, c, q, n) = (mode.clone(), counts.clone(), tcp_queries.clone(), name);
        let tcp = tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    continue;
                };
                let (m, c, q, n) = (m.clone(), c.clone(), q.clone(), n.clone());
                tokio::spawn(async move {
                    // DNS over TCP: each message behind a 2-byte length.
                    loop {
                        let Ok(len) = conn.read_u16().await else {
                            return;
                        };
                        let mut buf = vec![0u8; usize::from(len)];
                        if conn.read_exact(&mut buf).await.is_err() {
                            return;
                        }
                        let Ok(query) = Message::from_vec(&buf) else {
                            return;
                        };
                        q.fetch_add(1, Ordering::SeqCst);
                        let Some(answer) = respond(&n, &query, &m, &c, false) else {
                            return;
                        };
                        let Ok(len) = u16::try_from(answer.len()) else {
                            return;
                        };
                        if conn.write_u16(len).await.is_err()
                            || conn.write_all(&answer).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        DnsServer {
            addr,
            mode,
            counts,
            truncate_udp,
            tcp_queries,
            tasks: vec![udp, tcp],
        }
    }

    pub fn set(&self, mode: Mode) {
        *self.mode.lock() = mode;
    }

    /// Answer A queries with `v4` (and AAAA with nothing).
    pub fn set_a(&self, v4: &[Ipv4Addr]) {
        self.set(Mode::Answer(v4.to_vec(), vec![]));
    }

    pub fn nxdomain_a_answers(&self) -> u32 {
        self.counts.lock().0
    }

    pub fn record_a_answers(&self) -> u32 {
        self.counts.lock().1
    }

    /// A queries for the name left unanswered ([`Mode::Silent`]).
    pub fn unanswered_a_queries(&self) -> u32 {
        self.counts.lock().2
    }

    /// SRV queries for the name left unanswered ([`Mode::Silent`]).
    pub fn unanswered_srv_queries(&self) -> u32 {
        self.counts.lock().3
    }
}

fn respond(
    name: &str,
    query: &Message,
    mode: &Mutex<Mode>,
    counts: &Mutex<(u32, u32, u32, u32)>,
    truncate: bool,
) -> Option<Vec<u8>> {
    if query.metadata.message_type != MessageType::Query {
        return None;
    }
    let q = query.queries.first()?.clone();
    let mut response = Message::response(query.metadata.id, query.metadata.op_code);
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = query.metadata.recursion_desired;
    response.add_query(q.clone());
    let ours = q.name().to_ascii().eq_ignore_ascii_case(name);
    let mut mode = mode.lock();
    if let Mode::Srv { records, glue } = &*mode {
        let records = records.clone();
        let glue = *glue;
        drop(mode);
        srv_answer(&mut response, ours, &records, glue);
        return response.to_vec().ok();
    }
    let is_a = q.query_type() == RecordType::A;
    let (v4, v6, nxdomain) = match &mut *mode {
        Mode::Silent => {
            if ours && is_a {
                counts.lock().2 += 1;
            }
            if ours && q.query_type() == RecordType::SRV {
                counts.lock().3 += 1;
            }
            return None;
        }
        Mode::NxDomain => (vec![], vec![], true),
        Mode::NxDomainFor(0, addrs) => {
            let addrs = addrs.clone();
            *mode = Mode::Answer(addrs.clone(), vec![]);
            (addrs, vec![], false)
        }
        Mode::NxDomainFor(left, _) => {
            if is_a {
                *left -= 1;
            }
            (vec![], vec![], true)
        }
        Mode::Answer(v4, v6) => (v4.clone(), v6.clone(), false),
        Mode::Srv { .. } => unreachable!("answered above"),
    };
    drop(mode);
    if !ours || nxdomain {
        response.metadata.response_code = ResponseCode::NXDomain;
        if ours && is_a {
            counts.lock().0 += 1;
        }
    } else {
        match q.query_type() {
            RecordType::A => {
                counts.lock().1 += 1;
                for ip in v4 {
                    response.add_answer(Record::from_rdata(q.name().clone(), 1, RData::A(A(ip))));
                }
            }
            RecordType::AAAA => {
                for ip in v6 {
                    response.add_answer(Record::from_rdata(
                        q.name().clone(),
                        1,
                        RData::AAAA(AAAA(ip)),
                    ));
                }
            }
            // The name exists, without records of that type: NOERROR, empty.
            _ => {}
        }
    }
    if truncate && !response.answers.is_empty() {
        response.answers.clear();
        response.metadata.truncation = true;
    }
    response.to_vec().ok()
}

/// Answer a query in [`Mode::Srv`]: SRV records for the name, addresses for
/// their targets, NXDOMAIN for any other name.
fn srv_answer(response: &mut Message, ours: bool, records: &[Srv], glue: bool) {
    let q = response.queries[0].clone();
    let asked = q.name().to_ascii();
    let target_of = |r: &Srv| asked.eq_ignore_ascii_case(&r.target);
    let address = |r: &Srv| {
        let target = Name::from_ascii(&r.target).expect("a valid target name");
        Record::from_rdata(target, 1, RData::A(A(r.addr)))
    };
    if ours {
        if q.query_type() == RecordType::SRV {
            for r in records {
                let target = Name::from_ascii(&r.target).expect("a valid target name");
                let srv = SRV::new(0, r.weight, r.port, target);
                response.add_answer(Record::from_rdata(q.name().clone(), 1, RData::SRV(srv)));
                if glue {
                    response.add_additional(address(r));
                }
            }
        }
    } else if !glue && records.iter().any(target_of) {
        if q.query_type() == RecordType::A {
            for r in records.iter().filter(|r| target_of(r)) {
                response.add_answer(address(r));
            }
        }
    } else {
        response.metadata.response_code = ResponseCode::NXDomain;
    }
}
