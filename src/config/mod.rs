//! Configuration: raw TOML → validated [`Config`], and the embedded default (`default.toml`).
//!
//! Raw structs mirror the file with `deny_unknown_fields`; every value that needs checking is read as
//! [`Spanned`] so an error can name its line. Nothing here touches the network or the CA.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;
use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use crate::access::AccessList;
use crate::names::{normalize, NamePattern};

/// The embedded default configuration, printed by `regcache config default`.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

/// The environment variable naming a config file when `--config` is not given.
pub const CONFIG_ENV: &str = "REGCACHE_CONFIG";

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
}

/// A user name and password for an upstream registry.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
}

/// A secret: `Debug` and `Display` print `MASKED`, so it never reaches a log or an error.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself, for the one place that sends it upstream.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MASKED")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MASKED")
    }
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

/// Where a configuration came from, for messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Embedded,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Embedded => f.write_str("<embedded default>"),
        }
    }
}

/// One problem in a config file, located by line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// 1-based; 0 when the problem has no single place (a missing file).
    pub line: usize,
    pub message: String,
}

/// Why a configuration could not be loaded. `Display` prints one `file:line: why` per problem.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", render(.origin, .problems))]
    Invalid {
        origin: Source,
        problems: Vec<Problem>,
    },
}

fn render(source: &Source, problems: &[Problem]) -> String {
    let lines: Vec<String> = problems
        .iter()
        .map(|p| match p.line {
            0 => format!("{source}: {}", p.message),
            line => format!("{source}:{line}: {}", p.message),
        })
        .collect();
    lines.join("\n")
}

/// Picks the config file: `explicit`, else `$REGCACHE_CONFIG`, else `./regcache.toml` if present,
/// else `/etc/regcache/regcache.toml` if present, else none (the embedded default).
pub fn locate(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = explicit {
        return Some(path.to_owned());
    }
    if let Some(path) = std::env::var_os(CONFIG_ENV).filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(path));
    }
    ["regcache.toml", "/etc/regcache/regcache.toml"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// Loads and validates the file `path`, or the embedded default when `path` is `None`.
pub fn load(path: Option<&Path>) -> Result<Config, Error> {
    match path {
        None => parse(DEFAULT_TOML, Source::Embedded),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
                path: path.to_owned(),
                source,
            })?;
            parse(&text, Source::File(path.to_owned()))
        }
    }
}

