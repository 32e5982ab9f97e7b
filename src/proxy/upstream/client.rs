//! The pooled client under [`super::Upstream`]: verified TLS to the real registries, HTTP/2
//! where offered, names resolved through `dns.upstream` (never the system resolver, which may be
//! this appliance), or connections tunnelled through `upstream.proxy` (see `connector`).

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as LegacyClient;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

use super::connector::{Connector, ProxyRoute};
use crate::proxy::{Body, BoxError};

/// The pooled upstream client.
pub type Client = LegacyClient<HttpsConnector<Connector>, Body>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("upstream.extra_ca: {path}: {why}")]
    ExtraCa { path: PathBuf, why: String },
    #[error("TLS client setup: {0}")]
    Tls(#[from] rustls::Error),
}

/// hyper's resolver interface over hickory-resolver.
#[derive(Clone)]
pub struct HickoryDns(pub TokioResolver);

impl tower_service::Service<Name> for HickoryDns {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let resolver = self.0.clone();
        Box::pin(async move {
            // A trailing dot: the name is absolute, no search list.
            let fqdn = format!("{}.", name.as_str().trim_end_matches('.'));
            let ips = resolver.lookup_ip(fqdn).await?;
            let addrs: Vec<SocketAddr> = ips.iter().map(|ip| SocketAddr::new(ip, 0)).collect();
            Ok(addrs.into_iter())
        })
    }
}

/// Trust anchors for upstream TLS: the public roots plus each PEM file in `extra_ca`.
pub fn roots(extra_ca: &[PathBuf]) -> Result<RootCertStore, SetupError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for path in extra_ca {
        add_pem_file(&mut roots, path)?;
    }
    Ok(roots)
}

fn add_pem_file(roots: &mut RootCertStore, path: &Path) -> Result<(), SetupError> {
    let fail = |why: String| SetupError::ExtraCa {
        path: path.to_owned(),
        why,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| fail(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(e.to_string()))?;
    if certs.is_empty() {
        return Err(fail("no PEM certificate in the file".into()));
    }
    for cert in certs {
        roots.add(cert).map_err(|e| fail(e.to_string()))?;
    }
    Ok(())
}

/// The pooled client: verified TLS with `roots`, ALPN h2 and http/1.1, names through `resolver`,
/// through `proxy` when given (for the hosts not in its `no_proxy`).
pub fn client(
    roots: RootCertStore,
    resolver: TokioResolver,
    provider: Arc<CryptoProvider>,
    proxy: Option<&ProxyRoute>,
) -> Result<Client, SetupError> {
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new_with_resolver(HickoryDns(resolver));
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let https = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .wrap_connector(Connector::new(http, proxy));
    Ok(LegacyClient::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(https))
}
