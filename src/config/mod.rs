//! Configuration: the YAML file, its defaults, and the checks that turn a
//! mistake into a message naming the field, the value and what was expected.
//!
//! Precedence is flag > `RINGSIDE_*` environment variable > file > default
//! (the flags and variables themselves are declared in `main.rs`; this module
//! only applies them through [`Overrides`]). Every struct denies unknown keys,
//! so a typo such as `capacty:` is an error rather than a silently ignored line.

mod cluster;

pub use cluster::{
    ClusterConfig, DnsMembership, EtcdAuth, EtcdMembership, EtcdTls, HandoffConfig, HotConfig,
    MembershipConfig, PeerProtocol, PeerTlsConfig, StaticMember, MIN_SECRET_LEN,
};
use serde::de::{self, Deserializer};
use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// A configuration mistake. The message always starts with the field's path.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

fn invalid(field: &str, value: impl fmt::Display, expected: &str) -> ConfigError {
    ConfigError::Invalid(format!("{field}: {value} is invalid; expected {expected}"))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the app's requests come in.
    #[serde(deserialize_with = "de_addr")]
    pub listen: SocketAddr,
    /// Metrics, health and readiness.
    #[serde(deserialize_with = "de_addr")]
    pub admin_listen: SocketAddr,
    /// Bearer token for the admin listener's purge endpoint; empty: purge is
    /// refused. Never the cluster secret, which must not cross the wire.
    pub admin_token: String,
    /// A file holding `admin_token` instead (a mounted Secret), read again
    /// when it changes; exclusive with `admin_token`.
    pub admin_token_file: String,
    /// Worker threads for the proxy; 0 = one per CPU this process may use
    /// (see [`Config::worker_threads`]).
    pub threads: usize,
    /// Seconds to finish in-flight requests after SIGTERM.
    #[serde(deserialize_with = "de_duration")]
    pub shutdown_grace: Duration,
    /// After SIGTERM, keep serving this long (with `/readyz` failing) before
    /// the drain starts: a regular-container sidecar outlives the app's last calls.
    #[serde(deserialize_with = "de_duration")]
    pub shutdown_delay: Duration,
    pub log_level: LogLevel,
    /// Open client connections at most, per listener (app, peer); more are
    /// answered 503 and closed.
    pub max_connections: usize,
    /// How long a request head may take to arrive, from its first byte (from
    /// the connection's start, for its first request).
    #[serde(deserialize_with = "de_duration")]
    pub request_header_timeout: Duration,
    /// A client connection with no request under way for this long is closed
    /// (app, upstream and peer listeners; whole seconds).
    #[serde(deserialize_with = "de_duration")]
    pub idle_timeout: Duration,
    /// A request body in which no byte arrives for this long is answered 408.
    #[serde(deserialize_with = "de_duration")]
    pub request_body_timeout: Duration,
    /// Requests per listener whose bodies are still arriving (each holding an
    /// origin connection meanwhile); another one is answered 503. Not set: a
    /// quarter of `max_connections` (see [`Config::request_bodies`]).
    pub max_request_bodies: Option<usize>,
    /// The admin listener's own bounds, small: probes, scrapes and purges
    /// need a few connections.
    pub admin_max_connections: usize,
    #[serde(deserialize_with = "de_duration")]
    pub admin_request_header_timeout: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub admin_idle_timeout: Duration,
    pub origin: OriginConfig,
    /// More origins, each fronted on a listener of its own.
    pub upstreams: Vec<UpstreamConfig>,
    pub forward_proxy: ForwardProxyConfig,
    pub cache: CacheConfig,
    pub cluster: ClusterConfig,
}

/// Another origin the app calls, on a listener of its own: the app uses
/// `http://<listen>` as that API's base URL, as it uses `listen` for the
/// main origin. Timeouts are `origin`'s.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The app-facing listener for this origin.
    #[serde(deserialize_with = "de_addr")]
    pub listen: SocketAddr,
    /// `http://host:port` or `https://host[:port]`, optionally with a base path.
    pub origin: OriginBase,
    /// Path rules for this origin; absent: `cache.rules`.
    #[serde(default)]
    pub rules: Option<Vec<PathRule>>,
    /// Headers added to every request sent to this origin (see
    /// [`InjectHeader`]).
    #[serde(default)]
    pub inject_headers: Vec<InjectHeader>,
}

