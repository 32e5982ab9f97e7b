//! The link to another appliance of the fleet: one HTTPS request per cold object, to the
//! owner's HTTPS listener at its configured `host:port`, with the registry's name as SNI and
//! this appliance's own CA as the only trusted root (every appliance of a fleet shares the CA,
//! so an owner proves it is one of them by presenting a leaf of it for that name).

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, Version};
use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::RootCertStore;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Why a peer gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("the CA certificate: {0}")]
    Ca(String),
    #[error("TLS client setup: {0}")]
    Tls(#[from] rustls::Error),
    #[error("{0:?} is not a name for TLS")]
    Name(String),
    #[error("connect to {peer}: {source}")]
    Connect {
        peer: String,
        source: std::io::Error,
    },
    #[error("TLS with {peer}: {source}")]
    Handshake {
        peer: String,
        source: std::io::Error,
    },
    #[error("HTTP with {peer}: {source}")]
    Http { peer: String, source: hyper::Error },
    #[error("the request: {0}")]
    Request(#[from] http::Error),
    #[error("{peer} did not answer within {secs} s")]
    Timeout { peer: String, secs: u64 },
}

/// The TLS client for peers.
pub(super) struct Link {
    tls: TlsConnector,
    timeout: Duration,
}

impl Link {
    /// A client that trusts only `ca_pem` (this appliance's CA) and gives up after `timeout`.
    pub(super) fn new(
        ca_pem: &str,
        provider: Arc<CryptoProvider>,
        timeout: Duration,
    ) -> Result<Self, LinkError> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            let cert = cert.map_err(|e| LinkError::Ca(e.to_string()))?;
            roots.add(cert)?;
        }
        if roots.is_empty() {
            return Err(LinkError::Ca("no certificate in it".into()));
        }
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            tls: TlsConnector::from(Arc::new(tls)),
            timeout,
        })
    }

    /// GET `path` of registry `name` from `peer`; the response head within the timeout.
    pub(super) async fn get(
        &self,
        peer: &str,
        name: &str,
        path: &str,
        headers: HeaderMap,
    ) -> Result<Response<Incoming>, LinkError> {
        let bad_name = || LinkError::Name(name.to_owned());
        let server = ServerName::try_from(name.to_owned()).map_err(|_| bad_name())?;
        let mut req = Request::builder()
            .method(Method::GET)
            .uri(path)
            .version(Version::HTTP_11)
            .body(Empty::<Bytes>::new())?;
        *req.headers_mut() = headers;
        let host = HeaderValue::try_from(name).map_err(|_| bad_name())?;
        req.headers_mut().insert(header::HOST, host);
        let answered = tokio::time::timeout(self.timeout, self.send(peer, server, req));
        answered.await.map_err(|_| LinkError::Timeout {
            peer: peer.to_owned(),
            secs: self.timeout.as_secs(),
        })?
    }

    /// Connects to `peer` (TLS for `server`) and sends `req` on the new connection.
    async fn send(
        &self,
        peer: &str,
        server: ServerName<'static>,
        req: Request<Empty<Bytes>>,
    ) -> Result<Response<Incoming>, LinkError> {
        let tcp = TcpStream::connect(peer).await;
        let tcp = tcp.map_err(|source| LinkError::Connect {
            peer: peer.to_owned(),
            source,
        })?;
        let _ = tcp.set_nodelay(true);
        let tls = self.tls.connect(server, tcp).await;
        let tls = tls.map_err(|source| LinkError::Handshake {
            peer: peer.to_owned(),
            source,
        })?;
        let http = |source| LinkError::Http {
            peer: peer.to_owned(),
            source,
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(http)?;
        tokio::spawn(conn);
        sender.send_request(req).await.map_err(http)
    }
}
