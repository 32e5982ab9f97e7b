//! A fake upstream registry over TLS that behaves like Docker Hub where it matters: Bearer
//! challenges naming a token service on another host, blob GETs redirected to a CDN host (absolute
//! and relative Locations), pushes through the upload API. It records every request it sees.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use super::{sha256_hex, Pki};

pub const MANIFEST_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const TOKEN: &str = "Bearer good-token";
/// The Bearer challenge for a fake upstream listening on `port` (its token service is on
/// auth.test, another host, like Docker Hub's).
pub fn challenge(port: u16) -> String {
    format!(
        "Bearer realm=\"https://auth.test:{port}/token\",service=\"registry.test\",scope=\"repository:private/app:pull\""
    )
}

/// The Basic credential the fake token service accepts: alice:s3cret.
pub const ALICE: &str = "Basic YWxpY2U6czNjcmV0";

/// One request as the upstream saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub host: String,
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// The fake upstream; its content is derived from `blob()`, `blob2()`, `big()` and `manifest()`.
pub struct Registry {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// The content version of the mutable tag `library/mut:latest`.
    pub version: Arc<AtomicUsize>,
    /// While set, every connection is closed at once (the upstream is "down").
    pub down: Arc<AtomicBool>,
    /// While set, every request is answered 429 (the site's shared quota is spent).
    pub throttled: Arc<AtomicBool>,
    /// While set, `TOKEN` is refused like any other credential (it was revoked).
    pub revoked: Arc<AtomicBool>,
    /// More ways to misbehave, for the tests of mirrors.
    pub faults: Arc<Faults>,
}

/// Faults for a registry acting as a primary that throttles, or as a mirror.
#[derive(Default)]
pub struct Faults {
    /// While set, registry GETs of blobs by digest are answered 429 (HEADs and CDN hosts are not).
    pub throttle_blob_gets: AtomicBool,
    /// While set, every request counts as sent with `TOKEN` (a mirror that holds private copies).
    pub open: AtomicBool,
    /// While set, every blob body has its first byte changed (same length, other bytes).
    pub corrupt: AtomicBool,
    /// Requests that came with an Authorization header while `open` was set.
    pub credentialed: AtomicUsize,
}

/// Hosts of the fake upstream that behave like odd real registries: `k8s.test` redirects every
/// `/v2/` request to a bucket on `store.test` (as registry.k8s.io does), which answers 404 for what
/// it does not hold; `sso.test` sends every request to a login page on `login.test` (200, HTML).
pub const ODD_HOSTS: &[&str] = &["k8s.test", "store.test", "sso.test", "login.test"];

/// A blob that only the private repository has.
pub fn secret() -> Bytes {
    Bytes::from(
        (0..50_000u32)
            .map(|i| (i * 29 % 233) as u8)
            .collect::<Vec<u8>>(),
    )
}

pub const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";

pub fn blob2() -> Bytes {
    Bytes::from(
        (0..300_000u32)
            .map(|i| (i * 13 % 241) as u8)
            .collect::<Vec<u8>>(),
    )
}

/// 4 MiB, served slowly in 16 pieces (for coalescing).
pub fn big() -> Bytes {
    Bytes::from(
        (0..4_194_304u32)
            .map(|i| (i * 17 % 239) as u8)
            .collect::<Vec<u8>>(),
    )
}

/// The blobs of `library/lingers` (`n` < 16), sent without a length, whose body ends only 10 s
/// after their last byte; a Range past their end is answered 416.
pub fn lingering_blob(n: u8) -> Bytes {
    Bytes::from(
        (0..50_000u32)
            .map(|i| (i % 241) as u8 ^ n)
            .collect::<Vec<u8>>(),
    )
}

fn lingering_at(path: &str) -> Option<Bytes> {
    let digest = path.strip_prefix("/v2/library/lingers/blobs/")?;
    (0..16).map(lingering_blob).find(|d| digest_of(d) == digest)
}

pub fn digest_of(data: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(data))
}

/// The mutable tag's content at `version`, single-arch or index.
pub fn mutable(version: usize, index: bool) -> Bytes {
    let kind = if index { INDEX_TYPE } else { MANIFEST_TYPE };
    Bytes::from(format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"{kind}\",\"v\":{version}}}"
    ))
}

pub fn blob() -> Bytes {
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    Bytes::from(data)
}

pub fn blob_digest() -> String {
    format!("sha256:{}", sha256_hex(&blob()))
}

