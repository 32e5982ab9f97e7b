//! The HTTPS side: accept TLS for registry names, route by SNI/Host to the registry's upstream,
//! serve reads through the cache and stream writes through, log each request.
//!
//! A request's path through the files:
//! - `listen.rs`: accept, TLS, HTTP/1.1 and HTTP/2 within `[limits]` → [`Proxy::handle`];
//! - `request.rs`: route and classify ([`endpoint`]), writes straight through, reads to
//!   `endpoint.rs`, which hands each endpoint to its file: `root.rs`, `object.rs` (blobs and
//!   manifests by digest; `download.rs` fills the cache from the upstream, `shared.rs` from the
//!   fleet's shared tier before the upstream (and queues verified upstream fills for it),
//!   `peer.rs` from the object's owner in the fleet, `fallback.rs` from the registry's verified
//!   `mirrors`), `tag.rs`, `tag_list.rs`;
//! - policy: `authorize.rs` (who may read a stored object; evidence from `confirm.rs`),
//!   `offline.rs` (who is served while the upstream is down), tag freshness in `tag.rs` with the
//!   `[[cache.rule]]` deciding each tag's TTL in `freshness.rs`;
//! - `upstream/`: the one [`upstream::Upstream`] every request to a registry or CDN goes through
//!   (directly, or through `upstream.proxy` with CONNECT);
//! - `response.rs` builds answers; `outcome.rs` is what the cache did, carried with the response
//!   to `report.rs` (access log, metrics, status page).
//!
//! Does not bind: [`serve`] takes bound listeners and a shutdown token.

pub mod access_log;
pub mod auth;
mod authorize;
mod confirm;
mod download;
mod endpoint;
mod error;
mod fallback;
mod freshness;
mod listen;
pub mod manifest;
mod object;
mod offline;
pub mod outcome;
mod peer;
mod records;
pub(crate) mod registry;
mod report;
mod request;
mod response;
mod root;
mod shared;
mod tag;
mod tag_list;
mod tokens;
pub mod upstream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use rustls::crypto::CryptoProvider;
use rustls::server::ResolvesServerCert;
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use crate::access::AccessList;
use crate::cache::{FillLimits, Store};
use crate::config::LimitsConfig;
use crate::conn::Slots;
use crate::metrics::Metrics;
use crate::names::{normalize, NamePattern};
use crate::status::Status;
use crate::sync::ReadWrite;
use access_log::AccessLog;
use upstream::Upstream;

pub(crate) use error::chain;
pub use error::Error;
pub use fallback::{MIRROR_BACKOFF_MIN, MIRROR_MISMATCH_TTL};
pub use listen::{serve, Listener};
pub use offline::Policy;
pub use outcome::CacheOutcome;
pub use peer::{owner_of, Fleet, LinkError, PEER_HEADER};
pub use request::Conn;
pub use response::error_response;
pub use upstream::Client;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every body the proxy sends or receives.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// One intercepted registry, as the proxy needs it.
#[derive(Clone, Debug)]
pub struct Route {
    /// Canonical public name, logged last on each access-log line.
    pub host: String,
    /// Names (host and aliases) that select this route.
    pub names: Vec<NamePattern>,
    /// `https://authority` of the real registry, no trailing slash.
    pub upstream: String,
    /// The appliance's own credentials, for clients that send none.
    pub credentials: Option<crate::config::Credentials>,
    /// Verified fallback sources for objects by digest ([`fallback`]).
    pub mirrors: crate::config::Mirrors,
}

/// What the proxy is built from.
pub struct Setup {
    pub routes: Vec<Route>,
    pub client: Client,
    pub certs: Arc<dyn ResolvesServerCert>,
    pub provider: Arc<CryptoProvider>,
    pub access: AccessList,
    pub log: AccessLog,
    pub cache: Arc<Store>,
    pub policy: Policy,
    pub metrics: Arc<Metrics>,
    pub status: Arc<Status>,
    pub limits: LimitsConfig,
    /// `[fleet]`: the other appliances, when there are any.
    pub fleet: Option<Fleet>,
}

