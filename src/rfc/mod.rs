//! HTTP as the RFCs write it, in pure functions: no I/O, no async, no
//! clock, no global state. Callers pass headers and timestamps in and get
//! decisions back, so every rule is unit-tested against the RFC's text.
//!
//! - `cache_rules`: RFC 9111, what a shared cache may store, for how long,
//!   which variant, which validators, how a 304 merges;
//! - `cache_status`: the RFC 9211 `Cache-Status` vocabulary as a type;
//! - `headers`: RFC 9110 §7.6.1, the fields that belong to one connection;
//! - `json`: a canonical form of JSON (RFC 8785's spirit), for keying by a body;
//! - `normalize`: RFC 3986 §6, the one spelling of a request target;
//! - `range`: RFC 9110 §14, byte ranges of a complete response.
//!
//! Imports nothing else from the crate.

pub mod cache_rules;
pub(crate) mod cache_status;
pub(crate) mod headers;
pub mod json;
pub mod normalize;
pub mod range;
