//! The only module that knows every subsystem: build (bind every listener — `bind.rs` — load the
//! CA, make the upstream client, failing fast with a message that says what to change), run,
//! drain, and apply a reloaded configuration ([`Reloader`]). With `main.rs`, the binary's edge:
//! errors here are `anyhow`, with the context a person needs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use hickory_resolver::TokioResolver;
use rustls::crypto::CryptoProvider;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

mod bind;
mod tier;

use crate::admin::{self, Admin};
use crate::ca::{Ca, CertResolver};
use crate::cache::Store;
use crate::config::Config;
use crate::dns;
use crate::metrics::Metrics;
use crate::names::NamePattern;
use crate::proxy::{self, access_log::AccessLog, upstream, Listener, Policy, Proxy, Route};
use crate::status::Status;
use crate::sync::ReadWrite;
use bind::Sockets;

/// How long in-flight requests may run on after SIGINT/SIGTERM.
pub const GRACE: Duration = Duration::from_secs(10);

/// Everything bound and loaded, ready to [`run`].
pub struct Bound {
    dns_udp: Vec<UdpSocket>,
    dns_tcp: Vec<TcpListener>,
    https: Vec<TcpListener>,
    /// Plain-HTTP mirror listeners (`[http] listen`).
    http: Vec<TcpListener>,
    admin_listener: TcpListener,
    dns_handler: dns::Handler,
    proxy: Arc<Proxy>,
    admin: Arc<Admin>,
    config: Config,
    /// The content store (shared with the proxy).
    pub cache: Arc<Store>,
    /// Applies a new configuration to the running appliance (taken by whoever handles SIGHUP).
    pub reloader: Option<Reloader>,
    /// The bound addresses (port 0 resolved), DNS on UDP and TCP alike.
    pub dns_addrs: Vec<SocketAddr>,
    pub https_addrs: Vec<SocketAddr>,
    pub http_addrs: Vec<SocketAddr>,
    pub admin_addr: SocketAddr,
}

/// The crypto provider for every rustls config in the process.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Loads (or creates) the CA for `config`'s registry names.
pub fn load_ca(config: &Config) -> anyhow::Result<Ca> {
    Ok(Ca::load_or_create(
        &config.state_dir.join("certs"),
        &config.patterns(),
    )?)
}

/// Opens the content store at `cache.dir`.
pub fn open_cache(config: &Config, metrics: Arc<Metrics>) -> anyhow::Result<Arc<Store>> {
    let dir = &config.cache.dir;
    let store = Store::open_observed(dir, config.cache.max_size, metrics)
        .with_context(|| format!("cannot open the cache in {} (cache.dir)", dir.display()))?;
    let (objects, bytes) = store.usage();
    info!(dir = %dir.display(), objects, bytes, max = config.cache.max_size, "cache opened");
    Ok(store)
}

/// Binds every listener, loads the CA and builds the handlers. Logs each bound address.
pub async fn build(config: Config, log: AccessLog) -> anyhow::Result<Bound> {
    let provider = provider();
    let (metrics, status) = (Arc::new(Metrics::new()), Arc::new(Status::default()));
    let ca = Arc::new(load_ca(&config)?);
    info!("CA fingerprint (SHA-256): {}", ca.fingerprint());
    let sockets = Sockets::bind(&config).await?;
    let ipv4 = answer_ipv4(&config, &sockets.dns_addrs)?;
    let upstreams = dns_upstreams(&config, &sockets.dns_addrs, &ipv4)?;
    info!(resolvers = ?upstreams, answer = ?ipv4, "dns upstream resolvers and answers");
    let resolver = dns::resolver(&upstreams).context("cannot set up the upstream resolver")?;
    let dns_handler = dns::Handler::new(answers(&config, &ipv4), resolver.clone(), metrics.clone());
    let client = upstream_client(&config, resolver, &provider)?;
    let certs = cert_resolver(&ca, &config, &provider, &metrics);
    let cache = open_cache(&config, metrics.clone())?;
    let proxy = Arc::new(Proxy::new(proxy::Setup {
        routes: routes(&config),
        client,
        certs: certs.clone(),
        fleet: fleet(&config, &ca, &provider)?,
        provider,
        access: config.access.clone(),
        log: log.clone(),
        cache: cache.clone(),
        policy: policy(&config),
        metrics: metrics.clone(),
        status: status.clone(),
        limits: config.limits.clone(),
    })?);
    let admin = Arc::new(admin_handler(&config, &ca, metrics, status, &cache));
    tier::open_shared(&config, &proxy, &admin)?;
    let addrs = sockets.addresses()?;
    info!(fingerprint = %ca.fingerprint(), registries = config.registries.len(), "ready");
    let reloader = Reloader {
        current: config.clone(),
        default_ipv4: ipv4,
        ca,
        answers: dns_handler.shared_answers(),
        certs,
        proxy: proxy.clone(),
        admin: admin.clone(),
        log,
    };
    Ok(Bound {
        reloader: Some(reloader),
        dns_udp: sockets.dns_udp,
        dns_tcp: sockets.dns_tcp,
        https: sockets.https,
        http: sockets.http,
        admin_listener: sockets.admin,
        dns_handler,
        proxy,
        admin,
        config,
        cache,
        dns_addrs: sockets.dns_addrs,
        https_addrs: addrs.https,
        http_addrs: addrs.http,
        admin_addr: addrs.admin,
    })
}

