//! One request: pick the route, forward it upstream with the headers registries need, follow blob
//! redirects on the appliance's side, and relay the answer (or a 502 in the OCI error format).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use tracing::{debug, warn};

use super::access_log::{Done, Entry, Logged};
use super::registry::{classify, repo_of, Target};
use super::{Body, BoxError, Proxy, Route};
use crate::metrics::{
    HttpLabels, Kind, KindLabels, Reason, RegistryLabels, Revalidation, RevalidationLabels, Source,
    SourceLabels,
};
use crate::status::RequestRecord;

/// How many redirects a GET/HEAD follows before giving up.
pub(super) const MAX_REDIRECTS: usize = 5;
/// How long to wait for an upstream's response headers to a GET or HEAD.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

/// Per-connection facts.
pub struct ConnCtx {
    pub peer: SocketAddr,
    /// The TLS server name, normalised; it is always one of our names (others fail the handshake).
    /// Empty on the mirror listener.
    pub sni: String,
    /// The plain-HTTP mirror listener: routed by `?ns=`, and the appliance authenticates upstream
    /// for clients that send no credentials.
    pub mirror: bool,
}

/// Headers about a request body, dropped from the bodiless GETs and HEADs sent upstream.
const BODY_HEADERS: &[&str] = &[
    "content-length",
    "content-type",
    "content-encoding",
    "content-range",
    "expect",
];

/// Headers that describe one hop and never cross the proxy (RFC 9110 §7.6.1), plus `Host`.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} does not name a registry of this appliance")]
    UnknownHost(String),
    #[error("cannot reach {url}: {}", chain(.source))]
    Upstream {
        url: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("no response from {url} within {secs}s")]
    Timeout { url: String, secs: u64 },
    #[error("more than {MAX_REDIRECTS} redirects from {url}")]
    TooManyRedirects { url: String },
    #[error("bad redirect Location {location:?} from {url}")]
    BadRedirect { url: String, location: String },
    #[error("upstream unavailable: {0}")]
    Unavailable(String),
    #[error("cannot build the upstream request: {0}")]
    Build(#[from] http::Error),
}

/// An upstream request in the making: where it goes and with which headers.
pub(super) struct Up<'a> {
    pub route: &'a Route,
    /// The host name the client used (for rewriting Location headers).
    pub host: &'a str,
    pub method: Method,
    pub url: String,
    pub headers: HeaderMap,
}

