//! The `cluster:` section: how sidecars find each other and share one cache.
//!
//! Off unless `cluster.enabled` is true; a lone sidecar needs none of it.

use super::{de_duration, invalid, quoted, ConfigError};
use serde::Deserialize;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    pub enabled: bool,
    /// Where other sidecars reach this one (never the app-facing listener).
    #[serde(deserialize_with = "super::de_addr")]
    pub peer_listen: SocketAddr,
    /// This node's peer address as the others know it (`host:port`). Empty:
    /// `$POD_IP` with peer_listen's port when POD_IP is set, else peer_listen.
    pub advertise: String,
    /// Shared secret that peers prove knowledge of (never sent in clear).
    /// Prefer `secret_file`.
    pub secret: String,
    /// A file holding the secret instead (a mounted Secret), read at start
    /// and again when it changes; exclusive with `secret`.
    pub secret_file: String,
    /// Cluster-wide key for the ring's SipHash: every node must use the same one.
    pub hash_key: String,
    /// Virtual nodes per member (times its weight).
    pub vnodes: u32,
    /// Bound on connecting to a peer; past it the node loads from the origin itself.
    /// The answer may take this plus the origin's connect and read timeouts.
    #[serde(deserialize_with = "de_duration")]
    pub peer_timeout: Duration,
    /// How long a write's response waits for every member to confirm that it
    /// dropped the written URIs (read-your-writes; see README).
    #[serde(deserialize_with = "de_duration")]
    pub invalidation_timeout: Duration,
    /// After a peer fails, how long before it is tried again (doubles up to 16x).
    #[serde(deserialize_with = "de_duration")]
    pub peer_backoff: Duration,
    /// How peers talk: `channel` (the peer channel: connection-authenticated,
    /// multiplexed frames, falling back to `http1` for a peer that does not
    /// speak it), `http1` (signed requests on pooled keep-alive connections,
    /// the channel neither sent nor accepted) or `h2c` (the same signed
    /// requests over HTTP/2 in cleartext).
    pub peer_protocol: PeerProtocol,
    pub hot: HotConfig,
    pub membership: MembershipConfig,
    /// Mutual TLS between peers; absent: signed cleartext HTTP.
    pub tls: Option<PeerTlsConfig>,
    /// On SIGTERM, this node's entries go to their next owners (see `handoff/`).
    pub handoff: HandoffConfig,
    /// After a membership change, how long a key's new owner asks the key's
    /// previous owner before its origin (0: never).
    #[serde(deserialize_with = "de_duration")]
    pub previous_owner_window: Duration,
    /// Without `tls`: a peer request signed as coming from a member whose
    /// address is an IP must come from that IP (off behind NAT, or a mesh
    /// that rewrites source addresses).
    pub check_sender_address: bool,
}

/// `cluster.tls`: every node serves its peer listener over TLS and shows a
/// client certificate when it asks a peer; both certificates must come from
/// `ca_file` and name the member (see `peer_tls.rs`). The files are read at
/// start (not by `check-config`: a Kubernetes Secret is mounted only in the
/// pod) and again when they change.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct PeerTlsConfig {
    /// PEM CA certificate(s) that sign every peer's certificate.
    pub ca_file: String,
    /// PEM certificate (chain) of this node, served and shown as a client's.
    pub cert_file: String,
    /// PEM private key of `cert_file`.
    pub key_file: String,
    /// The DNS name every peer's certificate carries, checked instead of
    /// each member's own host: for one certificate shared by every replica
    /// (a Kubernetes Secret per app). Empty: a member's certificate must
    /// name the host of its peer address (an IP or DNS SAN).
    pub peer_name: String,
}

/// The shortest cluster secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 16;

/// What a node that is stopping hands over, and for how long it tries.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HandoffConfig {
    /// Bound on the bytes sent (entries, most valuable first); 0: no handoff.
    #[serde(deserialize_with = "super::de_size")]
    pub max_bytes: u64,
    /// Bound on the time the handoff takes, at most `shutdown_grace`.
    /// Not set: 5 s, or `shutdown_grace` when that is shorter.
    #[serde(deserialize_with = "super::de_opt_duration")]
    pub timeout: Option<Duration>,
}