/// Parses and validates config text. All validation problems are reported together.
pub fn parse(text: &str, source: Source) -> Result<Config, Error> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| Error::Invalid {
        problems: vec![Problem {
            line: e.span().map_or(0, |s| line_of(text, s.start)),
            message: e.message().trim().to_owned(),
        }],
        origin: source.clone(),
    })?;
    let mut v = Validator {
        text,
        problems: Vec::new(),
    };
    let config = v.config(raw);
    v.problems.sort_by_key(|p| p.line);
    if v.problems.is_empty() {
        Ok(config)
    } else {
        Err(Error::Invalid {
            origin: source,
            problems: v.problems,
        })
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state_dir: Option<String>,
    #[serde(default)]
    dns: RawDns,
    #[serde(default)]
    tls: RawTls,
    #[serde(default)]
    upstream: RawUpstream,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    http: RawHttp,
    #[serde(default)]
    access: RawAccess,
    #[serde(default)]
    cache: RawCache,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    log: RawLog,
    registry: Option<Vec<RawRegistry>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: Option<Spanned<String>>,
    format: Option<Spanned<String>>,
    access_format: Option<Spanned<String>>,
    access_file: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCache {
    dir: Option<String>,
    max_size: Option<Spanned<String>>,
    manifest_ttl: Option<Spanned<String>>,
    auth_ttl: Option<Spanned<String>>,
    offline: Option<bool>,
    offline_auth_window: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_connections: Option<Spanned<i64>>,
    first_byte_timeout: Option<Spanned<String>>,
    header_read_timeout: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
    h2_keepalive_interval: Option<Spanned<String>>,
    max_fills: Option<Spanned<i64>>,
    max_fills_per_registry: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDns {
    listen: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    answer_ipv4: Vec<Spanned<String>>,
    #[serde(default)]
    answer_ipv6: Vec<Spanned<String>>,
    #[serde(default)]
    upstream: Vec<Spanned<String>>,
    ttl: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTls {
    listen: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    #[serde(default)]
    extra_ca: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    #[serde(default)]
    listen: Vec<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAccess {
    #[serde(default)]
    allow: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistry {
    host: Spanned<String>,
    #[serde(default)]
    aliases: Vec<Spanned<String>>,
    upstream: Option<Spanned<String>>,
    username: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
    credentials_file: Option<Spanned<String>>,
}

struct Validator<'a> {
    text: &'a str,
    problems: Vec<Problem>,
}

impl Validator<'_> {
    fn problem<T>(&mut self, at: &Spanned<T>, message: String) {
        let line = line_of(self.text, at.span().start);
        self.problems.push(Problem { line, message });
    }

    /// Parses each entry with `parse`, recording a problem per bad entry.
    fn each<T, E: fmt::Display>(
        &mut self,
        key: &str,
        items: &[Spanned<String>],
        parse: impl Fn(&str) -> Result<T, E>,
    ) -> Vec<T> {
        let mut out = Vec::new();
        for item in items {
            match parse(item.get_ref()) {
                Ok(value) => out.push(value),
                Err(e) => self.problem(item, format!("{key}: {:?}: {e}", item.get_ref())),
            }
        }
        out
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        // Destructured whole so that a new key is a compile error until it is validated here.
        let RawConfig {
            state_dir,
            dns,
            tls,
            upstream,
            admin,
            http,
            access,
            cache,
            limits,
            log,
            registry,
        } = raw;
        let registries = match registry {
            Some(list) => self.registries(list),
            None => default_registries(),
        };
        let state_dir = state_dir.unwrap_or_else(|| ".".into());
        Config {
            log: self.log(log),
            cache: self.cache(cache, &state_dir),
            limits: self.limits(limits),
            state_dir: PathBuf::from(state_dir),
            dns: self.dns(dns),
            tls: TlsConfig {
                listen: self.listen("tls.listen", tls.listen, "0.0.0.0:443"),
            },
            upstream: UpstreamConfig {
                extra_ca: upstream.extra_ca.into_iter().map(PathBuf::from).collect(),
            },
            admin: AdminConfig {
                listen: self.admin_listen(admin),
            },
            http_listen: self.each("http.listen", &http.listen, |s| {
                s.parse::<SocketAddr>().map_err(addr_hint)
            }),
            access: AccessList::new(self.each("access.allow", &access.allow, parse_cidr)),
            registries,
        }
    }

    fn listen(
        &mut self,
        key: &str,
        items: Option<Vec<Spanned<String>>>,
        default: &str,
    ) -> Vec<SocketAddr> {
        match items {
            None => vec![default.parse().expect("default listen address")],
            Some(items) => self.each(key, &items, |s| s.parse::<SocketAddr>().map_err(addr_hint)),
        }
    }

    fn admin_listen(&mut self, admin: RawAdmin) -> SocketAddr {
        let default: SocketAddr = "127.0.0.1:9090".parse().expect("default admin address");
        let Some(item) = admin.listen else {
            return default;
        };
        match item.get_ref().parse::<SocketAddr>() {
            Ok(addr) => addr,
            Err(e) => {
                let msg = format!("admin.listen: {:?}: {}", item.get_ref(), addr_hint(e));
                self.problem(&item, msg);
                default
            }
        }
    }

    fn log(&mut self, raw: RawLog) -> LogConfig {
        let RawLog {
            level,
            format,
            access_format,
            access_file,
        } = raw;
        let level = match level {
            None => "info".to_owned(),
            Some(l) => match tracing_subscriber::EnvFilter::try_new(l.get_ref()) {
                Ok(_) => l.into_inner(),
                Err(e) => {
                    self.problem(&l, format!("log.level: {:?}: {e}", l.get_ref()));
                    "info".to_owned()
                }
            },
        };
        LogConfig {
            level,
            format: self.value("log.format", format, "text", |s| match s {
                "text" => Ok(LogFormat::Text),
                "json" => Ok(LogFormat::Json),
                _ => Err("use \"text\" or \"json\"".into()),
            }),
            access_format: self.value("log.access_format", access_format, "main", |s| match s {
                "main" => Ok(AccessFormat::Main),
                "json" => Ok(AccessFormat::Json),
                _ => Err("use \"main\" or \"json\"".into()),
            }),
            access_file: access_file.filter(|f| !f.is_empty()).map(PathBuf::from),
        }
    }

    fn cache(&mut self, raw: RawCache, state_dir: &str) -> CacheConfig {
        let RawCache {
            dir,
            max_size,
            manifest_ttl,
            auth_ttl,
            offline,
            offline_auth_window,
        } = raw;
        let dir = dir.unwrap_or_else(|| "{state_dir}/cache".into());
        CacheConfig {
            dir: PathBuf::from(dir.replace("{state_dir}", state_dir)),
            max_size: self.value("cache.max_size", max_size, "50GiB", parse_size),
            manifest_ttl: self.value("cache.manifest_ttl", manifest_ttl, "60s", parse_duration),
            auth_ttl: self.value("cache.auth_ttl", auth_ttl, "60s", parse_duration),
            offline: offline.unwrap_or(true),
            offline_auth_window: self.value(
                "cache.offline_auth_window",
                offline_auth_window,
                "24h",
                parse_duration,
            ),
        }
    }

    fn limits(&mut self, raw: RawLimits) -> LimitsConfig {
        let RawLimits {
            max_connections,
            first_byte_timeout,
            header_read_timeout,
            idle_timeout,
            h2_keepalive_interval,
            max_fills,
            max_fills_per_registry,
        } = raw;
        let d = LimitsConfig::default();
        let key = |k: &str| format!("limits.{k}");
        LimitsConfig {
            max_connections: self.count(
                &key("max_connections"),
                max_connections,
                d.max_connections,
            ),
            first_byte_timeout: self.value(
                &key("first_byte_timeout"),
                first_byte_timeout,
                "10s",
                parse_timeout,
            ),
            header_read_timeout: self.value(
                &key("header_read_timeout"),
                header_read_timeout,
                "30s",
                parse_timeout,
            ),
            idle_timeout: self.value(&key("idle_timeout"), idle_timeout, "60s", parse_timeout),
            h2_keepalive_interval: Some(self.value(
                &key("h2_keepalive_interval"),
                h2_keepalive_interval,
                "30s",
                parse_duration,
            ))
            .filter(|d| !d.is_zero()),
            max_fills: self.count(&key("max_fills"), max_fills, d.max_fills),
            max_fills_per_registry: self.count(
                &key("max_fills_per_registry"),
                max_fills_per_registry,
                d.max_fills_per_registry,
            ),
        }
    }

    /// A count of at least 1 (and at most 1,000,000), else `default` (recording a problem).
    fn count(&mut self, key: &str, item: Option<Spanned<i64>>, default: usize) -> usize {
        let Some(item) = item else {
            return default;
        };
        match usize::try_from(*item.get_ref()) {
            Ok(n) if (1..=1_000_000).contains(&n) => n,
            _ => {
                let msg = format!("{key}: {} is not between 1 and 1000000", item.get_ref());
                self.problem(&item, msg);
                default
            }
        }
    }

    /// Parses an optional value with `parse`, falling back to `default` (recording a problem).
    fn value<T>(
        &mut self,
        key: &str,
        item: Option<Spanned<String>>,
        default: &str,
        parse: fn(&str) -> Result<T, String>,
    ) -> T {
        let fallback = || parse(default).expect("defaults parse");
        let Some(item) = item else {
            return fallback();
        };
        match parse(item.get_ref()) {
            Ok(v) => v,
            Err(why) => {
                self.problem(&item, format!("{key}: {:?}: {why}", item.get_ref()));
                fallback()
            }
        }
    }

    fn dns(&mut self, raw: RawDns) -> DnsConfig {
        let RawDns {
            listen,
            answer_ipv4,
            answer_ipv6,
            upstream,
            ttl,
        } = raw;
        let ttl = match ttl {
            None => 60,
            Some(t) => match u32::try_from(*t.get_ref()) {
                Ok(v) if v <= 604_800 => v,
                _ => {
                    let msg = format!(
                        "dns.ttl: {} is not between 0 and 604800 seconds",
                        t.get_ref()
                    );
                    self.problem(&t, msg);
                    60
                }
            },
        };
        DnsConfig {
            listen: self.listen("dns.listen", listen, "0.0.0.0:53"),
            answer_ipv4: self.each("dns.answer_ipv4", &answer_ipv4, |s| {
                s.parse::<Ipv4Addr>().map_err(|_| "not an IPv4 address")
            }),
            answer_ipv6: self.each("dns.answer_ipv6", &answer_ipv6, |s| {
                s.parse::<Ipv6Addr>().map_err(|_| "not an IPv6 address")
            }),
            upstream: self.each("dns.upstream", &upstream, parse_resolver),
            ttl,
        }
    }

    fn registries(&mut self, list: Vec<RawRegistry>) -> Vec<Registry> {
        let mut seen: Vec<NamePattern> = Vec::new();
        let mut out = Vec::new();
        for raw in list {
            let Some(registry) = self.registry(raw, &mut seen) else {
                continue;
            };
            out.push(registry);
        }
        if out.is_empty() && self.problems.is_empty() {
            self.problems.push(Problem {
                line: 0,
                message: "the [[registry]] list is empty: name at least one registry, or remove \
                          the list to use the default one"
                    .into(),
            });
        }
        out
    }

    fn registry(&mut self, raw: RawRegistry, seen: &mut Vec<NamePattern>) -> Option<Registry> {
        let RawRegistry {
            host,
            aliases,
            upstream,
            username,
            password_file,
            credentials_file,
        } = raw;
        let host_name = match NamePattern::parse(host.get_ref()) {
            Ok(NamePattern::Exact(name)) => name,
            Ok(NamePattern::Suffix(_)) => {
                let msg = "registry.host must be an exact name; put wildcards in aliases".into();
                self.problem(&host, msg);
                return None;
            }
            Err(e) => {
                self.problem(&host, format!("registry.host: {e}"));
                return None;
            }
        };
        let mut names = vec![(NamePattern::Exact(host_name.clone()), &host)];
        for alias in &aliases {
            match NamePattern::parse(alias.get_ref()) {
                Ok(p) => names.push((p, alias)),
                Err(e) => self.problem(alias, format!("registry.aliases: {e}")),
            }
        }
        for (pattern, at) in &names {
            if seen.contains(pattern) {
                self.problem(
                    *at,
                    format!("{pattern} is listed twice among the registries"),
                );
            }
            seen.push(pattern.clone());
        }
        let upstream = match upstream {
            None => format!("https://{host_name}")
                .parse()
                .expect("a valid host makes a valid URL"),
            Some(u) => match parse_upstream(u.get_ref()) {
                Ok(uri) => uri,
                Err(why) => {
                    self.problem(&u, format!("registry.upstream: {:?}: {why}", u.get_ref()));
                    return None;
                }
            },
        };
        let aliases: Vec<NamePattern> = names.into_iter().skip(1).map(|(p, _)| p).collect();
        let credentials =
            self.credentials(&host, &aliases, username, password_file, credentials_file);
        Some(Registry {
            host: host_name,
            aliases,
            upstream,
            credentials,
        })
    }

    fn credentials(
        &mut self,
        host: &Spanned<String>,
        aliases: &[NamePattern],
        username: Option<Spanned<String>>,
        password_file: Option<Spanned<String>>,
        credentials_file: Option<Spanned<String>>,
    ) -> Option<Credentials> {
        match (username, password_file, credentials_file) {
            (None, None, None) => None,
            (Some(user), Some(file), None) => match read_secret(file.get_ref()) {
                Ok(password) => Some(Credentials {
                    username: user.into_inner(),
                    password,
                }),
                Err(why) => {
                    self.problem(&file, format!("registry.password_file: {why}"));
                    None
                }
            },
            (None, None, Some(file)) => {
                let mut names = vec![normalize(host.get_ref())];
                names.extend(aliases.iter().map(ToString::to_string));
                match docker_config_credentials(file.get_ref(), &names) {
                    Ok(c) => Some(c),
                    Err(why) => {
                        self.problem(&file, format!("registry.credentials_file: {why}"));
                        None
                    }
                }
            }
            (Some(user), None, None) => {
                self.problem(
                    &user,
                    "registry.username needs password_file next to it".into(),
                );
                None
            }
            (None, Some(file), None) => {
                self.problem(
                    &file,
                    "registry.password_file needs username next to it".into(),
                );
                None
            }
            (_, _, Some(file)) => {
                let msg = "give either username + password_file or credentials_file, not both";
                self.problem(&file, msg.into());
                None
            }
        }
    }
}

/// A password file's content, without a trailing newline.
fn read_secret(path: &str) -> Result<Secret, String> {
    let text = read_credential_file(path)?;
    let secret = text.strip_suffix('\n').unwrap_or(&text);
    let secret = secret.strip_suffix('\r').unwrap_or(secret);
    if secret.is_empty() {
        return Err(format!("{path} is empty"));
    }
    Ok(Secret::new(secret))
}

/// The entry for one of `names` in a Docker `config.json` (`auths` → `auth` = base64 of
/// `user:password`, or `username` + `password`). Docker Hub's key is "https://index.docker.io/v1/".
fn docker_config_credentials(path: &str, names: &[String]) -> Result<Credentials, String> {
    use base64::Engine as _;
    let text = read_credential_file(path)?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{path} is not JSON: {e}"))?;
    let auths = json.get("auths").and_then(|a| a.as_object());
    let auths = auths.ok_or_else(|| format!("{path} has no \"auths\" object"))?;
    let hub = names.iter().any(|n| n.ends_with("docker.io"));
    let entry = auths.iter().find_map(|(key, value)| {
        let key = key
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        let key = key.split('/').next().unwrap_or(key);
        let wanted = names.iter().any(|n| n == key) || (hub && key == "index.docker.io");
        wanted.then_some(value)
    });
    let entry = entry.ok_or_else(|| format!("{path} has no entry for {}", names.join(" or ")))?;
    let field = |k: &str| {
        entry
            .get(k)
            .and_then(|v| v.as_str())
            .filter(|v| !v.is_empty())
    };
    if let (Some(user), Some(pass)) = (field("username"), field("password")) {
        return Ok(Credentials {
            username: user.to_owned(),
            password: Secret::new(pass),
        });
    }
    let auth = field("auth").ok_or_else(|| format!("the entry in {path} has no \"auth\""))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth)
        .map_err(|_| format!("the \"auth\" entry in {path} is not base64"))?;
    let decoded =
        String::from_utf8(decoded).map_err(|_| "the auth entry is not UTF-8".to_owned())?;
    let (user, pass) = (decoded.split_once(':'))
        .ok_or_else(|| format!("the \"auth\" entry in {path} is not user:password"))?;
    Ok(Credentials {
        username: user.to_owned(),
        password: Secret::new(pass),
    })
}

/// Credential files are read up to this size (a Docker config.json with many auths is a few KiB).
const MAX_CREDENTIAL_FILE: u64 = 1 << 20;

/// A credential file's text, refused beyond [`MAX_CREDENTIAL_FILE`] (so that `/dev/zero` or a
/// log file named by mistake is an error, not an endless read). Fuzzing reads no files.
fn read_credential_file(path: &str) -> Result<String, String> {
    use std::io::Read as _;
    if cfg!(fuzzing) {
        return Err(format!(
            "cannot read {path}: files are not read while fuzzing"
        ));
    }
    let cannot = |e: std::io::Error| format!("cannot read {path}: {e}");
    let file = std::fs::File::open(path).map_err(cannot)?;
    let mut text = String::new();
    (file.take(MAX_CREDENTIAL_FILE + 1).read_to_string(&mut text)).map_err(cannot)?;
    if text.len() as u64 > MAX_CREDENTIAL_FILE {
        return Err(format!("{path} is larger than {MAX_CREDENTIAL_FILE} bytes"));
    }
    Ok(text)
}

fn default_registries() -> Vec<Registry> {
    let raw: RawConfig = toml::from_str(DEFAULT_TOML).expect("embedded default config parses");
    let mut v = Validator {
        text: DEFAULT_TOML,
        problems: Vec::new(),
    };
    let list = v.registries(raw.registry.expect("embedded default lists registries"));
    assert!(
        v.problems.is_empty(),
        "embedded default registries are valid"
    );
    list
}

/// "50GiB", "512MiB", "10GB", "1024" (bytes).
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| "write a size such as \"50GiB\" or \"500MB\"")?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1000 * 1000,
        "mib" => 1 << 20,
        "g" | "gb" => 1000 * 1000 * 1000,
        "gib" => 1 << 30,
        "t" | "tb" => 1000 * 1000 * 1000 * 1000,
        "tib" => 1 << 40,
        other => {
            return Err(format!(
                "unknown unit {other:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
            ))
        }
    };
    n.checked_mul(mult).ok_or_else(|| "too large".into())
}

