//! What a finished request tells the rest of the appliance: the access-log line, the request
//! metrics and the status page's counts, all from the response's typed [`CacheOutcome`].

use std::borrow::Cow;
use std::time::Instant;

use http::response::Parts;
use http::{header, Method};
use hyper::body::Incoming;
use hyper::{Request, Response};

use super::access_log::{Done, Entry, Logged};
use super::endpoint::Endpoint;
use super::outcome::CacheOutcome;
use super::{Body, Proxy};
use crate::metrics::{
    status_class, HttpLabels, Kind, KindLabels, Metrics, Revalidation, RevalidationLabels, Source,
    SourceLabels, Tier,
};
use crate::status::RequestRecord;

/// The request's side of the report, taken before the request is handed on.
pub(super) struct Report {
    /// The registry (route) name; `None` for names that are not ours.
    registry: Option<String>,
    repo: Option<String>,
    method: Method,
    kind: Kind,
    started: Instant,
}

impl Report {
    pub fn new(registry: Option<String>, req: &Request<Incoming>, endpoint: &Endpoint<'_>) -> Self {
        Self {
            registry,
            repo: endpoint.repo().map(str::to_owned),
            method: req.method().clone(),
            kind: endpoint.kind(req.uri().path()),
            started: Instant::now(),
        }
    }

    /// The response, with a body that writes the log line and reports when its last byte is out.
    pub fn wrap(self, proxy: &Proxy, response: Response<Body>, mut entry: Entry) -> Response<Body> {
        let (parts, body) = response.into_parts();
        let outcome = parts.extensions.get::<CacheOutcome>().copied();
        let source = CacheOutcome::source(outcome);
        entry.response(
            outcome,
            source == Source::Upstream && self.registry.is_some(),
        );
        count_outcome(&proxy.metrics, outcome);
        let length = declared_length(&parts, &self.method);
        let done = self.done(proxy, outcome, source);
        let body = Logged::wrap(body, entry, parts.status, length, proxy.log.clone(), done);
        Response::from_parts(parts, body)
    }

    /// Called with the status and the bytes sent: metrics and the status page.
    fn done(self, proxy: &Proxy, outcome: Option<CacheOutcome>, source: Source) -> Done {
        let (metrics, status_page) = (proxy.metrics.clone(), proxy.status.clone());
        Box::new(move |status, bytes| {
            let registry = self.registry.unwrap_or_else(|| "unknown".to_owned());
            status_page.request(&RequestRecord {
                registry: &registry,
                repo: self.repo.as_deref(),
                bytes,
                from_cache: source == Source::Cache,
                miss: matches!(outcome, Some(CacheOutcome::Miss | CacheOutcome::Peer)),
            });
            let kind = self.kind;
            let labels = HttpLabels {
                registry: registry.clone(),
                method: method_label(&self.method),
                kind,
                status: status_class(status.as_u16()),
            };
            metrics.http_requests.get_or_create(&labels).inc();
            (metrics
                .http_duration
                .get_or_create(&KindLabels { registry, kind }))
            .observe(self.started.elapsed().as_secs_f64());
            (metrics
                .http_response_bytes
                .get_or_create(&SourceLabels { source }))
            .inc_by(bytes);
            match outcome {
                Some(CacheOutcome::Hit) => metrics.tier.served(Tier::Local, bytes),
                Some(CacheOutcome::Shared) => metrics.tier.served(Tier::Shared, bytes),
                _ => {}
            }
        })
    }
}

/// The `method` label: borrowed for the standard methods, so no allocation per request.
fn method_label(method: &Method) -> Cow<'static, str> {
    static STANDARD: [Method; 9] = [
        Method::GET,
        Method::HEAD,
        Method::PUT,
        Method::POST,
        Method::PATCH,
        Method::DELETE,
        Method::OPTIONS,
        Method::CONNECT,
        Method::TRACE,
    ];
    match STANDARD.iter().find(|m| *m == method) {
        Some(m) => Cow::Borrowed(m.as_str()),
        None => Cow::Owned(method.as_str().to_owned()),
    }
}

/// The body length a response declares: 0 for HEAD, 204 and 304, else its Content-Length.
fn declared_length(parts: &Parts, method: &Method) -> Option<u64> {
    if *method == Method::HEAD || matches!(parts.status.as_u16(), 204 | 304) {
        return Some(0);
    }
    let length = parts.headers.get(header::CONTENT_LENGTH);
    length.and_then(|v| v.to_str().ok()?.parse().ok())
}

/// Counts what the cache did for a response.
fn count_outcome(m: &Metrics, outcome: Option<CacheOutcome>) {
    match outcome {
        Some(CacheOutcome::Hit) => {
            m.tier.hit(Tier::Local);
            m.cache_hits.inc()
        }
        Some(CacheOutcome::Shared) => {
            m.tier.hit(Tier::Shared);
            m.cache_misses.inc()
        }
        Some(CacheOutcome::Miss | CacheOutcome::Peer) => m.cache_misses.inc(),
        Some(CacheOutcome::Join) => m.cache_coalesced.inc(),
        Some(CacheOutcome::Revalidated) => {
            m.cache_hits.inc();
            let labels = RevalidationLabels {
                result: Revalidation::Unchanged,
            };
            m.cache_revalidations.get_or_create(&labels).inc()
        }
        Some(CacheOutcome::Stale) => m.cache_stale.inc(),
        _ => 0,
    };
}