pub fn manifest() -> Bytes {
    Bytes::from(format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"{MANIFEST_TYPE}\",\"layers\":[{{\"digest\":\"{}\"}}]}}",
        blob_digest()
    ))
}

pub fn manifest_digest() -> String {
    format!("sha256:{}", sha256_hex(&manifest()))
}

impl Registry {
    pub async fn start(pki: &Pki) -> Self {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![pki.cert.clone()], pki.key.clone_key())
            .unwrap();
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let version = Arc::new(AtomicUsize::new(1));
        let down = Arc::new(AtomicBool::new(false));
        let throttled = Arc::new(AtomicBool::new(false));
        let revoked = Arc::new(AtomicBool::new(false));
        let faults = Arc::new(Faults::default());
        let log = seen.clone();
        let all_faults = faults.clone();
        let (v, d, t, r) = (
            version.clone(),
            down.clone(),
            throttled.clone(),
            revoked.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                if d.load(Ordering::SeqCst) {
                    drop(tcp);
                    continue;
                }
                let acceptor = acceptor.clone();
                let log = log.clone();
                let v = v.clone();
                let d = d.clone();
                let t = t.clone();
                let r = r.clone();
                let f = all_faults.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |mut req: Request<Incoming>| {
                        if r.load(Ordering::SeqCst) {
                            req.headers_mut().remove("authorization");
                        }
                        if f.open.load(Ordering::SeqCst) {
                            if req.headers().contains_key("authorization") {
                                f.credentialed.fetch_add(1, Ordering::SeqCst);
                            }
                            let token = http::HeaderValue::from_static(TOKEN);
                            req.headers_mut().insert("authorization", token);
                        }
                        let fault = fault_of(&req, &f);
                        let log = log.clone();
                        let version = v.load(Ordering::SeqCst);
                        let down = d.load(Ordering::SeqCst);
                        let throttled = t.load(Ordering::SeqCst);
                        async move {
                            if down {
                                // Kept-alive connections die too.
                                return Err("upstream is down");
                            }
                            if throttled {
                                let r = status(StatusCode::TOO_MANY_REQUESTS, &[]);
                                return Ok(r.map(|b| b.boxed()));
                            }
                            if fault == Some(Fault::Throttle) {
                                let r = status(StatusCode::TOO_MANY_REQUESTS, &[]);
                                return Ok(r.map(|b| b.boxed()));
                            }
                            let resp = handle(req, addr, &log, version).await;
                            match fault {
                                Some(Fault::Corrupt) => Ok(corrupted(resp).await),
                                _ => Ok(resp),
                            }
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            seen,
            version,
            down,
            throttled,
            revoked,
            faults,
        }
    }

    /// How many requests with `method` went to exactly `path`.
    pub fn count(&self, method: &str, path: &str) -> usize {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|s| s.method == method && s.path == path)
            .count()
    }

    /// The requests seen so far whose path starts with `prefix`.
    pub fn seen(&self, prefix: &str) -> Vec<Seen> {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|s| s.path.starts_with(prefix))
            .cloned()
            .collect()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    Throttle,
    Corrupt,
}

/// The fault a request meets, if any.
fn fault_of(req: &Request<Incoming>, f: &Faults) -> Option<Fault> {
    let path = req.uri().path();
    let get = req.method() == Method::GET;
    let registry_blob = path.starts_with("/v2/") && path.contains("/blobs/sha256:");
    if get && registry_blob && f.throttle_blob_gets.load(Ordering::SeqCst) {
        return Some(Fault::Throttle);
    }
    let blob = path.contains("/blobs/") && !path.contains("/uploads");
    (get && blob && f.corrupt.load(Ordering::SeqCst)).then_some(Fault::Corrupt)
}

/// `resp` with the first byte of its body changed.
async fn corrupted(
    resp: Response<BoxBody<Bytes, Infallible>>,
) -> Response<BoxBody<Bytes, Infallible>> {
    let (parts, body) = resp.into_parts();
    let mut bytes = body.collect().await.unwrap().to_bytes().to_vec();
    if let Some(b) = bytes.first_mut() {
        *b = b.wrapping_add(1);
    }
    Response::from_parts(parts, Full::new(Bytes::from(bytes)).boxed())
}

