//! The peer channel: how a node asks a key's owner, on a connection
//! authenticated once and shared by many requests at a time.
//!
//! The HTTP peer protocol (`cluster/peers.rs`) signs every request over a
//! canonical form of its headers, with a nonce the owner remembers and a
//! timestamp it checks, and the owner runs each through its whole proxy.
//! The channel moves that work to the connection:
//!
//! - **a handshake** (`handshake.rs`) proves to both ends that the other
//!   holds the cluster secret, binds the connection to the two members and
//!   their ring generations, and derives a session key per direction;
//! - **records** (`record.rs`) carry a sequence number each and, without
//!   TLS, are sealed with AES-128-GCM under the session key (under mutual
//!   TLS, `cluster.tls`, TLS protects them): a frame replayed, reordered,
//!   altered, sent to another node or reflected to its sender is refused,
//!   with no nonce table and no clock on the hot path;
//! - **frames** (`wire.rs`) are length-delimited (tokio-util's codec): a
//!   request (origin, method, path, headers, a body for a POST keyed by
//!   it), a response head, body pieces, a cancel, a reset, each naming
//!   its stream, so many requests are in flight on one connection and
//!   answers go out as they are ready; the writer (`conn.rs`) writes every
//!   frame waiting in one system call;
//! - the asking end (`client.rs`) keeps one connection per peer and falls
//!   back to HTTP for a peer that does not speak the channel (a node of an
//!   older version, or one with `peer_protocol: http1`): rolling upgrades;
//! - the owner's end (`server.rs`) serves each request on a task of its
//!   own through an [`Owner`](server::Owner), which the proxy implements
//!   (`proxy/channel.rs`: from the store when it hits, through the key's
//!   singleflight when it misses).
//!
//! The peer listener tells a channel from HTTP by its first bytes
//! ([`handshake::PREFACE`], which is not HTTP), so one port serves both.
//! Control requests (`PURGE`, `LEAVING`, `JOINED`, `HANDOFF`) stay signed
//! HTTP requests: they are rare, and the HTTP path is what old nodes know.

pub(crate) mod client;
pub(crate) mod conn;
pub mod handshake;
pub mod record;
pub(crate) mod server;
pub mod wire;
