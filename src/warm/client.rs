//! A registry client that talks to one appliance whatever name it asks for: every registry name,
//! and the token services they send it to, resolve to the appliance's HTTPS address, verified
//! against the appliance's CA — the path a client on the site takes after pointing its DNS at
//! the appliance. It asks for tokens anonymously (the appliance adds its own credentials where it
//! has them) and never sends a credential of its own.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;

use crate::proxy::auth::{bearer_challenge, parse_token_response};
use crate::sync::Locked;

/// The longest a response head may take.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(120);
/// Manifests and token answers are read up to this size.
const MAX_SMALL_BODY: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{url}: {why}")]
    Request { url: String, why: String },
    #[error("{url}: the registry answered {status}{}", detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Status {
        url: String,
        status: StatusCode,
        detail: Option<String>,
    },
    #[error("{url}: no response within {RESPONSE_TIMEOUT:?}")]
    Timeout { url: String },
    #[error("{url}: asks for credentials ({challenge}); configure them for this registry in the appliance")]
    NeedsCredentials { url: String, challenge: String },
}

/// Every name resolves to the appliance (the URL's port is kept: it is the appliance's).
#[derive(Clone)]
struct Appliance(SocketAddr);

impl tower_service::Service<Name> for Appliance {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _name: Name) -> Self::Future {
        let addr = self.0;
        Box::pin(async move { Ok(vec![addr].into_iter()) })
    }
}

type Https = HttpsConnector<HttpConnector<Appliance>>;

/// The client, with the Bearer tokens it obtained per (registry, repository).
pub struct RegistryClient {
    client: Client<Https, Empty<Bytes>>,
    port: u16,
    tokens: Mutex<HashMap<(String, String), HeaderValue>>,
}

impl RegistryClient {
    /// A client for the appliance at `addr`, trusting `roots` (the appliance's CA).
    pub fn new(addr: SocketAddr, roots: RootCertStore) -> Self {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new_with_resolver(Appliance(addr));
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        let https = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .build(https);
        Self {
            client,
            port: addr.port(),
            tokens: Mutex::default(),
        }
    }

    /// `GET https://{registry}{path}` with `accept`, through the Bearer token flow when asked.
    pub async fn get(
        &self,
        registry: &str,
        repo: &str,
        path: &str,
        accept: &[&str],
    ) -> Result<Response<Incoming>, Error> {
        let url = format!("https://{registry}:{}{path}", self.port);
        let key = (registry.to_owned(), repo.to_owned());
        let token = self.tokens.locked().get(&key).cloned();
        let resp = self.send(&url, accept, token.as_ref()).await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenge = (resp.headers().get(header::WWW_AUTHENTICATE))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let Some(bearer) = bearer_challenge(&challenge) else {
            return Err(Error::NeedsCredentials { url, challenge });
        };
        let token = self
            .token(&bearer.token_url(&format!("repository:{repo}:pull")))
            .await?;
        self.tokens.locked().insert(key, token.clone());
        self.send(&url, accept, Some(&token)).await
    }

    /// An anonymous token from a token service (reached through the appliance too).
    async fn token(&self, realm_url: &str) -> Result<HeaderValue, Error> {
        let url = self.on_appliance_port(realm_url);
        let resp = self.send(&url, &[], None).await?;
        let body = read_small(&url, resp).await?;
        let (token, _) = parse_token_response(&body).ok_or_else(|| Error::Request {
            url: url.clone(),
            why: "the token service's answer holds no token".into(),
        })?;
        HeaderValue::try_from(format!("Bearer {token}")).map_err(|e| Error::Request {
            url,
            why: e.to_string(),
        })
    }

    /// A token realm's URL with the appliance's port (the appliance serves every name on it).
    fn on_appliance_port(&self, url: &str) -> String {
        let Ok(uri) = url.parse::<Uri>() else {
            return url.to_owned();
        };
        match (uri.host(), uri.port_u16()) {
            (Some(host), None) => {
                let rest = uri.path_and_query().map_or("/", |p| p.as_str());
                format!("https://{host}:{}{rest}", self.port)
            }
            _ => url.to_owned(),
        }
    }

    async fn send(
        &self,
        url: &str,
        accept: &[&str],
        token: Option<&HeaderValue>,
    ) -> Result<Response<Incoming>, Error> {
        let mut req = Request::get(url);
        for value in accept {
            req = req.header(header::ACCEPT, *value);
        }
        if let Some(token) = token {
            req = req.header(header::AUTHORIZATION, token.clone());
        }
        let fail = |why: String| Error::Request {
            url: url.to_owned(),
            why,
        };
        let req = req.body(Empty::new()).map_err(|e| fail(e.to_string()))?;
        let sent = tokio::time::timeout(RESPONSE_TIMEOUT, self.client.request(req)).await;
        let resp = sent.map_err(|_| Error::Timeout {
            url: url.to_owned(),
        })?;
        resp.map_err(|e| fail(crate::proxy::chain(&e)))
    }
}

/// A small body (a manifest, a token answer) whole; an error status becomes an [`Error`].
pub async fn read_small(url: &str, resp: Response<Incoming>) -> Result<Bytes, Error> {
    let status = resp.status();
    let body = Limited::new(resp.into_body(), MAX_SMALL_BODY)
        .collect()
        .await;
    let body = body.map_err(|e| Error::Request {
        url: url.to_owned(),
        why: format!("reading the body: {e}"),
    })?;
    let body = body.to_bytes();
    if !status.is_success() {
        let detail = String::from_utf8_lossy(&body)
            .chars()
            .take(200)
            .collect::<String>();
        return Err(Error::Status {
            url: url.to_owned(),
            status,
            detail: Some(detail.trim().to_owned()).filter(|d| !d.is_empty()),
        });
    }
    Ok(body)
}
