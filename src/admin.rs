//! The admin listener: `/metrics`, `/healthz`, `/readyz`, and purge.
//!
//! It is a separate pingora service on its own address so that scrapes and
//! probes never queue behind app traffic, and so that it can be firewalled
//! apart from the app-facing port.
//!
//! The read-only endpoints are open (kubelet probes and Prometheus scrapes
//! carry no credentials by default; metrics hold no keys, paths or payloads).
//! Purge changes the cache, so it needs `Authorization: Bearer <token>` with
//! `admin_token` (the scheme in any case, RFC 9110 §11.1; the token compared
//! in constant time). Without `admin_token` purge is refused outright: the
//! cluster secret is never a purge token, since a bearer token crosses the
//! wire and the secret must not. The token may be a file
//! (`admin_token_file`, a mounted Secret), read again when it changes
//! (`secret_files`). Request heads over 64 KiB get 431, as on the proxy's
//! listeners.
//!
//! Its connections have bounds of their own, small ones
//! (`admin_max_connections`, `admin_request_header_timeout`,
//! `admin_idle_timeout`): the injected sidecar listens on the pod's address,
//! so anything on the pod network can open connections here, and probes,
//! scrapes and purges need a few (`connections.rs`, as on the proxy's).
//!
//! Purge: `PURGE /path?query` or `DELETE /cache/path?query` removes that key
//! (all its Vary variants) for the configured origin; header
//! `ringside-purge: prefix` removes every key starting with the path, and
//! `ringside-origin: https://host` selects a forward-proxy origin. The purge
//! runs on this node and on every other member (see `purge.rs`).

use crate::cluster::purge;
use crate::config::{Config, OriginUrl};
use crate::error::{Error, Result};
use crate::metrics;
use crate::net::connections;
use crate::net::origin::OriginTarget;
use crate::net::readiness::Listener;
use crate::net::secret_files;
use crate::net::watched_files::Watched;
use crate::node::Node;
use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::http::RequestHeader;
use pingora::protocols::http::ServerSession;
use std::sync::Arc;
use subtle::ConstantTimeEq;

pub struct Admin {
    node: Arc<Node>,
    /// The listeners `/readyz` probes: the app-facing one, and the peer
    /// listener in a cluster (a node its peers cannot reach is not ready);
    /// each must be served by this very process (see `readiness`).
    listeners: Vec<Listener>,
    /// Bearer token for purge; None: purge disabled.
    token: Option<Watched<String>>,
}

impl Admin {
    /// Err: the token file cannot be used (the message names the field).
    pub fn new(node: Arc<Node>, listeners: Vec<Listener>) -> Result<Admin> {
        let token = purge_token(&node.config)?;
        Ok(Admin {
            node,
            listeners,
            token,
        })
    }

    /// Whether this process serves every listener right now.
    async fn listeners_serve(&self) -> bool {
        for listener in &self.listeners {
            if !crate::net::readiness::serves(listener).await {
                return false;
            }
        }
        true
    }

    fn update_gauges(&self) {
        self.node.store().update_gauges();
        if let Some(cluster) = self.node.cluster() {
            let hot = &cluster.hot.store;
            hot.run_pending_tasks();
            metrics::HOT_ENTRIES.set(hot.entry_count() as i64);
            metrics::HOT_BYTES.set(hot.weighted_bytes() as i64);
        }
    }

    fn authorized(&self, session: &ServerSession) -> bool {
        let Some(token) = &self.token else {
            return false;
        };
        let given = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| bearer_token(v.as_bytes()));
        given.is_some_and(|g| bool::from(g.ct_eq(token.current().as_bytes())))
    }

    async fn purge(&self, session: &ServerSession) -> Response<Vec<u8>> {
        if !self.authorized(session) {
            metrics::ADMIN_AUTH_FAILURES.inc();
            let why: &[u8] = match self.token {
                None => b"purge is disabled: set admin_token_file (or admin_token)\n",
                Some(_) => b"purge needs Authorization: Bearer <admin token>\n",
            };
            return text(StatusCode::UNAUTHORIZED, why.to_vec());
        }
        let order = match self.purge_order(session.req_header()) {
            Ok(order) => order,
            Err(why) => return text(StatusCode::BAD_REQUEST, why.as_bytes().to_vec()),
        };
        let key = self.node.cache_key(&order.target, &order.uri);
        let (confirmed, asked) = self.purge_everywhere(&order, &key).await;
        let body = format!(
            "purged {}{key} on this node and {confirmed} of {asked} other member(s)\n",
            if order.prefix { "prefix " } else { "" }
        );
        let status = match confirmed == asked {
            true => StatusCode::OK,
            false => StatusCode::BAD_GATEWAY,
        };
        text(status, body.into_bytes())
    }

    /// What a purge request asks for, or why it cannot be done (400).
    fn purge_order(&self, req: &RequestHeader) -> Result<PurgeOrder, &'static str> {
        let target = match req
            .headers
            .get("ringside-origin")
            .and_then(|v| v.to_str().ok())
        {
            None => self.node.origins.default().clone(),
            Some(url) => OriginUrl::parse(url)
                .ok()
                .and_then(|u| self.node.origins.get(&u))
                .ok_or("unknown ringside-origin\n")?,
        };
        let path_and_query = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let path = match req.method {
            Method::DELETE => path_and_query
                .strip_prefix("/cache")
                .unwrap_or(path_and_query),
            _ => path_and_query,
        };
        // The same normal form the proxy keys requests by (normalize.rs).
        let path = crate::rfc::normalize::normalize_target(path.as_bytes())
            .map_err(|why| why.message())?
            .into_owned();
        let uri = path.parse::<http::Uri>().map_err(|_| "bad path\n")?;
        let prefix = req
            .headers
            .get("ringside-purge")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"prefix"));
        Ok(PurgeOrder {
            target,
            path,
            uri,
            prefix,
        })
    }

    /// Purge here and on every other member: (confirmed, asked).
    async fn purge_everywhere(&self, order: &PurgeOrder, key: &str) -> (usize, usize) {
        let purge_here = || self.node.purge_here(key, order.prefix);
        let Some(cluster) = self.node.cluster() else {
            purge_here();
            return (0, 0);
        };
        let within = 2 * cluster.peer_timeout;
        let client = &self.node.client;
        let peers = purge::Order {
            origin: &order.target.key_prefix,
            path: &order.path,
            prefix: order.prefix,
        };
        purge::broadcast(cluster, client, peers, within, purge_here).await
    }
}

