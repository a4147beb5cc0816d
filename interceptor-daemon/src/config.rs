//! Daemon configuration (YAML).
//!
//! The standalone configuration is the embedded default: it needs no Kubernetes.
//! It names the cgroup v2 directory the programs attach to, which cgroups below it
//! are intercepted (paths or globs relative to that root), which destinations are
//! intercepted (each belonging to a named target) and where the daemon listens.
//!
//! Every value is checked while it is parsed, so an error carries the file, line
//! and column of the offending value.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use globset::GlobMatcher;
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, de};

mod env;

/// The built-in example configuration, printed by `interceptor config example`.
pub const EXAMPLE: &str = include_str!("../config/example.yaml");

/// A configuration error, with the place it was found.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Name of this node, recorded with every connection (defaults to the hostname).
    #[serde(default)]
    pub node_name: Option<String>,
    pub listener: ListenerConfig,
    pub redirect: RedirectConfig,
    pub targets: Vec<TargetConfig>,
    #[serde(default)]
    pub proxy: ProxyConfig,
    /// Statement-level policy for protocol-aware targets (default: deny all).
    #[serde(default)]
    pub policy: crate::policy::Policy,
    /// The policy in its own file instead (relative to this file's directory);
    /// reloaded on SIGHUP and when it changes. Excludes an inline `policy:`.
    #[serde(default)]
    pub policy_file: Option<PathBuf>,
    /// SHA-256 of the policy file as loaded (empty for an inline policy).
    #[serde(skip)]
    pub policy_digest: String,
    /// The policy's text as loaded: the policy file, or the inline `policy:`
    /// section re-serialised (what the policy version history records).
    #[serde(skip)]
    pub policy_text: String,
    /// Who is behind a selected cgroup (standalone mappings; unknown = deny by default).
    #[serde(default)]
    pub identity: crate::identity::IdentityConfig,
    /// The signed audit log on node storage; none if absent.
    #[serde(default)]
    pub audit: Option<AuditConfig>,
    /// The per-node HTTP endpoint (`/metrics`, `/healthz`, `/readyz`) and the
    /// root-only admin socket; none if absent.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// Just-in-time approvals for `require_approval` rules; none if absent.
    #[serde(default)]
    pub approvals: Option<crate::approvals::ApprovalsConfig>,
    /// Result masking settings (the rules are `action: mask` policy rules).
    #[serde(default)]
    pub masking: Option<MaskingConfig>,
    /// SQL classification settings (`cross_check`).
    #[serde(default)]
    pub sql: crate::sql::SqlConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskingConfig {
    /// The node's pseudonym key for the `hash` strategy (32 bytes, mode 0600,
    /// created if missing). Without it, a random key per daemon start.
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    pub dir: PathBuf,
    /// A signed checkpoint after this many entries.
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    #[serde(default = "default_segment_bytes", alias = "segment_max_bytes")]
    pub segment_bytes: u64,
    /// How long records of allowed operations (which nobody waits for) may
    /// gather before one write + fsync makes them durable together. 0 writes
    /// each group as soon as it is queued. Denials never wait for it.
    /// Default 20: what a crash can lose of allowed operations' records.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// Old segments removed by size/age, each removal a signed record.
    #[serde(default)]
    pub retention: Option<crate::recording::RetentionConfig>,
    /// Record a bounded summary of every response (as sent, after masking).
    #[serde(default = "default_true")]
    pub record_responses: bool,
    /// Rows (PostgreSQL, MySQL) or values (Redis) recorded per response; 0: none.
    #[serde(default = "default_record_rows")]
    pub record_rows: usize,
}

fn default_true() -> bool {
    true
}
fn default_record_rows() -> usize {
    20
}
/// An fsync costs the node far more CPU than the records it covers (about
/// 160 µs on the reference VM); 20 ms bounds that to 50 per second whatever the
/// load, like PostgreSQL's asynchronous commit (`wal_writer_delay`, 200 ms)
/// but ten times tighter. What a client waits for never lingers.
fn default_linger_ms() -> u64 {
    20
}

