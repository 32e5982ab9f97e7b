//! The HTTPS side: accept TLS for registry names, route by SNI/Host to the registry's upstream,
//! stream requests and responses both ways, follow blob redirects, log each request.
//!
//! Does not bind: [`serve`] takes bound listeners and a shutdown token.

pub mod access_log;
mod auth;
mod cached;
mod forward;
mod registry;
pub mod upstream;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
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
use crate::names::{normalize, NamePattern};
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
}

/// Everything a connection needs; shared by all connections.
pub struct Proxy {
    routes: Vec<Route>,
    client: Client,
    tls: TlsAcceptor,
    access: AccessList,
    log: AccessLog,
    cache: Arc<Store>,
    auth: Arc<auth::AuthMemory>,
    policy: Policy,
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
        } = parts;
        let mut tls = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(certs);
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            routes,
            client,
            tls: TlsAcceptor::from(Arc::new(tls)),
            access,
            log,
            cache,
            auth: Arc::default(),
            policy,
        })
    }

    /// The route for a host name (any case, optional port or trailing dot).
    fn route(&self, host: &str) -> Option<&Route> {
        let host = strip_port(host);
        let name = normalize(host);
        self.routes
            .iter()
            .find(|r| r.names.iter().any(|p| p.matches(&name)))
    }
}

/// Serves HTTPS on the bound listeners until `shutdown`, then lets open requests finish within
/// `grace`.
pub async fn serve(
    proxy: Arc<Proxy>,
    listeners: Vec<TcpListener>,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let mut loops = tokio::task::JoinSet::new();
    for listener in listeners {
        loops.spawn(accept_loop(
            proxy.clone(),
            listener,
            shutdown.clone(),
            grace,
        ));
    }
    while loops.join_next().await.is_some() {}
    info!("https stopped");
}

async fn accept_loop(
    proxy: Arc<Proxy>,
    listener: TcpListener,
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
        tokio::spawn(connection(proxy.clone(), stream, peer, watcher));
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
            info!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let sni = tls
        .get_ref()
        .1
        .server_name()
        .map(normalize)
        .unwrap_or_default();
    let span = info_span!("proxy", %peer, host = %sni);
    let ctx = Arc::new(forward::ConnCtx { peer, sni });
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
    let conn = builder
        .serve_connection(TokioIo::new(tls), service)
        .into_owned();
    async move {
        if let Err(e) = watcher.watch(conn).await {
            debug!(error = %e, "connection ended with an error");
        }
    }
    .instrument(span)
    .await;
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host; // an IPv6 literal never names a registry
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}