/// A header ringside adds to every request it sends to an origin (a
/// credential the app then does not hold): never to a peer, never in a key,
/// a log line or a metric (see `net/inject.rs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectHeader {
    /// The header, e.g. `Authorization` or `X-Api-Key`.
    pub name: String,
    /// A file holding its value (a mounted Secret; a trailing newline is
    /// ignored), read at start and again when it changes.
    #[serde(default)]
    pub value_file: String,
    /// Or the environment variable holding it.
    #[serde(default)]
    pub value_env: String,
    /// Put before the value, e.g. `"Bearer "`.
    #[serde(default)]
    pub prefix: String,
    /// Replace a copy the app sent (the default); false: the app's copy wins.
    #[serde(default = "yes")]
    pub replace: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OriginConfig {
    /// `http://host:port` or `https://host[:port]`, optionally with a base
    /// path (`https://api.example.com/v1`) that app paths are appended to.
    pub url: Option<OriginBase>,
    #[serde(deserialize_with = "de_duration")]
    pub connect_timeout: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub read_timeout: Duration,
    /// Idle keep-alive connections to the origin are closed after this long.
    #[serde(deserialize_with = "de_duration")]
    pub idle_timeout: Duration,
    /// Verify the origin's TLS certificate (https origins).
    pub verify_tls: bool,
    /// Headers added to every request sent to the origin (see [`InjectHeader`]).
    pub inject_headers: Vec<InjectHeader>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardProxyConfig {
    /// Origins an app may reach with absolute-form requests (`HTTP_PROXY`),
    /// as `http://host[:port]` or `https://host[:port]`. Empty = forward proxy off.
    pub allow: Vec<OriginUrl>,
    /// `host:port`s an app may open CONNECT tunnels to (`HTTPS_PROXY`):
    /// relayed uncached (see `tunnel.rs`). Empty = CONNECT gets 405.
    pub connect_allow: Vec<String>,
    /// A tunnel in which no byte moves either way for this long is closed.
    #[serde(deserialize_with = "de_duration")]
    pub tunnel_idle_timeout: Duration,
}

impl Default for ForwardProxyConfig {
    fn default() -> Self {
        ForwardProxyConfig {
            allow: Vec::new(),
            connect_allow: Vec::new(),
            tunnel_idle_timeout: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Upper bound on cached bytes (body + headers + key of every entry).
    #[serde(deserialize_with = "de_size")]
    pub capacity: u64,
    /// Larger responses stream through uncached.
    #[serde(deserialize_with = "de_size")]
    pub max_object_size: u64,
    /// Whether the query string is part of the cache key.
    pub include_query: bool,
    /// Store responses that set cookies (off: such responses are usually per user).
    pub cache_set_cookie: bool,
    /// Honour request `Cache-Control: no-cache` / `max-age=0` from the app.
    pub honor_client_no_cache: bool,
    /// How long concurrent misses wait for the one origin fetch they share.
    #[serde(deserialize_with = "de_duration")]
    pub collapse_timeout: Duration,
    /// Per-path behaviour, first matching prefix wins.
    pub rules: Vec<PathRule>,
    /// Heuristic freshness (RFC 9111 §4.2.2): this fraction of the time since
    /// Last-Modified, for responses without explicit freshness. 0 (the
    /// default) turns it off: an API that says nothing about caching is not
    /// cached on a guess (README, "How it decides what to cache").
    pub heuristic_fraction: f64,
    /// Upper bound on a heuristic lifetime.
    #[serde(deserialize_with = "de_duration")]
    pub heuristic_max: Duration,
    /// Request headers removed from cacheable requests: they can change the
    /// origin's answer without being part of the key.
    pub strip_request_headers: Vec<String>,
    /// Request headers whose values are part of the cache key (and reach the origin).
    pub key_headers: Vec<String>,
    /// What to do with `%2F` / `%5C` in a request path.
    pub encoded_slashes: EncodedSlashes,
    /// How long past freshness a stored response may answer when the origin
    /// fails or cannot be reached, beyond its own stale-if-error (0: off).
    #[serde(deserialize_with = "de_duration")]
    pub stale_if_error: Duration,
    /// Targeted cache-control fields (RFC 9213) ringside obeys, in order: the
    /// first present replaces Cache-Control and Expires for its own decisions.
    pub targeted_cache_control: Vec<String>,
    /// Variants (`Vary`) kept per URL; a new one past it replaces the oldest.
    pub max_variants: usize,
    /// Request headers that carry a caller's credential: a request with any
    /// of them is an authenticated request (RFC 9111 §3.5), whatever header
    /// carries it. Replacing the list drops the defaults; `credential_headers_extra`
    /// adds to them.
    pub credential_headers: Vec<String>,
    /// More credential headers, besides `credential_headers`.
    pub credential_headers_extra: Vec<String>,
    /// More headers to strip, besides `strip_request_headers`.
    pub strip_request_headers_extra: Vec<String>,
    /// Request bodies of cached POST and QUERY requests are read up to this
    /// size to key them; larger ones pass through uncached.
    #[serde(deserialize_with = "de_size")]
    pub max_key_body: u64,
    /// How long such a body may take to arrive; slower ones get 408.
    #[serde(deserialize_with = "de_duration")]
    pub key_body_timeout: Duration,
}

/// The default `cache.credential_headers`.
pub const DEFAULT_CREDENTIAL_HEADERS: [&str; 7] = [
    "Authorization",
    "Proxy-Authorization",
    "Cookie",
    "X-Api-Key",
    "Api-Key",
    "X-Auth-Token",
    "X-Access-Token",
];

impl CacheConfig {
    /// `credential_headers` and `credential_headers_extra`, as names
    /// (validated), each once.
    pub fn credential_headers(&self) -> Vec<http::HeaderName> {
        header_names([&self.credential_headers, &self.credential_headers_extra])
    }

    /// `strip_request_headers` and `strip_request_headers_extra`.
    pub fn stripped_headers(&self) -> Vec<http::HeaderName> {
        header_names([
            &self.strip_request_headers,
            &self.strip_request_headers_extra,
        ])
    }
}

/// The default `cache.strip_request_headers`: headers that frameworks and
/// proxies use to rewrite the URL, host, scheme or method the origin sees.
pub const DEFAULT_STRIP_REQUEST_HEADERS: [&str; 14] = [
    "Forwarded",
    "X-Forwarded-Host",
    "X-Forwarded-Server",
    "X-Forwarded-Port",
    "X-Forwarded-Proto",
    "X-Forwarded-Scheme",
    "X-Forwarded-Prefix",
    "X-Host",
    "X-Original-Host",
    "X-Original-URL",
    "X-Rewrite-URL",
    "X-HTTP-Method-Override",
    "X-HTTP-Method",
    "X-Method-Override",
];

/// Variants kept per URL unless configured (`cache.max_variants`).
pub const DEFAULT_MAX_VARIANTS: usize = 32;

/// `cache.encoded_slashes`: an encoded `/` or `\` makes a path's segments
/// ambiguous (the origin may or may not decode it).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EncodedSlashes {
    /// Answer 400.
    #[default]
    Reject,
    /// Proxy the request unchanged and uncached.
    Pass,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathRule {
    /// Path prefix, starting with `/`.
    pub prefix: String,
    /// TTL for responses under this prefix that carry no freshness information.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub ttl: Option<Duration>,
    /// Never cache under this prefix: pass straight through.
    #[serde(default)]
    pub bypass: bool,
    /// `cache.stale_if_error` for this prefix.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub stale_if_error: Option<Duration>,
    /// How long past freshness a stored response may answer while one
    /// background fill refreshes it, beyond the origin's own
    /// stale-while-revalidate.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub stale_while_revalidate: Option<Duration>,
    /// Whose the answers under this prefix are (see [`Scope`]).
    #[serde(default)]
    pub scope: Scope,
    /// The origin's directives this rule's `ttl` wins over: `true` for all
    /// of them, or a list (see [`Override`]).
    #[serde(default, rename = "override")]
    pub overrides: OverrideList,
    /// Methods besides GET and HEAD cached under this prefix, keyed on their
    /// body (POST; QUERY is cached so on every rule).
    #[serde(default)]
    pub methods: Vec<String>,
    /// How a request body becomes part of the key: its bytes, or (`json`)
    /// the JSON it holds in a canonical form.
    #[serde(default)]
    pub body_key: BodyKey,
    /// `cache.max_key_body` for this prefix.
    #[serde(default, deserialize_with = "de_opt_size")]
    pub max_key_body: Option<u64>,
}

/// Whose the answers under a path rule are.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, strum::IntoStaticStr)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum Scope {
    /// One cache for every caller (RFC 9111's shared cache): a request
    /// carrying a credential is stored only when the answer says `public`,
    /// `s-maxage` or `must-revalidate`.
    #[default]
    Shared,
    /// Each credential has a cache of its own (a partition keyed by a keyed
    /// digest of the credential), where what a private cache may store is
    /// stored, `private` answers included. Requests without a credential
    /// use the shared cache.
    PerCredential,
    /// The operator asserts the answers do not depend on the caller: stored
    /// and shared although requests carry credentials (which still reach
    /// the origin on a miss).
    SharedDespiteCredentials,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// An origin directive a path rule's `ttl` may win over.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum Override {
    NoStore,
    NoCache,
    Private,
    /// `max-age`, `s-maxage` and `Expires`: the rule's ttl is the freshness.
    MaxAge,
}

/// `override:` on a path rule: `true` (every [`Override`]), `false` or
/// absent (none), or a list of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OverrideList(pub Vec<Override>);

impl OverrideList {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, o: Override) -> bool {
        self.0.contains(&o)
    }
}

impl<'de> Deserialize<'de> for OverrideList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            All(bool),
            Some(Vec<Override>),
        }
        let all = [
            Override::NoStore,
            Override::NoCache,
            Override::Private,
            Override::MaxAge,
        ];
        Ok(
            match Written::deserialize(d).map_err(|_| {
                de::Error::custom(
                    "expected true, false, or a list of no-store, no-cache, private, max-age",
                )
            })? {
                Written::All(true) => OverrideList(all.to_vec()),
                Written::All(false) => OverrideList::default(),
                Written::Some(list) => OverrideList(list),
            },
        )
    }
}