/// The other appliances (`[fleet]`), reached with this appliance's CA as their only root.
fn fleet(
    config: &Config,
    ca: &Ca,
    provider: &Arc<CryptoProvider>,
) -> anyhow::Result<Option<proxy::Fleet>> {
    let fleet = proxy::Fleet::new(&config.fleet, ca.cert_pem(), provider.clone());
    let fleet = fleet.context("cannot set up [fleet]")?;
    if fleet.is_some() {
        let (peers, node) = (&config.fleet.peers, &config.fleet.node);
        info!(?peers, %node, "one of a fleet: cold objects come from their owner");
    }
    Ok(fleet)
}

/// The leaf issuer for the configured names, counting each leaf it issues.
fn cert_resolver(
    ca: &Arc<Ca>,
    config: &Config,
    provider: &Arc<CryptoProvider>,
    metrics: &Arc<Metrics>,
) -> Arc<CertResolver> {
    let issued = metrics.clone();
    let certs = CertResolver::new(ca.clone(), config.patterns(), provider.clone());
    let certs = certs.on_issue(Box::new(move || {
        issued.tls_leaves_issued.inc();
    }));
    Arc::new(certs)
}

/// The admin listener's handler; also sets the CA expiry metric.
fn admin_handler(
    config: &Config,
    ca: &Ca,
    metrics: Arc<Metrics>,
    status: Arc<Status>,
    cache: &Arc<Store>,
) -> Admin {
    let expiry = (ca.not_after().duration_since(std::time::UNIX_EPOCH)).unwrap_or_default();
    (metrics.ca_expiry).set(i64::try_from(expiry.as_secs()).unwrap_or(i64::MAX));
    Admin {
        ca_pem: ca.cert_pem().to_owned(),
        registries: std::sync::RwLock::new(exact_names(config)),
        access: config.access.clone(),
        metrics,
        status,
        cache: cache.clone(),
        shared: std::sync::OnceLock::new(),
        ca_fingerprint: ca.fingerprint(),
        ca_expires: expiry.as_secs(),
    }
}

/// Runs until `shutdown` is cancelled, then drains in-flight requests within [`GRACE`].
pub async fn run(bound: Bound, shutdown: CancellationToken) {
    let Bound {
        dns_udp,
        dns_tcp,
        https,
        http,
        admin_listener,
        dns_handler,
        proxy,
        admin,
        config,
        https_addrs,
        ..
    } = bound;
    let (metrics, status) = (admin.metrics.clone(), admin.status.clone());
    let https_addr = https_addrs.first().copied();
    let warm = keep_warm(&config, https_addr, metrics, status, shutdown.clone());
    let dns = dns::serve(
        dns_handler,
        dns_udp,
        dns_tcp,
        &config.access,
        shutdown.clone(),
    );
    let listeners = (https.into_iter().map(|l| (l, Listener::Https)))
        .chain(http.into_iter().map(|l| (l, Listener::Mirror)))
        .collect();
    let https = proxy::serve(proxy, listeners, shutdown.clone(), GRACE);
    let admin = admin::serve(admin, admin_listener, shutdown.clone());
    tokio::join!(dns, https, admin, warm);
}

