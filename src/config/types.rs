//! The validated configuration: what the rest of the crate reads, one type per subsystem.
//!
//! Built by `validate` from the raw file (or the embedded default); every value here has
//! been checked, so nothing downstream re-validates or meets an "always Some at runtime" option.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use http::Uri;

use super::{Credentials, Mirrors, ProxyUrl};
use crate::access::AccessList;
use crate::names::NamePattern;

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the CA (`certs/`) and later the cache (`cache/`) live.
    pub state_dir: PathBuf,
    pub dns: DnsConfig,
    pub tls: TlsConfig,
    pub upstream: UpstreamConfig,
    pub admin: AdminConfig,
    /// Plain-HTTP mirror listeners (`[http] listen`); empty = off.
    pub http_listen: Vec<SocketAddr>,
    pub access: AccessList,
    pub cache: CacheConfig,
    pub limits: LimitsConfig,
    pub log: LogConfig,
    /// Never empty; names and aliases are unique across the list.
    pub registries: Vec<Registry>,
    /// `[[warm]]`: images the running appliance keeps warm.
    pub warm: Vec<super::WarmJob>,
    /// `[fleet]`: the appliances sharing one upstream fetch per object.
    pub fleet: super::FleetConfig,
    /// `[storage]`: the shared tier, if any.
    pub storage: super::StorageConfig,
}

#[derive(Clone, Debug)]
pub struct DnsConfig {
    pub listen: Vec<SocketAddr>,
    /// Empty: the app substitutes the host's primary IPv4.
    pub answer_ipv4: Vec<Ipv4Addr>,
    pub answer_ipv6: Vec<Ipv6Addr>,
    /// Empty: the app substitutes /etc/resolv.conf minus our own addresses.
    pub upstream: Vec<SocketAddr>,
    pub ttl: u32,
}

#[derive(Clone, Debug)]
pub struct TlsConfig {
    pub listen: Vec<SocketAddr>,
}

#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    /// PEM files (paths as written, relative to the working directory).
    pub extra_ca: Vec<PathBuf>,
    /// The HTTP proxy every upstream request goes through (`CONNECT`), unless its host is in
    /// `no_proxy`; `None`: direct.
    pub proxy: Option<ProxyUrl>,
    /// Hosts reached directly even with a proxy (curl's `NO_PROXY` rules).
    pub no_proxy: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct AdminConfig {
    pub listen: SocketAddr,
}

#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// `{state_dir}` in the configured value is replaced by the state dir.
    pub dir: PathBuf,
    pub max_size: u64,
    /// How long a tag → digest mapping is served without asking the upstream.
    pub manifest_ttl: Duration,
    /// How long an upstream "yes, this client may read this repository" is remembered.
    pub auth_ttl: Duration,
    /// Serve cached content when the upstream is unreachable or answers 5xx/429.
    pub offline: bool,
    /// While offline, a client is served if its access was confirmed within this window.
    pub offline_auth_window: Duration,
    /// `[[cache.rule]]` in file order: the first covering a tag sets its TTL, else `manifest_ttl`.
    pub rules: Vec<super::TagRule>,
}

/// The `[limits]` table: bounds on what clients can hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitsConfig {
    /// HTTPS and mirror connections open at once (together); at least 1.
    pub max_connections: usize,
    /// From accept (TLS: the end of the handshake) to the first byte of the first request.
    pub first_byte_timeout: Duration,
    /// A request head (HTTP/1.1) must arrive whole within this, counted from when the connection
    /// waits for it.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// HTTP/2 PING interval (and the time a PING may go unanswered); `None`: no pings.
    pub h2_keepalive_interval: Option<Duration>,
    /// Upstream fills under way at once, over all registries; at least 1.
    pub max_fills: usize,
    /// Upstream fills under way at once for one registry; at least 1.
    pub max_fills_per_registry: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            first_byte_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            h2_keepalive_interval: Some(Duration::from_secs(30)),
            max_fills: 64,
            max_fills_per_registry: 16,
        }
    }
}

/// The `[log]` table (defaults: info, text, main format on stdout).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// A tracing filter ("info", "regcache=debug,hickory_server=warn"); RUST_LOG overrides it.
    pub level: String,
    pub format: LogFormat,
    pub access_format: AccessFormat,
    /// `None`: stdout. A file is appended to, and reopened on SIGHUP (logrotate).
    pub access_file: Option<PathBuf>,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
            access_format: AccessFormat::Main,
            access_file: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessFormat {
    /// nginx `main` with the registry host last.
    Main,
    /// One JSON object per line.
    Json,
}

/// One intercepted registry.
#[derive(Clone, Debug)]
pub struct Registry {
    /// The canonical public name (an exact name), logged as the access log's host.
    pub host: String,
    /// More names answered for the same registry (exact names or `*.suffix`).
    pub aliases: Vec<NamePattern>,
    /// Base URL of the real registry: scheme https, an authority, no path.
    pub upstream: Uri,
    /// The appliance's own credentials for this registry, used for clients that send none.
    pub credentials: Option<Credentials>,
    /// Verified fallback sources for objects by digest (`mirrors`, see `mirrors.rs`).
    pub mirrors: Mirrors,
}

impl Registry {
    /// The host followed by the aliases.
    pub fn patterns(&self) -> impl Iterator<Item = NamePattern> + '_ {
        std::iter::once(NamePattern::Exact(self.host.clone())).chain(self.aliases.iter().cloned())
    }
}

impl Config {
    /// Every intercepted name pattern, in registry order.
    pub fn patterns(&self) -> Vec<NamePattern> {
        self.registries
            .iter()
            .flat_map(Registry::patterns)
            .collect()
    }
}
