//! The `ringside` command: run the proxy, check a config file, or run the demo.

use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use ringside::config::{Config, ConfigError, Overrides};
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc: a request allocates and frees many small buffers (headers,
/// keys, futures) across threads; glibc malloc spends measurably more time
/// on them (see README, Performance).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc commits its arenas as it uses them, so that the cache's byte
/// bound stays the process's memory when the workload changes
/// (`benches/memory.sh --case mixed`: tiny objects, then 8 KiB keys, then
/// Vary, at 64 MiB). By default it commits each arena (1 GiB of address
/// space) when it reserves it on a system that overcommits, and what it
/// purged from such an arena stayed resident: evicting one workload's
/// entries for the next's, the peak was 132 MiB against the bound's 113.6;
/// with `arena_eager_commit` 0 it is 117-119 MiB, and hits are as fast
/// (benches/README, "Memory"). Purging at once as well
/// (`MIMALLOC_PURGE_DELAY=0`) gained nothing more and cost a syscall for
/// each page a request empties.
///
/// mimalloc reserves its first arena on the first allocation, before
/// `main`, so this runs as a constructor: after mimalloc's own (priority
/// 101, which reads the `MIMALLOC_*` variables) and before Rust's runtime
/// allocates. `MIMALLOC_ARENA_EAGER_COMMIT`, when set, still wins.
extern "C" fn commit_arenas_as_used() {
    /// `mi_option_arena_eager_commit` in `mimalloc.h` (the same in mimalloc
    /// 2 and 3; the Rust bindings name only some of the options).
    const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    // SAFETY: `getenv` reads the environment, which nothing changes this
    // early (no thread runs yet), and allocates nothing, so it cannot
    // reserve the arena first. Setting an option is safe at any time.
    unsafe {
        if nix::libc::getenv(c"MIMALLOC_ARENA_EAGER_COMMIT".as_ptr()).is_null() {
            libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0);
        }
    }
}

#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array.00102"]
static COMMIT_ARENAS_AS_USED: extern "C" fn() = commit_arenas_as_used;

#[derive(Parser)]
#[command(
    name = "ringside",
    version,
    about = "HTTP caching sidecar",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// Configuration file (YAML). Without one, defaults plus flags and RINGSIDE_* variables.
    #[arg(long, short, env = "RINGSIDE_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    flags: ConfigFlags,
    #[command(subcommand)]
    command: Option<Command>,
}

/// What overrides the configuration file: for running ringside and for
/// `check-config`, not for `inject` and `demo`, which have flags of their own.
#[derive(clap::Args)]
struct ConfigFlags {
    /// App-facing listen address, e.g. 127.0.0.1:8080.
    #[arg(long, env = "RINGSIDE_LISTEN")]
    listen: Option<String>,
    /// Admin listen address (metrics, health), e.g. 127.0.0.1:9090.
    #[arg(long, env = "RINGSIDE_ADMIN_LISTEN")]
    admin_listen: Option<String>,
    /// Origin URL, e.g. http://127.0.0.1:8000 or https://api.example.com.
    #[arg(long, env = "RINGSIDE_ORIGIN")]
    origin: Option<String>,
    /// Cache capacity in bytes, e.g. 268435456 or 256MiB.
    #[arg(long, env = "RINGSIDE_CAPACITY")]
    capacity: Option<String>,
    /// error, warn, info, debug or trace.
    #[arg(long, env = "RINGSIDE_LOG_LEVEL")]
    log_level: Option<String>,
    /// Shared secret of the cluster's peers (prefer --cluster-secret-file).
    #[arg(long, env = "RINGSIDE_CLUSTER_SECRET", hide_env_values = true)]
    cluster_secret: Option<String>,
    /// A file holding the cluster's peer secret (a mounted Secret), read again when it changes.
    #[arg(long, env = "RINGSIDE_CLUSTER_SECRET_FILE")]
    cluster_secret_file: Option<String>,
    /// Peer listen address in a cluster, e.g. 0.0.0.0:7070.
    #[arg(long, env = "RINGSIDE_PEER_LISTEN")]
    peer_listen: Option<String>,
    /// Bearer token for purge on the admin listener (prefer --admin-token-file).
    #[arg(long, env = "RINGSIDE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// A file holding the purge token (a mounted Secret), read again when it changes.
    #[arg(long, env = "RINGSIDE_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<String>,
    /// After SIGTERM, keep serving this long (readiness failing) before draining, e.g. 5s.
    #[arg(long, env = "RINGSIDE_SHUTDOWN_DELAY")]
    shutdown_delay: Option<String>,
    /// Proxy worker threads; 0: one per CPU this process may use (its cgroup CPU quota, else the machine's).
    #[arg(long, env = "RINGSIDE_THREADS")]
    threads: Option<String>,
}

