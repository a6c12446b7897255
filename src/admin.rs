//! The admin listener: `/metrics`, `/healthz`, `/readyz`.
//!
//! It is a separate pingora service on its own address so that scrapes and
//! probes never queue behind app traffic, and so that it can be firewalled
//! apart from the app-facing port.

use crate::metrics;
use crate::store::Store;
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub struct Admin {
    pub store: Arc<Store>,
    /// The app-facing listener, probed by `/readyz`.
    pub proxy_addr: SocketAddr,
}

fn text(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
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
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_owned();
        match path.as_str() {
            "/metrics" => {
                self.store.update_gauges();
                text(
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    metrics::render(),
                )
            }
            "/healthz" => text(StatusCode::OK, "text/plain", b"ok\n".to_vec()),
            "/readyz" => {
                let probe = tokio::net::TcpStream::connect(self.proxy_addr);
                match tokio::time::timeout(Duration::from_secs(1), probe).await {
                    Ok(Ok(_)) => text(StatusCode::OK, "text/plain", b"ready\n".to_vec()),
                    _ => text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        b"proxy listener not accepting\n".to_vec(),
                    ),
                }
            }
            _ => text(StatusCode::NOT_FOUND, "text/plain", b"not found\n".to_vec()),
        }
    }
}
