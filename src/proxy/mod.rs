//! The HTTPS side: accept TLS for registry names, route by SNI/Host to the registry's upstream,
//! stream requests and responses both ways, follow blob redirects, log each request.
//!
//! Does not bind: [`serve`] takes bound listeners and a shutdown token.

pub mod access_log;
pub mod auth;
mod cached;
mod forward;
pub mod manifest;
mod records;
pub(crate) mod registry;
mod tokens;
pub mod upstream;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use rustls::crypto::CryptoProvider;
use rustls::server::ResolvesServerCert;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::access::AccessList;
use crate::cache::Store;
use crate::metrics::{Handshake, Metrics};
use crate::names::{normalize, NamePattern};
use crate::status::Status;
use access_log::AccessLog;

pub use cached::Policy;
pub use upstream::Client;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every body the proxy sends or receives.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A client that does not finish its TLS handshake within this time is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

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
}

/// What the proxy is built from.
pub struct Parts {
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
}

/// Everything a connection needs; shared by all connections.
pub struct Proxy {
    /// Swapped whole on reload; std RwLock, never held across .await.
    routes: RwLock<Arc<Vec<Arc<Route>>>>,
    client: Client,
    tls: TlsAcceptor,
    access: AccessList,
    log: AccessLog,
    cache: Arc<Store>,
    auth: Arc<auth::AuthMemory>,
    tokens: tokens::Tokens,
    /// Swapped on reload; std RwLock, never held across .await.
    policy: RwLock<Policy>,
    /// The last `/v2/` challenge of each registry (offline answers); std RwLock, never held
    /// across .await.
    challenges: RwLock<std::collections::HashMap<String, http::HeaderValue>>,
    metrics: Arc<Metrics>,
    status: Arc<Status>,
}

impl Proxy {
    pub fn new(parts: Parts) -> Result<Self, rustls::Error> {
        let Parts {
            routes,
            client,
            certs,
            provider,
            access,
            log,
            cache,
            policy,
            metrics,
            status,
        } = parts;
        let mut tls = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(certs);
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            routes: RwLock::new(Arc::new(routes.into_iter().map(Arc::new).collect())),
            client,
            tls: TlsAcceptor::from(Arc::new(tls)),
            access,
            log,
            cache,
            auth: Arc::default(),
            tokens: tokens::Tokens::default(),
            policy: RwLock::new(policy),
            challenges: RwLock::default(),
            metrics,
            status,
        })
    }

    /// The metrics label for an upstream URL: the registry whose upstream it is, else "cdn"
    /// (redirect targets, token services of registries that are not configured).
    fn upstream_label(&self, url: &str) -> String {
        let authority = url.split("://").nth(1).and_then(|r| r.split('/').next());
        let routes = self
            .routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let owner = (routes.iter())
            .find(|r| r.upstream.split("://").nth(1) == authority && authority.is_some());
        owner.map_or_else(|| "cdn".to_owned(), |r| r.host.clone())
    }

    /// The route for a host name (any case, optional port or trailing dot).
    fn route(&self, host: &str) -> Option<Arc<Route>> {
        let name = normalize(strip_port(host));
        let routes = self
            .routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let found = routes
            .iter()
            .find(|r| r.names.iter().any(|p| p.matches(&name)));
        found.cloned()
    }

    /// The cache settings in force.
    fn policy(&self) -> Policy {
        self.policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the routes and cache settings (config reload); requests under way keep theirs.
    pub fn reconfigure(&self, routes: Vec<Route>, policy: Policy) {
        let routes = Arc::new(routes.into_iter().map(Arc::new).collect());
        *self.routes.write().unwrap_or_else(|e| e.into_inner()) = routes;
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = policy;
        // Credentials may have changed: tokens obtained with the old ones go.
        self.tokens.clear();
    }
}

/// What a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// TLS with a leaf per SNI name; routed by Host/SNI.
    Https,
    /// Plain-HTTP registry mirror; routed by `?ns=` (containerd), else to Docker Hub (dockerd's
    /// `registry-mirrors`).
    Mirror,
}

/// Serves the bound listeners until `shutdown`, then lets open requests finish within `grace`.
pub async fn serve(
    proxy: Arc<Proxy>,
    listeners: Vec<(TcpListener, Listener)>,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let mut loops = tokio::task::JoinSet::new();
    for (listener, kind) in listeners {
        let accept = accept_loop(proxy.clone(), listener, kind, shutdown.clone(), grace);
        loops.spawn(accept);
    }
    while loops.join_next().await.is_some() {}
    info!("https stopped");
}

async fn accept_loop(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    kind: Listener,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and the like: back off briefly rather than spin.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        if !proxy.access.allows(peer.ip()) {
            warn!(%peer, "connection refused: client not in access.allow");
            continue;
        }
        let watcher = graceful.watcher();
        match kind {
            Listener::Https => tokio::spawn(connection(proxy.clone(), stream, peer, watcher)),
            Listener::Mirror => {
                tokio::spawn(mirror_connection(proxy.clone(), stream, peer, watcher))
            }
        };
    }
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(
            ?grace,
            "grace period over; closing the remaining connections"
        );
    }
}

async fn connection(proxy: Arc<Proxy>, stream: TcpStream, peer: SocketAddr, watcher: Watcher) {
    let _ = stream.set_nodelay(true);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, proxy.tls.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            // rustls says this when the resolver had no certificate: not our name, or no SNI.
            let refused = e
                .to_string()
                .contains("no server certificate chain resolved");
            let outcome = if refused {
                Handshake::Refused
            } else {
                Handshake::Failed
            };
            proxy.metrics.handshake(outcome);
            info!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            proxy.metrics.handshake(Handshake::Failed);
            debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    proxy.metrics.handshake(Handshake::Ok);
    let sni = tls
        .get_ref()
        .1
        .server_name()
        .map(normalize)
        .unwrap_or_default();
    let span = info_span!("proxy", %peer, host = %sni);
    let ctx = forward::ConnCtx {
        peer,
        sni,
        mirror: false,
    };
    // HTTP/2 writes frame by frame; see `records` for why its records are coalesced.
    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
        serve_http(
            proxy,
            TokioIo::new(records::Records::new(tls)),
            ctx,
            watcher,
        )
        .instrument(span)
        .await;
    } else {
        serve_http(proxy, TokioIo::new(tls), ctx, watcher)
            .instrument(span)
            .await;
    }
}

async fn mirror_connection(
    proxy: Arc<Proxy>,
    stream: TcpStream,
    peer: SocketAddr,
    watcher: Watcher,
) {
    let _ = stream.set_nodelay(true);
    let span = info_span!("mirror", %peer);
    let ctx = forward::ConnCtx {
        peer,
        sni: String::new(),
        mirror: true,
    };
    serve_http(proxy, TokioIo::new(stream), ctx, watcher)
        .instrument(span)
        .await;
}

/// Serves HTTP/1.1 and HTTP/2 on one (TLS or plain) connection.
async fn serve_http<I>(proxy: Arc<Proxy>, io: I, ctx: forward::ConnCtx, watcher: Watcher)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let ctx = Arc::new(ctx);
    let service = service_fn(move |req: Request<Incoming>| {
        let proxy = proxy.clone();
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(proxy.handle(req, &ctx).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    let conn = builder.serve_connection(io, service).into_owned();
    if let Err(e) = watcher.watch(conn).await {
        debug!(error = %e, "connection ended with an error");
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host; // an IPv6 literal never names a registry
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}