/// How a request body becomes part of a key.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BodyKey {
    /// The body's bytes, as sent.
    #[default]
    Raw,
    /// The JSON value it holds, in a canonical form (object keys sorted, no
    /// insignificant whitespace); a body that is not JSON is keyed raw.
    Json,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, strum::IntoStaticStr)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            admin_token: String::new(),
            admin_token_file: String::new(),
            threads: 0,
            shutdown_grace: Duration::from_secs(10),
            shutdown_delay: Duration::ZERO,
            log_level: LogLevel::Info,
            max_connections: 1024,
            request_header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            request_body_timeout: Duration::from_secs(30),
            max_request_bodies: None,
            admin_max_connections: 64,
            admin_request_header_timeout: Duration::from_secs(5),
            admin_idle_timeout: Duration::from_secs(60),
            origin: OriginConfig::default(),
            upstreams: Vec::new(),
            forward_proxy: ForwardProxyConfig::default(),
            cache: CacheConfig::default(),
            cluster: ClusterConfig::default(),
        }
    }
}

impl Default for OriginConfig {
    fn default() -> Self {
        OriginConfig {
            url: None,
            connect_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            verify_tls: true,
            inject_headers: Vec::new(),
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            capacity: 256 << 20,
            max_object_size: 8 << 20,
            include_query: true,
            cache_set_cookie: false,
            honor_client_no_cache: true,
            collapse_timeout: Duration::from_secs(35),
            rules: Vec::new(),
            heuristic_fraction: 0.0,
            heuristic_max: Duration::from_secs(24 * 3600),
            strip_request_headers: DEFAULT_STRIP_REQUEST_HEADERS.map(String::from).to_vec(),
            key_headers: Vec::new(),
            encoded_slashes: EncodedSlashes::Reject,
            targeted_cache_control: vec!["Ringside-Cache-Control".into()],
            stale_if_error: Duration::ZERO,
            max_variants: DEFAULT_MAX_VARIANTS,
            credential_headers: DEFAULT_CREDENTIAL_HEADERS.map(String::from).to_vec(),
            credential_headers_extra: Vec::new(),
            strip_request_headers_extra: Vec::new(),
            max_key_body: 64 << 10,
            key_body_timeout: Duration::from_secs(10),
        }
    }
}

/// Command-line and environment overrides, applied on top of the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub origin: Option<String>,
    pub capacity: Option<String>,
    pub log_level: Option<String>,
    pub cluster_secret: Option<String>,
    pub cluster_secret_file: Option<String>,
    pub admin_token: Option<String>,
    pub admin_token_file: Option<String>,
    pub peer_listen: Option<String>,
    pub shutdown_delay: Option<String>,
    pub threads: Option<String>,
    /// Where overridden fields got their values, as (field, flag or
    /// variable): `("cache.capacity", "--capacity")`. A mistake in such a
    /// field names where it came from, not only the field (which reads as
    /// if the file said it).
    pub sources: Vec<(&'static str, String)>,
}

impl Overrides {
    /// The fields the file's values are replaced in, of those parsed as
    /// they are read (an address, a URL).
    fn replaced(&self) -> Vec<&'static str> {
        [
            ("listen", &self.listen),
            ("admin_listen", &self.admin_listen),
            ("origin.url", &self.origin),
            ("cluster.peer_listen", &self.peer_listen),
        ]
        .into_iter()
        .filter_map(|(field, value)| value.is_some().then_some(field))
        .collect()
    }
}

