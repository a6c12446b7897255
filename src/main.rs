//! The `ringside` command: run the proxy, check a config file, or run the demo.

use clap::{Parser, Subcommand};
use ringside::config::{Config, ConfigError, Overrides};
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc: a request allocates and frees many small buffers (headers,
/// keys, futures) across threads; glibc malloc spends measurably more time
/// on them (see README, Performance).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Shared secret of the cluster's peers (prefer the environment variable).
    #[arg(long, env = "RINGSIDE_CLUSTER_SECRET", hide_env_values = true)]
    cluster_secret: Option<String>,
    /// Peer listen address in a cluster, e.g. 0.0.0.0:7070.
    #[arg(long, env = "RINGSIDE_PEER_LISTEN")]
    peer_listen: Option<String>,
    /// Bearer token for purge on the admin listener (prefer the environment variable).
    #[arg(long, env = "RINGSIDE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// After SIGTERM, keep serving this long (readiness failing) before draining, e.g. 5s.
    #[arg(long, env = "RINGSIDE_SHUTDOWN_DELAY")]
    shutdown_delay: Option<String>,
}

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
    Demo(ringside::demo::DemoArgs),
    /// Run the Kubernetes admission webhook that injects the ringside sidecar (HTTPS on --listen).
    Inject(Box<ringside::inject::InjectArgs>),
}

impl ConfigFlags {
    fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen.clone(),
            admin_listen: self.admin_listen.clone(),
            origin: self.origin.clone(),
            capacity: self.capacity.clone(),
            log_level: self.log_level.clone(),
            cluster_secret: self.cluster_secret.clone(),
            admin_token: self.admin_token.clone(),
            peer_listen: self.peer_listen.clone(),
            shutdown_delay: self.shutdown_delay.clone(),
        }
    }

    fn load(&self, file: Option<&PathBuf>) -> Result<Config, ConfigError> {
        let base = match file {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        base.finish(self.overrides())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::CheckConfig { file, flags }) => match flags.load(Some(file)) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ringside: invalid configuration: {e}");
                ExitCode::from(2)
            }
        },
        Some(Command::Demo(args)) => ringside::demo::run(args),
        Some(Command::Inject(args)) => ringside::inject::run(args),
        None => match cli.flags.load(cli.config.as_ref()) {
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
