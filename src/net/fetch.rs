//! What every fetch shares, whoever answers it (the origin client in
//! `origin.rs`, a peer over the channel in `channel/`): why it produced no
//! response, and where the interim (1xx) responses before its answer go.

use pingora::http::ResponseHeader;
use pingora::prelude::*;

/// Why a fetch produced no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchError {
    /// Connecting or reading took longer than configured: 504.
    Timeout,
    /// Refused, unreachable, reset, or garbled: 502.
    Unreachable,
}

impl FetchError {
    pub fn status(self) -> u16 {
        match self {
            FetchError::Timeout => 504,
            FetchError::Unreachable => 502,
        }
    }

    pub fn from_pingora(e: &Error) -> FetchError {
        match e.etype() {
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                FetchError::Timeout
            }
            _ => FetchError::Unreachable,
        }
    }
}

/// Where a fetch hands the interim (1xx) responses that come before the
/// final one: the client whose request started the fill, which may pass
/// them on (see `proxy/cacheable.rs`). Never waited on: a full or closed
/// channel drops them.
pub type InterimSink = tokio::sync::mpsc::Sender<ResponseHeader>;
