//! A ringside node started as a child process: on its own config file,
//! its output kept for error messages, stopped by PID (SIGTERM, then kill).

use super::client;
use parking_lot::Mutex;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How long ringside gets to answer on its admin port.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long ringside gets to exit after SIGTERM before it is killed (its
/// `shutdown_grace`, in which it hands its entries over, and a margin).
const STOP_TIMEOUT: Duration = Duration::from_secs(8);
/// The last lines of ringside's output kept for error messages.
const LOG_LINES_KEPT: usize = 40;

/// ringside, started as a child process. Dropping it kills the process if
/// it is still running.
pub struct RingsideProcess {
    /// A short name for messages ("node 1").
    pub name: String,
    child: Child,
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The last lines ringside printed (stdout and stderr).
    log: Arc<Mutex<Vec<String>>>,
    /// The threads copying ringside's output into `log`.
    log_readers: Vec<std::thread::JoinHandle<()>>,
    /// Whether SIGTERM was sent (by [`RingsideProcess::signal_stop`]).
    signalled: bool,
}

impl RingsideProcess {
    /// Start `exe --config config`; the file must make ringside listen on
    /// `proxy_addr` and `admin_addr`.
    pub fn start(
        name: &str,
        exe: &Path,
        config: &Path,
        proxy_addr: SocketAddr,
        admin_addr: SocketAddr,
    ) -> Result<RingsideProcess, String> {
        let mut command = Command::new(exe);
        command
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // The demo must not pick up the caller's own ringside settings.
        for (var, _) in std::env::vars_os() {
            if var.to_string_lossy().starts_with("RINGSIDE_") {
                command.env_remove(var);
            }
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start ringside ({}): {e}", exe.display()))?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut log_readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            log_readers.push(keep_lines(out, log.clone()));
        }
        if let Some(err) = child.stderr.take() {
            log_readers.push(keep_lines(err, log.clone()));
        }
        Ok(RingsideProcess {
            name: name.to_owned(),
            child,
            proxy_addr,
            admin_addr,
            log,
            log_readers,
            signalled: false,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The CPU time (user and system, every thread) the process has used
    /// so far, from `/proc`; None where that cannot be read.
    pub fn cpu_time(&self) -> Option<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).ok()?;
        // The fields after the command name, which is in parentheses.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
        // utime and stime (fields 14 and 15), in USER_HZ: 100 on Linux.
        let total = ticks(11)? + ticks(12)?;
        Some(Duration::from_millis(total * 10))
    }

    /// Wait until `/healthz` (admin up) and `/readyz` (proxy listener up)
    /// both answer 200, or fail with what was seen.
    pub async fn wait_until_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        for path in ["/healthz", "/readyz"] {
            self.wait_for_200(path, deadline).await?;
        }
        Ok(())
    }

    /// Poll `GET path` on the admin port until it answers 200.
    async fn wait_for_200(&mut self, path: &str, deadline: Instant) -> Result<(), String> {
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.wait_for_last_output().await;
                let why = format!("{} exited during startup ({status})", self.name);
                return Err(self.with_log(why));
            }
            let last = match probe(self.admin_addr, path).await {
                Ok(200) => return Ok(()),
                Ok(status) => format!("status {status}"),
                Err(e) => e,
            };
            if Instant::now() > deadline {
                let why = format!(
                    "{} did not answer 200 on http://{}{path} within {} s (last: {last})",
                    self.name,
                    self.admin_addr,
                    STARTUP_TIMEOUT.as_secs()
                );
                return Err(self.with_log(why));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL the process and reap it: no graceful shutdown, no handoff.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Send SIGTERM (by PID); [`RingsideProcess::wait_stopped`] waits.
    pub fn signal_stop(&mut self) {
        self.signalled = sigterm(self.child.id()).is_ok();
    }

    /// Wait for the exit after [`RingsideProcess::signal_stop`]; kill the
    /// process if it does not exit in time.
    pub async fn wait_stopped(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + STOP_TIMEOUT;
        while self.signalled && Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.wait_for_last_output().await;
                    if status.success() {
                        return Ok(());
                    }
                    return Err(format!("{} exited with {status} after SIGTERM", self.name));
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(_) => break,
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.signalled {
            Err(format!(
                "{} did not exit within {} s of SIGTERM and was killed",
                self.name,
                STOP_TIMEOUT.as_secs()
            ))
        } else {
            Err(format!(
                "could not send SIGTERM to {} (is `kill` installed?); killed it",
                self.name
            ))
        }
    }

    /// After the process exited: give the log threads a moment to copy
    /// its last words (they end when the pipes close).
    async fn wait_for_last_output(&self) {
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline && !self.log_readers.iter().all(|t| t.is_finished()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn log_lines(&self) -> Vec<String> {
        self.log.lock().clone()
    }

    /// `why`, followed by the last lines ringside printed.
    fn with_log(&self, why: String) -> String {
        let lines = self.log_lines();
        if lines.is_empty() {
            format!("{why}; it printed nothing")
        } else {
            format!("{why}; its last output:\n  {}", lines.join("\n  "))
        }
    }

    /// Show what ringside printed (warnings and errors only, at --log-level warn).
    pub fn print_log(&self) {
        let lines = self.log_lines();
        if lines.is_empty() {
            return;
        }
        println!(
            "\n{} printed (of its last {} lines):",
            self.name,
            lines.len()
        );
        // The same message repeated (timestamps aside) is shown once, counted.
        let mut seen: Vec<(String, &str, usize)> = Vec::new();
        for line in &lines {
            let message = line.split_once(' ').map_or(line.as_str(), |(_, m)| m);
            match seen.iter_mut().find(|(_, m, _)| *m == message) {
                Some((_, _, count)) => *count += 1,
                None => seen.push((line.clone(), message, 1)),
            }
        }
        for (first, _, count) in seen {
            match count {
                1 => println!("  {first}"),
                n => println!("  {first}  ({n} times)"),
            }
        }
    }
}

impl Drop for RingsideProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The ringside binary of the benchmark examples: `given`, or the one built
/// beside them (`target/<profile>/ringside` for `target/<profile>/examples/*`).
pub fn ringside_beside_examples(given: Option<&Path>) -> Result<std::path::PathBuf, String> {
    if let Some(exe) = given {
        return Ok(exe.to_path_buf());
    }
    std::env::current_exe()
        .map_err(|e| e.to_string())?
        .parent()
        .and_then(|examples| examples.parent())
        .map(|dir| dir.join("ringside"))
        .ok_or_else(|| "cannot find the ringside binary; pass --ringside".to_owned())
}

/// `n` distinct free ports on 127.0.0.1 (all bound at once, then released).
/// The `n` local ports from `base` on: for a machine whose firewall or
/// neighbours leave only a known range (`demo --base-port`).
pub fn ports_from(base: u16, n: usize) -> Vec<SocketAddr> {
    (0..n)
        .map(|i| SocketAddr::from(([127, 0, 0, 1], base.saturating_add(i as u16))))
        .collect()
}

/// Whether the `n` ports from `base` on exist and are free now; the error
/// names the flag and the port.
pub fn check_ports_from(base: u16, n: usize) -> Result<(), String> {
    if usize::from(base) + n - 1 > usize::from(u16::MAX) {
        return Err(format!(
            "--base-port {base}: the demo needs {n} ports from it, past 65535; choose a port \
             at most {}",
            usize::from(u16::MAX) + 1 - n
        ));
    }
    for addr in ports_from(base, n) {
        std::net::TcpListener::bind(addr)
            .map_err(|e| format!("--base-port {base}: cannot listen on {addr}: {e}"))?;
    }
    Ok(())
}

pub fn free_ports(n: usize) -> Result<Vec<SocketAddr>, String> {
    let held = (0..n)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| Ok((l.local_addr()?, l)))
                .map_err(|e| format!("cannot find a free local port: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(held.into_iter().map(|(addr, _)| addr).collect())
}

/// Keep the last lines of `output` in `log`, on a thread of their own so
/// that the child never blocks on a full pipe.
fn keep_lines(
    output: impl Read + Send + 'static,
    log: Arc<Mutex<Vec<String>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines().map_while(Result::ok) {
            let mut log = log.lock();
            if log.len() == LOG_LINES_KEPT {
                log.remove(0);
            }
            log.push(line);
        }
    })
}

/// The status of `GET path`, or why there was none.
async fn probe(addr: SocketAddr, path: &str) -> Result<u16, String> {
    match tokio::time::timeout(Duration::from_secs(1), client::get(addr, path)).await {
        Ok(Ok(response)) => Ok(response.status),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

/// Send SIGTERM to process `pid`.
pub fn sigterm(pid: u32) -> Result<(), String> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let pid = i32::try_from(pid).map_err(|_| format!("no such pid {pid}"))?;
    kill(Pid::from_raw(pid), Signal::SIGTERM).map_err(|e| e.to_string())
}