/// The `[[warm]]` jobs, run against the appliance's own HTTPS listener until `shutdown`.
async fn keep_warm(
    config: &Config,
    https: Option<std::net::SocketAddr>,
    metrics: Arc<Metrics>,
    status: Arc<Status>,
    shutdown: CancellationToken,
) {
    let (Some(https), false) = (https, config.warm.is_empty()) else {
        return;
    };
    let roots = match crate::warm::roots(&config.state_dir.join("certs/ca.crt")) {
        Ok(roots) => roots,
        Err(e) => return warn!(error = %e, "[[warm]] jobs not started"),
    };
    let appliance = crate::warm::jobs::Appliance {
        https,
        roots,
        metrics,
        status,
    };
    crate::warm::jobs::run(config.warm.clone(), appliance, shutdown).await;
}

/// What DNS answers for `config`, with `default_ipv4` when `dns.answer_ipv4` is empty.
fn answers(config: &Config, default_ipv4: &[Ipv4Addr]) -> dns::Answers {
    let ipv4 = match config.dns.answer_ipv4.is_empty() {
        true => default_ipv4.to_vec(),
        false => config.dns.answer_ipv4.clone(),
    };
    dns::Answers {
        intercept: config.patterns(),
        ipv4,
        ipv6: config.dns.answer_ipv6.clone(),
        ttl: config.dns.ttl,
    }
}

fn routes(config: &Config) -> Vec<Route> {
    (config.registries.iter())
        .map(|r| Route {
            host: r.host.clone(),
            names: r.patterns().collect(),
            upstream: r.upstream.to_string().trim_end_matches('/').to_owned(),
            credentials: r.credentials.clone(),
            mirrors: r.mirrors.clone(),
        })
        .collect()
}

fn policy(config: &Config) -> Policy {
    let c = &config.cache;
    Policy {
        manifest_ttl: c.manifest_ttl,
        rules: Arc::new(c.rules.clone()),
        auth_ttl: c.auth_ttl,
        offline: c.offline,
        offline_auth_window: c.offline_auth_window,
    }
}

/// The exact intercepted names (for `/registries`).
fn exact_names(config: &Config) -> Vec<String> {
    (config.patterns().into_iter())
        .filter_map(|p| match p {
            NamePattern::Exact(host) => Some(host),
            NamePattern::Suffix(_) => None,
        })
        .collect()
}

/// Applies a new configuration to the running appliance: the registry list (DNS answers,
/// certificates, routes, `/registries`), cache TTLs and policy, answers, access-log settings,
/// connection limits (the cap at once, timeouts for connections opened after the reload).
/// Connections and the cache stay. Listen addresses and the other settings bound at start take
/// effect on restart only (said in the returned notes).
pub struct Reloader {
    current: Config,
    default_ipv4: Vec<Ipv4Addr>,
    ca: Arc<Ca>,
    answers: dns::SharedAnswers,
    certs: Arc<CertResolver>,
    proxy: Arc<Proxy>,
    admin: Arc<Admin>,
    log: AccessLog,
}

impl Reloader {
    /// Applies `new`, or fails without changing anything (the old configuration stays).
    pub fn apply(&mut self, new: Config) -> anyhow::Result<Vec<String>> {
        let names = new.patterns();
        let missing = self.ca.not_permitted(&names);
        if !missing.is_empty() {
            bail!(
                "the CA does not permit {}: keep the old registry list, or re-create the CA \
                 (delete certs/ca.crt and certs/ca.key) and restart",
                missing.join(", ")
            );
        }
        self.log
            .configure(&new.log)
            .context("cannot open log.access_file")?;
        *self.answers.write_now() = Arc::new(answers(&new, &self.default_ipv4));
        self.certs.set_names(names);
        self.proxy.reconfigure(routes(&new), policy(&new));
        self.proxy.set_limits(new.limits.clone());
        *self.admin.registries.write_now() = exact_names(&new);
        let notes = restart_only(&self.current, &new);
        self.current = new;
        Ok(notes)
    }

    /// Reopens the access-log file (logrotate).
    pub fn reopen_logs(&self) -> std::io::Result<()> {
        self.log.reopen()
    }
}