/// Everything a connection needs; shared by all connections.
pub struct Proxy {
    /// Swapped whole on reload; std RwLock, never held across .await.
    routes: RwLock<Arc<Vec<Arc<Route>>>>,
    upstream: Upstream,
    tls: TlsAcceptor,
    access: AccessList,
    log: AccessLog,
    cache: Arc<Store>,
    auth: Arc<auth::AuthMemory>,
    tokens: tokens::Tokens,
    /// Each registry's `/v2/` challenge (the token flow, offline answers).
    challenges: tokens::Challenges,
    /// Swapped on reload; std RwLock, never held across .await.
    policy: RwLock<Policy>,
    /// When the appliance's own clean request last found each upstream down (one entry per
    /// registry); std Mutex, never held across .await.
    outages: Mutex<HashMap<String, tokio::time::Instant>>,
    metrics: Arc<Metrics>,
    status: Arc<Status>,
    /// The other appliances of the fleet (`[fleet]`, bound at start).
    fleet: Option<Arc<Fleet>>,
    /// HTTPS and mirror connections together, capped at `limits.max_connections`.
    slots: Arc<Slots>,
    /// Read when a connection starts; swapped on reload. std RwLock, never held across .await.
    limits: RwLock<LimitsConfig>,
    /// The mirrors' recent mismatches and failures ([`fallback`]); forgotten on reload.
    mirror_memory: fallback::MirrorMemory,
    /// The fleet's shared tier (`[storage] backend = "s3"`), set once at start ([`shared`]).
    shared: std::sync::OnceLock<Arc<crate::tier::SharedTier>>,
}

impl Proxy {
    pub fn new(setup: Setup) -> Result<Self, rustls::Error> {
        let mut tls = ServerConfig::builder_with_provider(setup.provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(setup.certs);
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        setup.cache.set_fill_limits(fill_limits(&setup.limits));
        let routes: Vec<Arc<Route>> = setup.routes.into_iter().map(Arc::new).collect();
        let upstream = Upstream::new(setup.client, setup.metrics.clone(), setup.status.clone());
        upstream.set_routes(&routes);
        setup
            .status
            .set_tag_rules(freshness::status_rows(&setup.policy));
        Ok(Self {
            routes: RwLock::new(Arc::new(routes)),
            upstream,
            tls: TlsAcceptor::from(Arc::new(tls)),
            access: setup.access,
            log: setup.log,
            cache: setup.cache,
            auth: Arc::default(),
            tokens: tokens::Tokens::default(),
            challenges: tokens::Challenges::default(),
            policy: RwLock::new(setup.policy),
            outages: Mutex::default(),
            metrics: setup.metrics,
            status: setup.status,
            fleet: setup.fleet.map(Arc::new),
            slots: Slots::new(setup.limits.max_connections),
            limits: RwLock::new(setup.limits),
            mirror_memory: fallback::MirrorMemory::default(),
            shared: std::sync::OnceLock::new(),
        })
    }

    /// The route for a host name (any case, optional port or trailing dot).
    fn route(&self, host: &str) -> Option<Arc<Route>> {
        let name = normalize(strip_port(host));
        let routes = self.routes.read_now().clone();
        let found = routes
            .iter()
            .find(|r| r.names.iter().any(|p| p.matches(&name)));
        found.cloned()
    }

    /// The cache settings in force.
    fn policy(&self) -> Policy {
        self.policy.read_now().clone()
    }

    /// The connection limits in force.
    fn limits(&self) -> LimitsConfig {
        self.limits.read_now().clone()
    }

    /// Replaces the connection limits (config reload): the cap at once, timeouts for new
    /// connections.
    pub fn set_limits(&self, limits: LimitsConfig) {
        self.slots.set_max(limits.max_connections);
        self.cache.set_fill_limits(fill_limits(&limits));
        *self.limits.write_now() = limits;
    }

    /// Replaces the routes and cache settings (config reload); requests under way keep theirs.
    pub fn reconfigure(&self, routes: Vec<Route>, policy: Policy) {
        let routes: Vec<Arc<Route>> = routes.into_iter().map(Arc::new).collect();
        self.upstream.set_routes(&routes);
        self.mirror_memory.forget();
        *self.routes.write_now() = Arc::new(routes);
        self.status.set_tag_rules(freshness::status_rows(&policy));
        *self.policy.write_now() = policy;
        // Credentials may have changed: tokens obtained with the old ones go.
        self.tokens.clear();
        self.challenges.expire();
    }
}

fn fill_limits(limits: &LimitsConfig) -> FillLimits {
    FillLimits {
        max_fills: limits.max_fills,
        max_fills_per_registry: limits.max_fills_per_registry,
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host; // an IPv6 literal never names a registry
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}
