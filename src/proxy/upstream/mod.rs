//! The one way the proxy talks to registries and to the hosts their content lives on:
//! - [`Upstream::send`]: one bodiless request, with a deadline for the response head;
//! - [`Upstream::send_body`]: one request that streams a body (pushes), with no deadline;
//! - [`Upstream::follow`]: a GET or HEAD that follows redirects to the content.
//!
//! Each request is counted by registry in the metrics and on the status page. Under them:
//! `client` (the pooled hyper client and its TLS), `connector` (direct, or through
//! `upstream.proxy` for the hosts not in `upstream.no_proxy`), `tunnel` (the CONNECT handshake),
//! `buffered` (reads from the socket in large pieces), `redirect` (Location handling).

mod buffered;
pub mod client;
mod connector;
mod redirect;
mod tunnel;

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use http::header::HeaderMap;
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use tracing::debug;

use super::{Body, Error, Route};
use crate::metrics::{Metrics, Reason, RegistryLabels};
use crate::status::Status;
use crate::sync::ReadWrite;
pub use client::{client, roots, Client, SetupError};
pub use connector::ProxyRoute;
pub(crate) use redirect::{authority, cross_host, redact, redirect_target};

/// How many redirects a GET/HEAD follows before giving up.
pub const MAX_REDIRECTS: usize = 5;
/// How long to wait for an upstream's response head to a bodiless request.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

/// The pooled client, with the bookkeeping every upstream request gets.
pub struct Upstream {
    client: Client,
    metrics: Arc<Metrics>,
    status: Arc<Status>,
    /// `(authority of the upstream URL, registry name)` of each route (and of each mirror, its
    /// authority twice), for metric labels;
    /// replaced on reload. std RwLock, never held across .await.
    owners: RwLock<Vec<(String, String)>>,
}

impl Upstream {
    pub fn new(client: Client, metrics: Arc<Metrics>, status: Arc<Status>) -> Self {
        Self {
            client,
            metrics,
            status,
            owners: RwLock::default(),
        }
    }

    /// The registries whose upstreams requests are labelled with (config load and reload).
    pub fn set_routes(&self, routes: &[Arc<Route>]) {
        let mut owners: Vec<(String, String)> = (routes.iter())
            .filter_map(|r| Some((authority(&r.upstream)?, r.host.clone())))
            .collect();
        // A registry's mirrors are labelled by their own `host[:port]` (a configured, bounded set).
        let mirrors = routes.iter().flat_map(|r| r.mirrors.urls.iter());
        let mirrors = mirrors.filter_map(|m| authority(m)).map(|a| (a.clone(), a));
        owners.extend(mirrors);
        *self.owners.write_now() = owners;
    }

    /// The client itself, for requests that are nobody's traffic (the anonymous-token probe).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The metrics label for an upstream URL: the registry whose upstream it is, a mirror's own
    /// `host[:port]`, else "cdn" (redirect targets, token services of unconfigured registries).
    pub fn label(&self, url: &str) -> String {
        let authority = authority(url);
        let owners = self.owners.read_now();
        let owner = authority.and_then(|a| owners.iter().find(|(up, _)| *up == a));
        owner.map_or_else(|| "cdn".to_owned(), |(_, host)| host.clone())
    }

    /// A GET/HEAD, following redirects; headers that identify the client do not follow a
    /// redirect to another host.
    pub async fn follow(
        &self,
        method: &Method,
        url: &str,
        mut headers: HeaderMap,
    ) -> Result<Response<Incoming>, Error> {
        let mut url = url.to_owned();
        for _ in 0..=MAX_REDIRECTS {
            let resp = self.send(method, &url, &headers).await?;
            let Some(next) = redirect_target(&resp, &url)? else {
                return Ok(resp);
            };
            debug!(from = %url, to = %next, status = %resp.status(), "following redirect");
            if authority(&next) != authority(&url) {
                // Credentials for the registry (Authorization, cookies, token headers) must not
                // leak to a CDN, an object store or a login host.
                headers = cross_host(&headers);
            }
            url = next;
        }
        Err(Error::TooManyRedirects { url: redact(&url) })
    }

    /// One bodiless request, with a deadline for the response head.
    pub async fn send(
        &self,
        method: &Method,
        url: &str,
        headers: &HeaderMap,
    ) -> Result<Response<Incoming>, Error> {
        let sent = self.send_body(method, url, headers, super::response::empty());
        let timed = tokio::time::timeout(RESPONSE_TIMEOUT, sent).await;
        timed.map_err(|_| {
            self.metrics
                .upstream_error(&self.label(url), Reason::Timeout);
            Error::Timeout {
                url: redact(url),
                secs: RESPONSE_TIMEOUT.as_secs(),
            }
        })?
    }

    /// One request with a body, streamed; no deadline (a large upload is answered only after
    /// its last byte).
    pub async fn send_body(
        &self,
        method: &Method,
        url: &str,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Response<Incoming>, Error> {
        let mut builder = Request::builder()
            .method(method.clone())
            .uri(url)
            .version(Version::HTTP_11);
        if let Some(h) = builder.headers_mut() {
            h.extend(headers.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let req = builder.body(body)?;
        let started = Instant::now();
        let result = self.client.request(req).await;
        self.record(url, started.elapsed(), &result);
        result.map_err(|source| Error::Upstream {
            url: redact(url),
            source,
        })
    }

    /// Latency, errors, rate limits: into the metrics and the status page.
    fn record(
        &self,
        url: &str,
        took: Duration,
        result: &Result<Response<Incoming>, hyper_util::client::legacy::Error>,
    ) {
        let registry = self.label(url);
        self.metrics.upstream_latency(&registry, took);
        let failure = match result {
            Ok(resp) if resp.status().is_server_error() || resp.status() == 429 => {
                Some(format!("{}: {}", redact(url), resp.status()))
            }
            Ok(_) => None,
            Err(e) => Some(format!("{}: {}", redact(url), super::error::chain(e))),
        };
        self.status.upstream(&registry, took, failure);
        let resp = match result {
            Ok(resp) => resp,
            Err(e) => {
                let text = super::error::chain(e).to_ascii_lowercase();
                let reason = match () {
                    _ if text.contains("certificate") || text.contains("tls") => Reason::Tls,
                    _ if e.is_connect() => Reason::Connect,
                    _ => Reason::Other,
                };
                self.metrics.upstream_error(&registry, reason);
                return;
            }
        };
        let status = resp.status();
        if status.is_server_error() {
            self.metrics.upstream_error(&registry, Reason::ServerError);
        } else if status == StatusCode::TOO_MANY_REQUESTS {
            self.metrics.upstream_error(&registry, Reason::RateLimited);
        }
        if let Some(left) = ratelimit_remaining(resp.headers()) {
            let labels = RegistryLabels { registry };
            (self.metrics.upstream_ratelimit_remaining)
                .get_or_create(&labels)
                .set(left);
        }
    }
}

/// Docker Hub's `ratelimit-remaining: 99;w=21600`.
fn ratelimit_remaining(headers: &HeaderMap) -> Option<i64> {
    let value = headers.get("ratelimit-remaining")?.to_str().ok()?;
    value.split(';').next()?.trim().parse().ok()
}
