//! Did the upstream serve this object? The evidence behind every grant: an upstream check
//! follows redirects to the end, and only a 2xx that carries the object (its digest, or its size
//! and its byte at a random offset where a CDN or object store sends no digest) counts. A redirect alone, a 2xx
//! login page, or a 304 never does: registry.k8s.io redirects every request whether or not the
//! object exists, and SSO proxies redirect anonymous clients to a login host that answers 200.

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::auth::{anonymous_token, bearer_challenge};
use super::manifest::manifest_type;
use super::upstream::{authority, cross_host, redirect_target, MAX_REDIRECTS};
use super::Proxy;
use crate::cache::Digest;

pub(super) const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";

/// How long a redirect target may take to send the first byte of a ranged answer.
const BODY_TIMEOUT: Duration = Duration::from_secs(15);

/// What a check expects to find.
#[derive(Clone, Debug, Default)]
pub(super) struct Expect {
    /// The object's digest; `None` for a manifest by tag (any manifest the registry names).
    pub digest: Option<Digest>,
    /// Its size, when known (a cached object, or a fill whose upstream sent a length).
    pub size: Option<u64>,
    /// Its first byte, when known (compared when a CDN ignores the range and sends it whole).
    pub first: Option<u8>,
    /// One of its bytes at an offset picked at random, when known: a CDN's answer must have it
    /// there (the first byte alone says little: every gzip layer starts with 0x1f).
    pub sample: Option<(u64, u8)>,
}

/// An offset below `size` that the upstream cannot guess.
pub(super) fn random_offset(size: u64) -> u64 {
    use std::hash::BuildHasher;
    let random = std::collections::hash_map::RandomState::new().hash_one(std::time::Instant::now());
    random % size.max(1)
}

/// Why the upstream could not answer.
#[derive(Clone, Debug)]
pub(super) struct Outage {
    pub why: String,
    /// It said "slow down" (429, or 503 with Retry-After): a statement about a quota that the
    /// whole site shares and any client can exhaust, not about the upstream being down.
    pub throttled: bool,
}

impl Outage {
    /// The outage an answer reports, if it reports one (5xx, 429).
    pub fn of<B>(resp: &Response<B>) -> Option<Self> {
        let status = resp.status();
        if !unavailable(status) {
            return None;
        }
        let retry_after = resp.headers().contains_key(header::RETRY_AFTER);
        let throttled = status == StatusCode::TOO_MANY_REQUESTS
            || (status == StatusCode::SERVICE_UNAVAILABLE && retry_after);
        Some(Self {
            why: format!("upstream answered {status}"),
            throttled,
        })
    }

    pub fn unreachable(why: String) -> Self {
        Self {
            why,
            throttled: false,
        }
    }
}

/// The answer of one check.
pub(super) enum Verdict {
    /// The upstream served the object to these headers: a grant.
    Served,
    /// It answered without the object. `first` is the registry's own answer when it was not a
    /// redirect (a 401 with its challenge, a 404), for relaying; `refused` when that answer
    /// was 401 or 403 (the credential does not, or no longer, open the repository).
    Denied {
        first: Option<Response<Incoming>>,
        refused: bool,
    },
    /// It could not answer.
    Unavailable(Outage),
}

/// 5xx and 429: the upstream cannot answer now.
pub(super) fn unavailable(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
}

impl Proxy {
    /// Asks the upstream whether it serves `url` to a client sending `headers`: a HEAD to the
    /// registry, then, along its redirects, ranged one-byte GETs (blob URLs handed to CDNs and
    /// object stores are often signed for GET only).
    pub(super) async fn check(&self, url: &str, headers: &HeaderMap, expect: &Expect) -> Verdict {
        let mut resp = match self.upstream.send(&Method::HEAD, url, headers).await {
            Ok(resp) => resp,
            Err(e) => return Verdict::Unavailable(Outage::unreachable(e.to_string())),
        };
        let (mut url, mut headers, mut ranged) = (url.to_owned(), headers.clone(), false);
        for _ in 0..=MAX_REDIRECTS {
            let next = match redirect_target(&resp, &url) {
                Ok(Some(next)) => next,
                Ok(None) if ranged || !needs_bytes(&resp, expect) => {
                    return judge(resp, expect, ranged).await;
                }
                // The registry's own 2xx names no digest: its bytes must show it.
                Ok(None) => {
                    let sampled = self.sample(&url, &mut headers, expect).await;
                    return match sampled {
                        Some(resp) => judge(resp, expect, true).await,
                        None => denied(None),
                    };
                }
                Err(_) => return denied(None),
            };
            if authority(&next) != authority(&url) {
                headers = cross_host(&headers);
            }
            ranged = true;
            url = next;
            resp = match self.sample(&url, &mut headers, expect).await {
                Some(resp) => resp,
                // A hop the registry pointed at fails (a host that does not resolve, a plain
                // http:// target): not the registry's outage, and no evidence either.
                None => return denied(None),
            };
        }
        denied(None)
    }

