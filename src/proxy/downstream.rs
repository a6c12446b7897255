//! Where an answer goes: the client's pingora session, or a stream of the
//! peer channel (`channel.rs`). The cacheable path and the response writers
//! (`cacheable.rs`, `respond.rs`, `partial.rs`) write to either through
//! this one trait, so a request over the channel is answered by the same
//! code as one over HTTP, from the lookup to the last byte.

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::Session;
use std::future::Future;

/// A request's answer's destination.
pub trait Downstream: Send + Sync {
    /// The request being answered.
    fn req_header(&self) -> &RequestHeader;

    /// Write the response head; `end`: no body follows.
    fn write_response_header(
        &mut self,
        head: Box<ResponseHeader>,
        end: bool,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Write a piece of the body (None: nothing more); `end`: the last.
    fn write_response_body(
        &mut self,
        body: Option<Bytes>,
        end: bool,
    ) -> impl Future<Output = Result<()>> + Send;
}

impl Downstream for Session {
    fn req_header(&self) -> &RequestHeader {
        self.as_downstream().req_header()
    }

    fn write_response_header(
        &mut self,
        head: Box<ResponseHeader>,
        end: bool,
    ) -> impl Future<Output = Result<()>> + Send {
        Session::write_response_header(self, head, end)
    }

    fn write_response_body(
        &mut self,
        body: Option<Bytes>,
        end: bool,
    ) -> impl Future<Output = Result<()>> + Send {
        Session::write_response_body(self, body, end)
    }
}