/// The handoff's time bound when `cluster.handoff.timeout` is not set.
const DEFAULT_HANDOFF_TIMEOUT: Duration = Duration::from_secs(5);

impl HandoffConfig {
    /// How long the handoff of a process with `shutdown_grace` may take.
    pub fn time_bound(&self, shutdown_grace: Duration) -> Duration {
        self.timeout
            .unwrap_or(DEFAULT_HANDOFF_TIMEOUT)
            .min(shutdown_grace)
    }
}

impl Default for HandoffConfig {
    fn default() -> Self {
        HandoffConfig {
            max_bytes: 128 * 1024 * 1024,
            timeout: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PeerProtocol {
    Channel,
    Http1,
    H2c,
}

/// Local mirrors of keys owned elsewhere but requested often here.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HotConfig {
    /// Share of cache.capacity given to mirrors (0 disables them).
    pub fraction: f64,
    /// Requests per second for one key, measured on this node, that make it hot.
    pub min_rate: f64,
}

/// Where the member list comes from: exactly one source, by construction.
/// Written in YAML as one of `static: [...]`, `dns: {...}`, `etcd: {...}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "MembershipSources")]
pub enum MembershipConfig {
    /// Fixed peer addresses (`host:port`, or `{addr, weight}`), this node included or not.
    Static(Vec<StaticMember>),
    Dns(DnsMembership),
    Etcd(EtcdMembership),
}

impl Default for MembershipConfig {
    fn default() -> Self {
        MembershipConfig::Static(Vec::new())
    }
}

/// The `membership:` section as written, before it is known to name exactly
/// one source.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct MembershipSources {
    #[serde(rename = "static")]
    static_members: Vec<StaticMember>,
    dns: Option<DnsMembership>,
    etcd: Option<EtcdMembership>,
}

impl TryFrom<MembershipSources> for MembershipConfig {
    type Error = String;

    fn try_from(m: MembershipSources) -> Result<Self, String> {
        let given = [
            !m.static_members.is_empty(),
            m.dns.is_some(),
            m.etcd.is_some(),
        ];
        match (m.dns, m.etcd) {
            _ if given.iter().filter(|g| **g).count() > 1 => Err(format!(
                "{} sources given; expected exactly one of static, dns, etcd",
                given.iter().filter(|g| **g).count()
            )),
            (Some(dns), None) => Ok(MembershipConfig::Dns(dns)),
            (None, Some(etcd)) => Ok(MembershipConfig::Etcd(etcd)),
            _ => Ok(MembershipConfig::Static(m.static_members)),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StaticMember {
    Addr(String),
    Weighted { addr: String, weight: u32 },
}

impl StaticMember {
    pub fn addr(&self) -> &str {
        match self {
            StaticMember::Addr(a) | StaticMember::Weighted { addr: a, .. } => a,
        }
    }
    pub fn weight(&self) -> u32 {
        match self {
            StaticMember::Addr(_) => 1,
            StaticMember::Weighted { weight, .. } => *weight,
        }
    }
}

/// Members are the addresses a DNS name resolves to (e.g. a Kubernetes
/// headless Service), or with `srv` the targets of its SRV records.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsMembership {
    pub name: String,
    /// Peer port on every member (default: peer_listen's port). Not with
    /// `srv`: each SRV record names its member's port.
    #[serde(default)]
    pub port: Option<u16>,
    /// `name` is an SRV name (Consul's `<service>.service.consul`,
    /// Kubernetes' `_<port>._tcp.<service>.<namespace>.svc.cluster.local`):
    /// members are its targets' addresses, each with its record's port and
    /// weight.
    #[serde(default)]
    pub srv: bool,
    #[serde(default = "default_dns_interval", deserialize_with = "de_duration")]
    pub interval: Duration,
    /// A specific DNS server (`ip:port`); default: the system's resolv.conf.
    #[serde(default)]
    pub nameserver: Option<String>,
}

/// Members register under a prefix with a lease and watch it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdMembership {
    /// etcd client URLs, e.g. http://127.0.0.1:2379.
    pub endpoints: Vec<String>,
    #[serde(default = "default_etcd_prefix")]
    pub prefix: String,
    #[serde(default = "default_lease_ttl", deserialize_with = "de_duration")]
    pub lease_ttl: Duration,
    /// TLS for `https://` endpoints: whose certificate to trust, and the
    /// client certificate to show. Absent: https endpoints are checked
    /// against the system's roots, with no client certificate.
    #[serde(default)]
    pub tls: Option<EtcdTls>,
    /// etcd's own users: authenticate as this user and send its token.
    #[serde(default)]
    pub auth: Option<EtcdAuth>,
}

/// Files are read when membership starts (not by `check-config`: a
/// Kubernetes Secret is mounted only in the pod), and a mistake there stops
/// the start with the field's name.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct EtcdTls {
    /// PEM file with the CA certificate(s) that sign etcd's server
    /// certificate (trusted instead of the system's roots).
    pub ca_file: Option<String>,
    /// PEM client certificate (chain) for mutual TLS; with `key_file`.
    pub cert_file: Option<String>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<String>,
}

/// The password never sits in the config file: it is read from a file (a
/// mounted Secret) or an environment variable, exactly one of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdAuth {
    pub username: String,
    #[serde(default)]
    pub password_file: Option<String>,
    /// The name of the environment variable that holds the password.
    #[serde(default)]
    pub password_env: Option<String>,
}