fn default_checkpoint_every() -> u64 {
    1000
}
fn default_segment_bytes() -> u64 {
    64 * 1024 * 1024
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// The HTTP endpoint; none if absent.
    #[serde(default, deserialize_with = "socket_addr")]
    pub address: Option<SocketAddr>,
    /// The admin unix socket (approvals API). Served when set, or when
    /// `approvals` is configured (then at [`crate::admin_socket::DEFAULT_PATH`]).
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// Non-root uids also allowed on the admin socket (root always is).
    #[serde(default)]
    pub allowed_uids: Vec<u32>,
    /// The sled database of policy versions (`policy apply`, history);
    /// default `<audit.dir>/policy-versions`.
    #[serde(default)]
    pub policy_versions: Option<PathBuf>,
}

fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    s.parse()
        .map(Some)
        .map_err(|_| de::Error::custom(format!("`{s}` is not an address:port")))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// IPv4 address and port that redirected connections are sent to. It must be
    /// an address of this node that every selected pod can reach (the node IP, or
    /// the host end of the pods' veths), not 0.0.0.0 and not loopback: a pod's
    /// loopback is its own.
    #[serde(deserialize_with = "listen_v4")]
    pub address: SocketAddrV4,
    /// IPv6 listener; without it, IPv6 connections from selected pods to selected
    /// destinations are refused (or let through with `fail_mode: open`).
    #[serde(default, deserialize_with = "listen_v6")]
    pub address_v6: Option<SocketAddrV6>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// Selected connections are refused while the daemon is down (the programs
    /// stay attached through pinned links and send them to a closed port).
    #[default]
    Closed,
    /// Selected connections go directly to their destination while the daemon is
    /// down (links are not pinned: the kernel detaches them when the daemon dies).
    Open,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectConfig {
    /// cgroup v2 directory the programs attach to; every selected cgroup is below it.
    #[serde(default = "default_cgroup_root")]
    pub cgroup_root: PathBuf,
    /// Directory on bpffs where links and maps are pinned.
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
    /// cgroups to intercept: paths or globs relative to `cgroup_root`. A selected
    /// cgroup's whole subtree is intercepted.
    pub select_cgroups: Vec<CgroupGlob>,
    #[serde(default)]
    pub fail_mode: FailMode,
    /// SO_MARK put on the daemon's upstream sockets; the programs never redirect a
    /// socket with this mark.
    #[serde(default = "default_mark")]
    pub socket_mark: u32,
    /// Sockets created by this uid are never redirected (optional second guard,
    /// for a daemon that runs under its own uid).
    #[serde(default)]
    pub skip_uid: Option<u32>,
    /// How often the cgroup tree is rescanned for new and removed cgroups.
    #[serde(default = "default_rescan_ms")]
    pub rescan_interval_ms: u64,
    /// With `fail_mode: closed` under Kubernetes: on SIGTERM, ask the API
    /// server (with `identity.kubernetes`'s client settings, or in-cluster)
    /// whether this daemon's DaemonSet still exists; if it does (a rollout or
    /// a restart, not an uninstall) the programs stay attached for the next
    /// daemon, and selected connections are refused meanwhile instead of
    /// going direct. Unset, or the DaemonSet gone, being deleted or not
    /// confirmed in time: SIGTERM detaches.
    #[serde(default)]
    pub handover: Option<HandoverConfig>,
}

/// `redirect.handover`: which DaemonSet's existence means "another daemon follows".
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandoverConfig {
    pub daemonset: String,
    pub namespace: String,
    /// Upper bound of the API call made at SIGTERM.
    #[serde(default = "default_handover_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_handover_timeout_ms() -> u64 {
    2000
}