/// `error`, saying which flag or variable set its field, if one did
/// (`sources` as in [`Overrides::sources`]).
fn attribute(error: ConfigError, sources: &[(&'static str, String)]) -> ConfigError {
    let ConfigError::Invalid(message) = &error else {
        return error;
    };
    let from = sources.iter().find(|(field, _)| {
        message
            .strip_prefix(field)
            .is_some_and(|rest| rest.starts_with(':'))
    });
    match from {
        Some((field, source)) => {
            let rest = &message[field.len()..];
            ConfigError::Invalid(format!("{field} (from {source}){rest}"))
        }
        None => error,
    }
}

impl Config {
    /// Parse YAML text; `source` names it in messages.
    pub fn from_yaml(text: &str, source: &str) -> Result<Config, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        Config::parse_yaml(text, source).map_err(|(_, e)| e)
    }

    /// [`from_yaml`](Self::from_yaml), the error with the field it names.
    fn parse_yaml(text: &str, source: &str) -> Result<Config, (String, ConfigError)> {
        // serde_path_to_error names the exact field (`cache.capacity`), where
        // serde_yaml alone names only the enclosing map.
        serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(text)).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner();
            let at = inner
                .location()
                .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
                .unwrap_or_default();
            let message = inner.to_string();
            // serde_yaml appends its own position and sometimes a partial path; keep the reason.
            let reason = message.split(" at line ").next().unwrap_or(&message);
            let reason = match reason.split_once(": ") {
                Some((path, rest)) if !path.contains([' ', '"', '`']) => rest,
                _ => reason,
            };
            let error = ConfigError::Invalid(format!("{source}{at}: {field}: {reason}"));
            (field, error)
        })
    }

    fn read(path: &Path) -> Result<String, ConfigError> {
        std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })
    }

    /// The file at `path` (None: the defaults) with `o` applied, checked.
    /// The overrides win over the file, a wrong value in it included: a
    /// field an override replaces is not read from the file.
    pub fn load(path: Option<&Path>, o: Overrides) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            return Config::default().finish(o);
        };
        let text = Config::read(path)?;
        if text.trim().is_empty() {
            return Config::default().finish(o);
        }
        let source = path.display().to_string();
        let replaced = o.replaced();
        let base = match Config::parse_yaml(&text, &source) {
            Err((field, _)) if replaced.contains(&field.as_str()) => {
                Config::parse_yaml_without(&text, &source, &replaced)?
            }
            parsed => parsed.map_err(|(_, e)| e)?,
        };
        base.finish(o)
    }

    /// The YAML `text` without the `fields` (dotted paths) that overrides
    /// replace; its errors (in other fields) come without a position.
    fn parse_yaml_without(
        text: &str,
        source: &str,
        fields: &[&str],
    ) -> Result<Config, ConfigError> {
        let mut doc: serde_yaml::Value = serde_yaml::from_str(text)
            .map_err(|e| ConfigError::Invalid(format!("{source}: {e}")))?;
        for field in fields {
            let (parents, last) = match field.rsplit_once('.') {
                Some((parents, last)) => (parents.split('.').collect::<Vec<_>>(), last),
                None => (Vec::new(), *field),
            };
            let map = parents
                .iter()
                .try_fold(&mut doc, |doc, key| doc.get_mut(*key));
            if let Some(serde_yaml::Value::Mapping(map)) = map {
                map.remove(last);
            }
        }
        serde_path_to_error::deserialize(doc)
            .map_err(|e| ConfigError::Invalid(format!("{source}: {}: {}", e.path(), e.inner())))
    }

    /// Apply overrides, then validate everything. A mistake in a field that
    /// an override set names the flag or variable too.
    pub fn finish(self, mut o: Overrides) -> Result<Config, ConfigError> {
        let sources = std::mem::take(&mut o.sources);
        self.apply(o)
            .and_then(|config| config.validate().map(|()| config))
            .map_err(|e| attribute(e, &sources))
    }

    fn apply(mut self, o: Overrides) -> Result<Config, ConfigError> {
        if let Some(v) = o.listen {
            self.listen = parse_addr("listen", &v)?;
        }
        if let Some(v) = o.admin_listen {
            self.admin_listen = parse_addr("admin_listen", &v)?;
        }
        if let Some(v) = o.origin {
            let url =
                OriginBase::parse(&v).map_err(|why| invalid("origin.url", quoted(&v), why))?;
            self.origin.url = Some(url);
        }
        if let Some(v) = o.capacity {
            self.cache.capacity =
                parse_size(&v).ok_or_else(|| invalid("cache.capacity", quoted(&v), SIZE_HINT))?;
            // A small capacity from the command line shrinks the object limit with it.
            self.cache.max_object_size = self.cache.max_object_size.min(self.cache.capacity);
        }
        if let Some(v) = o.peer_listen {
            self.cluster.peer_listen = parse_addr("cluster.peer_listen", &v)?;
        }
        // A secret given by a flag or variable replaces both of the file's
        // forms (the value and the file), so that the override wins.
        match (o.admin_token, o.admin_token_file) {
            (Some(_), Some(_)) => return Err(both_given("admin_token", "admin_token_file")),
            (Some(v), None) => (self.admin_token, self.admin_token_file) = (v, String::new()),
            (None, Some(v)) => (self.admin_token, self.admin_token_file) = (String::new(), v),
            (None, None) => {}
        }
        let cluster = &mut self.cluster;
        match (o.cluster_secret, o.cluster_secret_file) {
            (Some(_), Some(_)) => {
                return Err(both_given("cluster.secret", "cluster.secret_file"));
            }
            (Some(v), None) => (cluster.secret, cluster.secret_file) = (v, String::new()),
            (None, Some(v)) => (cluster.secret, cluster.secret_file) = (String::new(), v),
            (None, None) => {}
        }
        if let Some(v) = o.shutdown_delay {
            self.shutdown_delay = parse_duration(&v)
                .ok_or_else(|| invalid("shutdown_delay", quoted(&v), DURATION_HINT))?;
        }
        if let Some(v) = o.log_level {
            self.log_level = serde_yaml::from_str(&v).map_err(|_| {
                invalid(
                    "log_level",
                    quoted(&v),
                    "one of error, warn, info, debug, trace",
                )
            })?;
        }
        if let Some(v) = o.threads {
            self.threads = v
                .trim()
                .parse()
                .map_err(|_| invalid("threads", quoted(&v), THREADS_HINT))?;
        }
        Ok(self)
    }

    /// Proxy worker threads: `threads`, or with 0 the CPUs this process may
    /// use. The standard library counts those from the affinity mask and the
    /// cgroup's CPU quota (v2 `cpu.max`, v1 `cpu.cfs_quota_us` /
    /// `cpu.cfs_period_us`, rounded down, at least 1): a container with a
    /// CPU limit gets that many, whatever the node has.
    pub fn worker_threads(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.validate_listeners()?;
        self.validate_origins()?;
        self.validate_cache()?;
        self.validate_memory_bounds()?;
        self.validate_connection_limits()?;
        self.cluster.validate(self.listen, self.admin_listen)?;
        self.cluster.validate_handoff(self.shutdown_grace)?;
        if !self.admin_token.is_empty() && !self.admin_token_file.is_empty() {
            return Err(both_given("admin_token", "admin_token_file"));
        }
        if !self.admin_token.is_empty() && self.admin_token == self.cluster.secret {
            return Err(ConfigError::Invalid(
                "admin_token: the same as cluster.secret; choose another (a bearer token is sent \
                 with every purge, and the cluster secret must never cross the wire)"
                    .into(),
            ));
        }
        if self.threads > 1024 {
            return Err(invalid("threads", self.threads, THREADS_HINT));
        }
        validate_rules("cache.rules", &self.cache.rules)?;
        self.validate_upstreams()?;
        self.validate_request_handling()
    }

    /// Each upstream: its own listener, an origin no other listener fronts,
    /// valid rules.
    fn validate_upstreams(&self) -> Result<(), ConfigError> {
        let mut listeners = vec![self.listen, self.admin_listen];
        if self.cluster.enabled {
            listeners.push(self.cluster.peer_listen);
        }
        let mut origins: Vec<_> = self.origin.url.iter().map(|o| o.url.clone()).collect();
        for (i, upstream) in self.upstreams.iter().enumerate() {
            let field = |name: &str| format!("upstreams[{i}].{name}");
            if listeners.contains(&upstream.listen) {
                let expected = "an address no other listener of this config uses";
                return Err(invalid(
                    &field("listen"),
                    quoted(&upstream.listen.to_string()),
                    expected,
                ));
            }
            listeners.push(upstream.listen);
            let url = &upstream.origin.url;
            if origins.contains(url) {
                let expected = "an origin no other listener fronts";
                return Err(invalid(
                    &field("origin"),
                    quoted(&upstream.origin.to_string()),
                    expected,
                ));
            }
            origins.push(url.clone());
            if let Some(rules) = &upstream.rules {
                validate_rules(&field("rules"), rules)?;
            }
        }
        Ok(())
    }

    fn validate_listeners(&self) -> Result<(), ConfigError> {
        if self.listen == self.admin_listen {
            return Err(invalid(
                "admin_listen",
                quoted(&self.admin_listen.to_string()),
                "an address different from listen",
            ));
        }
        Ok(())
    }

    /// The origin, its timeouts, and the forward-proxy allowlist.
    fn validate_origins(&self) -> Result<(), ConfigError> {
        if self.origin.url.is_none() {
            return Err(ConfigError::Invalid(
                "origin.url: missing; set it in the file, with --origin or RINGSIDE_ORIGIN \
                 (e.g. http://127.0.0.1:8000)"
                    .into(),
            ));
        }
        for (field, d) in [
            ("origin.connect_timeout", self.origin.connect_timeout),
            ("origin.read_timeout", self.origin.read_timeout),
            ("cache.collapse_timeout", self.cache.collapse_timeout),
        ] {
            if d.is_zero() {
                return Err(invalid(field, "0", "a positive duration such as \"2s\""));
            }
        }
        for (i, authority) in self.forward_proxy.connect_allow.iter().enumerate() {
            if crate::rfc::normalize::authority_form(authority).is_none() {
                let field = format!("forward_proxy.connect_allow[{i}]");
                let expected = "host:port, such as api.example.com:443";
                return Err(invalid(&field, quoted(authority), expected));
            }
        }
        if self.forward_proxy.tunnel_idle_timeout.is_zero() {
            let expected = "a positive duration such as \"300s\"";
            return Err(invalid("forward_proxy.tunnel_idle_timeout", "0", expected));
        }
        Ok(())
    }

    /// Sizes and the heuristic fraction.
    fn validate_cache(&self) -> Result<(), ConfigError> {
        if self.cache.capacity == 0 {
            return Err(invalid("cache.capacity", 0, "a size above zero"));
        }
        if self.cache.max_object_size == 0 || self.cache.max_object_size > self.cache.capacity {
            return Err(invalid(
                "cache.max_object_size",
                self.cache.max_object_size,
                "a size above zero and at most cache.capacity",
            ));
        }
        let fraction = self.cache.heuristic_fraction;
        if !(0.0..=1.0).contains(&fraction) {
            let expected = "a fraction from 0 (off) to 1, such as 0.1";
            return Err(invalid("cache.heuristic_fraction", fraction, expected));
        }
        Ok(())
    }
}

