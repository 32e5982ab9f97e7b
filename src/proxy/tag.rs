//! Manifests by tag. Tags move, so the tag → digest mapping is what is cached: served while fresh
//! (the TTL of the tag's `[[cache.rule]]`, else `cache.manifest_ttl`: `freshness.rs`), then
//! revalidated with a HEAD (which does not count against Docker Hub's pull limit) that must name
//! the same digest, and served stale while the upstream is down. A mapping is used only once the
//! manifest it names is held for the same registry and repository.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use tokio::time::Instant;
use tracing::warn;

use super::confirm::{random_offset, Expect, Outage, DOCKER_CONTENT_DIGEST};
use super::download::identity;
use super::freshness::fresh;
use super::manifest::{is_manifest, manifest_type, MAX_MANIFEST};
use super::outcome::CacheOutcome;
use super::registry::normalize_accept;
use super::request::{forwardable, Outbound};
use super::response::{full, object_headers, relay, serve_manifest};
use super::upstream::redact;
use super::{Body, Error, Proxy};
use crate::cache::{Claim, Digest, Reader, TagEntry, TagKey};
use crate::metrics::{Revalidation, RevalidationLabels};

impl Proxy {
    /// A manifest by tag: from a fresh or revalidated mapping, else from the upstream; while the
    /// upstream is down, any stored mapping of the tag whose type the client accepts.
    pub(super) async fn tag(
        self: &Arc<Self>,
        out: &Outbound<'_>,
        repo: &str,
        tag: &str,
    ) -> Result<Response<Body>, Error> {
        let accept: Vec<&str> = (out.headers.get_all(header::ACCEPT).iter())
            .filter_map(|v| v.to_str().ok())
            .collect();
        let key = TagKey {
            registry: out.route.host.clone(),
            repo: repo.to_owned(),
            tag: tag.to_owned(),
            accept: normalize_accept(&accept),
        };
        let rule = self.freshness(out.route, &key);
        let answer = self.answer_tag(out, key.clone()).await;
        if let Ok(resp) = &answer {
            self.count_tag(&rule, &key, CacheOutcome::of(resp));
        }
        answer
    }

    /// The tag's answer (see [`Proxy::tag`]).
    async fn answer_tag(
        self: &Arc<Self>,
        out: &Outbound<'_>,
        key: TagKey,
    ) -> Result<Response<Body>, Error> {
        let held =
            (self.cache.tag(&key)).and_then(|entry| Some((self.cache.get(&entry.digest)?, entry)));
        if let Some((reader, entry)) = held {
            return self.cached_tag(out, &key, Held { entry, reader }).await;
        }
        let asked = self.ask_tag(out, key.clone()).await;
        let outage = match &asked {
            Ok(resp) => match Outage::of(resp) {
                Some(outage) => outage,
                None => return asked,
            },
            Err(e) => Outage::unreachable(e.to_string()),
        };
        // The upstream is down and this exact Accept has no mapping: any mapping of the tag whose
        // media type the client accepts (another client asked with other Accept values).
        let types: Vec<&str> = key.accept.split(',').filter(|t| !t.is_empty()).collect();
        let (repo, tag) = (key.repo.as_str(), key.tag.as_str());
        let fallback = (self.cache.tag_any(&key.registry, repo, tag, &types))
            .and_then(|entry| Some((self.cache.get(&entry.digest)?, entry)));
        if let Some((reader, entry)) = fallback {
            let stale = self.stale(out, repo, &outage, reader, &entry.media_type);
            if let Some(resp) = stale.await {
                return Ok(resp);
            }
        }
        asked
    }

    /// The upstream's answer for the tag: a HEAD records the mapping it states, a GET stores
    /// the manifest too.
    async fn ask_tag(
        self: &Arc<Self>,
        out: &Outbound<'_>,
        key: TagKey,
    ) -> Result<Response<Body>, Error> {
        match out.method == Method::HEAD {
            true => self.head_tag(out, key).await,
            false => self.fetch_tag(out, key).await,
        }
    }

    /// A tag this cache maps to a stored manifest: served while fresh (to clients the upstream
    /// lets read the repository), else revalidated.
    async fn cached_tag(
        self: &Arc<Self>,
        out: &Outbound<'_>,
        key: &TagKey,
        held: Held,
    ) -> Result<Response<Body>, Error> {
        let ttl = self.freshness(out.route, key).ttl;
        if !fresh(held.entry.fresh_until, ttl, Instant::now()) {
            return self.revalidate(out, key, held).await;
        }
        if let Err(refused) = self.authorize(out, &key.repo, &held.expect(), true).await {
            return Ok(refused);
        }
        Ok(held.serve(out, CacheOutcome::Hit))
    }

