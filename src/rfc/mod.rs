//! HTTP as the RFCs write it, in pure functions: no I/O, no async, no
//! clock, no global state. Callers pass headers and timestamps in and get
//! decisions back, so every rule is unit-tested against the RFC's text.
//!
//! - `byteranges`: RFC 9110 §14.6, the multipart body of several ranges;
//! - `cache_rules`: RFC 9111, what a shared cache may store, for how long,
//!   which variant, which validators, how a 304 merges;
//! - `cache_status`: the RFC 9211 `Cache-Status` vocabulary as a type;
//! - `headers`: RFC 9110 §7.6.1, the fields that belong to one connection;
//! - `json`: a canonical form of JSON (RFC 8785's spirit), for keying by a body;
//! - `interim`: RFC 9110 §15.2, which 1xx responses a client is passed;
//! - `normalize`: RFC 3986 §6, the one spelling of a request target;
//! - `range`: RFC 9110 §14, byte ranges of a complete response.
//!
//! Imports nothing else from the crate.

pub(crate) mod byteranges;
pub mod cache_rules;
pub(crate) mod cache_status;
pub(crate) mod headers;
pub(crate) mod interim;
pub mod json;
pub mod normalize;
pub mod range;