/// A rule's scope, override and methods say one coherent thing.
fn validate_rule_policy(field: &str, rule: &PathRule) -> Result<(), ConfigError> {
    if rule.bypass {
        let caching = [
            (rule.scope != Scope::Shared, "scope"),
            (!rule.overrides.is_empty(), "override"),
            (!rule.methods.is_empty(), "methods"),
            (
                rule.stale_while_revalidate.is_some(),
                "stale_while_revalidate",
            ),
        ];
        if let Some((_, name)) = caching.iter().find(|(set, _)| *set) {
            let expected = "no caching settings on a bypass rule (it never caches)";
            return Err(invalid(
                &format!("{field}.{name}"),
                "set with bypass: true",
                expected,
            ));
        }
    }
    if !rule.overrides.is_empty() && rule.ttl.is_none() {
        let expected = "a ttl beside override (the ttl is what wins over the origin)";
        return Err(invalid(
            &format!("{field}.override"),
            "set without a ttl",
            expected,
        ));
    }
    for (i, method) in rule.methods.iter().enumerate() {
        if !matches!(method.to_ascii_uppercase().as_str(), "POST" | "QUERY") {
            let expected =
                "POST or QUERY (GET and HEAD are always cached; other methods change the resource)";
            return Err(invalid(
                &format!("{field}.methods[{i}]"),
                quoted(method),
                expected,
            ));
        }
    }
    if let Some(size) = rule.max_key_body {
        check_key_body(&format!("{field}.max_key_body"), size)?;
    }
    Ok(())
}

/// The largest body read to key a request: it is held in memory per request.
const MAX_KEY_BODY: u64 = 8 << 20;

fn check_key_body(field: &str, size: u64) -> Result<(), ConfigError> {
    match (1..=MAX_KEY_BODY).contains(&size) {
        true => Ok(()),
        false => Err(invalid(field, size, "a size from 1 byte to 8MiB")),
    }
}

/// Path rules start with `/` and do not both bypass and set a ttl.
fn validate_rules(list: &str, rules: &[PathRule]) -> Result<(), ConfigError> {
    for (i, rule) in rules.iter().enumerate() {
        let field = format!("{list}[{i}]");
        if !rule.prefix.starts_with('/') {
            return Err(invalid(
                &format!("{field}.prefix"),
                quoted(&rule.prefix),
                "a path starting with /",
            ));
        }
        if rule.bypass && rule.ttl.is_some() {
            return Err(invalid(
                &field,
                "bypass together with ttl",
                "either bypass: true or a ttl, not both",
            ));
        }
        validate_rule_policy(&field, rule)?;
        // Requests are matched after normalisation (normalize.rs).
        let normal = crate::rfc::normalize::normalize_path(rule.prefix.as_bytes());
        if normal.as_deref().ok() != Some(rule.prefix.as_str()) {
            return Err(invalid(
                &format!("{field}.prefix"),
                quoted(&rule.prefix),
                "a normalised path (no //, no . or .. segments, no percent-encoded \
                 letters, digits or -._~, uppercase hex in other percent-encodings)",
            ));
        }
    }
    Ok(())
}