/// A purge request, parsed: the key (or prefix) of `uri` at `target`.
struct PurgeOrder {
    target: Arc<OriginTarget>,
    /// The normalised path and query, as peers are asked to purge it.
    path: String,
    uri: http::Uri,
    prefix: bool,
}

/// The purge token `config` gives (`admin_token`, or the file
/// `admin_token_file`, read again when it changes); None: purge is off.
/// Config validation compares a token and a cluster secret given as values;
/// here, one from a file is compared with the other once, at start.
fn purge_token(config: &Config) -> Result<Option<Watched<String>>> {
    let (value, file) = (&config.admin_token, config.admin_token_file.trim());
    if value.is_empty() && file.is_empty() {
        return Ok(None);
    }
    let kind = secret_files::Kind {
        field: "admin_token",
        check: |token| secret_files::at_least(token, 1),
        make: str::to_string,
        on_reload: metrics::observe_admin_token_reload,
    };
    let token = secret_files::watch(kind, value, file)?;
    let cluster = &config.cluster;
    let secret_file = cluster.secret_file.trim();
    if cluster.enabled && !(file.is_empty() && secret_file.is_empty()) {
        let secret = match secret_file {
            "" => cluster.secret.clone(),
            path => secret_files::read("cluster.secret_file", path)?,
        };
        if *token.current() == secret {
            let field = if file.is_empty() {
                "admin_token"
            } else {
                "admin_token_file"
            };
            return Err(Error::invalid(format!(
                "{field}: the same as the cluster secret; choose another (a bearer token is sent \
                 with every purge, and the cluster secret must never cross the wire)"
            )));
        }
    }
    Ok(Some(token))
}

/// The token of an `Authorization: Bearer <token>` value: the scheme in any
/// case (RFC 9110 §11.1), then one or more blanks.
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(6)?;
    let token = rest.trim_ascii_start();
    let separated = token.len() < rest.len();
    (scheme.eq_ignore_ascii_case(b"bearer") && separated && !token.is_empty())
        .then(|| token.trim_ascii_end())
}

fn text(status: StatusCode, body: Vec<u8>) -> Response<Vec<u8>> {
    with_type(status, "text/plain", body)
}

fn with_type(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(body)
        .unwrap_or_default()
}

#[async_trait]
impl ServeHttp for Admin {
    /// Out of the head deadline while it is answered; then the connection
    /// may wait `admin_idle_timeout` for its next request (pingora's own
    /// keep-alive for this kind of app is a fixed 60 s, or none when the
    /// process is stopping).
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        connections::head_received(session);
        if session.get_keepalive().is_some() {
            let idle = self.node.config.admin_idle_timeout.as_secs().max(1);
            session.set_keepalive(Some(idle));
        }
        let response = self.answer(session).await;
        connections::exchange_finished(session);
        response
    }
}

impl Admin {
    async fn answer(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        if connections::header_bytes(req) > connections::MAX_REQUEST_HEADER_BYTES {
            let body = b"request headers too large\n".to_vec();
            return text(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, body);
        }
        if req.method.as_str() == "PURGE"
            || (req.method == Method::DELETE && req.uri.path().starts_with("/cache/"))
        {
            return self.purge(session).await;
        }
        match req.uri.path() {
            "/metrics" => {
                self.update_gauges();
                with_type(
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    metrics::render(),
                )
            }
            "/healthz" => text(StatusCode::OK, b"ok\n".to_vec()),
            "/readyz" if crate::shutdown::shutting_down() => {
                text(StatusCode::SERVICE_UNAVAILABLE, b"shutting down\n".to_vec())
            }
            "/readyz" => match self.listeners_serve().await {
                true => text(StatusCode::OK, b"ready\n".to_vec()),
                false => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    b"a listener (app or peer) is not served by this process\n".to_vec(),
                ),
            },
            _ => text(StatusCode::NOT_FOUND, b"not found\n".to_vec()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_needs_a_blank() {
        for value in [
            "Bearer t0k",
            "bearer t0k",
            "BEARER  t0k",
            "Bearer\tt0k ",
            "bEaReR t0k",
        ] {
            assert_eq!(
                bearer_token(value.as_bytes()),
                Some(&b"t0k"[..]),
                "{value:?}"
            );
        }
        for value in [
            "Bearert0k",
            "Basic t0k",
            "Bearer",
            "Bearer ",
            "Token t0k",
            "",
        ] {
            assert_eq!(bearer_token(value.as_bytes()), None, "{value:?}");
        }
    }
}
