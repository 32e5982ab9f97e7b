//! One client request, start to end: pick the route (SNI/Host, or `?ns=` on the mirror), classify
//! the endpoint, send writes straight through and reads to their endpoint's handler, then wrap
//! the answer so that the access log, the metrics and the status page see it when it ends.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName};
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};
use tracing::warn;

use super::access_log::Entry;
use super::auth::Credential;
use super::endpoint::Endpoint;
use super::outcome::CacheOutcome;
use super::response::{error_response, local_root, relay};
use super::{Body, BoxError, Error, Proxy, Route};

/// What the proxy knows of the connection a request came on.
pub struct Conn {
    pub peer: SocketAddr,
    /// The TLS server name, normalised; it is always one of our names (others fail the handshake).
    /// Empty on the mirror listener.
    pub sni: String,
    /// The plain-HTTP mirror listener: routed by `?ns=`, and the appliance authenticates upstream
    /// for clients that send no credentials.
    pub mirror: bool,
}

/// A request on its way upstream: where it goes and with which headers.
pub(super) struct Outbound<'a> {
    pub route: &'a Route,
    /// The host name the client used (for rewriting Location headers).
    pub host: &'a str,
    pub method: Method,
    pub url: String,
    pub headers: HeaderMap,
    /// Who the client is, from `headers` (hashed).
    pub cred: Credential,
    /// The request came from another appliance of the fleet (`X-Regcache-Peer`, removed from
    /// `headers`): it is never forwarded to a peer again.
    pub from_peer: bool,
    /// The endpoint is a manifest by digest (not a blob): how an object read from elsewhere
    /// than the upstream (the shared tier) is checked. Never guessed from the URL.
    pub manifest: bool,
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

impl Proxy {
    /// Serves one request; never fails (errors become OCI error responses).
    pub(super) async fn handle(
        self: &Arc<Self>,
        req: Request<Incoming>,
        conn: &Conn,
    ) -> Response<Body> {
        let (host, route) = self.route_of(&req, conn);
        // The log names the registry; metrics and status keys stay bounded ("unknown").
        let registry = route.as_ref().map(|r| r.host.clone());
        let log_host = registry.as_deref().unwrap_or(&host);
        let entry = Entry::new(
            conn.peer.ip(),
            req.method(),
            req.uri(),
            req.version(),
            req.headers(),
            log_host,
        );
        let uri = req.uri().clone();
        let endpoint = Endpoint::of(uri.path());
        let report = super::report::Report::new(registry, &req, &endpoint);
        let response = match &route {
            Some(route) => {
                let sent = self
                    .dispatch(route, &host, conn.mirror, req, &endpoint)
                    .await;
                sent.unwrap_or_else(|e| {
                    warn!(error = %e, "upstream request failed");
                    error_response(StatusCode::BAD_GATEWAY, "UNAVAILABLE", &e.to_string())
                })
            }
            None => {
                let e = Error::UnknownHost(host);
                error_response(StatusCode::MISDIRECTED_REQUEST, "DENIED", &e.to_string())
            }
        };
        report.wrap(self, response, entry)
    }

    /// The name the client asked for and the route it selects.
    fn route_of(&self, req: &Request<Incoming>, conn: &Conn) -> (String, Option<Arc<Route>>) {
        if conn.mirror {
            // containerd names the registry in ?ns=; dockerd's registry-mirrors are Docker Hub's.
            let ns = namespace(req.uri()).unwrap_or_else(|| "docker.io".to_owned());
            let route = self.route(&ns);
            return (ns, route);
        }
        let host = request_host(req).unwrap_or_else(|| conn.sni.clone());
        let route = self.route(&host).or_else(|| self.route(&conn.sni));
        (host, route)
    }

    async fn dispatch(
        self: &Arc<Self>,
        route: &Route,
        host: &str,
        mirror: bool,
        req: Request<Incoming>,
        endpoint: &Endpoint<'_>,
    ) -> Result<Response<Body>, Error> {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let url = match mirror {
            true => format!("{}{}", route.upstream, without_namespace(path)),
            false => [route.upstream.as_str(), path].concat(),
        };
        let mut headers = forwardable(&parts.headers);
        let from_peer = headers.remove(super::PEER_HEADER).is_some();
        let method = parts.method;
        if method != Method::GET && method != Method::HEAD {
            // Pushes and deletes: the body streams through, no redirect following, no deadline
            // (a large blob upload gets its response only after the last byte).
            let body: Body = body.map_err(BoxError::from).boxed_unsync();
            let sent = self.upstream.send_body(&method, &url, &headers, body);
            return Ok(relay(sent.await?, route, host));
        }
        drop(body);
        // Clients that send no credentials, on the mirror or where the appliance has credentials
        // of its own, are authenticated upstream by the appliance; a client's own always win.
        // Only for reads: the appliance's credentials never push or delete.
        let on_behalf = mirror || route.credentials.is_some();
        if on_behalf && !parts.headers.contains_key(header::AUTHORIZATION) {
            if *endpoint == Endpoint::Root {
                return Ok(local_root(CacheOutcome::Local));
            }
            if let Some(value) = self.appliance_auth(route, endpoint.repo()).await {
                headers.insert(header::AUTHORIZATION, value);
            }
        }
        // A GET or HEAD goes upstream without a body: headers that announce one would make the
        // upstream wait for bytes that never come, and a client could turn that wait into a
        // timeout that looks like an outage (and opens offline access).
        for name in BODY_HEADERS {
            headers.remove(*name);
        }
        let cred = Credential::of(&headers);
        let out = Outbound {
            route,
            host,
            method,
            url,
            headers,
            cred,
            from_peer,
            manifest: matches!(endpoint, Endpoint::ManifestByDigest { .. }),
        };
        self.read(out, endpoint).await
    }
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

/// The Host the client asked for: the `Host` header (HTTP/1) or the URI authority (HTTP/2).
fn request_host(req: &Request<Incoming>) -> Option<String> {
    let host = (req.headers().get(header::HOST))
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))?;
    Some(super::strip_port(host).to_ascii_lowercase())
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