impl Proxy {
    /// Serves one request; never fails (errors become OCI error responses).
    pub(super) async fn handle(
        self: &Arc<Self>,
        req: Request<Incoming>,
        ctx: &ConnCtx,
    ) -> Response<Body> {
        let (host, route) = if ctx.mirror {
            // containerd names the registry in ?ns=; dockerd's registry-mirrors are Docker Hub's.
            let ns = namespace(req.uri()).unwrap_or_else(|| "docker.io".to_owned());
            let route = self.route(&ns);
            (ns, route)
        } else {
            let host = request_host(&req).unwrap_or_else(|| ctx.sni.clone());
            let route = self.route(&host).or_else(|| self.route(&ctx.sni));
            (host, route)
        };
        let log_host = route
            .as_ref()
            .map_or(host.as_str(), |r| r.host.as_str())
            .to_owned();
        // Metrics labels and status keys stay bounded: names that are not ours are "unknown".
        let label = route
            .as_ref()
            .map_or_else(|| "unknown".to_owned(), |r| r.host.clone());
        let head = req.method() == Method::HEAD;
        let started = std::time::Instant::now();
        let kind = kind_of(req.uri().path());
        let method = req.method().as_str().to_owned();
        let repo = repo_of(req.uri().path()).map(str::to_owned);
        let mut entry = Entry::new(
            ctx.peer.ip(),
            req.method(),
            req.uri(),
            req.version(),
            req.headers(),
            &log_host,
        );
        let routed = route.is_some();
        let response = match route {
            Some(route) => match self.dispatch(&route, &host, ctx.mirror, req).await {
                Ok(resp) => resp,
                Err(e) => {
                    warn!(error = %e, "upstream request failed");
                    error_response(StatusCode::BAD_GATEWAY, "UNAVAILABLE", &e.to_string())
                }
            },
            None => {
                let e = Error::UnknownHost(host);
                error_response(StatusCode::MISDIRECTED_REQUEST, "DENIED", &e.to_string())
            }
        };
        let (parts, body) = response.into_parts();
        let bodiless = head || matches!(parts.status.as_u16(), 204 | 304);
        let length = match bodiless {
            true => Some(0),
            false => (parts.headers.get(header::CONTENT_LENGTH))
                .and_then(|v| v.to_str().ok()?.parse().ok()),
        };
        let source = source_of(&parts.headers);
        let cache = parts.headers.get("x-cache").and_then(|v| v.to_str().ok());
        entry.response(cache, source == Source::Upstream && routed);
        self.count_cache_outcome(&parts.headers);
        let miss = parts.headers.get("x-cache").is_some_and(|v| v == "MISS");
        let metrics = self.metrics.clone();
        let status_page = self.status.clone();
        let done: Done = Box::new(move |status, bytes| {
            status_page.request(&RequestRecord {
                registry: &label,
                repo: repo.as_deref(),
                bytes,
                from_cache: source == Source::Cache,
                miss,
            });
            let class = format!("{}xx", status.as_u16() / 100);
            let registry = label;
            let labels = HttpLabels {
                registry: registry.clone(),
                method,
                kind,
                status: class,
            };
            metrics.http_requests.get_or_create(&labels).inc();
            let took = started.elapsed().as_secs_f64();
            metrics
                .http_duration
                .get_or_create(&KindLabels { registry, kind })
                .observe(took);
            metrics
                .http_response_bytes
                .get_or_create(&SourceLabels { source })
                .inc_by(bytes);
        });
        let body = Logged::wrap(body, entry, parts.status, length, self.log.clone(), done);
        Response::from_parts(parts, body)
    }

