//! ringside: an HTTP caching sidecar.
//!
//! Start with `ARCHITECTURE.md`; the request's way through the code is
//! told at the top of `proxy/mod.rs`.
//!
//! The public API is what the binary, the examples and the tests use: the
//! configuration, running a node (`server::run`) or the webhook (`inject`),
//! the demo, and the pure parts worth testing from outside (caching rules,
//! normalisation, ranges, the ring, membership sources, peer signatures).
//! Everything else is internal to the crate.

pub(crate) mod admin;
pub(crate) mod announce;
pub mod cache_rules;
pub(crate) mod cache_status;
pub(crate) mod cluster;
pub mod config;
pub(crate) mod connections;
pub mod demo;
pub(crate) mod fill;
pub(crate) mod handoff;
pub(crate) mod hot;
pub(crate) mod idle_pool;
pub mod inject;
pub(crate) mod invalidate;
pub(crate) mod keys;
pub(crate) mod listeners;
pub mod membership;
pub(crate) mod metrics;
pub(crate) mod node;
pub mod normalize;
pub(crate) mod origin;
pub(crate) mod peer_tls;
pub mod peers;
pub(crate) mod proxy;
pub(crate) mod purge;
pub mod range;
pub(crate) mod readiness;
pub mod ring;
pub(crate) mod routes;
pub mod server;
pub(crate) mod shutdown;
pub(crate) mod singleflight;
pub(crate) mod store;
pub(crate) mod tls_files;
pub(crate) mod tunnel;