    /// A one-byte ranged GET of `url` at the expected sample's offset (or the first byte).
    async fn sample(
        &self,
        url: &str,
        headers: &mut HeaderMap,
        expect: &Expect,
    ) -> Option<Response<Incoming>> {
        let at = expect.sample.map_or(0, |(at, _)| at);
        let range = HeaderValue::try_from(format!("bytes={at}-{at}")).ok()?;
        headers.insert(header::RANGE, range);
        self.upstream.send(&Method::GET, url, headers).await.ok()
    }

    /// Whether the upstream serves `url` (in `repo`) to anyone: anonymously, or with an
    /// anonymous token from the Bearer realm it names (as Docker Hub does for public images).
    pub(super) async fn probe_public(
        &self,
        url: &str,
        repo: &str,
        accept: &[HeaderValue],
        expect: &Expect,
    ) -> bool {
        let mut headers = HeaderMap::new();
        for value in accept {
            headers.append(header::ACCEPT, value.clone());
        }
        let challenge = match self.check(url, &headers, expect).await {
            Verdict::Served => return true,
            Verdict::Denied {
                first: Some(resp), ..
            } => resp.headers().get(header::WWW_AUTHENTICATE).cloned(),
            _ => None,
        };
        let challenge = challenge.and_then(|v| bearer_challenge(v.to_str().ok()?));
        let Some(challenge) = challenge else {
            return false;
        };
        let Some(token) = anonymous_token(self.upstream.client(), &challenge, repo).await else {
            return false;
        };
        let Ok(bearer) = HeaderValue::try_from(format!("Bearer {token}")) else {
            return false;
        };
        headers.insert(header::AUTHORIZATION, bearer);
        matches!(self.check(url, &headers, expect).await, Verdict::Served)
    }
}

/// The verdict on the last answer of a chain (`ranged`: it answers a one-byte GET).
async fn judge(resp: Response<Incoming>, expect: &Expect, ranged: bool) -> Verdict {
    if let Some(outage) = Outage::of(&resp) {
        return Verdict::Unavailable(outage);
    }
    let status = resp.status();
    if !status.is_success() {
        let refused = !ranged && matches!(status.as_u16(), 401 | 403);
        return Verdict::Denied {
            first: (!ranged).then_some(resp),
            refused,
        };
    }
    match evidence(resp.headers(), status, expect) {
        Evidence::Proof => Verdict::Served,
        // Nothing of the object is known yet (a fill that has just started): its size it is.
        Evidence::SizeMatches if !expect.knows_bytes() => Verdict::Served,
        Evidence::SizeMatches if ranged => match sampled_byte(resp, expect).await {
            true => Verdict::Served,
            false => denied(None),
        },
        Evidence::SizeMatches | Evidence::None => denied(None),
    }
}

impl Expect {
    fn knows_bytes(&self) -> bool {
        self.first.is_some() || self.sample.is_some()
    }
}

/// Whether a 2xx without a digest header needs a look at the bytes (everything else is judged
/// on its headers).
fn needs_bytes(resp: &Response<Incoming>, expect: &Expect) -> bool {
    let status = resp.status();
    let sized = matches!(
        evidence(resp.headers(), status, expect),
        Evidence::SizeMatches
    );
    status.is_success() && sized && expect.knows_bytes()
}

/// Whether a ranged answer carries the expected byte: a 206 for the sample's offset with that
/// byte, or a whole 200 whose first byte is the object's.
async fn sampled_byte(resp: Response<Incoming>, expect: &Expect) -> bool {
    let want = match resp.status() {
        StatusCode::PARTIAL_CONTENT => {
            let at = expect.sample.map_or(0, |(at, _)| at);
            let start = (resp.headers().get(header::CONTENT_RANGE))
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().strip_prefix("bytes "))
                .and_then(|v| v.split_once('-'))
                .and_then(|(start, _)| start.trim().parse::<u64>().ok());
            if start != Some(at) {
                return false;
            }
            expect
                .sample
                .map(|(_, b)| b)
                .or(expect.first.filter(|_| at == 0))
        }
        _ => expect.first,
    };
    match want {
        Some(want) => first_byte(resp).await == Some(want),
        None => false,
    }
}

fn denied(first: Option<Response<Incoming>>) -> Verdict {
    Verdict::Denied {
        first,
        refused: false,
    }
}