    async fn dispatch(
        self: &Arc<Self>,
        route: &Route,
        host: &str,
        mirror: bool,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, Error> {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let path = if mirror {
            without_namespace(path)
        } else {
            path.to_owned()
        };
        let mut up = Up {
            route,
            host,
            method: parts.method.clone(),
            url: format!("{}{}", route.upstream, path),
            headers: forwardable(&parts.headers),
        };
        // Clients that send no credentials, on the mirror or where the appliance has credentials
        // of its own, are authenticated upstream by the appliance; a client's own always win.
        // Only for reads: the appliance's credentials never push or delete.
        let read = up.method == Method::GET || up.method == Method::HEAD;
        let on_behalf = mirror || route.credentials.is_some();
        if read && on_behalf && !parts.headers.contains_key(header::AUTHORIZATION) {
            if classify(parts.uri.path()) == Target::Root {
                return Ok(local_root("LOCAL"));
            }
            if let Some(value) = self.appliance_auth(route, repo_of(parts.uri.path())).await {
                up.headers.insert(header::AUTHORIZATION, value);
            }
        }
        if read {
            // A GET or HEAD goes upstream without a body: headers that announce one would make
            // the upstream wait for bytes that never come, and a client could turn that wait
            // into a timeout that looks like an outage (and opens offline access).
            for name in BODY_HEADERS {
                up.headers.remove(*name);
            }
        }
        if up.method != Method::GET && up.method != Method::HEAD {
            // Pushes and deletes: stream the body through, no redirect following, no timeout
            // (a large blob upload gets its response only after the last byte).
            let body: Body = body.map_err(BoxError::from).boxed_unsync();
            let resp = self.send(&up.method, &up.url, &up.headers, body).await?;
            return Ok(relay(resp, route, host));
        }
        drop(body);
        self.cached(up, parts.uri.path()).await
    }

    /// Forwards a GET/HEAD and relays the answer.
    pub(super) async fn pass(&self, up: &Up<'_>) -> Result<Response<Body>, Error> {
        let resp = self.fetch(&up.method, &up.url, up.headers.clone()).await?;
        Ok(relay(resp, up.route, up.host))
    }

    /// A GET/HEAD upstream, following redirects on the appliance's side.
    pub(super) async fn fetch(
        &self,
        method: &Method,
        url: &str,
        mut headers: HeaderMap,
    ) -> Result<Response<Incoming>, Error> {
        let mut url = url.to_owned();
        for _ in 0..=MAX_REDIRECTS {
            let resp = self.send_timed(method, &url, &headers).await?;
            let Some(next) = redirect_target(&resp, &url)? else {
                return Ok(resp);
            };
            debug!(from = %url, to = %next, status = %resp.status(), "following redirect");
            if authority(&next) != authority(&url) {
                // Credentials for the registry (Authorization, cookies, token headers) must not
                // leak to a CDN, an object store or a login host.
                headers = super::confirm::cross_host(&headers);
            }
            url = next;
        }
        Err(Error::TooManyRedirects { url: redact(&url) })
    }

    /// One bodiless request, with a deadline for the response head.
    pub(super) async fn send_timed(
        &self,
        method: &Method,
        url: &str,
        headers: &HeaderMap,
    ) -> Result<Response<Incoming>, Error> {
        let sent = tokio::time::timeout(RESPONSE_TIMEOUT, self.send(method, url, headers, empty()));
        sent.await.map_err(|_| {
            self.metrics
                .upstream_error(&self.upstream_label(url), Reason::Timeout);
            Error::Timeout {
                url: redact(url),
                secs: RESPONSE_TIMEOUT.as_secs(),
            }
        })?
    }

    async fn send(
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
        let started = std::time::Instant::now();
        let registry = self.upstream_label(url);
        let result = self.client.request(req).await;
        let took = started.elapsed();
        self.metrics.upstream_latency(&registry, took);
        let failure = match &result {
            Ok(resp) if resp.status().is_server_error() || resp.status() == 429 => {
                Some(format!("{}: {}", redact(url), resp.status()))
            }
            Ok(_) => None,
            Err(e) => Some(format!("{}: {}", redact(url), chain(e))),
        };
        self.status.upstream(&registry, took, failure);
        match &result {
            Ok(resp) => {
                let status = resp.status();
                if status.is_server_error() {
                    self.metrics.upstream_error(&registry, Reason::ServerError);
                } else if status == StatusCode::TOO_MANY_REQUESTS {
                    self.metrics.upstream_error(&registry, Reason::RateLimited);
                }
                if let Some(left) = ratelimit_remaining(resp.headers()) {
                    let labels = RegistryLabels { registry };
                    self.metrics
                        .upstream_ratelimit_remaining
                        .get_or_create(&labels)
                        .set(left);
                }
            }
            Err(e) => {
                let text = chain(e).to_ascii_lowercase();
                let reason = match () {
                    _ if text.contains("certificate") || text.contains("tls") => Reason::Tls,
                    _ if e.is_connect() => Reason::Connect,
                    _ => Reason::Other,
                };
                self.metrics.upstream_error(&registry, reason);
            }
        }
        result.map_err(|source| Error::Upstream {
            url: redact(url),
            source,
        })
    }

    /// Counts what the cache did for a response (its `x-cache` header).
    fn count_cache_outcome(&self, headers: &HeaderMap) {
        let m = &self.metrics;
        match headers.get("x-cache").and_then(|v| v.to_str().ok()) {
            Some("HIT") => m.cache_hits.inc(),
            Some("MISS") => m.cache_misses.inc(),
            Some("JOIN") => m.cache_coalesced.inc(),
            Some("REVALIDATED") => {
                m.cache_hits.inc();
                let labels = RevalidationLabels {
                    result: Revalidation::Unchanged,
                };
                m.cache_revalidations.get_or_create(&labels).inc()
            }
            Some("STALE") => m.cache_stale.inc(),
            _ => 0,
        };
    }
}

/// A URL without its query, for errors, logs and the status page: blob redirects carry signed
/// URLs whose query grants access to the object.
pub(super) fn redact(url: &str) -> String {
    match url.split_once('?') {
        Some((head, _)) => format!("{head}?…"),
        None => url.to_owned(),
    }
}

/// What a request path is for, for metrics.
fn kind_of(path: &str) -> Kind {
    match classify(path) {
        Target::Manifest { .. } => Kind::Manifest,
        Target::Blob { .. } => Kind::Blob,
        _ if path.ends_with("/token") || path.contains("/token/") => Kind::Token,
        _ => Kind::Other,
    }
}

/// Where a response's bytes come from, by its `x-cache` header.
fn source_of(headers: &HeaderMap) -> Source {
    match headers.get("x-cache").and_then(|v| v.to_str().ok()) {
        Some("HIT" | "JOIN" | "REVALIDATED" | "STALE") => Source::Cache,
        Some("LOCAL") => Source::Local,
        _ => Source::Upstream,
    }
}

/// Docker Hub's `ratelimit-remaining: 99;w=21600`.
fn ratelimit_remaining(headers: &HeaderMap) -> Option<i64> {
    let value = headers.get("ratelimit-remaining")?.to_str().ok()?;
    value.split(';').next()?.trim().parse().ok()
}

/// The registry a mirror request names with `?ns=` (containerd's convention).
fn namespace(uri: &http::Uri) -> Option<String> {
    let query = uri.query()?;
    let ns = query.split('&').find_map(|kv| kv.strip_prefix("ns="))?;
    (!ns.is_empty()).then(|| ns.to_ascii_lowercase())
}

/// A path and query without the `ns` parameter (upstream registries do not expect it).
fn without_namespace(path_and_query: &str) -> String {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return path_and_query.to_owned();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| !kv.starts_with("ns="))
        .collect();
    match kept.is_empty() {
        true => path.to_owned(),
        false => format!("{path}?{}", kept.join("&")),
    }
}

