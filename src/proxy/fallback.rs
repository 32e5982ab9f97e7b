//! Verified fallback sources: a registry's `mirrors`, asked for blobs and manifests **by digest**
//! when its upstream (the *primary*) answers 429 or 5xx or cannot be reached, or before it with
//! `mirrors_first`. A digest pins the bytes, so any source will do, provided every byte is checked.
//! Tags are never resolved through a mirror (`tag.rs` knows nothing of them).
//!
//! # Never served unverified
//! A mirror's bytes reach no client before the whole object matched its digest (and its announced
//! size) and was committed to the store: the fill from a mirror writes to the store's temp file
//! while the fill stays `Waiting`, so no reader can follow it; only once the last byte is in does
//! it start and finish (verify, commit), and the clients are then served from the stored object.
//! The alternative, streaming as for the primary with the last chunk held back until the digest
//! matched (`cache/writer.rs`), would hand a client every byte but the last before they were
//! verified; with a primary that is an accepted risk (the primary is the authority on its
//! content), with a third party it is not. The price: a client waits for the whole download
//! before its first byte (the connection's stall timeout, five minutes, bounds that wait), and an
//! object larger than the cache's room is not served from a mirror at all.
//! A mismatch is counted (`regcache_mirror_fetches_total{mirror,result="mismatch"}`, and the
//! cache's digest mismatches), the bytes forgotten, nothing stored.
//!
//! # The next mirror, within the same request
//! A mirror that answers an error, cannot be reached, or whose download fails or does not match,
//! is counted and the next configured mirror is asked, in order, each at most once per request,
//! into the same waiting fill (emptied first: `FillWriter::rewind`), so that clients joined to it
//! wait on and get the first verified copy. No further mirror is asked once the request has spent
//! five minutes on its mirrors or nobody waits for the object any more. When none delivers, the
//! client gets the primary's own answer (its 429 or 5xx, or, with `mirrors_first`, the primary's
//! object passed through uncached). The client's admission is decided once, before the first
//! body is read, on the primary's evidence alone (below), so a later mirror changes nothing of it.
//!
//! # What a mirror did wrong is remembered (`memory.rs`)
//! A mirror whose bytes for a digest did not match is not asked for that digest again for 30
//! minutes (so that with `mirrors_first` a bad copy is not downloaded on every request), and a
//! mirror that failed three times in a row (unreachable, 5xx, 429) is not asked at all for 30 s,
//! doubled at each further failure up to 10 minutes. Each skip is counted
//! (`regcache_mirror_skips_total{mirror,reason="mismatch|backoff"}`); a reload forgets both.
//!
//! # Never served to a client the primary would refuse
//! A mirror is asked anonymously (none of the client's headers but Accept and User-Agent; a
//! Bearer challenge is answered with an anonymous token) at the primary's path
//! (`/v2/<repo>/blobs/<digest>`). Its answer says nothing about who may read what, nor about which
//! repository holds which digest: the object is served only to a client that [`Proxy::authorize`]
//! admits, on the evidence it always needs, and that evidence comes from the primary alone:
//! - the primary's own check (a HEAD with the client's credentials, along its redirects) shows
//!   this repository serving this digest to this client (a registry that throttles GETs still
//!   answers HEADs: Docker Hub's pull quota counts GETs only); or
//! - the client's access to the repository is remembered (or, the primary unable to answer, the
//!   offline rule of `offline.rs` admits it: public within `offline_auth_window`, or this
//!   credential served within it and the primary failing the appliance's own clean request), **and**
//!   the primary said that this repository holds this digest: the object's recorded refs, or a
//!   manifest of this repository in the store (fetched from the primary for it, verified) that lists
//!   the digest as a part (`evidence.rs`).
//!
//! So a mirror never widens who is served, nor which digests a repository unlocks: a client
//! without established access gets nothing from a mirror while the primary is down, a digest no
//! manifest of the repository lists is not served through it, and a private repository answers
//! its refusal (401) as it would without mirrors. The mirror is asked before the primary's check
//! (its Content-Length is the evidence a CDN hop of the check needs), but its body is read only
//! once the client was admitted.
//!
//! # Decided: public images while the primary is wholly down
//! With the primary unreachable, a public repository's digest is served from a mirror only when
//! the primary said earlier that the repository holds it (the second case above); an image never
//! pulled through the appliance is not served from a mirror during the outage, though the mirror
//! has it and anyone may read it upstream. Relaxing this would take the mirror's word that the
//! repository holds the digest, and the appliance promises never to serve what the upstream would
//! refuse: only the primary knows what a repository holds now (a tag deleted or a repository made
//! private upstream stays on a mirror that has not caught up, or that never mirrored faithfully),
//! and an object filled from a mirror is recorded as held by the repository it was asked for, so
//! that word would outlive the outage. So a mirror never widens who is served nor what a
//! repository unlocks. What an operator does instead is pre-warm (`regcache warm IMAGE...`, or
//! `[[warm]]` jobs) the images a site needs through an outage: warmed, they are served from the
//! cache by the offline rules (`cache.offline`, within `offline_auth_window`), and their stored
//! manifests are the primary's word for layers the cache may later lose to eviction, which a
//! mirror may then fill.
//! Test: `fallback_outage::in_a_full_outage_a_mirror_serves_no_digest_the_primary_never_listed_but_a_warmed_image_is_served`.

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use hyper::body::Incoming;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use super::auth::{anonymous_token, bearer_challenge};
use super::confirm::Expect;
use super::download::identity;
use super::outcome::CacheOutcome;
use super::request::Outbound;
use super::response::{relay, serve_reader};
use super::upstream::{cross_host, redact};
use super::{Body, Error, Proxy};
use crate::cache::{Digest, FillWriter};
use crate::metrics::{MirrorResult, MirrorSkip};

