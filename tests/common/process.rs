//! Every process a test starts (ringside, etcd, Prometheus, the webhook):
//! spawned with its output appended to a log file and no `RINGSIDE_*`
//! variable of the developer's environment, waited on until a condition
//! says it is ready (failing at once, with its log, if it exits first), and
//! killed by PID when its handle drops. Also: the check that a tool a test
//! runs is installed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::time::Instant;

/// A child process of a test. Dropping it kills the process (SIGKILL).
pub struct Process {
    /// For messages: "ringside", "etcd", ...
    name: String,
    /// `None` once killed, or exited after [`Process::terminate`].
    child: Option<Child>,
    log_path: PathBuf,
}

/// `command` without any `RINGSIDE_*` variable inherited from the
/// environment running the tests: a developer's exported
/// `RINGSIDE_CLUSTER_SECRET` must not change what a test starts.
/// Variables the test set on `command` itself are kept.
pub fn without_ringside_env(command: &mut Command) -> &mut Command {
    let set_by_test: Vec<_> = command
        .get_envs()
        .map(|(name, _)| name.to_owned())
        .collect();
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("RINGSIDE_") && !set_by_test.contains(&name) {
            command.env_remove(name);
        }
    }
    command
}

impl Process {
    /// Start `command` (stdin closed, stdout and stderr appended to
    /// `log_path`, no inherited `RINGSIDE_*` variables).
    pub fn spawn(name: &str, mut command: Command, log_path: &Path) -> Process {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .unwrap_or_else(|e| panic!("{name}: log file {}: {e}", log_path.display()));
        let child = without_ringside_env(&mut command)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Process {
            name: name.to_owned(),
            child: Some(child),
            log_path: log_path.to_owned(),
        }
    }

    /// Poll `ready` until it holds (see [`super::eventually`]); fails the
    /// test, showing the end of the log, if the process exits meanwhile.
    pub async fn wait_until<F, Fut>(&mut self, within: Duration, what: &str, mut ready: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let Process {
            name,
            child,
            log_path,
        } = self;
        super::eventually(within, what, || {
            let exited = child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            let ready = ready();
            let (name, log_path) = (&*name, &*log_path);
            async move {
                if let Some(status) = exited {
                    panic!(
                        "{name} exited with {status}; its log ends:\n{}",
                        log_tail(log_path)
                    );
                }
                ready.await
            }
        })
        .await;
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// The exit code, once the process has exited on its own.
    pub fn exit_code(&mut self) -> Option<i32> {
        let child = self.child.as_mut()?;
        child.try_wait().ok().flatten()?.code()
    }

    /// SIGKILL the process (no graceful shutdown) and reap it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Send SIGTERM and wait for the exit (failing the test after
    /// `within`); returns how long it took, or None when not running.
    pub async fn terminate(&mut self, within: Duration) -> Option<Duration> {
        let child = self.child.as_mut()?;
        let started = Instant::now();
        let _ = ringside::demo::process::sigterm(child.id());
        let what = format!("{} exits on SIGTERM", self.name);
        super::eventually(within, &what, || {
            let exited = matches!(child.try_wait(), Ok(Some(_)));
            async move { exited }
        })
        .await;
        self.child = None;
        Some(started.elapsed())
    }

    /// Everything the process (and those before it on this log) printed.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How to install helm, kubernetes-validate and curl.
pub const K8S_TOOLS: &str = "bash tests/tools/install-k8s-tools.sh` (CI runs it from .ci/run)`";

/// `tool` on PATH, or a failure saying how to install it (`install`): a
/// missing tool fails its tests rather than silently skipping them.
pub fn require_tool(tool: &str, install: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`{tool}` is not on PATH: install it with `{install}`"))
}

/// The last 30 lines of the log at `path`.
pub fn log_tail(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