/// `/v2/` answered by the appliance: 200, the registry API version header.
pub(super) fn local_root(cache: &'static str) -> Response<Body> {
    let body = Full::new(Bytes::from_static(b"{}")).map_err(|n| match n {});
    let mut resp = Response::new(body.boxed_unsync());
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    h.insert("x-cache", HeaderValue::from_static(cache));
    resp
}

/// The Host the client asked for: the `Host` header (HTTP/1) or the URI authority (HTTP/2).
fn request_host(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()))
        .map(|h| super::strip_port(&h).to_ascii_lowercase())
}

/// The request headers minus hop-by-hop ones (and those the `Connection` header names).
pub(super) fn forwardable(headers: &HeaderMap) -> HeaderMap {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if !HOP_BY_HOP.contains(&name.as_str()) && !named.contains(name) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// Where a GET/HEAD redirect points, resolved against `url`; `None` when it is not a redirect.
pub(super) fn redirect_target(
    resp: &Response<Incoming>,
    url: &str,
) -> Result<Option<String>, Error> {
    let status = resp.status();
    let followed = [301, 302, 303, 307, 308];
    if !followed.contains(&status.as_u16()) {
        return Ok(None);
    }
    let Some(location) = resp.headers().get(header::LOCATION) else {
        return Ok(None);
    };
    let bad = || Error::BadRedirect {
        url: redact(url),
        location: redact(&String::from_utf8_lossy(location.as_bytes())),
    };
    let location = location.to_str().map_err(|_| bad())?;
    resolve(url, location).map(Some).ok_or_else(bad)
}

/// Resolves a Location header against the URL it came from (absolute, `//host/…`, `/path`, `rel`).
fn resolve(base: &str, location: &str) -> Option<String> {
    if location.starts_with("https://") || location.starts_with("http://") {
        return location.parse::<Uri>().ok().map(|_| location.to_owned());
    }
    let base: Uri = base.parse().ok()?;
    let scheme = base.scheme_str()?;
    let authority = base.authority()?.as_str();
    let target = if let Some(rest) = location.strip_prefix("//") {
        format!("{scheme}://{rest}")
    } else if location.starts_with('/') {
        format!("{scheme}://{authority}{location}")
    } else {
        let dir = base.path().rsplit_once('/').map_or("", |(d, _)| d);
        format!("{scheme}://{authority}{dir}/{location}")
    };
    target.parse::<Uri>().ok().map(|_| target)
}

pub(super) fn authority(url: &str) -> Option<String> {
    url.parse::<Uri>()
        .ok()?
        .authority()
        .map(|a| a.as_str().to_ascii_lowercase())
}

/// The upstream response for the client: hop-by-hop headers removed, a `Location` that points at
/// the upstream's own address rewritten to the name the client used.
pub(super) fn relay(resp: Response<Incoming>, route: &Route, client_host: &str) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    parts.headers = forwardable(&parts.headers);
    // A CDN's own `X-Cache: HIT` is not ours: what regcache says of its cache is its own header.
    parts.headers.remove("x-cache");
    if let Some(location) = parts
        .headers
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
    {
        if let Some(rest) = location.strip_prefix(route.upstream.as_str()) {
            let rewritten = format!("https://{client_host}{rest}");
            if let Ok(value) = HeaderValue::try_from(rewritten) {
                parts.headers.insert(header::LOCATION, value);
            }
        }
    }
    parts.version = Version::HTTP_11;
    Response::from_parts(parts, body.map_err(BoxError::from).boxed_unsync())
}