impl Config {
    /// Header lists name valid headers; credentials are recognised for
    /// the scopes that need them; key bodies are bounded.
    fn validate_request_handling(&self) -> Result<(), ConfigError> {
        let cache = &self.cache;
        for (list, names) in [
            ("cache.strip_request_headers", &cache.strip_request_headers),
            (
                "cache.strip_request_headers_extra",
                &cache.strip_request_headers_extra,
            ),
            ("cache.key_headers", &cache.key_headers),
            ("cache.credential_headers", &cache.credential_headers),
            (
                "cache.credential_headers_extra",
                &cache.credential_headers_extra,
            ),
            (
                "cache.targeted_cache_control",
                &cache.targeted_cache_control,
            ),
        ] {
            for (i, name) in names.iter().enumerate() {
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    return Err(invalid(
                        &format!("{list}[{i}]"),
                        quoted(name),
                        "a header name such as X-Tenant",
                    ));
                }
            }
        }
        check_key_body("cache.max_key_body", cache.max_key_body)?;
        if cache.key_body_timeout.is_zero() {
            let expected = "a positive duration such as \"10s\"";
            return Err(invalid("cache.key_body_timeout", "0", expected));
        }
        self.validate_injection()?;
        let key_headers = header_names([&cache.key_headers]);
        if let Some(name) = cache
            .credential_headers()
            .into_iter()
            .find(|n| key_headers.contains(n))
        {
            let expected = "no credential header in the key (its value would be in every key): \
                            a rule with scope: per-credential partitions by a keyed digest of it";
            return Err(invalid(
                "cache.key_headers",
                quoted(name.as_str()),
                expected,
            ));
        }
        let per_credential = self.all_rules().any(|r| r.scope == Scope::PerCredential);
        if per_credential && cache.credential_headers().is_empty() {
            let expected = "at least one credential header for a per-credential scope";
            return Err(invalid("cache.credential_headers", "[]", expected));
        }
        Ok(())
    }

    /// Every injected header names a header that may be sent (not
    /// hop-by-hop, not a key header) and says where its value is, once.
    /// The files are read at start, not here: a Secret is mounted only in
    /// the pod.
    fn validate_injection(&self) -> Result<(), ConfigError> {
        let origins = std::iter::once((
            "origin.inject_headers".to_string(),
            &self.origin.inject_headers,
        ));
        let upstreams = self
            .upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| (format!("upstreams[{i}].inject_headers"), &u.inject_headers));
        let key_headers = header_names([&self.cache.key_headers]);
        for (list, headers) in origins.chain(upstreams) {
            for (i, header) in headers.iter().enumerate() {
                let field = format!("{list}[{i}]");
                let name = http::HeaderName::from_bytes(header.name.as_bytes()).map_err(|_| {
                    invalid(
                        &format!("{field}.name"),
                        quoted(&header.name),
                        "a header name such as Authorization",
                    )
                })?;
                if crate::rfc::headers::is_hop_by_hop(&name) || name == http::header::HOST {
                    let expected =
                        "an end-to-end header (hop-by-hop ones and Host are never forwarded)";
                    return Err(invalid(
                        &format!("{field}.name"),
                        quoted(&header.name),
                        expected,
                    ));
                }
                if key_headers.contains(&name) {
                    let expected = "a header that is not in cache.key_headers (an injected value is never keyed)";
                    return Err(invalid(
                        &format!("{field}.name"),
                        quoted(&header.name),
                        expected,
                    ));
                }
                let file = !header.value_file.trim().is_empty();
                let env = !header.value_env.trim().is_empty();
                if file == env {
                    let expected = "exactly one of value_file (a mounted Secret) and value_env";
                    return Err(invalid(&field, "a value", expected));
                }
            }
        }
        Ok(())
    }

    /// Every path rule of the config: `cache.rules` and every upstream's.
    pub fn all_rules(&self) -> impl Iterator<Item = &PathRule> {
        let upstreams = self.upstreams.iter().filter_map(|u| u.rules.as_ref());
        self.cache.rules.iter().chain(upstreams.flatten())
    }

    /// The credential headers (see [`CacheConfig::credential_headers`]).
    pub fn credential_headers(&self) -> Vec<http::HeaderName> {
        self.cache.credential_headers()
    }

    /// `cache.targeted_cache_control` as header names (validated).
    pub fn targeted_fields(&self) -> std::sync::Arc<[http::HeaderName]> {
        self.cache
            .targeted_cache_control
            .iter()
            .filter_map(|n| http::HeaderName::from_bytes(n.as_bytes()).ok())
            .collect()
    }

    /// Heuristic freshness as the caching rules take it; None when off.
    pub fn heuristic(&self) -> Option<crate::rfc::cache_rules::Heuristic> {
        let cache = &self.cache;
        (cache.heuristic_fraction > 0.0 && !cache.heuristic_max.is_zero()).then_some(
            crate::rfc::cache_rules::Heuristic {
                fraction: cache.heuristic_fraction,
                max: cache.heuristic_max,
            },
        )
    }

    /// The settings that bound memory besides the capacity (README, "Memory").
    fn validate_memory_bounds(&self) -> Result<(), ConfigError> {
        if !(1..=1_000_000).contains(&self.max_connections) {
            return Err(invalid(
                "max_connections",
                self.max_connections,
                "1 to 1000000",
            ));
        }
        if self.request_header_timeout.is_zero() {
            return Err(invalid(
                "request_header_timeout",
                "0",
                "a positive duration such as \"10s\"",
            ));
        }
        if !(1..=10_000).contains(&self.cache.max_variants) {
            return Err(invalid(
                "cache.max_variants",
                self.cache.max_variants,
                "1 to 10000",
            ));
        }
        Ok(())
    }

    /// Request bodies a listener receives at once: `max_request_bodies`, or
    /// a quarter of `max_connections`.
    pub fn request_bodies(&self) -> usize {
        self.max_request_bodies
            .unwrap_or(self.max_connections / 4)
            .max(1)
    }

    /// How long each listener lets a client hold a connection, a head, a
    /// body; the admin listener's own bounds.
    fn validate_connection_limits(&self) -> Result<(), ConfigError> {
        if let Some(bodies) = self.max_request_bodies {
            if !(1..=self.max_connections).contains(&bodies) {
                let expected = format!("1 to max_connections ({})", self.max_connections);
                return Err(invalid("max_request_bodies", bodies, &expected));
            }
        }
        if !(1..=100_000).contains(&self.admin_max_connections) {
            let value = self.admin_max_connections;
            return Err(invalid("admin_max_connections", value, "1 to 100000"));
        }
        for (field, d) in [
            ("request_body_timeout", self.request_body_timeout),
            (
                "admin_request_header_timeout",
                self.admin_request_header_timeout,
            ),
        ] {
            if d.is_zero() {
                return Err(invalid(field, "0", "a positive duration such as \"10s\""));
            }
        }
        // pingora counts keep-alive timeouts in whole seconds (0 would be "forever").
        for (field, d) in [
            ("idle_timeout", self.idle_timeout),
            ("admin_idle_timeout", self.admin_idle_timeout),
        ] {
            if d < Duration::from_secs(1) {
                return Err(invalid(
                    field,
                    format!("{d:?}"),
                    "at least \"1s\" (whole seconds)",
                ));
            }
        }
        Ok(())
    }

    /// The main origin; a checked config (`finish`) always has one.
    pub fn origin(&self) -> Result<&OriginBase, ConfigError> {
        self.origin.url.as_ref().ok_or_else(|| {
            ConfigError::Invalid(
                "origin.url: missing; set it in the file, with --origin or RINGSIDE_ORIGIN \
                 (e.g. http://127.0.0.1:8000)"
                    .into(),
            )
        })
    }
}

/// An origin URL as the config gives it (`origin.url`, `upstreams[].origin`),
/// parsed: the origin, and the base path requests are sent under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginBase {
    pub url: OriginUrl,
    /// Prepended to every request path sent there ("" for none); not part
    /// of any key (see [`OriginUrl::parse_base`]).
    pub base_path: String,
    /// As written, for messages.
    text: String,
}

impl OriginBase {
    pub fn parse(text: &str) -> Result<OriginBase, &'static str> {
        let (url, base_path) = OriginUrl::parse_base(text)?;
        Ok(OriginBase {
            url,
            base_path,
            text: text.to_owned(),
        })
    }
}

impl fmt::Display for OriginBase {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for OriginBase {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<OriginBase, D::Error> {
        let text = String::deserialize(d)?;
        OriginBase::parse(&text)
            .map_err(|why| de::Error::custom(format!("{text:?} is invalid; expected {why}")))
    }
}

impl<'de> Deserialize<'de> for OriginUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<OriginUrl, D::Error> {
        let text = String::deserialize(d)?;
        OriginUrl::parse(&text)
            .map_err(|why| de::Error::custom(format!("{text:?} is invalid; expected {why}")))
    }
}