/// "60s", "5m", "24h", "7d", "250ms".
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| "write a duration such as \"60s\", \"5m\" or \"24h\"")?;
    let secs = |m: u64| Ok(Duration::from_secs(n.saturating_mul(m)));
    match unit.trim() {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86400),
        "" => Err("add a unit: ms, s, m, h or d".into()),
        other => Err(format!("unknown unit {other:?} (use ms, s, m, h or d)")),
    }
}

/// A duration that is not zero (a zero timeout would close every connection at once).
fn parse_timeout(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err("must be more than zero".into()),
        d => Ok(d),
    }
}

fn addr_hint(e: std::net::AddrParseError) -> String {
    format!("{e} (write IP:port, e.g. \"0.0.0.0:443\" or \"[::]:443\")")
}

fn parse_cidr(s: &str) -> Result<IpNet, String> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net);
    }
    s.parse::<std::net::IpAddr>()
        .map(IpNet::from)
        .map_err(|_| "not a CIDR such as \"10.0.0.0/8\" or an IP address".into())
}

fn parse_resolver(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    s.parse::<std::net::IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| "not \"IP:port\" or an IP address".into())
}

fn parse_upstream(s: &str) -> Result<Uri, String> {
    let uri: Uri = s.parse().map_err(|e| format!("not a URL ({e})"))?;
    if uri.scheme_str() != Some("https") {
        return Err("the upstream must be an https:// URL".into());
    }
    if uri.host().is_none() {
        return Err("the URL has no host".into());
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err("give only scheme and host (and port), no path".into());
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<Problem> {
        match parse(text, Source::Embedded) {
            Err(Error::Invalid { problems, .. }) => problems,
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn embedded_default_is_valid_and_lists_the_registries() {
        let c = parse(DEFAULT_TOML, Source::Embedded).unwrap();
        let hosts: Vec<_> = c.registries.iter().map(|r| r.host.as_str()).collect();
        assert_eq!(
            hosts,
            [
                "registry-1.docker.io",
                "auth.docker.io",
                "nvcr.io",
                "ghcr.io",
                "gcr.io",
                "quay.io",
                "registry.k8s.io",
                "mcr.microsoft.com",
                "public.ecr.aws"
            ]
        );
        assert_eq!(c.registries[0].aliases.len(), 2);
        assert_eq!(c.registries[2].upstream, "https://nvcr.io/");
        assert_eq!(c.dns.listen, ["0.0.0.0:53".parse().unwrap()]);
        assert_eq!(c.admin.listen, "127.0.0.1:9090".parse().unwrap());
    }

    #[test]
    fn empty_file_means_all_defaults() {
        let c = parse("", Source::Embedded).unwrap();
        assert_eq!(c.registries.len(), 9);
        assert_eq!(c.dns.ttl, 60);
        assert_eq!(c.tls.listen, ["0.0.0.0:443".parse().unwrap()]);
    }

    #[test]
    fn a_registry_list_replaces_the_default() {
        let c = parse("[[registry]]\nhost = \"example.com\"\n", Source::Embedded).unwrap();
        assert_eq!(c.registries.len(), 1);
        assert_eq!(c.registries[0].upstream, "https://example.com/");
    }

    #[test]
    fn unknown_keys_name_their_line() {
        let p = problems("state_dir = \"x\"\n[dns]\nlisten = []\nbogus = 1\n");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].line, 4);
        assert!(p[0].message.contains("bogus"), "{}", p[0].message);
    }

    #[test]
    fn every_bad_value_is_reported_with_its_line() {
        let text = "[dns]\nlisten = [\"0.0.0.0:53\", \"nonsense\"]\nttl = -1\n\
                    [access]\nallow = [\"10.0.0.0/33\"]\n\
                    [[registry]]\nhost = \"ok.io\"\nupstream = \"http://ok.io\"\n\
                    [[registry]]\nhost = \"ok.io\"\naliases = [\"bad name\"]\n";
        let p = problems(text);
        let lines: Vec<usize> = p.iter().map(|p| p.line).collect();
        assert_eq!(lines, [2, 3, 5, 8, 10, 11], "{p:?}");
        assert!(p[0].message.contains("dns.listen") && p[0].message.contains("nonsense"));
        assert!(p[3].message.contains("https"));
        assert!(p[4].message.contains("listed twice"), "{}", p[4].message);
        assert!(p[5].message.contains("bad name"), "{}", p[5].message);
    }

    #[test]
    fn rendered_errors_say_file_and_line() {
        let err = parse(
            "[tls]\nlisten = [\"x\"]\n",
            Source::File("site.toml".into()),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("site.toml:2: tls.listen: \"x\""), "{text}");
    }

    #[test]
    fn cache_settings_parse_sizes_and_durations() {
        let c = parse(
            "state_dir = \"/srv/rc\"\n[cache]\nmax_size = \"2GiB\"\nmanifest_ttl = \"5m\"\noffline = false\n",
            Source::Embedded,
        )
        .unwrap();
        assert_eq!(c.cache.dir, PathBuf::from("/srv/rc/cache"));
        assert_eq!(c.cache.max_size, 2 << 30);
        assert_eq!(c.cache.manifest_ttl, Duration::from_secs(300));
        assert_eq!(c.cache.auth_ttl, Duration::from_secs(60));
        assert_eq!(c.cache.offline_auth_window, Duration::from_secs(86400));
        assert!(!c.cache.offline);
        let p = problems("[cache]\nmax_size = \"lots\"\nauth_ttl = \"60\"\n");
        assert_eq!(p.iter().map(|p| p.line).collect::<Vec<_>>(), [2, 3]);
        assert!(p[1].message.contains("unit"), "{}", p[1].message);
        assert_eq!(parse_size("500MB").unwrap(), 500_000_000);
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    }

    #[test]
    fn credentials_come_from_a_password_file_or_a_docker_config_and_stay_masked() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "s3cret\n").unwrap();
        let cfg = dir.path().join("config.json");
        // "bob:hunter2"
        std::fs::write(
            &cfg,
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"Ym9iOmh1bnRlcjI="}}}"#,
        )
        .unwrap();
        let text = format!(
            "[[registry]]\nhost = \"ghcr.io\"\nusername = \"alice\"\npassword_file = {:?}\n\
             [[registry]]\nhost = \"registry-1.docker.io\"\naliases = [\"docker.io\"]\ncredentials_file = {:?}\n",
            pw.display().to_string(),
            cfg.display().to_string()
        );
        let c = parse(&text, Source::Embedded).unwrap();
        let ghcr = c.registries[0].credentials.as_ref().unwrap();
        assert_eq!(
            (ghcr.username.as_str(), ghcr.password.expose()),
            ("alice", "s3cret")
        );
        let hub = c.registries[1].credentials.as_ref().unwrap();
        assert_eq!(
            (hub.username.as_str(), hub.password.expose()),
            ("bob", "hunter2")
        );
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("hunter2") && shown.contains("MASKED")
        );

        let p = problems("[[registry]]\nhost = \"a.io\"\nusername = \"x\"\n\
                          [[registry]]\nhost = \"b.io\"\nusername = \"x\"\npassword_file = \"/nonexistent\"\n");
        assert_eq!(
            p.iter().map(|p| p.line).collect::<Vec<_>>(),
            [3, 7],
            "{p:?}"
        );
        assert!(
            p[1].message.contains("cannot read /nonexistent"),
            "{}",
            p[1].message
        );
        let p = problems(
            "[[registry]]\nhost = \"a.io\"\nusername = \"x\"\npassword_file = \"/dev/zero\"\n",
        );
        assert!(p[0].message.contains("larger than"), "{}", p[0].message);
    }

    #[test]
    fn log_settings() {
        let c = parse("", Source::Embedded).unwrap();
        assert_eq!(
            (c.log.level.as_str(), c.log.format, c.log.access_format),
            ("info", LogFormat::Text, AccessFormat::Main)
        );
        let c = parse("[log]\nformat = \"json\"\naccess_format = \"json\"\naccess_file = \"/var/log/rc.log\"\nlevel = \"regcache=debug\"\n", Source::Embedded).unwrap();
        assert_eq!(
            (c.log.format, c.log.access_format),
            (LogFormat::Json, AccessFormat::Json)
        );
        assert_eq!(c.log.access_file, Some(PathBuf::from("/var/log/rc.log")));
        let p = problems("[log]\naccess_format = \"combined\"\nlevel = \"a=b=c\"\n");
        assert_eq!(
            p.iter().map(|p| p.line).collect::<Vec<_>>(),
            [2, 3],
            "{p:?}"
        );
    }

    #[test]
    fn the_mirror_listener_is_off_unless_configured() {
        assert!(parse("", Source::Embedded).unwrap().http_listen.is_empty());
        let c = parse("[http]\nlisten = [\"0.0.0.0:80\"]\n", Source::Embedded).unwrap();
        assert_eq!(c.http_listen, ["0.0.0.0:80".parse().unwrap()]);
    }

    #[test]
    fn limits_have_defaults_and_name_bad_values_by_line() {
        let c = parse("", Source::Embedded).unwrap();
        assert_eq!(c.limits, LimitsConfig::default());
        assert_eq!(c.limits.max_connections, 4096);
        assert_eq!(c.limits.first_byte_timeout, Duration::from_secs(10));
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(60));
        assert_eq!(
            c.limits.h2_keepalive_interval,
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            (c.limits.max_fills, c.limits.max_fills_per_registry),
            (64, 16)
        );
        let c = parse(
            "[limits]\nmax_connections = 2\nfirst_byte_timeout = \"300ms\"\n\
             idle_timeout = \"2m\"\nh2_keepalive_interval = \"0s\"\nmax_fills = 8\n\
             max_fills_per_registry = 2\nheader_read_timeout = \"5s\"\n",
            Source::Embedded,
        )
        .unwrap();
        let l = &c.limits;
        assert_eq!(l.max_connections, 2);
        assert_eq!(l.first_byte_timeout, Duration::from_millis(300));
        assert_eq!(l.idle_timeout, Duration::from_secs(120));
        assert_eq!(l.header_read_timeout, Duration::from_secs(5));
        assert_eq!(l.h2_keepalive_interval, None);
        assert_eq!((l.max_fills, l.max_fills_per_registry), (8, 2));
        let p = problems(
            "[limits]\nmax_connections = 0\nfirst_byte_timeout = \"10\"\n\
             idle_timeout = \"0s\"\nmax_fills = -3\nmax_fills_per_registry = \"x\"\n",
        );
        assert_eq!(p.len(), 1, "a type error stops parsing: {p:?}");
        assert_eq!(p[0].line, 6);
        let p = problems(
            "[limits]\nmax_connections = 0\nfirst_byte_timeout = \"10\"\n\
             idle_timeout = \"0s\"\nmax_fills = -3\n",
        );
        let lines: Vec<usize> = p.iter().map(|p| p.line).collect();
        assert_eq!(lines, [2, 3, 4, 5], "{p:?}");
        assert!(
            p[0].message.starts_with("limits.max_connections: 0"),
            "{}",
            p[0].message
        );
        assert!(p[1].message.contains("unit"), "{}", p[1].message);
        assert!(p[2].message.contains("more than zero"), "{}", p[2].message);
        assert!(
            p[3].message.contains("limits.max_fills"),
            "{}",
            p[3].message
        );
    }

    #[test]
    fn syntax_errors_name_their_line() {
        let p = problems("[dns]\nttl = = 3\n");
        assert_eq!(p[0].line, 2);
    }
}