/// An error and its sources, joined: "client error (Connect): dns error: no record found".
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    text
}

pub(super) fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A response in the OCI distribution error format.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = format!(
        "{{\"errors\":[{{\"code\":{},\"message\":{},\"detail\":null}}]}}\n",
        json_string(code),
        json_string(message)
    );
    let mut resp = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|n| match n {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_every_location_form() {
        let base = "https://reg.example/v2/a/blobs/sha256:abc";
        assert_eq!(
            resolve(base, "https://cdn.example/x?sig=1").unwrap(),
            "https://cdn.example/x?sig=1"
        );
        assert_eq!(
            resolve(base, "//cdn.example/y").unwrap(),
            "https://cdn.example/y"
        );
        assert_eq!(
            resolve(base, "/other/path").unwrap(),
            "https://reg.example/other/path"
        );
        assert_eq!(
            resolve(base, "rel").unwrap(),
            "https://reg.example/v2/a/blobs/rel"
        );
        assert!(resolve(base, "https://bad host/").is_none());
    }

    #[test]
    fn mirror_namespaces_are_read_and_removed() {
        let uri: http::Uri = "/v2/library/x/manifests/1?ns=Docker.IO&a=b"
            .parse()
            .unwrap();
        assert_eq!(namespace(&uri).as_deref(), Some("docker.io"));
        assert_eq!(without_namespace("/v2/x?ns=ghcr.io"), "/v2/x");
        assert_eq!(
            without_namespace("/v2/x?a=1&ns=ghcr.io&b=2"),
            "/v2/x?a=1&b=2"
        );
        assert_eq!(namespace(&"/v2/".parse().unwrap()), None);
    }

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert("connection", "close, x-private".parse().unwrap());
        h.insert("x-private", "1".parse().unwrap());
        h.insert("host", "ghcr.io".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("authorization", "Bearer t".parse().unwrap());
        h.insert("range", "bytes=0-1".parse().unwrap());
        let out = forwardable(&h);
        let names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["authorization", "range"]);
    }

    #[test]
    fn error_body_is_oci_json() {
        assert_eq!(json_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }
}