/// An origin as the config names it: scheme, host and port, nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OriginUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl OriginUrl {
    pub fn parse(url: &str) -> Result<OriginUrl, &'static str> {
        const WANT: &str =
            "a URL like http://host:port or https://host (scheme, host, optional port, no path)";
        let uri: http::Uri = url.parse().map_err(|_| WANT)?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(WANT),
        };
        let authority = uri.authority().ok_or(WANT)?;
        if authority.as_str().contains('@') {
            return Err("a URL without user:password@");
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(WANT);
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(WANT);
        }
        Ok(OriginUrl {
            tls,
            host: host.to_ascii_lowercase(),
            port: authority.port_u16().unwrap_or(if tls { 443 } else { 80 }),
        })
    }

    /// `scheme://host:port`, the prefix of every cache key for this origin.
    pub fn key_prefix(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}", self.host, self.port)
        }
    }

    /// An origin URL that may end in a base path (`https://api.example/v1`):
    /// the origin, and the path every request path is appended to when sent
    /// there ("" for none; normalised, no trailing `/`). The base path is
    /// how the origin is reached, not part of its identity or of any key.
    pub fn parse_base(url: &str) -> Result<(OriginUrl, String), &'static str> {
        const WANT: &str = "a URL like http://host:port or https://host/base/path (no query)";
        let uri: http::Uri = url.parse().map_err(|_| WANT)?;
        if uri.query().is_some() {
            return Err(WANT);
        }
        let base = uri.path().trim_end_matches('/').to_string();
        let normal = crate::rfc::normalize::normalize_path(base.as_bytes());
        if !base.is_empty() && normal.as_deref().ok() != Some(base.as_str()) {
            return Err(
                "a base path in normal form (no //, . or .. segments, uppercase percent-encoding)",
            );
        }
        let origin = match uri.authority() {
            Some(authority) => format!("{}://{}", uri.scheme_str().unwrap_or(""), authority),
            None => return Err(WANT),
        };
        Ok((OriginUrl::parse(&origin)?, base))
    }

    /// The value of the Host header to send: the port is omitted when it is the scheme's default.
    pub fn host_header(&self) -> String {
        let default_port = if self.tls { 443 } else { 80 };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == default_port {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// The valid header names of `lists`, each once, in order.
fn header_names<'a>(lists: impl IntoIterator<Item = &'a Vec<String>>) -> Vec<http::HeaderName> {
    let mut names = Vec::new();
    for name in lists.into_iter().flatten() {
        if let Ok(name) = http::HeaderName::from_bytes(name.as_bytes()) {
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names
}

/// A secret given twice: as a value and as a file.
fn both_given(value: &str, file: &str) -> ConfigError {
    ConfigError::Invalid(format!(
        "{value}, {file}: both given; expected one (the file: a mounted Secret, kept out of \
         the environment and read again when it changes)"
    ))
}

const ADDR_HINT: &str = "an IP:port address such as 127.0.0.1:8080";

fn check_addr(field: &str, value: &str) -> Result<(), ConfigError> {
    parse_addr(field, value).map(|_| ())
}

/// A listener address given by a flag or variable.
fn parse_addr(field: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value
        .trim()
        .parse()
        .map_err(|_| invalid(field, quoted(value), ADDR_HINT))
}

fn quoted(s: &str) -> String {
    format!("{s:?}")
}

const THREADS_HINT: &str =
    "0 (one per CPU this process may use: its CPU quota, else the machine's) to 1024";
const SIZE_HINT: &str =
    "a byte count such as 268435456 or \"256MiB\" (units: B, KB, KiB, MB, MiB, GB, GiB)";
const DURATION_HINT: &str =
    "a duration such as \"250ms\", \"2s\", \"5m\", \"1h\" or \"1d\", or a number of seconds";

/// `"1.5GB"` → `(1.5, "GB")`: the leading number and the unit after it.
fn number_and_unit(s: &str) -> Option<(f64, &str)> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    Some((num.parse().ok()?, unit.trim()))
}

/// `"256MiB"`, `"1.5GB"`, `"4096"`, `4096`.
pub fn parse_size(s: &str) -> Option<u64> {
    let (num, unit) = number_and_unit(s)?;
    let mult: f64 = match unit {
        "" | "B" => 1.0,
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let bytes = num * mult;
    (bytes.is_finite() && (0.0..1.8e19).contains(&bytes)).then_some(bytes as u64)
}

/// `"250ms"`, `"2s"`, `"5m"`, `"1h"`, `"1d"`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let (num, unit) = number_and_unit(s)?;
    let secs = match unit {
        "ms" => num / 1000.0,
        "" | "s" => num,
        "m" => num * 60.0,
        "h" => num * 3600.0,
        "d" => num * 86400.0,
        _ => return None,
    };
    (secs.is_finite() && (0.0..1e10).contains(&secs)).then(|| Duration::from_secs_f64(secs))
}

/// A size or duration written as a number or a string. The value is parsed
/// inside the visitor so that serde_yaml reports an error at the value's own
/// line (not the enclosing map's), and YAML syntax errors pass through as such.
struct ParseVisitor<T> {
    hint: &'static str,
    parse: fn(&str) -> Option<T>,
}

impl<'de, T> de::Visitor<'de> for ParseVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.hint)
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<T, E> {
        (self.parse)(s)
            .ok_or_else(|| E::custom(format!("{s:?} is invalid; expected {}", self.hint)))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<T, E> {
        self.visit_str(&n.to_string())
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<T, E> {
        self.visit_str(&n.to_string())
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<T, E> {
        self.visit_str(&n.to_string())
    }
}

fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    d.deserialize_any(ParseVisitor {
        hint: SIZE_HINT,
        parse: parse_size,
    })
}

fn de_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    d.deserialize_any(ParseVisitor {
        hint: ADDR_HINT,
        parse: |s| s.trim().parse().ok(),
    })
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(ParseVisitor {
        hint: DURATION_HINT,
        parse: parse_duration,
    })
}

fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

fn de_opt_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    de_size(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Result<Config, String> {
        Config::from_yaml(yaml, "test.yaml")
            .and_then(|c| c.finish(Overrides::default()))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_shipped_config_is_valid() {
        let text = include_str!("../../config.yaml");
        let c = load(text).expect("config.yaml must be valid");
        assert_eq!(c.origin().unwrap().url.port, 8000);
    }

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_size("256MiB"), Some(256 << 20));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("1GB"), Some(1_000_000_000));
        assert_eq!(parse_size("12XB"), None);
        assert_eq!(parse_size("-1"), None);
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("soon"), None);
    }

    #[test]
    fn errors_name_the_field_and_value() {
        let e = load("origin: {url: http://a:1}\ncache: {capacty: 5}").unwrap_err();
        assert!(e.contains("capacty"), "{e}");
        let e = load("origin: {url: http://a:1}\ncache: {capacity: 12XB}").unwrap_err();
        assert!(e.contains("cache.capacity") && e.contains("12XB"), "{e}");
        let e = load("origin: {url: ftp://a}").unwrap_err();
        assert!(e.contains("origin.url") && e.contains("ftp://a"), "{e}");
        let e = load("listen: nowhere\norigin: {url: http://a:1}").unwrap_err();
        assert!(e.contains("listen") && e.contains("nowhere"), "{e}");
        let e = load("origin: {url: http://a:1, read_timeout: soon}").unwrap_err();
        assert!(
            e.contains("origin.read_timeout") && e.contains("soon"),
            "{e}"
        );
        let e = load("log_level: loud\norigin: {url: http://a:1}").unwrap_err();
        assert!(e.contains("log_level") && e.contains("loud"), "{e}");
        let e = load("").unwrap_err();
        assert!(e.contains("origin.url: missing"), "{e}");
        let e = load("origin: {url: http://a:1}\ncache: {rules: [{prefix: api}]}").unwrap_err();
        assert!(e.contains("cache.rules[0].prefix"), "{e}");
    }

    #[test]
    fn the_handoff_fits_in_the_shutdown_grace() {
        let cluster = "cluster: {enabled: true, secret: 0123456789abcdef, \
                       membership: {static: [\"127.0.0.1:7070\"]}, ";
        let config = |grace: &str, handoff: &str| {
            load(&format!(
                "origin: {{url: http://a:1}}\nshutdown_grace: {grace}\n{cluster}handoff: {handoff}}}"
            ))
        };
        let e = config("3s", "{timeout: 5s}").unwrap_err();
        assert!(
            e.contains("cluster.handoff.timeout") && e.contains("shutdown_grace"),
            "{e}"
        );
        let e = config("10s", "{timeout: 0s}").unwrap_err();
        assert!(e.contains("cluster.handoff.timeout"), "{e}");
        let e = config("10s", "{max_bytes: lots}").unwrap_err();
        assert!(
            e.contains("cluster.handoff.max_bytes") && e.contains("lots"),
            "{e}"
        );
        let off = config("3s", "{max_bytes: 0, timeout: 5s}").unwrap();
        assert_eq!(off.cluster.handoff.max_bytes, 0, "off: no bound to check");
        let on = config("10s", "{max_bytes: 64MiB, timeout: 5s}").unwrap();
        assert_eq!(on.cluster.handoff.max_bytes, 64 << 20);
        // Not set, the bound follows a short shutdown_grace instead of failing.
        let short = config("1s", "{max_bytes: 64MiB}").unwrap();
        let bound = short.cluster.handoff.time_bound(short.shutdown_grace);
        assert_eq!(bound, std::time::Duration::from_secs(1));
    }

    #[test]
    fn memory_bounds_name_their_field() {
        let base = "origin: {url: http://a:1}\n";
        for (yaml, field) in [
            ("max_connections: 0", "max_connections"),
            ("request_header_timeout: 0", "request_header_timeout"),
            ("request_header_timeout: soon", "request_header_timeout"),
            ("cache: {max_variants: 0}", "cache.max_variants"),
            ("max_request_bodies: 0", "max_request_bodies"),
            (
                "max_connections: 8\nmax_request_bodies: 9",
                "max_request_bodies",
            ),
            ("admin_max_connections: 0", "admin_max_connections"),
            (
                "admin_request_header_timeout: 0",
                "admin_request_header_timeout",
            ),
            ("request_body_timeout: 0s", "request_body_timeout"),
            ("idle_timeout: 500ms", "idle_timeout"),
            ("admin_idle_timeout: 0", "admin_idle_timeout"),
            ("admin_idle_timeout: soon", "admin_idle_timeout"),
        ] {
            let e = load(&format!("{base}{yaml}")).unwrap_err();
            assert!(e.contains(field), "{yaml}: {e}");
        }
        let c = load(base).unwrap();
        assert_eq!(c.max_connections, 1024);
        assert_eq!(c.request_header_timeout, Duration::from_secs(10));
        assert_eq!(c.cache.max_variants, 32);
        assert_eq!(c.idle_timeout, Duration::from_secs(75));
        assert_eq!(c.request_body_timeout, Duration::from_secs(30));
        assert_eq!(c.request_bodies(), 256);
        let few = load(&format!("{base}max_connections: 6")).unwrap();
        assert_eq!(few.request_bodies(), 1, "a quarter, at least one");
        assert_eq!(c.admin_max_connections, 64);
        assert_eq!(c.admin_request_header_timeout, Duration::from_secs(5));
        assert_eq!(c.admin_idle_timeout, Duration::from_secs(60));
    }

    #[test]
    fn overrides_win_over_the_file() {
        let c = Config::from_yaml("origin: {url: http://a:1}", "t")
            .unwrap()
            .finish(Overrides {
                origin: Some("https://b".into()),
                capacity: Some("1MiB".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            c.origin().unwrap().url,
            OriginUrl {
                tls: true,
                host: "b".into(),
                port: 443
            }
        );
        assert_eq!(c.cache.capacity, 1 << 20);
    }

    #[test]
    fn an_override_wins_over_a_wrong_address_or_url_in_the_file_and_is_parsed_itself() {
        let path =
            std::env::temp_dir().join(format!("ringside-config-{}.yaml", std::process::id()));
        let text = "listen: nowhere\norigin: {url: \"ftp://x\", read_timeout: 3s}\ncluster: {peer_listen: x}\n";
        std::fs::write(&path, text).unwrap();
        let overrides = || Overrides {
            listen: Some("127.0.0.1:1".into()),
            origin: Some("http://b:2/v1".into()),
            peer_listen: Some("127.0.0.1:3".into()),
            ..Default::default()
        };
        let c = Config::load(Some(&path), overrides()).unwrap();
        assert_eq!(c.listen, SocketAddr::from(([127, 0, 0, 1], 1)));
        assert_eq!(c.cluster.peer_listen, SocketAddr::from(([127, 0, 0, 1], 3)));
        let origin = c.origin().unwrap();
        assert_eq!((origin.url.port, origin.base_path.as_str()), (2, "/v1"));
        assert_eq!(
            c.origin.read_timeout,
            Duration::from_secs(3),
            "the rest is read"
        );

        let without_listen = Overrides {
            listen: None,
            ..overrides()
        };
        let e = Config::load(Some(&path), without_listen)
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen: \"nowhere\" is invalid"), "{e}");
        let bad_flag = Overrides {
            listen: Some("here".into()),
            ..overrides()
        };
        let e = Config::load(Some(&path), bad_flag).unwrap_err().to_string();
        assert!(e.starts_with("listen: \"here\" is invalid"), "{e}");
        std::fs::remove_file(&path).unwrap();
    }
}