enum Evidence {
    /// The registry names the expected digest (or, for a tag, a manifest's digest).
    Proof,
    /// No digest, but the size is the object's (a CDN or object store).
    SizeMatches,
    None,
}

/// What a 2xx answer's headers show about the object.
fn evidence(h: &HeaderMap, status: StatusCode, expect: &Expect) -> Evidence {
    let content_type = h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let html = content_type.is_some_and(|t| {
        let t = t.trim_start().to_ascii_lowercase();
        t.starts_with("text/") || t.contains("html")
    });
    if html || !matches!(status.as_u16(), 200 | 206) {
        return Evidence::None;
    }
    let named = h
        .get(DOCKER_CONTENT_DIGEST)
        .and_then(|v| Digest::parse(v.to_str().ok()?));
    match (&expect.digest, named) {
        (Some(want), Some(named)) if *want == named => return Evidence::Proof,
        (Some(_), Some(_)) => return Evidence::None,
        (None, Some(_)) if content_type.is_none_or(manifest_type) => return Evidence::Proof,
        (None, _) => return Evidence::None,
        (Some(_), None) => {}
    }
    let size = match status {
        StatusCode::PARTIAL_CONTENT => h
            .get(header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit_once('/'))
            .and_then(|(_, total)| total.trim().parse::<u64>().ok()),
        _ => h
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.trim().parse().ok()),
    };
    match (size, expect.size) {
        (Some(got), Some(want)) if got == want => Evidence::SizeMatches,
        _ => Evidence::None,
    }
}

/// The first byte of an answer's body (then the connection is dropped).
async fn first_byte(resp: Response<Incoming>) -> Option<u8> {
    let mut body = resp.into_body();
    let read = async {
        loop {
            let frame = body.frame().await?.ok()?;
            if let Ok(data) = frame.into_data() {
                if let Some(b) = data.first() {
                    return Some(*b);
                }
            }
        }
    };
    tokio::time::timeout(BODY_TIMEOUT, read).await.ok()?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn blob(size: u64) -> Expect {
        Expect {
            digest: Digest::parse(&format!("sha256:{}", "a".repeat(64))),
            size: Some(size),
            first: Some(0x1f),
            sample: None,
        }
    }

    #[test]
    fn a_digest_header_is_proof_only_for_the_same_digest() {
        let same = format!("sha256:{}", "a".repeat(64));
        let other = format!("sha256:{}", "b".repeat(64));
        let ok = headers(&[(DOCKER_CONTENT_DIGEST, &same)]);
        assert!(matches!(
            evidence(&ok, StatusCode::OK, &blob(10)),
            Evidence::Proof
        ));
        let wrong = headers(&[(DOCKER_CONTENT_DIGEST, &other), ("content-length", "10")]);
        assert!(matches!(
            evidence(&wrong, StatusCode::OK, &blob(10)),
            Evidence::None
        ));
    }

    #[test]
    fn login_pages_and_other_sizes_are_no_evidence() {
        let html = headers(&[("content-type", "text/html"), ("content-length", "10")]);
        assert!(matches!(
            evidence(&html, StatusCode::OK, &blob(10)),
            Evidence::None
        ));
        let sized = headers(&[("content-range", "bytes 0-0/10")]);
        assert!(matches!(
            evidence(&sized, StatusCode::PARTIAL_CONTENT, &blob(10)),
            Evidence::SizeMatches
        ));
        assert!(matches!(
            evidence(&sized, StatusCode::PARTIAL_CONTENT, &blob(11)),
            Evidence::None
        ));
        let unknown = Expect {
            size: None,
            ..blob(0)
        };
        assert!(matches!(
            evidence(&sized, StatusCode::PARTIAL_CONTENT, &unknown),
            Evidence::None
        ));
        let not_modified = headers(&[("content-length", "10")]);
        assert!(matches!(
            evidence(&not_modified, StatusCode::NOT_MODIFIED, &blob(10)),
            Evidence::None
        ));
    }

    #[test]
    fn a_tag_needs_a_digest_and_a_manifest_type() {
        let tag = Expect::default();
        let d = format!("sha256:{}", "c".repeat(64));
        let manifest = headers(&[
            (DOCKER_CONTENT_DIGEST, &d),
            ("content-type", "application/vnd.oci.image.index.v1+json"),
        ]);
        assert!(matches!(
            evidence(&manifest, StatusCode::OK, &tag),
            Evidence::Proof
        ));
        let bare = headers(&[("content-type", "application/json")]);
        assert!(matches!(
            evidence(&bare, StatusCode::OK, &tag),
            Evidence::None
        ));
    }
}