/// Each flag of [`ConfigFlags`] (by its clap id) and the config field it sets.
const FIELDS: [(&str, &str); 12] = [
    ("listen", "listen"),
    ("admin_listen", "admin_listen"),
    ("origin", "origin.url"),
    ("capacity", "cache.capacity"),
    ("log_level", "log_level"),
    ("cluster_secret", "cluster.secret"),
    ("cluster_secret_file", "cluster.secret_file"),
    ("peer_listen", "cluster.peer_listen"),
    ("admin_token", "admin_token"),
    ("admin_token_file", "admin_token_file"),
    ("shutdown_delay", "shutdown_delay"),
    ("threads", "threads"),
];

#[derive(Subcommand)]
enum Command {
    /// Validate a configuration file (with any overrides) and exit.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
        #[command(flatten)]
        flags: Box<ConfigFlags>,
    },
    /// Run a local demo: a slow sample origin, ringside in front, a burst of clients.
    #[cfg(feature = "demo")]
    Demo(ringside::demo::DemoArgs),
    /// Run the Kubernetes admission webhook that injects the ringside sidecar (HTTPS on --listen).
    Inject(Box<ringside::inject::InjectArgs>),
}

impl ConfigFlags {
    /// The overrides, with where each came from: `matches` are those of the
    /// (sub)command `command` that holds these flags.
    fn overrides(&self, command: &clap::Command, matches: &ArgMatches) -> Overrides {
        Overrides {
            sources: sources(command, matches),
            listen: self.listen.clone(),
            admin_listen: self.admin_listen.clone(),
            origin: self.origin.clone(),
            capacity: self.capacity.clone(),
            log_level: self.log_level.clone(),
            cluster_secret: self.cluster_secret.clone(),
            cluster_secret_file: self.cluster_secret_file.clone(),
            admin_token: self.admin_token.clone(),
            admin_token_file: self.admin_token_file.clone(),
            peer_listen: self.peer_listen.clone(),
            shutdown_delay: self.shutdown_delay.clone(),
            threads: self.threads.clone(),
        }
    }

    fn load(
        &self,
        file: Option<&PathBuf>,
        command: &clap::Command,
        matches: &ArgMatches,
    ) -> Result<Config, ConfigError> {
        Config::load(file.map(PathBuf::as_path), self.overrides(command, matches))
    }
}

/// Which flag (`--capacity`) or variable (`RINGSIDE_CAPACITY`) gave each
/// overridden field its value, as [`Overrides::sources`] wants them.
fn sources(command: &clap::Command, matches: &ArgMatches) -> Vec<(&'static str, String)> {
    FIELDS
        .iter()
        .filter_map(|&(id, field)| {
            let arg = command.get_arguments().find(|a| a.get_id() == id)?;
            let source = match matches.value_source(id)? {
                clap::parser::ValueSource::CommandLine => format!("--{}", arg.get_long()?),
                clap::parser::ValueSource::EnvVariable => {
                    arg.get_env()?.to_string_lossy().into_owned()
                }
                _ => return None,
            };
            Some((field, source))
        })
        .collect()
}

fn main() -> ExitCode {
    let command = Cli::command();
    let matches = command.clone().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match &cli.command {
        Some(Command::CheckConfig { file, flags }) => {
            let sub = command
                .find_subcommand("check-config")
                .expect("declared above");
            let sub_matches = matches
                .subcommand_matches("check-config")
                .expect("parsed as check-config");
            check_config(file, flags.load(Some(file), sub, sub_matches))
        }
        #[cfg(feature = "demo")]
        Some(Command::Demo(args)) => ringside::demo::run(args),
        Some(Command::Inject(args)) => ringside::inject::run(args),
        None => match cli.flags.load(cli.config.as_ref(), &command, &matches) {
            Ok(config) => {
                init_logging(config.log_level.as_str());
                ringside::server::run(config)
            }
            Err(e) => {
                eprintln!("ringside: invalid configuration: {e}");
                ExitCode::from(2)
            }
        },
    }
}

/// What `check-config` says about `file` as loaded.
fn check_config(file: &std::path::Path, loaded: Result<Config, ConfigError>) -> ExitCode {
    match loaded {
        Ok(_) => {
            println!("{}: ok", file.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ringside: invalid configuration: {e}");
            ExitCode::from(2)
        }
    }
}

/// pingora's own logs at warn and above; its connection pool's "failed to
/// acquire reusable stream" (a benign race with its idle watcher, after which
/// it opens a new connection) is logged at error level, so that module is
/// silenced: connection failures still reach us as errors, and we log those.
fn init_logging(level: &str) {
    env_logger::Builder::new()
        .parse_filters(&format!(
            "{level},pingora=warn,pingora_core=warn,pingora_proxy=warn,pingora_core::connectors=off"
        ))
        .format_timestamp_millis()
        .init();
}