fn default_dns_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_etcd_prefix() -> String {
    "/ringside/members/".into()
}
fn default_lease_ttl() -> Duration {
    Duration::from_secs(10)
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            enabled: false,
            peer_listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            advertise: String::new(),
            secret: String::new(),
            secret_file: String::new(),
            hash_key: "ringside".into(),
            vnodes: 512,
            peer_timeout: Duration::from_secs(2),
            invalidation_timeout: Duration::from_secs(2),
            peer_backoff: Duration::from_secs(1),
            peer_protocol: PeerProtocol::Channel,
            hot: HotConfig::default(),
            membership: MembershipConfig::default(),
            tls: None,
            handoff: HandoffConfig::default(),
            previous_owner_window: Duration::from_secs(60),
            check_sender_address: true,
        }
    }
}

impl Default for HotConfig {
    fn default() -> Self {
        HotConfig {
            fraction: 0.1,
            min_rate: 1.0,
        }
    }
}

impl ClusterConfig {
    /// This node's peer address as other members see it.
    pub fn advertise_addr(&self) -> String {
        if !self.advertise.is_empty() {
            return self.advertise.clone();
        }
        match std::env::var("POD_IP") {
            Ok(ip) if !ip.is_empty() => format!("{ip}:{}", self.peer_listen.port()),
            _ => self.peer_listen.to_string(),
        }
    }