/// The settings that differ between `old` and `new` but are bound at start.
fn restart_only(old: &Config, new: &Config) -> Vec<String> {
    let mut notes = Vec::new();
    let mut check = |key: &str, same: bool| {
        if !same {
            notes.push(format!("{key} changed: it takes effect on restart"));
        }
    };
    check("state_dir", old.state_dir == new.state_dir);
    check("dns.listen", old.dns.listen == new.dns.listen);
    check("dns.upstream", old.dns.upstream == new.dns.upstream);
    check("tls.listen", old.tls.listen == new.tls.listen);
    check("http.listen", old.http_listen == new.http_listen);
    check("admin.listen", old.admin.listen == new.admin.listen);
    check(
        "upstream.extra_ca",
        old.upstream.extra_ca == new.upstream.extra_ca,
    );
    check("upstream.proxy", old.upstream.proxy == new.upstream.proxy);
    check(
        "upstream.no_proxy",
        old.upstream.no_proxy == new.upstream.no_proxy,
    );
    check("access.allow", old.access.nets() == new.access.nets());
    check("cache.dir", old.cache.dir == new.cache.dir);
    check("cache.max_size", old.cache.max_size == new.cache.max_size);
    check("log.format", old.log.format == new.log.format);
    check("warm", old.warm == new.warm);
    check("fleet", old.fleet == new.fleet);
    check("storage", old.storage == new.storage);
    notes
}

/// The pooled upstream client: `upstream.extra_ca`, and `upstream.proxy` / `no_proxy` (logged
/// with the password masked) when a proxy is set.
fn upstream_client(
    config: &Config,
    resolver: TokioResolver,
    provider: &Arc<CryptoProvider>,
) -> anyhow::Result<upstream::Client> {
    let roots = upstream::roots(&config.upstream.extra_ca)?;
    let route = config.upstream.proxy.clone().map(|url| {
        let no_proxy = config.upstream.no_proxy.clone();
        info!(proxy = %url, ?no_proxy, "upstream requests go through a proxy (CONNECT)");
        upstream::ProxyRoute { url, no_proxy }
    });
    Ok(upstream::client(
        roots,
        resolver,
        provider.clone(),
        route.as_ref(),
    )?)
}

/// `dns.answer_ipv4`, else the host's primary IPv4, else the first specific IPv4 we listen on.
fn answer_ipv4(config: &Config, dns_addrs: &[SocketAddr]) -> anyhow::Result<Vec<Ipv4Addr>> {
    if !config.dns.answer_ipv4.is_empty() {
        return Ok(config.dns.answer_ipv4.clone());
    }
    if let Some(ip) = dns::primary_ipv4() {
        return Ok(vec![ip]);
    }
    let listened = dns_addrs.iter().chain(&config.tls.listen);
    let specific = listened.filter_map(|a| match a.ip() {
        IpAddr::V4(ip) if !ip.is_unspecified() => Some(ip),
        _ => None,
    });
    if let Some(ip) = specific.into_iter().next() {
        warn!(%ip, "this host has no default route; intercepted names answer with {ip}");
        return Ok(vec![ip]);
    }
    bail!("cannot tell this host's address for DNS answers (no default route): set dns.answer_ipv4")
}

/// `dns.upstream`, else /etc/resolv.conf's resolvers that are not this appliance.
fn dns_upstreams(
    config: &Config,
    dns_addrs: &[SocketAddr],
    answers: &[Ipv4Addr],
) -> anyhow::Result<Vec<SocketAddr>> {
    if !config.dns.upstream.is_empty() {
        return Ok(config.dns.upstream.clone());
    }
    let wildcard = dns_addrs.iter().any(|a| a.ip().is_unspecified());
    let is_ours = |ip: IpAddr| {
        dns_addrs.iter().any(|a| a.ip() == ip)
            || answers.iter().any(|a| IpAddr::V4(*a) == ip)
            || (wildcard && ip.is_loopback())
    };
    let path = Path::new("/etc/resolv.conf");
    let found = dns::resolv_conf_nameservers(path, is_ours);
    if found.is_empty() {
        bail!(
            "dns.upstream is empty and /etc/resolv.conf names no resolver other than this \
             appliance: set dns.upstream to the resolvers that answer other names"
        );
    }
    Ok(found)
}
