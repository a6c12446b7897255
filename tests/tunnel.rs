//! CONNECT tunnels for apps with `HTTPS_PROXY` (`forward_proxy.connect_allow`):
//! curl, as an app's HTTP client would, opens a tunnel through ringside and
//! talks to the origin inside it; hosts off the list get 403; tunnels are
//! never cached, are counted, and close when idle.

mod common;
use common::origin::Origin;
use common::{eventually, Ringside};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The `host:port` of an origin URL.
fn authority(url: &str) -> String {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned()
}

/// `curl --proxytunnel`: CONNECT through ringside, then GET `url` inside the
/// tunnel. Returns (curl succeeded, stdout, stderr).
async fn curl_through(rs: &Ringside, url: &str) -> (bool, String, String) {
    let output = tokio::process::Command::new("curl")
        .args([
            "--silent",
            "--show-error",
            "--max-time",
            "20",
            "--proxytunnel",
        ])
        .arg("--proxy")
        .arg(format!("http://{}", rs.addr))
        .arg(url)
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .output()
        .await
        .expect("run curl");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn an_allowed_host_is_tunnelled_uncached_and_counted() {
    let origin = Origin::start().await;
    let yaml = format!(
        "forward_proxy:\n  connect_allow: [\"{}\"]\n",
        authority(&origin.url())
    );
    let rs = Ringside::start(&origin.url(), &yaml).await;
    let target = "/tunnelled?cc=max-age%3D600";
    for round in 1..=2 {
        let (ok, body, err) = curl_through(&rs, &format!("{}{target}", origin.url())).await;
        assert!(ok, "curl through the tunnel failed: {err}");
        assert!(!body.is_empty(), "no body through the tunnel");
        // Inside a tunnel nothing is cached: every request reaches the origin.
        assert_eq!(origin.hits(target), round);
    }
    assert_eq!(
        rs.metric("ringside_tunnels_total", &[r#"result="opened""#])
            .await,
        2.0
    );
    assert!(
        rs.metric("ringside_tunnel_bytes_total", &[r#"direction="up""#])
            .await
            > 0.0
    );
    assert!(
        rs.metric("ringside_tunnel_bytes_total", &[r#"direction="down""#])
            .await
            > 0.0
    );
    // Tunnels are not cache traffic.
    assert_eq!(rs.metric("ringside_requests_total", &[]).await, 0.0);
    eventually(Duration::from_secs(10), "no tunnel left open", || async {
        rs.metric("ringside_tunnels_open", &[]).await == 0.0
    })
    .await;
}

#[tokio::test]
async fn a_host_off_the_list_gets_403_and_no_connection() {
    let origin = Origin::start().await;
    let other = Origin::start().await;
    let yaml = format!(
        "forward_proxy:\n  connect_allow: [\"{}\"]\n",
        authority(&origin.url())
    );
    let rs = Ringside::start(&origin.url(), &yaml).await;
    let (ok, _, err) = curl_through(&rs, &format!("{}/secret", other.url())).await;
    assert!(!ok, "a tunnel to a host off the list was opened");
    assert!(err.contains("403"), "curl did not see a 403: {err}");
    assert_eq!(other.total_hits(), 0);
    assert_eq!(other.connections(), 0);
    let refused = r#"result="not-allowed""#;
    assert_eq!(rs.metric("ringside_tunnels_total", &[refused]).await, 1.0);
    // The app's ordinary requests on the same listener still work.
    assert_eq!(rs.get("/plain?cc=max-age%3D60").await.status, 200);
}

#[tokio::test]
async fn without_an_allowlist_connect_gets_405() {
    let origin = Origin::start().await;
    let rs = Ringside::start(&origin.url(), "").await;
    let (ok, _, err) = curl_through(&rs, &format!("{}/x", origin.url())).await;
    assert!(!ok);
    assert!(err.contains("405"), "curl did not see a 405: {err}");
    assert_eq!(origin.total_hits(), 0);
}

#[tokio::test]
async fn an_idle_tunnel_is_closed() {
    let origin = Origin::start().await;
    let yaml = format!(
        "forward_proxy:\n  connect_allow: [\"{}\"]\n  tunnel_idle_timeout: 1s\n",
        authority(&origin.url())
    );
    let rs = Ringside::start(&origin.url(), &yaml).await;
    let mut tunnel = tokio::net::TcpStream::connect(rs.addr).await.unwrap();
    let to = authority(&origin.url());
    let connect = format!("CONNECT {to} HTTP/1.1\r\nHost: {to}\r\n\r\n");
    tunnel.write_all(connect.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 512];
    let n = tunnel.read(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(rs.metric("ringside_tunnels_open", &[]).await, 1.0);
    // Silence both ways: ringside closes the tunnel (read sees the end).
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(30), tunnel.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0))),
        "idle tunnel not closed: {closed:?}"
    );
    eventually(
        Duration::from_secs(10),
        "the idle tunnel is no longer open",
        || async { rs.metric("ringside_tunnels_open", &[]).await == 0.0 },
    )
    .await;
}