mod evidence;
mod fill;
mod memory;

use fill::MirrorFill;
pub(super) use memory::MirrorMemory;
use memory::Skip;
pub use memory::{BACKOFF_MIN as MIRROR_BACKOFF_MIN, MISMATCH_TTL as MIRROR_MISMATCH_TTL};

/// The primary's answer that sent the request to the mirrors (`None` with `mirrors_first`).
pub(super) type Primary = Option<Result<Response<Incoming>, Error>>;

/// A mirror that answered with the object: its label and its answer.
struct Answer {
    mirror: String,
    url: String,
    resp: Response<Incoming>,
}

impl Proxy {
    /// Fills `writer` from the first mirror that has the object, for a client the primary
    /// admits, and serves it once verified; otherwise the primary's answer.
    pub(super) async fn from_mirrors(
        self: &Arc<Self>,
        out: &Outbound<'_>,
        repo: &str,
        writer: FillWriter,
        primary: Primary,
    ) -> Result<Response<Body>, Error> {
        let digest = writer.fill().digest.clone();
        let path = (out.url.strip_prefix(&out.route.upstream)).map(|p| p.split('?').next());
        let (mirrors, path): (&[String], _) = match path.flatten() {
            Some(path) => (&out.route.mirrors.urls, path.to_owned()),
            None => (&[], String::new()),
        };
        let asked = self.mirror_answer(mirrors, &path, &out.headers, repo, &digest);
        let Some((at, answer)) = asked.await else {
            return match primary {
                // `mirrors_first`: the shared tier was asked before the mirrors.
                None => self.lead_past_shared(out, repo, writer).await,
                Some(primary) => {
                    writer.decline();
                    answer_of(primary, out)
                }
            };
        };
        let expect = Expect {
            digest: Some(digest.clone()),
            size: content_length(answer.resp.headers()),
            ..Expect::default()
        };
        let confirmed = self.repo_holds(&out.route.host, repo, &digest).await;
        if let Err(refused) = self.authorize(out, repo, &expect, confirmed).await {
            writer.decline();
            return Ok(refused);
        }
        let (tx, rx) = oneshot::channel();
        let fill = MirrorFill {
            proxy: self.clone(),
            registry: out.route.host.clone(),
            repo: repo.to_owned(),
            path,
            headers: out.headers.clone(),
            rest: mirrors[at + 1..].to_vec(),
        };
        tokio::spawn(fill.run(answer, writer, tx));
        let stored = match rx.await {
            Ok(true) => self.cache.get(&digest),
            Ok(false) | Err(_) => None,
        };
        match (stored, primary) {
            (Some(reader), _) => Ok(serve_reader(reader, None, false, CacheOutcome::Miss)),
            (None, None) => self.pass(out).await,
            (None, Some(primary)) => answer_of(primary, out),
        }
    }