impl RedirectConfig {
    pub fn rescan_interval(&self) -> Duration {
        Duration::from_millis(self.rescan_interval_ms.max(10))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub name: String,
    /// `IP:PORT`, `[IPv6]:PORT`, `CIDR` (any port) or `CIDR:PORT` / `[CIDR]:PORT`.
    pub destinations: Vec<Destination>,
    #[serde(default)]
    pub protocol: Protocol,
    /// PostgreSQL settings (`protocol: postgres` only): credential injection
    /// and upstream TLS.
    #[serde(default)]
    pub postgres: Option<crate::pgauth::PostgresTarget>,
    /// MySQL settings (`protocol: mysql` only): credential injection and
    /// upstream TLS.
    #[serde(default)]
    pub mysql: Option<crate::mysqlauth::MysqlTarget>,
}

impl Protocol {
    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Postgres => "postgres",
            Protocol::Redis => "redis",
            Protocol::Http => "http",
            Protocol::Mysql => "mysql",
            Protocol::Auto => "auto",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Plain TCP pass-through with connection-level records.
    #[default]
    Tcp,
    /// PostgreSQL: every statement is classified and decided by the policy.
    Postgres,
    /// Redis (RESP2/RESP3): every command is decided by the policy.
    Redis,
    /// HTTP/1.1: every request (method, host, path) is decided by the policy.
    Http,
    /// MySQL/MariaDB: every statement is classified and decided by the policy.
    Mysql,
    /// Recognised per connection from the first bytes (PostgreSQL, Redis,
    /// HTTP from the client; MySQL from a server that speaks first); anything
    /// else is TCP pass-through.
    Auto,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Upper bound for the upstream connect.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// After SIGTERM, how long open connections may run before they are closed.
    #[serde(default = "default_grace_ms")]
    pub shutdown_grace_ms: u64,
    /// Per-direction copy buffer.
    #[serde(default = "default_buffer")]
    pub buffer_bytes: usize,
    /// HTTP header names whose values never reach logs, besides
    /// Authorization, Proxy-Authorization, Cookie and Set-Cookie.
    #[serde(default)]
    pub redact_headers: Vec<String>,
    /// Worker threads of the runtime that serves every connection: a number,
    /// or `auto` (the default) for one per four CPUs this process may use,
    /// at least one. The daemon shares the node's cores with the workloads
    /// it serves; on a 2-core node one thread gave more transactions per
    /// second than two, with less CPU per transaction (bench/RESULTS.md),
    /// because every extra thread adds cross-thread wake-ups. With one thread
    /// the runtime is tokio's single-threaded one, driven by the main thread:
    /// no work-stealing bookkeeping and no worker thread to hand off to.
    #[serde(default)]
    pub threads: Threads,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            connect_timeout_ms: default_connect_timeout_ms(),
            shutdown_grace_ms: default_grace_ms(),
            buffer_bytes: default_buffer(),
            redact_headers: Vec::new(),
            threads: Threads::default(),
        }
    }
}

/// `proxy.threads`: `auto` or a count from 1 to 1024.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Threads {
    #[default]
    Auto,
    Count(usize),
}

impl Threads {
    /// The worker count to start with; `cpus` is what the process may use
    /// (the cgroup quota and affinity are applied by the standard library).
    pub fn resolve(self, cpus: usize) -> usize {
        match self {
            Threads::Auto => cpus.div_ceil(4).max(1),
            Threads::Count(n) => n,
        }
    }
}

impl<'de> Deserialize<'de> for Threads {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(i64),
            Word(String),
        }
        match Raw::deserialize(d)? {
            Raw::Count(n @ 1..=1024) => Ok(Threads::Count(n as usize)),
            Raw::Count(n) => Err(serde::de::Error::custom(format!(
                "threads must be from 1 to 1024, not {n}"
            ))),
            Raw::Word(w) if w == "auto" => Ok(Threads::Auto),
            Raw::Word(w) => Err(serde::de::Error::custom(format!(
                "threads must be `auto` or a number, not `{w}`"
            ))),
        }
    }
}

fn default_cgroup_root() -> PathBuf {
    PathBuf::from("/sys/fs/cgroup")
}
fn default_pin_dir() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/interceptor")
}
fn default_mark() -> u32 {
    0x4943
}
fn default_rescan_ms() -> u64 {
    1000
}
fn default_connect_timeout_ms() -> u64 {
    5000
}
fn default_grace_ms() -> u64 {
    5000
}
fn default_buffer() -> usize {
    64 * 1024
}

/// A selected destination: an address range and an optional port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Destination {
    pub net: IpNet,
    /// `None` means any port.
    pub port: Option<u16>,
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.net, self.port) {
            (IpNet::V4(n), Some(p)) if n.prefix_len() == 32 => write!(f, "{}:{p}", n.addr()),
            (IpNet::V6(n), Some(p)) if n.prefix_len() == 128 => write!(f, "[{}]:{p}", n.addr()),
            (IpNet::V4(n), Some(p)) => write!(f, "{n}:{p}"),
            (IpNet::V6(n), Some(p)) => write!(f, "[{n}]:{p}"),
            (n, None) => write!(f, "{n}"),
        }
    }
}