    /// A stale mapping: a HEAD that names the same digest renews it; any other answer is fetched
    /// anew (never another object served); an outage serves it stale to established clients.
    async fn revalidate(
        self: &Arc<Self>,
        out: &Outbound<'_>,
        key: &TagKey,
        held: Held,
    ) -> Result<Response<Body>, Error> {
        let (registry, repo) = (&out.route.host, key.repo.as_str());
        let asked = self.upstream.send(&Method::HEAD, &out.url, &out.headers);
        let outage = match asked.await {
            Ok(resp) if resp.status() == StatusCode::OK => {
                if digest_header(resp.headers()).as_ref() != Some(&held.entry.digest) {
                    let labels = RevalidationLabels {
                        result: Revalidation::Changed,
                    };
                    self.metrics
                        .cache_revalidations
                        .get_or_create(&labels)
                        .inc();
                    return self.ask_tag(out, key.clone()).await;
                }
                let expect = held.expect();
                self.record_grant(&out.cred, &out.headers, registry, repo, &out.url, &expect);
                self.cache
                    .refresh_tag(key, self.freshness(out.route, key).ttl);
                return Ok(held.serve(out, CacheOutcome::Revalidated));
            }
            Ok(resp) => match Outage::of(&resp) {
                Some(outage) => outage,
                None => {
                    self.forget_if_refused(&out.cred, registry, repo, resp.status());
                    return Ok(self.pass_refusal(out, Some(resp)).await);
                }
            },
            Err(e) => Outage::unreachable(e.to_string()),
        };
        let stale = self.stale(out, repo, &outage, held.reader, &held.entry.media_type);
        stale.await.ok_or(Error::Unavailable(outage.why))
    }

    /// HEADs a manifest by tag and records the tag → digest mapping it states (dockerd resolves
    /// tags this way, then GETs the manifest by digest). The mapping is used only once the
    /// manifest with that digest is fetched from this repository and verified; a grant only when
    /// it is already held for this repository.
    async fn head_tag(
        self: &Arc<Self>,
        out: &Outbound<'_>,
        key: TagKey,
    ) -> Result<Response<Body>, Error> {
        let asked = self
            .upstream
            .follow(&Method::HEAD, &out.url, out.headers.clone());
        let resp = asked.await?;
        let (registry, repo) = (&out.route.host, &key.repo);
        self.forget_if_refused(&out.cred, registry, repo, resp.status());
        let h = resp.headers();
        let media_type = h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
        let media_type = media_type.filter(|t| manifest_type(t));
        if let (StatusCode::OK, Some(digest), Some(media_type)) =
            (resp.status(), digest_header(h), media_type)
        {
            if self.cache.has_ref(&digest, registry, repo) {
                let expect = Expect {
                    digest: Some(digest.clone()),
                    ..Expect::default()
                };
                self.record_grant(&out.cred, &out.headers, registry, repo, &out.url, &expect);
            }
            let ttl = self.freshness(out.route, &key).ttl;
            self.cache.put_tag(key, digest, media_type, ttl);
        }
        Ok(relay(resp, out.route, out.host))
    }

    /// A stored manifest for a tag while the upstream is unavailable, for clients whose access
    /// was established; `None` for the others.
    async fn stale(
        &self,
        out: &Outbound<'_>,
        repo: &str,
        outage: &Outage,
        reader: Reader,
        media_type: &str,
    ) -> Option<Response<Body>> {
        if !self.offline_allowed(out, repo, outage).await {
            return None;
        }
        warn!(registry = %out.route.host, repo, why = %outage.why, "serving a stale tag");
        let head = out.method == Method::HEAD;
        Some(serve_manifest(
            reader,
            media_type,
            head,
            CacheOutcome::Stale,
        ))
    }

