//! ringside: an HTTP caching sidecar.
//!
//! Start with `ARCHITECTURE.md`; the request's way through the code is
//! told at the top of [`proxy`].

pub mod admin;
pub mod cache_rules;
pub mod cache_status;
pub mod cluster;
pub mod config;
pub mod connections;
pub mod demo;
pub mod fill;
pub mod hot;
pub mod inject;
pub mod invalidate;
pub mod membership;
pub mod metrics;
pub mod normalize;
pub mod origin;
pub mod peers;
pub mod proxy;
pub mod purge;
pub mod range;
pub mod ring;
pub mod server;
pub mod shutdown;
pub mod singleflight;
pub mod store;