    pub(super) fn validate(
        &self,
        listen: SocketAddr,
        admin_listen: SocketAddr,
    ) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        if self.peer_listen == listen || self.peer_listen == admin_listen {
            return Err(invalid(
                "cluster.peer_listen",
                quoted(&self.peer_listen.to_string()),
                "an address different from listen and admin_listen",
            ));
        }
        match (self.secret.is_empty(), self.secret_file.trim().is_empty()) {
            (false, false) => {
                return Err(super::both_given("cluster.secret", "cluster.secret_file"))
            }
            // Read at start (not by check-config: a Secret is mounted only in the pod).
            (true, false) => {}
            _ if self.secret.len() < MIN_SECRET_LEN => {
                return Err(ConfigError::Invalid(format!(
                    "cluster.secret: missing or shorter than {MIN_SECRET_LEN} characters; set \
                     cluster.secret_file (a file holding it, same on every node; or \
                     RINGSIDE_CLUSTER_SECRET_FILE), or the secret itself in the file or with \
                     RINGSIDE_CLUSTER_SECRET"
                )));
            }
            _ => {}
        }
        if self.hash_key.is_empty() {
            return Err(invalid(
                "cluster.hash_key",
                "\"\"",
                "a non-empty string, the same on every node",
            ));
        }
        if !(1..=10_000).contains(&self.vnodes) {
            return Err(invalid("cluster.vnodes", self.vnodes, "1 to 10000"));
        }
        for (field, value) in [
            ("cluster.peer_timeout", self.peer_timeout),
            ("cluster.invalidation_timeout", self.invalidation_timeout),
        ] {
            if value.is_zero() {
                return Err(invalid(field, "0", "a positive duration such as \"2s\""));
            }
        }
        if !(0.0..=0.5).contains(&self.hot.fraction) {
            return Err(invalid(
                "cluster.hot.fraction",
                self.hot.fraction,
                "a number from 0 to 0.5",
            ));
        }
        if self.hot.min_rate.is_nan() || self.hot.min_rate <= 0.0 {
            return Err(invalid(
                "cluster.hot.min_rate",
                self.hot.min_rate,
                "a rate above 0 (requests per second)",
            ));
        }
        if let Some(tls) = &self.tls {
            self.validate_tls(tls)?;
        }
        match &self.membership {
            MembershipConfig::Static(members) => validate_static(members),
            MembershipConfig::Dns(dns) => validate_dns(dns),
            MembershipConfig::Etcd(etcd) => validate_etcd(etcd),
        }
    }

    fn validate_tls(&self, tls: &PeerTlsConfig) -> Result<(), ConfigError> {
        for (field, path, what) in [
            (
                "ca_file",
                &tls.ca_file,
                "the CA certificate that signs every peer's",
            ),
            ("cert_file", &tls.cert_file, "this node's certificate"),
            ("key_file", &tls.key_file, "the private key of cert_file"),
        ] {
            if path.trim().is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "cluster.tls.{field}: missing; expected a PEM file with {what}"
                )));
            }
        }
        let name = tls.peer_name.as_str();
        let is_dns_name = matches!(
            pingora::tls::ServerName::try_from(name),
            Ok(pingora::tls::ServerName::DnsName(_))
        );
        if !name.is_empty() && !is_dns_name {
            return Err(invalid(
                "cluster.tls.peer_name",
                quoted(name),
                "a DNS name that every peer's certificate carries, such as \
                 myapp-ringside.default.svc.cluster.local",
            ));
        }
        if self.peer_protocol == PeerProtocol::H2c {
            return Err(invalid(
                "cluster.peer_protocol",
                "h2c",
                "channel or http1 with cluster.tls (h2c is HTTP/2 over cleartext)",
            ));
        }
        Ok(())
    }
}

impl ClusterConfig {
    /// The handoff must fit in the time a stopping process has.
    pub(super) fn validate_handoff(&self, shutdown_grace: Duration) -> Result<(), ConfigError> {
        let Some(timeout) = self.handoff.timeout else {
            return Ok(());
        };
        if !self.enabled || self.handoff.max_bytes == 0 {
            return Ok(());
        }
        if timeout.is_zero() || timeout > shutdown_grace {
            let value = format!("{:?}", timeout);
            let expected = format!(
                "a positive duration no longer than shutdown_grace ({shutdown_grace:?}), \
                 or cluster.handoff.max_bytes: 0 to turn the handoff off"
            );
            return Err(invalid("cluster.handoff.timeout", value, &expected));
        }
        Ok(())
    }
}

fn validate_static(members: &[StaticMember]) -> Result<(), ConfigError> {
    if members.is_empty() {
        return Err(ConfigError::Invalid(
            "cluster.membership: 0 sources given; expected exactly one of static, dns, etcd".into(),
        ));
    }
    for (i, member) in members.iter().enumerate() {
        if member
            .addr()
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .is_none()
        {
            return Err(invalid(
                &format!("cluster.membership.static[{i}]"),
                quoted(member.addr()),
                "host:port",
            ));
        }
        if !(1..=100).contains(&member.weight()) {
            return Err(invalid(
                &format!("cluster.membership.static[{i}].weight"),
                member.weight(),
                "1 to 100",
            ));
        }
    }
    Ok(())
}