    /// GETs a manifest by tag; when the bytes are a manifest whose digest the upstream's header
    /// (if any) agrees with, stores them under their digest, maps the tag to it and records the
    /// grant. Anything else (a login page, a mismatch) is relayed and neither stored nor granted.
    async fn fetch_tag(
        self: &Arc<Self>,
        out: &Outbound<'_>,
        key: TagKey,
    ) -> Result<Response<Body>, Error> {
        let asked = self
            .upstream
            .follow(&Method::GET, &out.url, identity(&out.headers));
        let resp = asked.await?;
        if resp.status() != StatusCode::OK {
            self.forget_if_refused(&out.cred, &out.route.host, &key.repo, resp.status());
            return Ok(relay(resp, out.route, out.host));
        }
        let (parts, body) = resp.into_parts();
        let media_type = (parts.headers.get(header::CONTENT_TYPE))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_owned();
        let body = Limited::new(body, MAX_MANIFEST).collect().await;
        let body = body
            .map_err(|e| Error::Unavailable(format!("reading the manifest: {e}")))?
            .to_bytes();
        let digest = Digest::of(&body);
        let claimed = digest_header(&parts.headers);
        let outcome = if claimed.as_ref().is_some_and(|c| *c != digest) {
            warn!(%digest, ?claimed, url = %redact(&out.url), "manifest digest mismatch: not cached");
            CacheOutcome::Bypass
        } else if !is_manifest(&body, &media_type) {
            warn!(%digest, %media_type, url = %redact(&out.url), "not a manifest: not cached");
            CacheOutcome::Bypass
        } else {
            self.keep_manifest(out, &key, &digest, &body, &media_type);
            CacheOutcome::Miss
        };
        // The upstream's own headers (rate limits…) go back to the client too; a manifest that is
        // not ours to vouch for keeps the upstream's headers as they were.
        let mut headers = forwardable(&parts.headers);
        if outcome == CacheOutcome::Miss {
            object_headers(&mut headers, &media_type, &digest);
        }
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        let mut resp = Response::new(full(body));
        *resp.headers_mut() = headers;
        outcome.mark(&mut resp);
        Ok(resp)
    }

    /// A verified manifest fetched by tag: stored, the tag mapped to it, the client granted.
    fn keep_manifest(
        self: &Arc<Self>,
        out: &Outbound<'_>,
        key: &TagKey,
        digest: &Digest,
        body: &Bytes,
        media_type: &str,
    ) {
        if self.store_manifest(digest, body, media_type, key) {
            let ttl = self.freshness(out.route, key).ttl;
            (self.cache).put_tag(key.clone(), digest.clone(), media_type, ttl);
        }
        let at = random_offset(body.len() as u64);
        let expect = Expect {
            digest: Some(digest.clone()),
            size: Some(body.len() as u64),
            first: body.first().copied(),
            sample: body.get(at as usize).map(|b| (at, *b)),
        };
        let (registry, repo) = (&out.route.host, &key.repo);
        self.record_grant(&out.cred, &out.headers, registry, repo, &out.url, &expect);
    }

    /// Stores a manifest's bytes under their digest; false when caching is paused or failed.
    fn store_manifest(
        &self,
        digest: &Digest,
        body: &Bytes,
        media_type: &str,
        key: &TagKey,
    ) -> bool {
        match self.cache.claim(digest) {
            Ok(Claim::Hit(_)) => {
                self.cache.add_ref(digest, &key.registry, &key.repo);
                true
            }
            Ok(Claim::Lead(mut writer)) => {
                if !writer.reserve(body.len() as u64) {
                    writer.decline();
                    return false;
                }
                let size = Some(body.len() as u64);
                writer.start(size, media_type, &key.registry, &key.repo);
                if let Err(e) = writer.write(body) {
                    writer.fail(e.to_string());
                    return false;
                }
                let stored = writer.finish().is_ok();
                if stored {
                    self.share(digest); // verified, from the upstream: for the fleet too
                }
                stored
            }
            // Someone else is writing the same bytes: the mapping will find them.
            Ok(Claim::Join(_)) => true,
            Ok(Claim::Bypass) | Err(_) => false,
        }
    }
}

/// A tag mapping and the stored manifest it names.
struct Held {
    entry: TagEntry,
    reader: Reader,
}

impl Held {
    /// What the upstream must show for this manifest.
    fn expect(&self) -> Expect {
        Expect {
            digest: Some(self.entry.digest.clone()),
            size: Some(self.reader.size),
            ..Expect::default()
        }
    }

    fn serve(self, out: &Outbound<'_>, outcome: CacheOutcome) -> Response<Body> {
        let head = out.method == Method::HEAD;
        serve_manifest(self.reader, &self.entry.media_type, head, outcome)
    }
}

/// The digest a `Docker-Content-Digest` header names.
pub(super) fn digest_header(h: &http::HeaderMap) -> Option<Digest> {
    Digest::parse(h.get(DOCKER_CONTENT_DIGEST)?.to_str().ok()?)
}
