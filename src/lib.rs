//! ringside: an HTTP caching sidecar.
//!
//! Start with `ARCHITECTURE.md`; the request's way through the code is
//! told at the top of `proxy/mod.rs`. The folders are the layers, each
//! importing only the ones below it (ARCHITECTURE.md lists what each may
//! import, and `tests/layering.rs` holds the code to it):
//!
//! ```text
//! server, admin     assembly, the admin listener
//! proxy/            the request path (pingora's phases), app and peer roles
//! node/             what one process shares: origins, the filler, handoff
//! fill/             one fetch per key, from the owner or the origin
//! cluster/          ring, membership, peers, hot keys, purge
//! cache/  net/      the store, keys, singleflight | listeners, upstream, TLS
//! config/ metrics   the checked configuration | every metric
//! rfc/    shutdown  pure HTTP rules | how the process ends
//! ```
//!
//! The public API is what the binary, the examples and the tests use: the
//! configuration, running a node (`server::run`) or the webhook (`inject`),
//! the demo (the `demo` feature, on by default; the image leaves it out),
//! and the pure parts worth testing from outside (caching rules,
//! normalisation, ranges, the ring, membership sources, peer signatures).
//! Everything else is internal to the crate.

pub(crate) mod admin;
pub(crate) mod cache;
pub(crate) mod cluster;
pub mod config;
/// The demo and the kit the tests drive ringside with (the `demo` feature).
#[cfg(feature = "demo")]
pub mod demo;
/// Start-up and cluster errors, with their causes.
pub mod error;
pub(crate) mod fill;
pub mod inject;
pub(crate) mod metrics;
pub(crate) mod net;
pub(crate) mod node;
pub(crate) mod proxy;
pub(crate) mod rfc;
pub mod server;
pub(crate) mod shutdown;

pub use cluster::{membership, peers, ring};
/// The peer channel's handshake, records and frames, for tests that speak
/// it as a member, an impostor or a broken peer would.
pub use net::channel;
pub use rfc::{cache_rules, json, normalize, range};