impl FromStr for Destination {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (inside, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("`{s}`: missing `]`"))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| format!("`{s}`: expected `:PORT` after `]`"))?,
                ),
            };
            (inside, port)
        } else if s.matches(':').count() == 1 {
            let (h, p) = s.split_once(':').unwrap_or((s, ""));
            (h, Some(p))
        } else {
            (s, None)
        };
        let port = match port {
            None => None,
            Some(p) => match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(format!("`{s}`: `{p}` is not a port (1-65535)")),
                Ok(p) => Some(p),
            },
        };
        let net = if host.contains('/') {
            let net: IpNet = host
                .parse()
                .map_err(|_| format!("`{s}`: `{host}` is not an address range (CIDR)"))?;
            if net.trunc() != net {
                return Err(format!(
                    "`{s}`: `{host}` has host bits set; did you mean `{}`?",
                    net.trunc()
                ));
            }
            net
        } else {
            let ip: IpAddr = host
                .parse()
                .map_err(|_| format!("`{s}`: `{host}` is not an IP address"))?;
            IpNet::from(ip)
        };
        Ok(Destination { net, port })
    }
}

impl<'de> Deserialize<'de> for Destination {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// A cgroup path or glob relative to the cgroup root.
#[derive(Debug, Clone)]
pub struct CgroupGlob {
    pub pattern: String,
    pub matcher: GlobMatcher,
    /// Longest leading part without glob metacharacters: the directory under
    /// which matching cgroups can appear.
    pub fixed_prefix: String,
}

impl CgroupGlob {
    pub fn is_literal(&self) -> bool {
        self.fixed_prefix == self.pattern
    }
}

impl FromStr for CgroupGlob {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let pattern = s.trim().trim_matches('/').to_string();
        if pattern.is_empty() {
            return Err(
                "an empty cgroup selector would select the whole root; name the cgroups".into(),
            );
        }
        if pattern.split('/').any(|c| c == ".." || c == ".") {
            return Err(format!(
                "`{s}`: `.` and `..` are not allowed in a cgroup selector"
            ));
        }
        let glob = globset::GlobBuilder::new(&pattern)
            .literal_separator(true)
            .build()
            .map_err(|e| format!("`{s}`: not a valid glob: {e}"))?;
        let mut fixed = Vec::new();
        for comp in pattern.split('/') {
            if comp.contains(['*', '?', '[', '{']) {
                break;
            }
            fixed.push(comp);
        }
        Ok(CgroupGlob {
            matcher: glob.compile_matcher(),
            fixed_prefix: fixed.join("/"),
            pattern,
        })
    }
}

impl<'de> Deserialize<'de> for CgroupGlob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

fn check_listen_ip(ip: IpAddr) -> Result<(), String> {
    if ip.is_unspecified() {
        return Err(format!(
            "listener address {ip} is unspecified: the programs need the concrete node address pods connect to"
        ));
    }
    if ip.is_loopback() {
        return Err(format!(
            "listener address {ip} is loopback: inside a pod that is the pod's own loopback, so the daemon must listen on a node address"
        ));
    }
    Ok(())
}

fn listen_v4<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddrV4, D::Error> {
    let s = String::deserialize(d)?;
    let a: SocketAddrV4 = s
        .parse()
        .map_err(|_| de::Error::custom(format!("`{s}` is not an IPv4 address:port")))?;
    check_listen_ip(IpAddr::V4(*a.ip())).map_err(de::Error::custom)?;
    if a.port() == 0 {
        return Err(de::Error::custom("listener port must not be 0"));
    }
    Ok(a)
}

fn listen_v6<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddrV6>, D::Error> {
    let Some(s) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    let a: SocketAddrV6 = s
        .parse()
        .map_err(|_| de::Error::custom(format!("`{s}` is not an [IPv6]:port")))?;
    check_listen_ip(IpAddr::V6(*a.ip())).map_err(de::Error::custom)?;
    Ok(Some(a))
}

