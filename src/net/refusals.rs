//! How a listener refuses on the wire, before pingora or the proxy sees a
//! request: too many connections (503), and what the connection screen
//! refuses (`screen.rs`: 414, 431). Each answer is a whole HTTP/1.1
//! response that closes the connection.
//!
//! On the peer listener every answer carries `x-ringside-refused` with its
//! reason, as the proxy's own refusals there do (`proxy/peer.rs`): the
//! asking node reads a response without it as the owner's answer for its
//! app, so an unmarked 503 went to the app as the object. With the mark it
//! loads from its origin and backs off from the peer.
//!
//! Every refusal is counted, by listener and reason
//! (`ringside_requests_refused_total`; refused connections also in
//! `ringside_connections_refused_total`).

use crate::metrics;
use crate::net::screen::Refusal;
use prometheus::IntCounter;

/// `x-ringside-refused` (`cluster::peers::REFUSED`; `net` sits below `cluster`).
const REFUSED: &str = "x-ringside-refused";

/// One listener's answers and counters.
pub struct Refusals {
    busy: Vec<u8>,
    uri_too_long: Vec<u8>,
    headers_too_large: Vec<u8>,
    counted: [IntCounter; 3],
    listener: &'static str,
}

impl Refusals {
    /// The answers of `listener` (its metrics label); `peers`: marked as
    /// refusals for the asking node.
    pub fn new(listener: &'static str, peers: bool) -> Refusals {
        let answer = |status: &str, reason: &str, body: &str| {
            let mark = match peers {
                true => format!("{REFUSED}: {reason}\r\n"),
                false => String::new(),
            };
            let retry = match status.starts_with("503") {
                true => "Retry-After: 1\r\n",
                false => "",
            };
            format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
                 Cache-Control: no-store\r\n{retry}{mark}Connection: close\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        };
        let count = |reason: &str| metrics::request_refusals(listener, reason);
        Refusals {
            busy: answer(
                "503 Service Unavailable",
                "overloaded",
                "too many connections\n",
            ),
            uri_too_long: answer("414 URI Too Long", "too-large", "request line too long\n"),
            headers_too_large: answer(
                "431 Request Header Fields Too Large",
                "too-large",
                "request headers too large\n",
            ),
            counted: [
                count(Refusal::RequestLineTooLong.reason()),
                count(Refusal::TooManyFields.reason()),
                count(Refusal::EmptyChunkSize.reason()),
            ],
            listener,
        }
    }

    /// What a connection past the cap gets.
    pub fn busy(&self) -> &[u8] {
        &self.busy
    }

    /// What a head the screen refuses gets (a body's refusal is the
    /// proxy's to answer: its response may be under way).
    pub fn answer(&self, refusal: Refusal) -> &[u8] {
        match refusal {
            Refusal::RequestLineTooLong => &self.uri_too_long,
            _ => &self.headers_too_large,
        }
    }

    /// Count a refusal of the screen's.
    pub fn count(&self, refusal: Refusal) {
        let i = match refusal {
            Refusal::RequestLineTooLong => 0,
            Refusal::TooManyFields | Refusal::HeadTooLarge => 1,
            Refusal::EmptyChunkSize => 2,
        };
        self.counted[i].inc();
    }

    /// The listener's metrics label.
    pub fn listener(&self) -> &'static str {
        self.listener
    }
}

impl std::fmt::Debug for Refusals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Refusals({})", self.listener)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_have_the_length_they_say_and_peers_get_the_mark() {
        for peers in [false, true] {
            let refusals = Refusals::new("peers", peers);
            for answer in [
                refusals.busy(),
                refusals.answer(Refusal::RequestLineTooLong),
                refusals.answer(Refusal::TooManyFields),
            ] {
                let text = std::str::from_utf8(answer).unwrap();
                let (head, body) = text.split_once("\r\n\r\n").unwrap();
                assert!(
                    head.contains(&format!("Content-Length: {}", body.len())),
                    "{head}"
                );
                assert_eq!(head.contains("x-ringside-refused: "), peers, "{head}");
                assert!(head.ends_with("Connection: close"), "{head}");
            }
        }
    }
}
