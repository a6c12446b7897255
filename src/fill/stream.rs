//! The leader's end of a streamed response: chunks it has not taken yet
//! wait in a backlog instead of holding up the fill ([`LeaderStream`]), and
//! once nothing more is stored, the rest goes at its pace ([`pump`]).

use super::{Filler, LeaderResult, Report};
use crate::cache::store::{ensure_date, has_body};
use crate::metrics::{self};
use crate::net::origin::{FetchError, OriginResponse};

use bytes::Bytes;
use http::header;
use pingora::http::ResponseHeader;
use std::time::Duration;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};

/// The leader's end of a streamed response. Chunks the leader has not taken
/// yet wait in a backlog instead of holding up the fill, so a slow client
/// never delays the store or the followers; the backlog is at most the object
/// being stored (`max_object_size`). Once nothing more is to be stored, the
/// rest is handed over at the leader's pace ([`pump`]).
pub(super) struct LeaderStream {
    tx: Option<mpsc::Sender<Result<Bytes, FetchError>>>,
    /// Counted in `ringside_response_body_bytes` while it waits.
    backlog: metrics::HeldChunks<FetchError>,
}

impl LeaderStream {
    /// Hand `header` to the leader, if there is one and it is still waiting.
    pub(super) fn open(
        leader: Option<oneshot::Sender<LeaderResult>>,
        header: ResponseHeader,
        report: Report,
    ) -> LeaderStream {
        let tx = leader.and_then(|leader| {
            let (tx, body) = mpsc::channel(16);
            let stream = LeaderResult::Stream {
                header: Box::new(header),
                body,
                report,
            };
            leader.send(stream).ok().map(|_| tx)
        });
        LeaderStream {
            tx,
            backlog: metrics::HeldChunks::new(),
        }
    }

    /// Queue a chunk for the leader without waiting for it.
    pub(super) fn push(&mut self, item: Result<Bytes, FetchError>) {
        let Some(tx) = &self.tx else { return };
        self.backlog.push_back(item);
        while let Some(item) = self.backlog.pop_front() {
            match tx.try_send(item) {
                Ok(()) => {}
                Err(TrySendError::Full(item)) => {
                    self.backlog.push_front(item);
                    return;
                }
                Err(TrySendError::Closed(_)) => return self.close(),
            }
        }
    }

    /// Queue the chunk held back in `held`, if any.
    pub(super) fn push_held(&mut self, held: &mut Option<Bytes>) {
        if let Some(chunk) = held.take() {
            self.push(Ok(chunk));
        }
    }

    /// Hand over the backlog, waiting for the leader to take it. False when
    /// there is no leader (any more).
    pub(super) async fn flush(&mut self) -> bool {
        let Some(tx) = &self.tx else { return false };
        while let Some(item) = self.backlog.pop_front() {
            if tx.send(item).await.is_err() {
                self.close();
                return false;
            }
        }
        true
    }

    /// Queue `item` and hand everything over.
    pub(super) async fn send(&mut self, item: Result<Bytes, FetchError>) -> bool {
        if self.tx.is_some() {
            self.backlog.push_back(item);
        }
        self.flush().await
    }

    fn close(&mut self) {
        self.tx = None;
        self.backlog.clear();
    }
}

/// Pass the rest of a response body to the leader at its pace, stopping (and
/// closing the origin connection) as soon as the leader's client goes away.
pub(super) async fn pump(filler: &Filler, mut response: OriginResponse, mut out: LeaderStream) {
    while out.flush().await {
        match response.read_chunk().await {
            Ok(Some(chunk)) => out.push(Ok(chunk)),
            Ok(None) => break,
            Err(e) => {
                out.send(Err(e)).await;
                break;
            }
        }
    }
    filler.upstream.finish(response).await;
}

/// The head the leader's client gets for a streamed response: HTTP/1.1
/// framing (chunked when the length is unknown) and, when it is being
/// stored, the Date and Age a hit on it would carry.
pub(super) fn leader_head(
    response: &OriginResponse,
    stored_age: Option<Duration>,
) -> ResponseHeader {
    let mut header = response.header.clone();
    header.set_version(http::Version::HTTP_11);
    if has_body(header.status) && header.headers.get(header::CONTENT_LENGTH).is_none() {
        let _ = header.insert_header(header::TRANSFER_ENCODING, "chunked");
    }
    if let Some(age) = stored_age {
        ensure_date(&mut header, response.response_time);
        let _ = header.insert_header(header::AGE, age.as_secs());
    }
    header
}
