//! Responses the proxy makes: the upstream's relayed, stored objects served whole or in ranges,
//! downloads streamed as they grow, the appliance's own `/v2/`, and OCI-format errors.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, TryStreamExt};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode, Version};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};

use super::confirm::DOCKER_CONTENT_DIGEST;
use super::outcome::{CacheOutcome, X_CACHE};
use super::request::forwardable;
use super::{Body, BoxError, Route};
use crate::cache::{Digest, Fill, FillState, Reader};

/// The upstream response for the client: hop-by-hop headers removed, a `Location` that points at
/// the upstream's own address rewritten to the name the client used.
pub(super) fn relay(resp: Response<Incoming>, route: &Route, client_host: &str) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    parts.headers = forwardable(&parts.headers);
    // A CDN's own `X-Cache: HIT` is not ours: what regcache says of its cache is its own header.
    parts.headers.remove(X_CACHE);
    let location = parts.headers.get(header::LOCATION);
    let rest = location
        .and_then(|v| v.to_str().ok())
        .and_then(|l| l.strip_prefix(route.upstream.as_str()));
    if let Some(rewritten) = rest.map(|rest| format!("https://{client_host}{rest}")) {
        if let Ok(value) = HeaderValue::try_from(rewritten) {
            parts.headers.insert(header::LOCATION, value);
        }
    }
    parts.version = Version::HTTP_11;
    Response::from_parts(parts, body.map_err(BoxError::from).boxed_unsync())
}