fn validate_dns(dns: &DnsMembership) -> Result<(), ConfigError> {
    if dns.name.is_empty() {
        return Err(invalid("cluster.membership.dns.name", "\"\"", "a DNS name"));
    }
    if let Some(ns) = &dns.nameserver {
        super::check_addr("cluster.membership.dns.nameserver", ns)?;
    }
    if let (true, Some(port)) = (dns.srv, dns.port) {
        return Err(invalid(
            "cluster.membership.dns.port",
            port,
            "no port with srv: true (each SRV record names its member's port)",
        ));
    }
    Ok(())
}

fn validate_etcd(etcd: &EtcdMembership) -> Result<(), ConfigError> {
    if etcd.endpoints.is_empty() {
        return Err(invalid(
            "cluster.membership.etcd.endpoints",
            "[]",
            "at least one http://host:port or https://host:port",
        ));
    }
    for (i, e) in etcd.endpoints.iter().enumerate() {
        let field = format!("cluster.membership.etcd.endpoints[{i}]");
        let url = super::OriginUrl::parse(e).map_err(|why| invalid(&field, quoted(e), why))?;
        if etcd.tls.is_some() && !url.tls {
            return Err(invalid(
                &field,
                quoted(e),
                "an https:// URL (tls is set: every endpoint speaks TLS)",
            ));
        }
    }
    if !etcd.prefix.starts_with('/') {
        return Err(invalid(
            "cluster.membership.etcd.prefix",
            quoted(&etcd.prefix),
            "a key prefix starting with /",
        ));
    }
    if let Some(tls) = &etcd.tls {
        validate_etcd_tls(tls)?;
    }
    if let Some(auth) = &etcd.auth {
        validate_etcd_auth(auth)?;
    }
    Ok(())
}

fn validate_etcd_tls(tls: &EtcdTls) -> Result<(), ConfigError> {
    const TLS: &str = "cluster.membership.etcd.tls";
    for (name, path) in [
        ("ca_file", &tls.ca_file),
        ("cert_file", &tls.cert_file),
        ("key_file", &tls.key_file),
    ] {
        non_empty(&format!("{TLS}.{name}"), path.as_deref(), "a PEM file path")?;
    }
    match (&tls.ca_file, &tls.cert_file, &tls.key_file) {
        (None, None, None) => Err(ConfigError::Invalid(format!(
            "{TLS}: empty; expected ca_file and/or cert_file with key_file \
             (leave tls out to check etcd's certificate against the system's roots)"
        ))),
        (_, Some(_), None) => Err(ConfigError::Invalid(format!(
            "{TLS}.key_file: missing; expected the private key of {TLS}.cert_file"
        ))),
        (_, None, Some(_)) => Err(ConfigError::Invalid(format!(
            "{TLS}.cert_file: missing; expected the client certificate of {TLS}.key_file"
        ))),
        _ => Ok(()),
    }
}

fn validate_etcd_auth(auth: &EtcdAuth) -> Result<(), ConfigError> {
    const AUTH: &str = "cluster.membership.etcd.auth";
    non_empty(
        &format!("{AUTH}.username"),
        Some(&auth.username),
        "an etcd user name",
    )?;
    non_empty(
        &format!("{AUTH}.password_file"),
        auth.password_file.as_deref(),
        "a file path",
    )?;
    non_empty(
        &format!("{AUTH}.password_env"),
        auth.password_env.as_deref(),
        "the name of an environment variable",
    )?;
    match (&auth.password_file, &auth.password_env) {
        (Some(_), Some(_)) => Err(ConfigError::Invalid(format!(
            "{AUTH}: both password_file and password_env given; expected exactly one"
        ))),
        (None, None) => Err(ConfigError::Invalid(format!(
            "{AUTH}.password_file: missing; expected password_file or password_env \
             (the password itself never goes in the config file)"
        ))),
        (None, Some(name)) if name.contains(['=', '\0']) => Err(invalid(
            &format!("{AUTH}.password_env"),
            quoted(name),
            "the name of an environment variable",
        )),
        _ => Ok(()),
    }
}

/// `value`, when given, is not the empty string.
fn non_empty(field: &str, value: Option<&str>, expected: &str) -> Result<(), ConfigError> {
    match value {
        Some(v) if v.trim().is_empty() => Err(invalid(field, quoted(v), expected)),
        _ => Ok(()),
    }
}
