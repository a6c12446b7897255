//! How many proxy workers a process starts: `threads` (file, `--threads`,
//! `RINGSIDE_THREADS`), and with `threads: 0` the CPUs the process may use:
//! its affinity mask, and the CPU quota of its cgroup (a container's CPU
//! limit), not the machine's CPU count.
//!
//! The workers are counted from outside, as the threads named `ringside
//! proxy` in `/proc/<pid>/task` once the process is ready, and the start-up
//! line must say the same number. The quota test puts a real ringside
//! process into a cgroup of its own with a 1-CPU quota (cgroup v2 `cpu.max`
//! where the cpu controller is on the unified hierarchy, else v1's
//! `cpu.cfs_quota_us`); that needs root and a writable cgroup filesystem, and
//! where the machine has neither it says so and checks the affinity mask
//! only. The cgroup files themselves are read by the standard library
//! (`std::thread::available_parallelism`), which ringside relies on.

mod common;
use common::process::Process;
use common::{free_port, get};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A ringside process (started through a wrapper command, or not) and its log.
struct Node {
    process: Process,
    log: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.process.kill();
        let _ = std::fs::remove_file(&self.log);
    }
}

impl Node {
    /// Start ringside with `args` (listen addresses added) under `wrapper`
    /// (e.g. `["taskset", "-c", "0"]`; empty: directly), with `env`, and
    /// wait until it is ready.
    async fn start(wrapper: &[&str], args: &[&str], env: &[(&str, &str)]) -> Node {
        let listen = format!("127.0.0.1:{}", free_port());
        let admin: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = std::env::temp_dir().join(format!("ringside-threads-{}.log", admin.port()));
        let _ = std::fs::remove_file(&log);
        let exe = env!("CARGO_BIN_EXE_ringside");
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        command
            .args(["--origin", "http://127.0.0.1:9", "--listen", &listen])
            .args(["--admin-listen", &admin.to_string(), "--log-level", "info"])
            .args(args);
        for (k, v) in env {
            command.env(k, v);
        }
        let mut process = Process::spawn("ringside", command, &log);
        let ready =
            || async move { matches!(get(admin, "/readyz").await, Ok(r) if r.status == 200) };
        process
            .wait_until(Duration::from_secs(30), "ringside is ready", ready)
            .await;
        Node { process, log }
    }

    /// The proxy's worker threads, counted in /proc by name.
    fn workers(&self) -> usize {
        let tasks = Path::new("/proc")
            .join(self.process.pid().to_string())
            .join("task");
        std::fs::read_dir(&tasks)
            .unwrap_or_else(|e| panic!("{}: {e}", tasks.display()))
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|name| name.trim() == "ringside proxy")
            .count()
    }

    /// The number the start-up line gives ("; N proxy thread(s)").
    fn announced(&self) -> usize {
        let log = self.process.log();
        let line = log
            .lines()
            .find(|l| l.contains("ringside listening on"))
            .unwrap_or_else(|| panic!("no start-up line:\n{log}"));
        let after = &line[line.rfind("; ").expect("threads after '; '") + 2..];
        after
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no thread count in {line:?}"))
    }

    /// The workers, checked against what the start-up line says.
    fn threads(&self) -> usize {
        let workers = self.workers();
        assert_eq!(
            workers,
            self.announced(),
            "the start-up line says another number:\n{}",
            self.process.log()
        );
        workers
    }
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[tokio::test]
async fn the_threads_flag_and_variable_set_the_workers() {
    let node = Node::start(&[], &["--threads", "3"], &[]).await;
    assert_eq!(node.threads(), 3);
    let node = Node::start(&[], &[], &[("RINGSIDE_THREADS", "1")]).await;
    assert_eq!(node.threads(), 1);
    // Not given: one per CPU this process may use.
    let node = Node::start(&[], &[], &[]).await;
    assert_eq!(node.threads(), cpus());
    assert!(
        node.process
            .log()
            .contains("threads: 0, the CPUs this process may use"),
        "{}",
        node.process.log()
    );
}

#[tokio::test]
async fn threads_zero_follows_the_cpu_affinity() {
    common::process::require_tool("taskset", "apt-get install -y util-linux");
    let node = Node::start(&["taskset", "-c", "0"], &["--threads", "0"], &[]).await;
    assert_eq!(node.threads(), 1, "one CPU allowed, one worker");
}