/// A response in the OCI distribution error format.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let error = serde_json::json!({ "code": code, "message": message, "detail": null });
    let body = format!("{}\n", serde_json::json!({ "errors": [error] }));
    let mut resp = Response::new(full(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// 401 with `challenge`, in the OCI error format.
pub(super) fn challenge_response(challenge: HeaderValue) -> Response<Body> {
    let mut resp = error_response(
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
        "authentication required",
    );
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, challenge);
    resp
}

/// `/v2/` answered by the appliance: 200, the registry API version header.
pub(super) fn local_root(outcome: CacheOutcome) -> Response<Body> {
    let mut resp = Response::new(full(Bytes::from_static(b"{}")));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    outcome.mark(&mut resp);
    resp
}

pub(super) fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub(super) fn full(bytes: Bytes) -> Body {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn stream_body(
    stream: impl Stream<Item = Result<Bytes, crate::cache::Error>> + Send + 'static,
) -> Body {
    let frames = stream
        .map_ok(Frame::data)
        .map_err(|e| Box::new(e) as BoxError);
    BodyExt::boxed_unsync(StreamBody::new(frames))
}

/// The headers that describe a stored object: type, digest, ETag (the digest and the ETag
/// share one buffer: `"sha256:<hex>"`).
pub(super) fn object_headers(h: &mut HeaderMap, media_type: &str, digest: &Digest) {
    if let Ok(v) = HeaderValue::try_from(media_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    let mut quoted = Vec::with_capacity(73);
    quoted.extend_from_slice(b"\"sha256:");
    quoted.extend_from_slice(digest.hex().as_bytes());
    quoted.push(b'"');
    let quoted = Bytes::from(quoted);
    let bare = quoted.slice(1..quoted.len() - 1);
    if let Ok(v) = HeaderValue::from_maybe_shared(bare) {
        h.insert(DOCKER_CONTENT_DIGEST, v);
    }
    if let Ok(v) = HeaderValue::from_maybe_shared(quoted) {
        h.insert(header::ETAG, v);
    }
}

/// The answer to a HEAD of a stored object (type, digest, ETag, cache outcome, length), and the
/// head of its whole GET.
pub(super) fn serve_head(
    size: u64,
    media_type: &str,
    digest: &Digest,
    outcome: CacheOutcome,
) -> Response<Body> {
    let mut resp = Response::new(empty());
    object_headers(resp.headers_mut(), media_type, digest);
    outcome.mark(&mut resp);
    let h = resp.headers_mut();
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    resp
}

/// A stored object: whole (200), a byte range (206) or an unsatisfiable range (416).
pub(super) fn serve_reader(
    reader: Reader,
    range: Option<&HeaderValue>,
    head: bool,
    outcome: CacheOutcome,
) -> Response<Body> {
    let size = reader.size;
    let mut resp = serve_head(size, &reader.media_type, &reader.digest, outcome);
    let span = match range.map(|r| parse_range(r, size)) {
        None => None,
        Some(Some(span)) => Some(span),
        Some(None) => {
            *resp.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            let v = HeaderValue::try_from(format!("bytes */{size}")).expect("ASCII");
            resp.headers_mut().insert(header::CONTENT_RANGE, v);
            resp.headers_mut().remove(header::CONTENT_LENGTH);
            return resp;
        }
    };
    let length = span.map_or(size, |(a, b)| b - a + 1);
    if let Some((a, b)) = span {
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        let v = HeaderValue::try_from(format!("bytes {a}-{b}/{size}")).expect("ASCII");
        resp.headers_mut().insert(header::CONTENT_RANGE, v);
    }
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    if !head {
        *resp.body_mut() = stream_body(reader.stream(span));
    }
    resp
}

/// An object still being downloaded, streamed as it grows (`body`: its stream, started by the
/// caller so that it holds a seat if the download turns into a relay).
pub(super) fn serve_fill(
    fill: Arc<Fill>,
    body: impl Stream<Item = Result<Bytes, crate::cache::Error>> + Send + 'static,
    outcome: CacheOutcome,
) -> Response<Body> {
    let (size, media_type) = match fill.state() {
        FillState::Writing {
            size, media_type, ..
        } => (size, media_type),
        FillState::Done { size, media_type } => (Some(size), media_type),
        _ => (None, "application/octet-stream".to_owned()),
    };
    let digest = fill.digest.clone();
    let mut resp = Response::new(stream_body(body));
    object_headers(resp.headers_mut(), &media_type, &digest);
    outcome.mark(&mut resp);
    if let Some(size) = size {
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    }
    resp
}

/// A stored manifest, whole; `stale` adds the Warning that says so.
pub(super) fn serve_manifest(
    reader: Reader,
    media_type: &str,
    head: bool,
    outcome: CacheOutcome,
) -> Response<Body> {
    let mut resp = Response::new(empty());
    object_headers(resp.headers_mut(), media_type, &reader.digest);
    outcome.mark(&mut resp);
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(reader.size));
    if outcome == CacheOutcome::Stale {
        resp.headers_mut().insert(header::WARNING, stale_warning());
    }
    if !head {
        *resp.body_mut() = stream_body(reader.stream(None));
    }
    resp
}

/// RFC 7234's "Response is Stale".
pub(super) fn stale_warning() -> HeaderValue {
    HeaderValue::from_static("110 - \"Response is Stale\"")
}

/// A single `bytes=a-b`, `bytes=a-` or `bytes=-n` range within `size`, inclusive.
fn parse_range(value: &HeaderValue, size: u64) -> Option<(u64, u64)> {
    let spec = value.to_str().ok()?.trim().strip_prefix("bytes=")?;
    if spec.contains(',') || size == 0 {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        (size.saturating_sub(n), size - 1)
    } else {
        let start: u64 = a.parse().ok()?;
        let end = if b.is_empty() {
            size - 1
        } else {
            b.parse::<u64>().ok()?.min(size - 1)
        };
        (start, end)
    };
    (start <= end && start < size).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_like_rfc_9110() {
        let r = |s: &str| parse_range(&HeaderValue::from_str(s).unwrap(), 100);
        assert_eq!(r("bytes=0-9"), Some((0, 9)));
        assert_eq!(r("bytes=90-"), Some((90, 99)));
        assert_eq!(r("bytes=-10"), Some((90, 99)));
        assert_eq!(r("bytes=95-200"), Some((95, 99)));
        assert_eq!(r("bytes=100-"), None);
        assert_eq!(r("bytes=5-1"), None);
        assert_eq!(r("bytes=0-1,5-6"), None);
        assert_eq!(r("items=0-1"), None);
    }

    #[tokio::test]
    async fn error_body_is_oci_json() {
        let resp = error_response(StatusCode::BAD_GATEWAY, "UNAVAILABLE", "a\"b\\c\n");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(body.ends_with(b"\n"));
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["errors"][0]["code"], "UNAVAILABLE");
        assert_eq!(json["errors"][0]["message"], "a\"b\\c\n");
        assert!(json["errors"][0]["detail"].is_null());
    }
}