    /// The first of `mirrors` that answers the primary's `path` with a 200, asked anonymously:
    /// its place in `mirrors` and its answer. Mirrors the memory says to skip for `digest` are
    /// not asked (counted); each answer or failure is remembered.
    async fn mirror_answer(
        &self,
        mirrors: &[String],
        path: &str,
        client: &HeaderMap,
        repo: &str,
        digest: &Digest,
    ) -> Option<(usize, Answer)> {
        for (at, base) in mirrors.iter().enumerate() {
            let mirror = base.strip_prefix("https://").unwrap_or(base).to_owned();
            if let Some(skip) = self.mirror_memory.skip(&mirror, digest) {
                debug!(%mirror, %digest, ?skip, "mirror skipped");
                self.metrics.mirror_skip(&mirror, skip_reason(skip));
                continue;
            }
            let url = format!("{base}{path}");
            let why = match self.mirror_get(&url, client, repo).await {
                Ok(resp) if resp.status() == StatusCode::OK => {
                    self.mirror_memory.answered(&mirror);
                    return Some((at, Answer { mirror, url, resp }));
                }
                Ok(resp) => {
                    let status = resp.status();
                    match status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                        true => self.mirror_memory.failed(&mirror),
                        false => self.mirror_memory.answered(&mirror),
                    }
                    format!("answered {status}")
                }
                Err(e) => {
                    self.mirror_memory.failed(&mirror);
                    e.to_string()
                }
            };
            info!(%mirror, url = %redact(&url), %why, "mirror has no object");
            self.metrics.mirror_fetch(&mirror, MirrorResult::Failed);
        }
        None
    }

    /// A GET of `url` without anything that identifies the client; a Bearer challenge is
    /// answered with an anonymous token for `repo`.
    async fn mirror_get(
        &self,
        url: &str,
        client: &HeaderMap,
        repo: &str,
    ) -> Result<Response<Incoming>, Error> {
        let mut headers = identity(&cross_host(client));
        headers.remove(header::RANGE);
        headers.remove(header::IF_RANGE);
        let resp = self
            .upstream
            .follow(&Method::GET, url, headers.clone())
            .await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenge = (resp.headers().get(header::WWW_AUTHENTICATE))
            .and_then(|v| bearer_challenge(v.to_str().ok()?));
        let Some(challenge) = challenge else {
            return Ok(resp);
        };
        let token = anonymous_token(self.upstream.client(), &challenge, repo).await;
        let bearer = token.and_then(|t| HeaderValue::try_from(format!("Bearer {t}")).ok());
        let Some(bearer) = bearer else {
            return Ok(resp);
        };
        headers.insert(header::AUTHORIZATION, bearer);
        self.upstream.follow(&Method::GET, url, headers).await
    }
}

/// The primary's own answer, relayed as it came.
fn answer_of(
    primary: Result<Response<Incoming>, Error>,
    out: &Outbound<'_>,
) -> Result<Response<Body>, Error> {
    match primary {
        Ok(resp) => {
            warn!(registry = %out.route.host, status = %resp.status(), "no mirror served: the upstream's answer");
            Ok(relay(resp, out.route, out.host))
        }
        Err(e) => Err(e),
    }
}

fn skip_reason(skip: Skip) -> MirrorSkip {
    match skip {
        Skip::Mismatch => MirrorSkip::Mismatch,
        Skip::Backoff => MirrorSkip::Backoff,
    }
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    (h.get(header::CONTENT_LENGTH)).and_then(|v| v.to_str().ok()?.trim().parse().ok())
}