/// A cgroup of this test's own, with a CPU quota; removed on drop (after
/// the processes in it are gone).
struct QuotaCgroup {
    dir: PathBuf,
}

impl QuotaCgroup {
    /// A new cgroup limited to `cpus` CPUs: on the unified hierarchy (v2)
    /// when it has the cpu controller, else in v1's cpu hierarchy. Err says
    /// why the machine does not allow it.
    fn create(cpus: u32) -> Result<QuotaCgroup, String> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
        let name = format!("ringside-test-threads-{}", std::process::id());
        let (period, quota) = (100_000u64, 100_000 * u64::from(cpus));
        let write = |path: PathBuf, value: &str| {
            std::fs::write(&path, value).map_err(|e| format!("{}: {e}", path.display()))
        };
        if let Some(root) = mount_point(&mountinfo, "cgroup2", None)
            .filter(|root| controllers(&root.join("cgroup.controllers")).contains("cpu"))
        {
            if !controllers(&root.join("cgroup.subtree_control")).contains("cpu") {
                write(root.join("cgroup.subtree_control"), "+cpu")?;
            }
            let dir = root.join(&name);
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let cgroup = QuotaCgroup { dir };
            write(cgroup.dir.join("cpu.max"), &format!("{quota} {period}"))?;
            return Ok(cgroup);
        }
        let root = mount_point(&mountinfo, "cgroup", Some("cpu"))
            .ok_or("no cgroup v2 with the cpu controller and no v1 cpu hierarchy is mounted")?;
        let dir = root.join(&name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let cgroup = QuotaCgroup { dir };
        write(cgroup.dir.join("cpu.cfs_period_us"), &period.to_string())?;
        write(cgroup.dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
        Ok(cgroup)
    }

    /// A wrapper that moves the process into this cgroup, then runs the
    /// command after it.
    fn wrapper(&self) -> Vec<String> {
        let procs = self.dir.join("cgroup.procs");
        let script = format!("echo $$ > {} && exec \"$@\"", procs.display());
        vec!["sh".into(), "-c".into(), script, "sh".into()]
    }
}

impl Drop for QuotaCgroup {
    fn drop(&mut self) {
        // Empty once the process was killed and reaped.
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Where a filesystem of type `fstype` is mounted (with `option` among its
/// super options, e.g. v1's `cpu` controller), from /proc/self/mountinfo.
fn mount_point(mountinfo: &str, fstype: &str, option: Option<&str>) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        let mut fs = fs.split_whitespace();
        let (kind, _source, options) = (fs.next()?, fs.next()?, fs.next().unwrap_or(""));
        let wanted = option.is_none_or(|o| options.split(',').any(|x| x == o));
        let point = mount.split_whitespace().nth(4)?;
        (kind == fstype && wanted).then(|| PathBuf::from(point))
    })
}

/// The controllers a cgroup file lists (`cpu io memory`), or "".
fn controllers(file: &Path) -> String {
    std::fs::read_to_string(file).unwrap_or_default()
}

/// A container's CPU limit is a cgroup CPU quota: with 1 CPU of quota on a
/// machine of more, `threads: 0` starts one worker.
#[tokio::test]
async fn threads_zero_follows_the_cgroup_cpu_quota() {
    let cgroup = match QuotaCgroup::create(1) {
        Ok(cgroup) => cgroup,
        Err(why) => {
            eprintln!(
                "threads_zero_follows_the_cgroup_cpu_quota: this machine gives no cgroup with a \
                 CPU quota ({why}); checked: the affinity mask (threads_zero_follows_the_cpu_affinity)"
            );
            return;
        }
    };
    assert!(
        cpus() >= 2,
        "needs 2 CPUs or more to tell a 1-CPU quota from the machine"
    );
    let wrapper = cgroup.wrapper();
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let node = Node::start(&wrapper, &[], &[]).await;
    let procs = std::fs::read_to_string(cgroup.dir.join("cgroup.procs")).unwrap();
    assert!(
        procs
            .lines()
            .any(|p| p.trim() == node.process.pid().to_string()),
        "ringside is not in the cgroup: {procs:?}"
    );
    assert_eq!(node.threads(), 1, "a 1-CPU quota, one worker");
    // An explicit number wins over the quota.
    let pinned = Node::start(&wrapper, &["--threads", "2"], &[]).await;
    assert_eq!(pinned.threads(), 2);
}
