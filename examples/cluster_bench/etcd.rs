//! An etcd for the membership benchmarks: the `etcd` binary (Debian's
//! `etcd-server`) on free 127.0.0.1 ports with a data directory of its own,
//! killed by PID and its directory removed when dropped.

use ringside::demo::{client, process::free_ports};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::time::Instant;

pub struct Etcd {
    child: Child,
    dir: PathBuf,
    pub url: String,
}

impl Etcd {
    pub async fn start() -> Result<Etcd, String> {
        let ports = free_ports(2)?;
        let (client_url, peer_url) = (
            format!("http://{}", ports[0]),
            format!("http://{}", ports[1]),
        );
        let dir = std::env::temp_dir().join(format!(
            "ringside-bench-etcd-{}-{}",
            std::process::id(),
            ports[0].port()
        ));
        let child = Command::new("etcd")
            .arg("--data-dir")
            .arg(&dir)
            .args(["--name", "bench"])
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("bench={peer_url}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start etcd (apt-get install -y etcd-server): {e}"))?;
        let etcd = Etcd {
            child,
            dir,
            url: client_url,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !matches!(client::get(ports[0], "/health").await, Ok(r) if r.status == 200) {
            if Instant::now() > deadline {
                return Err(format!("etcd did not answer on {} within 20 s", etcd.url));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(etcd)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