impl Config {
    /// Reads and validates a configuration file. `${NAME}` in it is replaced by
    /// the environment variable NAME (see [`env`]).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let invalid = |message| ConfigError::Invalid {
            path: path.into(),
            message,
        };
        let text = env::expand(&text, |name| std::env::var(name).ok()).map_err(invalid)?;
        let mut cfg = Self::parse(&text).map_err(invalid)?;
        if let Some(file) = &cfg.policy_file {
            let file = path.parent().unwrap_or(Path::new(".")).join(file);
            if !cfg.policy.rules.is_empty() {
                return Err(invalid(
                    "give the policy inline (`policy:`) or in `policy_file:`, not both".into(),
                ));
            }
            let (policy, digest, policy_text) = crate::policy::store::load_file_text(&file)
                .map_err(|e| invalid(format!("policy_file: {e}")))?;
            cfg.policy = policy;
            cfg.policy_digest = digest;
            cfg.policy_text = policy_text;
            cfg.policy_file = Some(file);
        } else {
            cfg.policy_text = crate::policy::store::inline_text(&text);
        }
        Ok(cfg)
    }

    /// Parses and validates configuration text; the error names line and column.
    pub fn parse(text: &str) -> Result<Self, String> {
        let cfg: Config = serde_yaml::from_str(text).map_err(|e| describe_yaml_error(&e, text))?;
        cfg.validate(text)?;
        Ok(cfg)
    }

    fn validate(&self, text: &str) -> Result<(), String> {
        let at_nth = |needle: &str, n: usize| {
            line_of(text, needle, n)
                .map(|l| format!("line {l}: "))
                .unwrap_or_default()
        };
        let at = |needle: &str| at_nth(needle, 0);
        if self.redirect.handover.is_some() && self.redirect.fail_mode != FailMode::Closed {
            return Err(format!(
                "{}redirect.handover needs fail_mode: closed (with `open` nothing stays attached)",
                at("handover")
            ));
        }
        if self.targets.is_empty() {
            return Err(format!(
                "{}targets: at least one target is needed",
                at("targets")
            ));
        }
        if self.redirect.select_cgroups.is_empty() {
            return Err(format!(
                "{}redirect.select_cgroups: name at least one cgroup to intercept",
                at("select_cgroups")
            ));
        }
        self.policy.validate().map_err(|e| format!("policy: {e}"))?;
        if self.approvals.is_none()
            && let Some(r) = self
                .policy
                .rules
                .iter()
                .find(|r| r.action == crate::policy::Action::RequireApproval)
        {
            return Err(format!(
                "{}policy rule `{}` requires approval, but there is no `approvals:` section",
                at(&format!("id: {}", r.id)),
                r.id
            ));
        }
        let mut seen = std::collections::HashMap::new();
        for (i, t) in self.targets.iter().enumerate() {
            if t.name.trim().is_empty() {
                return Err(format!("targets[{i}]: name is empty"));
            }
            // The n-th target of a name is the n-th `name: X` line.
            let nth = self.targets[..i]
                .iter()
                .filter(|o| o.name == t.name)
                .count();
            let here = at_nth(&format!("name: {}", t.name), nth);
            if seen.insert(t.name.as_str(), i).is_some() {
                return Err(format!(
                    "{here}targets[{i}]: duplicate target name `{}`",
                    t.name
                ));
            }
            if t.destinations.is_empty() {
                return Err(format!("{here}targets[{i}] ({}): no destinations", t.name));
            }
            if t.postgres.is_some() && t.protocol != Protocol::Postgres {
                return Err(format!(
                    "{here}targets[{i}] ({}): `postgres` settings need `protocol: postgres`",
                    t.name
                ));
            }
            if t.mysql.is_some() && t.protocol != Protocol::Mysql {
                return Err(format!(
                    "{here}targets[{i}] ({}): `mysql` settings need `protocol: mysql`",
                    t.name
                ));
            }
            if let Some(pg) = &t.postgres {
                pg.validate(self.identity.kubernetes.is_some())
                    .map_err(|e| format!("{here}targets[{i}] ({}): {e}", t.name))?;
            }
            for d in &t.destinations {
                if d.net.addr() == IpAddr::V4(*self.listener.address.ip())
                    && d.port.is_none_or(|p| p == self.listener.address.port())
                {
                    return Err(format!(
                        "targets[{i}] ({}): destination {d} includes the listener itself",
                        t.name
                    ));
                }
            }
        }
        // The same destination in two targets would make the target ambiguous.
        let all: Vec<(&str, &Destination)> = self
            .targets
            .iter()
            .flat_map(|t| t.destinations.iter().map(move |d| (t.name.as_str(), d)))
            .collect();
        for (i, (ta, a)) in all.iter().enumerate() {
            for (tb, b) in &all[i + 1..] {
                if a == b {
                    return Err(format!(
                        "destination {a} is listed twice (targets `{ta}` and `{tb}`)"
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn node_name(&self) -> String {
        self.node_name.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".into())
        })
    }

    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        let mut v = vec![SocketAddr::V4(self.listener.address)];
        if let Some(a) = self.listener.address_v6 {
            v.push(SocketAddr::V6(a));
        }
        v
    }

    pub fn listen_v4_ip(&self) -> Ipv4Addr {
        *self.listener.address.ip()
    }

    /// Where policy versions are kept, if anywhere.
    pub fn policy_versions_dir(&self) -> Option<PathBuf> {
        let configured = self.admin.as_ref().and_then(|a| a.policy_versions.clone());
        configured.or_else(|| self.audit.as_ref().map(|a| a.dir.join("policy-versions")))
    }

    /// Where the admin socket is served, if it is.
    pub fn admin_socket(&self) -> Option<PathBuf> {
        let configured = self.admin.as_ref().and_then(|a| a.socket.clone());
        configured.or_else(|| {
            self.approvals
                .as_ref()
                .map(|_| PathBuf::from(crate::admin_socket::DEFAULT_PATH))
        })
    }
}

fn describe_yaml_error(e: &serde_yaml::Error, text: &str) -> String {
    let msg = e.to_string();
    // serde_yaml appends "at line L column C"; restate the place first.
    let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
    let Some(loc) = e.location() else { return msg };
    let (mut line, mut column) = (loc.line(), loc.column());
    // For a bad element of a list serde_yaml points at the list; our own value
    // errors quote the value in backticks, so find the line that holds it.
    if let Some(value) = msg.split('`').nth(1).filter(|v| !v.is_empty())
        && let Some((i, col)) = text
            .lines()
            .enumerate()
            .skip(line.saturating_sub(1))
            .find_map(|(i, l)| l.find(value).map(|c| (i, c)))
    {
        (line, column) = (i + 1, col + 1);
    }
    format!("line {line}, column {column}: {msg}")
}

/// 1-based line of the `n`-th (0-based) line containing `needle`.
fn line_of(text: &str, needle: &str, n: usize) -> Option<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .nth(n)
        .map(|(i, _)| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(s: &str) -> Result<Destination, String> {
        s.parse()
    }

    #[test]
    fn destinations_parse() {
        let d = dest("10.77.0.2:5432").unwrap();
        assert_eq!(d.net.prefix_len(), 32);
        assert_eq!(d.port, Some(5432));
        let d = dest("10.0.0.0/8").unwrap();
        assert_eq!((d.net.prefix_len(), d.port), (8, None));
        let d = dest("10.0.0.0/8:6379").unwrap();
        assert_eq!((d.net.prefix_len(), d.port), (8, Some(6379)));
        let d = dest("[fd77::2]:80").unwrap();
        assert_eq!((d.net.prefix_len(), d.port), (128, Some(80)));
        let d = dest("[fd77::/64]:80").unwrap();
        assert_eq!((d.net.prefix_len(), d.port), (64, Some(80)));
        let d = dest("fd77::/64").unwrap();
        assert_eq!((d.net.prefix_len(), d.port), (64, None));
        assert_eq!(
            dest("10.0.0.1/8").unwrap_err(),
            "`10.0.0.1/8`: `10.0.0.1/8` has host bits set; did you mean `10.0.0.0/8`?"
        );
        assert!(dest("10.0.0.1:0").is_err());
        assert!(dest("10.0.0.1:99999").is_err());
        assert!(dest("db.example:5432").is_err());
        assert!(dest("[fd77::1").is_err());
        for s in [
            "10.77.0.2:5432",
            "10.0.0.0/8",
            "10.0.0.0/8:6379",
            "[fd77::2]:80",
            "[fd77::/64]:80",
        ] {
            assert_eq!(dest(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn proxy_threads_are_auto_or_a_count() {
        let parse = |y: &str| serde_yaml::from_str::<ProxyConfig>(y);
        let auto = parse("{}").unwrap().threads;
        assert_eq!(auto, Threads::Auto);
        assert_eq!(parse("threads: auto").unwrap().threads, Threads::Auto);
        // One per four CPUs, never none.
        assert_eq!(
            [1, 2, 4, 5, 8, 64].map(|c| auto.resolve(c)),
            [1, 1, 1, 2, 2, 16]
        );
        let three = parse("threads: 3").unwrap().threads;
        assert_eq!(three.resolve(64), 3);
        for bad in [
            "threads: 0",
            "threads: 5000",
            "threads: many",
            "threads: -1",
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("threads must be"), "{bad}: {e}");
        }
    }

    #[test]
    fn globs_have_fixed_prefix() {
        let g: CgroupGlob = "kubepods.slice/*/kubepods-*-pod*.slice".parse().unwrap();
        assert_eq!(g.fixed_prefix, "kubepods.slice");
        assert!(
            g.matcher.is_match(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12.slice"
            )
        );
        assert!(
            !g.matcher
                .is_match("kubepods.slice/a/b/kubepods-x-pod1.slice")
        );
        let g: CgroupGlob = "/demo/pod-a/".parse().unwrap();
        assert!(g.is_literal());
        assert_eq!(g.pattern, "demo/pod-a");
        assert!("".parse::<CgroupGlob>().is_err());
        assert!("a/../b".parse::<CgroupGlob>().is_err());
    }

    const GOOD: &str = "listener:\n  address: 10.77.0.1:15001\nredirect:\n  cgroup_root: /sys/fs/cgroup/unified\n  select_cgroups: [\"pods/*\"]\ntargets:\n  - name: pg\n    destinations: [\"10.77.0.2:5432\"]\n";

    #[test]
    fn good_config_parses() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.redirect.fail_mode, FailMode::Closed);
        assert_eq!(c.redirect.socket_mark, 0x4943);
        assert_eq!(c.targets[0].destinations[0].port, Some(5432));
    }

    #[test]
    fn handover_needs_fail_closed() {
        let with = |extra: &str| {
            GOOD.replace(
                "redirect:\n",
                &format!("redirect:\n  handover: {{ daemonset: icpt, namespace: sys }}\n{extra}"),
            )
        };
        let c = Config::parse(&with("")).unwrap();
        let h = c.redirect.handover.unwrap();
        assert_eq!(
            (h.daemonset.as_str(), h.namespace.as_str()),
            ("icpt", "sys")
        );
        assert_eq!(h.timeout_ms, 2000);
        let e = Config::parse(&with("  fail_mode: open\n")).unwrap_err();
        assert!(
            e.contains("redirect.handover needs fail_mode: closed") && e.starts_with("line 4"),
            "{e}"
        );
    }

    #[test]
    fn example_config_parses() {
        Config::parse(EXAMPLE).unwrap();
    }

    #[test]
    fn bad_values_name_their_line() {
        let bad = GOOD.replace("10.77.0.2:5432", "10.77.0.2:99999");
        let e = Config::parse(&bad).unwrap_err();
        assert!(e.starts_with("line 8, column"), "{e}");
        assert!(e.contains("99999"), "{e}");

        let bad = GOOD.replace("10.77.0.1:15001", "127.0.0.1:15001");
        let e = Config::parse(&bad).unwrap_err();
        assert!(
            e.starts_with("line 2, column") && e.contains("loopback"),
            "{e}"
        );

        let bad = GOOD.replace("select_cgroups", "select_cgroup");
        let e = Config::parse(&bad).unwrap_err();
        assert!(
            e.contains("unknown field `select_cgroup`") && e.starts_with("line 5"),
            "{e}"
        );

        let bad = GOOD.replace("  - name: pg", "  - name: pg\n    protocol: smtp");
        let e = Config::parse(&bad).unwrap_err();
        assert!(e.contains("smtp") && e.starts_with("line 8"), "{e}");
    }

    #[test]
    fn semantic_errors() {
        let dup = format!("{GOOD}  - name: pg\n    destinations: [\"10.77.0.3:5432\"]\n");
        let e = Config::parse(&dup).unwrap_err();
        assert!(
            e.contains("duplicate target name `pg`") && e.starts_with("line 9"),
            "{e}"
        );
        let twice = format!("{GOOD}  - name: pg2\n    destinations: [\"10.77.0.2:5432\"]\n");
        assert!(Config::parse(&twice).unwrap_err().contains("listed twice"));
        let itself = GOOD.replace("10.77.0.2:5432", "10.77.0.1/32");
        assert!(
            Config::parse(&itself)
                .unwrap_err()
                .contains("listener itself")
        );
    }
}