async fn handle(
    req: Request<Incoming>,
    addr: SocketAddr,
    log: &Mutex<Vec<Seen>>,
    version: usize,
) -> Response<BoxBody<Bytes, Infallible>> {
    match route(req, addr, log, version).await {
        Reply::Full(r) => r.map(|b| b.boxed()),
        Reply::Stream(r) => r,
    }
}

enum Reply {
    Full(Response<Full<Bytes>>),
    Stream(Response<BoxBody<Bytes, Infallible>>),
}

impl From<Response<Full<Bytes>>> for Reply {
    fn from(r: Response<Full<Bytes>>) -> Self {
        Reply::Full(r)
    }
}

/// A body sent in `pieces` parts, `gap` apart, declaring `declared` bytes (no Content-Length
/// when `None`).
fn slow(data: Bytes, pieces: usize, gap: std::time::Duration, declared: Option<usize>) -> Reply {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(2);
    tokio::spawn(async move {
        let step = data.len().div_ceil(pieces);
        for chunk in data.chunks(step) {
            tokio::time::sleep(gap).await;
            if tx
                .send(Ok(Frame::data(Bytes::copy_from_slice(chunk))))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    streamed(rx, declared)
}

/// `data` in one piece, without a Content-Length, its body ended only `linger` after the last
/// byte (a source whose connection may break between the two).
fn lingering(data: Bytes, linger: std::time::Duration) -> Reply {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    tokio::spawn(async move {
        if tx.send(Ok(Frame::data(data))).await.is_ok() {
            tokio::time::sleep(linger).await;
        }
    });
    streamed(rx, None)
}

/// The frames of `rx` as a 200's body, declaring `declared` bytes when there is a number.
fn streamed(
    mut rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, Infallible>>,
    declared: Option<usize>,
) -> Reply {
    let frames = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let mut resp = Response::builder().header("content-type", "application/octet-stream");
    if let Some(declared) = declared {
        resp = resp.header("content-length", declared);
    }
    Reply::Stream(resp.body(StreamBody::new(frames).boxed()).unwrap())
}

/// The start of an open-ended `Range: bytes=N-` (closed ranges are not served as ranges).
fn open_range(headers: &HeaderMap) -> Option<usize> {
    let range = headers
        .get("range")?
        .to_str()
        .ok()?
        .strip_prefix("bytes=")?;
    range.strip_suffix('-')?.parse().ok()
}

/// `reply` as a 206 for bytes `from..` of `total`.
fn partial(reply: Reply, from: usize, total: usize) -> Reply {
    let Reply::Stream(mut resp) = reply else {
        return reply;
    };
    *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
    let range = format!("bytes {from}-{}/{total}", total - 1);
    resp.headers_mut()
        .insert("content-range", range.parse().unwrap());
    Reply::Stream(resp)
}

async fn route(
    req: Request<Incoming>,
    addr: SocketAddr,
    log: &Mutex<Vec<Seen>>,
    version: usize,
) -> Reply {
    let host = req
        .headers()
        .get("host")
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())
        .unwrap_or_default()
        .split(':')
        .next()
        .unwrap()
        .to_owned();
    let method = req.method().clone();
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let headers = req.headers().clone();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    log.lock().unwrap().push(Seen {
        host: host.clone(),
        method: method.clone(),
        path: path.clone(),
        headers: headers.clone(),
        body: body.clone(),
    });
    let authorized = headers.get("authorization").is_some_and(|v| v == TOKEN);
    let port = addr.port();
    let blob_path = format!("/v2/library/small/blobs/{}", blob_digest());
    let rel_blob_path = format!("/v2/library/rel/blobs/{}", blob_digest());
    let get_or_head = method == Method::GET || method == Method::HEAD;
    let wants_index = (headers.get_all("accept").iter())
        .any(|v| v.to_str().unwrap_or_default().contains(INDEX_TYPE));
    if host == "auth.test" && path.starts_with("/token?") {
        // Credentials buy the token the registry accepts; anyone else gets an anonymous one.
        let good = headers.get("authorization").is_some_and(|v| v == ALICE);
        let token = if good {
            "good-token"
        } else {
            "anonymous-token"
        };
        let body = format!("{{\"token\":\"{token}\",\"expires_in\":300}}");
        return ok(Bytes::from(body), "application/json", &[]).into();
    }
    if let Some(reply) = odd_host(&host, &path, port, authorized) {
        return reply.into();
    }
    if registry_host(&host) && get_or_head && path == "/v2/evil/tagged/manifests/v1" {
        // A HEAD that names a digest this registry never served (another registry's secret).
        let digest = digest_of(&secret());
        let h = [("docker-content-digest", digest.as_str())];
        return match method == Method::HEAD {
            true => status(StatusCode::OK, &[h[0], ("content-type", MANIFEST_TYPE)]).into(),
            false => status(StatusCode::NOT_FOUND, &[]).into(),
        };
    }
    if registry_host(&host) && get_or_head {
        // A query does not change which blob a path names.
        let bare = path.split('?').next().unwrap_or_default();
        let b = |name: &str, data: &Bytes| bare == format!("/v2/{name}/blobs/{}", digest_of(data));
        if b("library/big", &big()) {
            if let Some(from) = open_range(&headers).filter(|from| *from < big().len()) {
                // The rest from `from`, as a takeover asks for it (`bytes=N-`).
                let rest = big().slice(from..);
                let slow = slow(
                    rest,
                    8,
                    std::time::Duration::from_millis(10),
                    Some(big().len() - from),
                );
                return partial(slow, from, big().len());
            }
            return slow(
                big(),
                16,
                std::time::Duration::from_millis(40),
                Some(big().len()),
            );
        }
        if b("library/unsized", &big()) {
            return slow(big(), 16, std::time::Duration::from_millis(10), None);
        }
        if let Some(data) = lingering_at(&path) {
            if open_range(&headers).is_some_and(|from| from >= data.len()) {
                return status(StatusCode::RANGE_NOT_SATISFIABLE, &[]).into();
            }
            return lingering(data, std::time::Duration::from_secs(10));
        }
        if b("library/small", &blob2()) {
            return ok(blob2(), "application/octet-stream", &[]).into();
        }
        if b("library/bad", &blob()) {
            // Same length, other bytes: a digest mismatch.
            return ok(blob2(), "application/octet-stream", &[]).into();
        }
        if b("library/trunc", &blob()) {
            return slow(
                blob().slice(..1000),
                1,
                std::time::Duration::ZERO,
                Some(blob().len()),
            );
        }
        if b("private/app", &secret()) {
            return match authorized {
                true => ok(secret(), "application/octet-stream", &[]).into(),
                false => unauthorized(port).into(),
            };
        }
        if b("private/app", &blob()) {
            return match authorized {
                true => ok(blob(), "application/octet-stream", &[]).into(),
                false => unauthorized(port).into(),
            };
        }
        if let Some(d) = path.strip_prefix("/v2/library/mut/manifests/sha256:") {
            let known = [mutable(version, true), mutable(version, false)];
            if let Some(body) = known.iter().find(|b| sha256_hex(b) == d) {
                let kind = if body.windows(5).any(|w| w == b"index") {
                    INDEX_TYPE
                } else {
                    MANIFEST_TYPE
                };
                let digest = digest_of(body);
                return ok(
                    body.clone(),
                    kind,
                    &[("docker-content-digest", digest.as_str())],
                )
                .into();
            }
        }
        let wants_manifest = (headers.get_all("accept").iter())
            .any(|v| v.to_str().unwrap_or_default().contains(MANIFEST_TYPE));
        if path == "/v2/library/mut/manifests/latest" && !wants_index && !wants_manifest {
            // Like distribution for OCI manifests: without an Accept that admits one, not found.
            return status(StatusCode::NOT_FOUND, &[]).into();
        }
        if path == "/v2/library/mut/manifests/latest" {
            let body = mutable(version, wants_index);
            let kind = if wants_index {
                INDEX_TYPE
            } else {
                MANIFEST_TYPE
            };
            let digest = digest_of(&body);
            let headers = [("docker-content-digest", digest.as_str())];
            if method == Method::HEAD {
                let mut r = ok(Bytes::new(), kind, &headers);
                r.headers_mut().insert("content-length", body.len().into());
                return r.into();
            }
            return ok(body, kind, &headers).into();
        }
    }
    let resp: Response<Full<Bytes>> = match (host.as_str(), &method, path.as_str()) {
        ("cdn.test", &Method::GET | &Method::HEAD, p) if p.starts_with("/blobs/") => {
            ok(blob(), "application/octet-stream", &[])
        }
        ("registry.test", _, "/v2/") if !authorized => unauthorized(port),
        ("registry.test", _, "/v2/") => ok(Bytes::from_static(b"{}"), "application/json", &[]),
        ("registry.test", &Method::GET | &Method::HEAD, "/v2/library/small/manifests/1") => ok(
            manifest(),
            MANIFEST_TYPE,
            &[
                ("docker-content-digest", &manifest_digest()),
                ("ratelimit-remaining", "99;w=21600"),
                ("connection", "x-hop"),
                ("x-hop", "must not pass"),
            ],
        ),
        ("registry.test", &Method::GET, p) if p.starts_with("/v2/private/") && !authorized => {
            unauthorized(port)
        }
        ("registry.test", &Method::GET | &Method::HEAD, p) if p == blob_path => redirect(&format!(
            "https://cdn.test:{port}/blobs/{}?sig=abc",
            blob_digest()
        )),
        ("registry.test", &Method::GET | &Method::HEAD, p) if p == rel_blob_path => {
            redirect("/redirected/blob")
        }
        ("registry.test", &Method::GET | &Method::HEAD, "/redirected/blob") => {
            ok(blob(), "application/octet-stream", &[])
        }
        ("registry.test", &Method::GET, "/v2/loop/blobs/x") => redirect("/v2/loop/blobs/x"),
        ("registry.test", &Method::GET, "/v2/slow/blobs/x") => {
            tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
            ok(Bytes::from_static(b"done"), "application/octet-stream", &[])
        }
        ("registry.test", &Method::POST, "/v2/acme/pushed/blobs/uploads/") => status(
            StatusCode::ACCEPTED,
            &[
                ("location", "/v2/acme/pushed/blobs/uploads/u1?_state=s"),
                ("docker-upload-uuid", "u1"),
                ("range", "0-0"),
            ],
        ),
        ("registry.test", &Method::PUT, p) if p.starts_with("/v2/acme/pushed/blobs/uploads/u1") => {
            let digest = format!("sha256:{}", sha256_hex(&body));
            status(
                StatusCode::CREATED,
                &[
                    ("docker-content-digest", digest.as_str()),
                    (
                        "location",
                        &format!("https://registry.test:{port}/v2/acme/pushed/blobs/{digest}"),
                    ),
                ],
            )
        }
        _ => status(StatusCode::NOT_FOUND, &[]),
    };
    resp.into()
}

/// The answers of [`ODD_HOSTS`].
/// `sso.test` serves the private blob to `TOKEN` holders (as an SSO-fronted registry serves its
/// signed-in users).
fn odd_host(host: &str, path: &str, port: u16, authorized: bool) -> Option<Response<Full<Bytes>>> {
    let found = StatusCode::FOUND;
    let private = format!("/v2/private/app/blobs/{}", digest_of(&secret()));
    Some(match host {
        "sso.test" if authorized && path == private => {
            ok(secret(), "application/octet-stream", &[])
        }
        "k8s.test" if path.starts_with("/v2/") => {
            redirect(&format!("https://store.test:{port}/bucket{path}"))
        }
        "store.test" => status(
            StatusCode::NOT_FOUND,
            &[("content-type", "application/xml")],
        ),
        "sso.test" => status(
            found,
            &[("location", &format!("https://login.test:{port}/login"))],
        ),
        "login.test" => ok(
            Bytes::from_static(b"<html><body>Sign in</body></html>"),
            "text/html; charset=utf-8",
            &[],
        ),
        _ => return None,
    })
}

fn registry_host(host: &str) -> bool {
    host == "registry.test"
}

fn ok(body: Bytes, content_type: &str, extra: &[(&str, &str)]) -> Response<Full<Bytes>> {
    let mut resp = Response::builder()
        .header("content-type", content_type)
        .header("content-length", body.len());
    for (k, v) in extra {
        resp = resp.header(*k, *v);
    }
    resp.body(Full::new(body)).unwrap()
}

fn unauthorized(port: u16) -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::UNAUTHORIZED)
        .header("www-authenticate", challenge(port))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            b"{\"errors\":[{\"code\":\"UNAUTHORIZED\",\"message\":\"authentication required\"}]}",
        )))
        .unwrap()
}

fn redirect(location: &str) -> Response<Full<Bytes>> {
    status(StatusCode::TEMPORARY_REDIRECT, &[("location", location)])
}

fn status(code: StatusCode, headers: &[(&str, &str)]) -> Response<Full<Bytes>> {
    let mut resp = Response::builder().status(code);
    for (k, v) in headers {
        resp = resp.header(*k, *v);
    }
    resp.body(Full::new(Bytes::new())).unwrap()
}
