//! GET/HEAD through the cache: blobs and manifests by digest (shared fills), manifests by tag
//! (TTL, then HEAD revalidation), `/v2/` and offline answers, and the auth rule that a cached
//! object is served only when the upstream would serve that repository to this client.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, TryStreamExt};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::auth::Credential;
use super::confirm::{random_offset, unavailable, Expect, Outage, Verdict, DOCKER_CONTENT_DIGEST};
use super::forward::{empty, error_response, local_root, redact, relay, Error, Up};
use super::manifest::{is_manifest, manifest_type, MAX_MANIFEST};
use super::registry::{classify, normalize_accept, Target};
use super::{Body, BoxError, Proxy};
use crate::cache::{Claim, Digest, Fill, FillState, FillWriter, Reader, TagEntry, TagKey};

/// A download that no client has read for this long is stopped (clients that retry a pull come
/// back within seconds and join it again).
const ABANDONED_AFTER: Duration = Duration::from_secs(30);
/// A download that yields no data for this long is abandoned.
const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Says where a response came from: HIT, MISS, JOIN, REVALIDATED, STALE, BYPASS.
const X_CACHE: &str = "x-cache";

/// Cache settings the proxy applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub manifest_ttl: Duration,
    pub auth_ttl: Duration,
    pub offline: bool,
    pub offline_auth_window: Duration,
}

/// How the task that leads a fill tells the requester what the upstream said.
enum Outcome {
    /// 200: the fill is streaming.
    Started,
    /// Anything else: relay it (a 401 with its challenge, a 404…).
    Relay(Response<Incoming>),
    Failed(Error),
}

impl Proxy {
    /// Routes a GET/HEAD to the cache logic for its endpoint, or passes it through.
    pub(super) async fn cached(
        self: &Arc<Self>,
        up: Up<'_>,
        path: &str,
    ) -> Result<Response<Body>, Error> {
        match classify(path) {
            Target::Root => self.root(&up).await,
            Target::Blob { repo, digest } => match Digest::parse(digest) {
                Some(digest) => self.object(&up, repo, digest).await,
                None => self.pass(&up).await,
            },
            Target::Manifest { repo, reference } => match Digest::parse(reference) {
                Some(digest) => self.object(&up, repo, digest).await,
                None if reference.contains(':') => self.pass(&up).await,
                None => self.tag(&up, repo, reference).await,
            },
            Target::Tags { repo } => self.tags(&up, repo).await,
            Target::Other => self.pass(&up).await,
        }
    }

    /// `/tags/list`: relayed while the upstream answers. While it is down, the tags this cache
    /// holds a manifest for, to clients whose access was established (`skopeo inspect` lists
    /// tags), marked stale; a repository with none of its tags cached stays an error.
    async fn tags(&self, up: &Up<'_>, repo: &str) -> Result<Response<Body>, Error> {
        let (outage, answer) = match self.fetch(&up.method, &up.url, up.headers.clone()).await {
            Ok(resp) => match Outage::of(&resp) {
                // A rate-limited client gets the 429: a partial list passed off as the list would
                // mislead tools that watch tags; only an outage makes it the best answer there is.
                Some(outage) if !outage.throttled => (outage, Ok(resp)),
                _ => return Ok(relay(resp, up.route, up.host)),
            },
            Err(e) => (Outage::unreachable(e.to_string()), Err(e)),
        };
        let tags = self.cache.tags_of(&up.route.host, repo);
        let cred = Credential::of(&up.headers);
        if tags.is_empty() || !self.offline_allowed(up, repo, &cred, &outage).await {
            return answer.map(|resp| relay(resp, up.route, up.host));
        }
        warn!(registry = %up.route.host, repo, why = %outage.why, "serving a stale tag list");
        let query = up.url.split_once('?').map_or("", |(_, q)| q);
        let (tags, more) = page(tags, query);
        let body = Bytes::from(serde_json::json!({ "name": repo, "tags": tags }).to_string());
        let length = body.len();
        let mut resp = Response::new(match up.method == Method::HEAD {
            true => empty(),
            false => full(body),
        });
        let h = resp.headers_mut();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        if let (true, Some(last)) = (more, tags.last()) {
            // The distribution spec's pagination: where the next page starts.
            let n = tags.len();
            let next = format!("</v2/{repo}/tags/list?n={n}&last={last}>; rel=\"next\"");
            if let Ok(next) = HeaderValue::from_str(&next) {
                h.insert(header::LINK, next);
            }
        }
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(X_CACHE, HeaderValue::from_static("STALE"));
        h.insert(
            header::WARNING,
            HeaderValue::from_static("110 - \"Response is Stale\""),
        );
        Ok(resp)
    }

    /// `/v2/`: relayed while the upstream answers; answered locally when it is down.
    async fn root(&self, up: &Up<'_>) -> Result<Response<Body>, Error> {
        let why = match self.fetch(&up.method, &up.url, up.headers.clone()).await {
            Ok(resp) if !unavailable(resp.status()) => {
                self.remember_challenge(&up.route.host, &resp);
                return Ok(relay(resp, up.route, up.host));
            }
            Ok(resp) => format!("upstream answered {}", resp.status()),
            Err(e) => e.to_string(),
        };
        if !self.policy().offline {
            return Err(Error::Unavailable(why));
        }
        warn!(registry = %up.route.host, %why, "upstream unavailable: answering /v2/ locally");
        // A Basic-auth registry keeps asking for credentials, or clients would never send them.
        // (A Bearer challenge would send clients to a token service that may be down too.)
        let anonymous = !up.headers.contains_key(header::AUTHORIZATION);
        match self.basic_challenge(&up.route.host).filter(|_| anonymous) {
            Some(challenge) => Ok(challenge_response(challenge)),
            None => Ok(local_root("STALE")),
        }
    }

    /// Remembers the upstream's `/v2/` challenge for the offline answers.
    fn remember_challenge(&self, registry: &str, resp: &Response<Incoming>) {
        if resp.status() != StatusCode::UNAUTHORIZED {
            return;
        }
        if let Some(value) = resp.headers().get(header::WWW_AUTHENTICATE) {
            let mut challenges = self.challenges.write().unwrap_or_else(|e| e.into_inner());
            challenges.insert(registry.to_owned(), value.clone());
        }
    }

    /// The registry's remembered challenge, when it is Basic.
    fn basic_challenge(&self, registry: &str) -> Option<HeaderValue> {
        let challenges = self.challenges.read().unwrap_or_else(|e| e.into_inner());
        let value = challenges.get(registry)?;
        let basic = value
            .to_str()
            .ok()?
            .trim_start()
            .to_ascii_lowercase()
            .starts_with("basic");
        basic.then(|| value.clone())
    }

    /// A blob or a manifest by digest: immutable, stored once, shared by every repository that
    /// the upstream says this client may read.
    async fn object(
        self: &Arc<Self>,
        up: &Up<'_>,
        repo: &str,
        digest: Digest,
    ) -> Result<Response<Body>, Error> {
        let cred = Credential::of(&up.headers);
        let range = up.headers.get(header::RANGE).cloned();
        let head = up.method == Method::HEAD;
        // Partial and HEAD requests are served from the cache only when it has the object.
        let claim = if head || range.is_some() {
            match self.cache.get(&digest) {
                Some(reader) => Claim::Hit(reader),
                None => return self.pass(up).await,
            }
        } else {
            match self.cache.claim_for(&digest, &up.route.host) {
                Ok(claim) => claim,
                Err(e) => {
                    warn!(error = %e, "cache unavailable for this request");
                    Claim::Bypass
                }
            }
        };
        match claim {
            Claim::Hit(reader) => {
                let at = random_offset(reader.size);
                let expect = Expect {
                    digest: Some(digest.clone()),
                    size: Some(reader.size),
                    first: reader.byte_at(0),
                    sample: reader.byte_at(at).map(|b| (at, b)),
                };
                let confirmed = self.cache.has_ref(&digest, &up.route.host, repo);
                if let Err(refused) = self.authorize(up, repo, &cred, &expect, confirmed).await {
                    return Ok(refused);
                }
                Ok(serve_reader(reader, range.as_ref(), head, "HIT"))
            }
            Claim::Join(fill) => {
                let size = match fill.head().await {
                    FillState::Writing { size, .. } => size,
                    FillState::Done { size, .. } => Some(size),
                    _ => return self.pass(up).await,
                };
                // Only a fill from this very repository counts as the upstream's word that the
                // repository has this digest; any other is checked upstream first.
                let confirmed = fill
                    .origin()
                    .is_some_and(|(r, p)| r == up.route.host && p == repo);
                let expect = Expect {
                    digest: Some(digest.clone()),
                    size,
                    ..Expect::default()
                };
                if let Err(refused) = self.authorize(up, repo, &cred, &expect, confirmed).await {
                    return Ok(refused);
                }
                Ok(serve_fill(fill.clone(), fill.stream(), "JOIN"))
            }
            Claim::Lead(writer) => self.lead(up, repo, cred, writer).await,
            Claim::Bypass => self.pass(up).await,
        }
    }

    /// Starts the upstream download in its own task (it goes on for the cache and the other
    /// readers if this client leaves) and serves this client from the growing file.
    async fn lead(
        self: &Arc<Self>,
        up: &Up<'_>,
        repo: &str,
        cred: Credential,
        writer: FillWriter,
    ) -> Result<Response<Body>, Error> {
        let fill = writer.fill().clone();
        // Started before the download: a body that outgrows the cache is relayed to it.
        let body = fill.clone().stream();
        let (tx, rx) = oneshot::channel();
        let task = FillTask {
            proxy: self.clone(),
            url: up.url.clone(),
            headers: up.headers.clone(),
            registry: up.route.host.clone(),
            repo: repo.to_owned(),
            cred,
        };
        tokio::spawn(task.run(writer, tx));
        match rx.await {
            Ok(Outcome::Started) => Ok(serve_fill(fill, body, "MISS")),
            Ok(Outcome::Relay(resp)) => Ok(relay(resp, up.route, up.host)),
            Ok(Outcome::Failed(e)) => Err(e),
            Err(_) => Err(Error::Unavailable("the download task ended early".into())),
        }
    }

    /// A manifest by tag: fresh mappings are served from the cache, stale ones revalidated with
    /// a HEAD (which does not count against Docker Hub's pull limit), and served stale while the
    /// upstream is down.
    async fn tag(
        self: &Arc<Self>,
        up: &Up<'_>,
        repo: &str,
        tag: &str,
    ) -> Result<Response<Body>, Error> {
        let cred = Credential::of(&up.headers);
        let accept: Vec<&str> = (up.headers.get_all(header::ACCEPT).iter())
            .filter_map(|v| v.to_str().ok())
            .collect();
        let key = TagKey {
            registry: up.route.host.clone(),
            repo: repo.to_owned(),
            tag: tag.to_owned(),
            accept: normalize_accept(&accept),
        };
        let head = up.method == Method::HEAD;
        if let Some(entry) = self.cache.tag(&key) {
            if let Some(reader) = self.cache.get(&entry.digest) {
                return self.cached_tag(up, repo, &cred, &key, entry, reader).await;
            }
        }
        let asked = match head {
            true => self.head_tag(up, key.clone(), &cred).await,
            false => self.fetch_tag(up, key.clone(), &cred).await,
        };
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
        let fallback = (self.cache.tag_any(&key.registry, repo, tag, &types))
            .and_then(|entry| Some((self.cache.get(&entry.digest)?, entry)));
        if let Some((reader, entry)) = fallback {
            let stale = self.stale(up, repo, &cred, &outage, reader, &entry.media_type);
            if let Some(resp) = stale.await {
                return Ok(resp);
            }
        }
        asked
    }

    /// A tag this cache maps to a stored manifest: served while fresh (to clients the upstream
    /// lets read the repository), else revalidated with a HEAD that must name the same digest;
    /// any other answer is fetched anew, and an outage serves it stale to established clients.
    async fn cached_tag(
        self: &Arc<Self>,
        up: &Up<'_>,
        repo: &str,
        cred: &Credential,
        key: &TagKey,
        entry: TagEntry,
        reader: Reader,
    ) -> Result<Response<Body>, Error> {
        let head = up.method == Method::HEAD;
        let expect = Expect {
            digest: Some(entry.digest.clone()),
            size: Some(reader.size),
            ..Expect::default()
        };
        if entry.fresh_until > tokio::time::Instant::now() {
            if let Err(refused) = self.authorize(up, repo, cred, &expect, true).await {
                return Ok(refused);
            }
            let media_type = &entry.media_type;
            return Ok(serve_manifest(reader, media_type, head, "HIT", false));
        }
        let outage = match self.send_timed(&Method::HEAD, &up.url, &up.headers).await {
            Ok(resp) if resp.status() == StatusCode::OK => {
                if digest_header(resp.headers()).as_ref() == Some(&entry.digest) {
                    self.granted(cred, &up.headers, &up.route.host, repo, &up.url, &expect);
                    self.cache.refresh_tag(key, self.policy().manifest_ttl);
                    let media_type = &entry.media_type;
                    return Ok(serve_manifest(
                        reader,
                        media_type,
                        head,
                        "REVALIDATED",
                        false,
                    ));
                }
                // Changed, or the upstream did not say: fetch it (never serve another object).
                let result = crate::metrics::Revalidation::Changed;
                let labels = crate::metrics::RevalidationLabels { result };
                self.metrics
                    .cache_revalidations
                    .get_or_create(&labels)
                    .inc();
                return match head {
                    true => self.head_tag(up, key.clone(), cred).await,
                    false => self.fetch_tag(up, key.clone(), cred).await,
                };
            }
            Ok(resp) => match Outage::of(&resp) {
                Some(outage) => outage,
                None => {
                    self.forget_if_refused(cred, &up.route.host, repo, resp.status());
                    return Ok(self.refused(up, Some(resp)).await);
                }
            },
            Err(e) => Outage::unreachable(e.to_string()),
        };
        let stale = self.stale(up, repo, cred, &outage, reader, &entry.media_type);
        stale.await.ok_or(Error::Unavailable(outage.why))
    }

    /// HEADs a manifest by tag and records the tag → digest mapping it states (dockerd resolves
    /// tags this way, then GETs the manifest by digest). The mapping is used only once the
    /// manifest with that digest is fetched from this repository and verified; a grant only when
    /// it is already held for this repository.
    async fn head_tag(
        self: &Arc<Self>,
        up: &Up<'_>,
        key: TagKey,
        cred: &Credential,
    ) -> Result<Response<Body>, Error> {
        let resp = (self.fetch(&Method::HEAD, &up.url, up.headers.clone())).await?;
        let (registry, repo) = (&up.route.host, &key.repo);
        self.forget_if_refused(cred, registry, repo, resp.status());
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
                self.granted(cred, &up.headers, registry, repo, &up.url, &expect);
            }
            let ttl = self.policy().manifest_ttl;
            self.cache.put_tag(key, digest, media_type, ttl);
        }
        Ok(relay(resp, up.route, up.host))
    }

    /// A stored manifest for a tag while the upstream is unavailable, for clients whose access
    /// was established; `None` for the others.
    async fn stale(
        &self,
        up: &Up<'_>,
        repo: &str,
        cred: &Credential,
        outage: &Outage,
        reader: Reader,
        media_type: &str,
    ) -> Option<Response<Body>> {
        if !self.offline_allowed(up, repo, cred, outage).await {
            return None;
        }
        warn!(registry = %up.route.host, repo, why = %outage.why, "serving a stale tag");
        let head = up.method == Method::HEAD;
        Some(serve_manifest(reader, media_type, head, "STALE", true))
    }

    /// GETs a manifest by tag; when the bytes are a manifest whose digest the upstream's header
    /// (if any) agrees with, stores them under their digest, maps the tag to it and records the
    /// grant. Anything else (a login page, a mismatch) is relayed and neither stored nor granted.
    async fn fetch_tag(
        self: &Arc<Self>,
        up: &Up<'_>,
        key: TagKey,
        cred: &Credential,
    ) -> Result<Response<Body>, Error> {
        let resp = self
            .fetch(&Method::GET, &up.url, identity(&up.headers))
            .await?;
        if resp.status() != StatusCode::OK {
            self.forget_if_refused(cred, &up.route.host, &key.repo, resp.status());
            return Ok(relay(resp, up.route, up.host));
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
        let mut cache = "MISS";
        if claimed.as_ref().is_some_and(|c| *c != digest) {
            warn!(%digest, ?claimed, url = %redact(&up.url), "manifest digest mismatch: not cached");
            cache = "BYPASS";
        } else if !is_manifest(&body, &media_type) {
            warn!(%digest, %media_type, url = %redact(&up.url), "not a manifest: not cached");
            cache = "BYPASS";
        } else {
            if self.store_manifest(&digest, &body, &media_type, &key) {
                let ttl = self.policy().manifest_ttl;
                self.cache
                    .put_tag(key.clone(), digest.clone(), &media_type, ttl);
            }
            let at = random_offset(body.len() as u64);
            let expect = Expect {
                digest: Some(digest.clone()),
                size: Some(body.len() as u64),
                first: body.first().copied(),
                sample: body.get(at as usize).map(|b| (at, *b)),
            };
            self.granted(
                cred,
                &up.headers,
                &up.route.host,
                &key.repo,
                &up.url,
                &expect,
            );
        }
        // The upstream's own headers (rate limits…) go back to the client too.
        let mut headers = super::forward::forwardable(&parts.headers);
        if cache == "BYPASS" {
            // Not ours to vouch for: the upstream's headers as they were.
            headers.insert(X_CACHE, HeaderValue::from_static("BYPASS"));
        } else {
            object_headers(&mut headers, &media_type, &digest, cache);
        }
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        let mut resp = Response::new(full(body));
        *resp.headers_mut() = headers;
        Ok(resp)
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
                writer.start(
                    Some(body.len() as u64),
                    media_type,
                    &key.registry,
                    &key.repo,
                );
                if let Err(e) = writer.write(body) {
                    writer.fail(e.to_string());
                    return false;
                }
                writer.finish().is_ok()
            }
            // Someone else is writing the same bytes: the mapping will find them.
            Ok(Claim::Join(_)) => true,
            Ok(Claim::Bypass) | Err(_) => false,
        }
    }

    /// Whether the upstream would serve this object (`expect`) in `repo` to this client.
    /// Remembered answers count only when the upstream already confirmed that this repository
    /// has this digest (`confirmed`): objects are stored once by digest for every registry, and
    /// a repository the client may read must not unlock a digest it does not contain. Otherwise
    /// the upstream is asked ([`Proxy::check`]) with the client's own credentials; its refusals
    /// are relayed (401 with WWW-Authenticate). While the upstream is down, clients whose access
    /// was established are served (see [`Proxy::offline_allowed`]).
    async fn authorize(
        self: &Arc<Self>,
        up: &Up<'_>,
        repo: &str,
        cred: &Credential,
        expect: &Expect,
        confirmed: bool,
    ) -> Result<(), Response<Body>> {
        let registry = &up.route.host;
        let ttl = self.policy().auth_ttl;
        let remembered =
            self.auth.public(registry, repo, ttl) || self.auth.granted(cred, registry, repo, ttl);
        if confirmed && remembered {
            return Ok(());
        }
        let outage = match self.check(&up.url, &up.headers, expect).await {
            Verdict::Served => {
                self.granted(cred, &up.headers, registry, repo, &up.url, expect);
                if let Some(digest) = &expect.digest {
                    self.cache.add_ref(digest, registry, repo);
                }
                return Ok(());
            }
            Verdict::Denied { first, refused } => {
                if refused {
                    self.auth.revoke(cred, registry, repo);
                }
                return Err(self.refused(up, first).await);
            }
            Verdict::Unavailable(outage) => outage,
        };
        if confirmed && self.offline_allowed(up, repo, cred, &outage).await {
            warn!(%registry, repo, why = %outage.why, "upstream unavailable: serving from the cache");
            return Ok(());
        }
        if cred.is_anonymous() {
            if let Some(challenge) = self.basic_challenge(registry) {
                return Err(challenge_response(challenge));
            }
        }
        let message = Error::Unavailable(outage.why).to_string();
        Err(match outage.throttled {
            true => error_response(StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS", &message),
            false => error_response(StatusCode::BAD_GATEWAY, "UNAVAILABLE", &message),
        })
    }

    /// The upstream did not serve the object: for a HEAD, its own first answer when there is one
    /// (a 401 with its challenge); otherwise the request is passed through, so that the client
    /// gets the upstream's whole answer, whatever it is, and nothing from the cache.
    async fn refused(&self, up: &Up<'_>, first: Option<Response<Incoming>>) -> Response<Body> {
        if let (true, Some(resp)) = (up.method == Method::HEAD, first) {
            return relay(resp, up.route, up.host);
        }
        match self.pass(up).await {
            Ok(resp) => resp,
            Err(e) => error_response(StatusCode::BAD_GATEWAY, "UNAVAILABLE", &e.to_string()),
        }
    }

    /// A 401 or 403 from the registry: this credential's remembered grant is void.
    fn forget_if_refused(&self, cred: &Credential, registry: &str, repo: &str, status: StatusCode) {
        if matches!(status.as_u16(), 401 | 403) {
            self.auth.revoke(cred, registry, repo);
        }
    }

    /// Who is served from the cache while the upstream cannot answer: with `cache.offline` on,
    /// repositories seen public within `offline_auth_window`, and clients whose credential the
    /// upstream served this repository within that window. A throttled upstream (429, or 503
    /// with Retry-After) is no outage: any client can exhaust the quota the site shares, so it
    /// extends no credential's grant past `auth_ttl` (public repositories stay served).
    ///
    /// A client's own request can fail for reasons of its own making (odd headers an upstream
    /// chokes on), so before a credential is served offline the appliance asks the upstream's
    /// `/v2/` itself, without any of the client's headers: only if that fails too is it an outage.
    async fn offline_allowed(
        &self,
        up: &Up<'_>,
        repo: &str,
        cred: &Credential,
        outage: &Outage,
    ) -> bool {
        let policy = self.policy();
        let window = policy.offline_auth_window;
        let grants = match outage.throttled {
            true => policy.auth_ttl.min(window),
            false => window,
        };
        let registry = &up.route.host;
        if policy.offline && self.auth.public(registry, repo, window) {
            return true;
        }
        let granted = policy.offline && self.auth.granted(cred, registry, repo, grants);
        if granted && self.upstream_down(up.route).await {
            return true;
        }
        info!(%registry, repo, why = %outage.why, "upstream unavailable and this client's access is not established");
        false
    }

    /// Whether the upstream of `route` fails the appliance's own clean request (`GET /v2/` with
    /// no client headers): unreachable, 5xx or 429. Remembered for a few seconds, so that an
    /// outage costs one such request per registry, not one per client request.
    async fn upstream_down(&self, route: &super::Route) -> bool {
        const REMEMBERED: Duration = Duration::from_secs(10);
        const PROBE: Duration = Duration::from_secs(10);
        let key = &route.host;
        let known = (self.outages.lock().unwrap_or_else(|e| e.into_inner()))
            .get(key)
            .is_some_and(|t| t.elapsed() < REMEMBERED);
        if known {
            return true;
        }
        let url = format!("{}/v2/", route.upstream);
        let clean = HeaderMap::new();
        let sent = self.send_timed(&Method::GET, &url, &clean);
        let down = match tokio::time::timeout(PROBE, sent).await {
            Ok(Ok(resp)) => Outage::of(&resp).is_some(),
            Ok(Err(_)) | Err(_) => true,
        };
        if down {
            let mut outages = self.outages.lock().unwrap_or_else(|e| e.into_inner());
            outages.insert(key.clone(), tokio::time::Instant::now());
        } else {
            warn!(registry = %key, "the upstream answers the appliance: not an outage, nothing served offline");
        }
        down
    }

    /// Records a grant (the upstream served `expect` to `cred`); for a credentialed client,
    /// finds out once in a while whether the repository is public (so anonymous clients can be
    /// served while the upstream is down), by the same evidence.
    fn granted(
        self: &Arc<Self>,
        cred: &Credential,
        headers: &HeaderMap,
        registry: &str,
        repo: &str,
        url: &str,
        expect: &Expect,
    ) {
        self.auth.grant(cred, registry, repo);
        let every = self.policy().offline_auth_window / 4;
        if !cred.is_anonymous() && self.auth.should_probe(registry, repo, every) {
            let proxy = self.clone();
            let (registry, repo, url) = (registry.to_owned(), repo.to_owned(), url.to_owned());
            // With the client's Accept, every value of it (dockerd sends one header per media
            // type): registries answer 404 to a manifest HEAD whose Accept does not admit the
            // manifest's type, an OCI index say.
            let accept: Vec<HeaderValue> =
                headers.get_all(header::ACCEPT).iter().cloned().collect();
            let expect = expect.clone();
            tokio::spawn(async move {
                if proxy.probe_public(&url, &repo, &accept, &expect).await {
                    info!(%registry, %repo, "repository is public");
                    proxy.auth.mark_public(&registry, &repo);
                }
            });
        }
    }
}

/// The download behind a fill, independent of the client that started it.
struct FillTask {
    proxy: Arc<Proxy>,
    url: String,
    headers: HeaderMap,
    registry: String,
    repo: String,
    cred: Credential,
}

impl FillTask {
    async fn run(self, mut writer: FillWriter, tx: oneshot::Sender<Outcome>) {
        let fetched = self
            .proxy
            .fetch(&Method::GET, &self.url, identity(&self.headers));
        let resp = match fetched.await {
            Ok(resp) => resp,
            Err(e) => {
                writer.fail(e.to_string());
                let _ = tx.send(Outcome::Failed(e));
                return;
            }
        };
        if resp.status() != StatusCode::OK {
            let status = resp.status();
            (self.proxy).forget_if_refused(&self.cred, &self.registry, &self.repo, status);
            writer.decline();
            let _ = tx.send(Outcome::Relay(resp));
            return;
        }
        let size = (resp.headers().get(header::CONTENT_LENGTH))
            .and_then(|v| v.to_str().ok()?.parse().ok());
        let media_type = (resp.headers().get(header::CONTENT_TYPE))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_owned();
        if size.is_some_and(|size| !writer.reserve(size)) {
            // Larger than the cache can hold now: this client gets it straight from upstream.
            self.proxy.metrics.cache_fills_capped.inc();
            warn!(digest = %writer.fill().digest, ?size, "no room within cache.max_size: not cached");
            writer.decline();
            let _ = tx.send(Outcome::Relay(resp));
            return;
        }
        writer.start(size, &media_type, &self.registry, &self.repo);
        let _ = tx.send(Outcome::Started);
        let digest = writer.fill().digest.clone();
        let mut body = resp.into_body();
        let (mut first, mut written) = (None, 0u64);
        // A byte at an offset the upstream cannot guess, for the public probe's evidence.
        let at = size.map(random_offset);
        let mut sample = None;
        let mut alone_since: Option<tokio::time::Instant> = None;
        loop {
            // Every client left and none came back: the uplink is not spent for nobody.
            match (writer.fill().readers(), alone_since) {
                (0, None) => alone_since = Some(tokio::time::Instant::now()),
                (0, Some(t)) if t.elapsed() > ABANDONED_AFTER => {
                    info!(%digest, "every client left the download: not cached");
                    writer.fail("every client left".into());
                    return;
                }
                (0, Some(_)) => {}
                _ => alone_since = None,
            }
            // A stalled upstream must not hold the fill (and every reader joined to it) forever.
            let frame = match tokio::time::timeout(BODY_IDLE_TIMEOUT, body.frame()).await {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(_) => {
                    warn!(%digest, url = %redact(&self.url), "upstream body stalled: not cached");
                    writer.fail(format!(
                        "no data from the upstream for {BODY_IDLE_TIMEOUT:?}"
                    ));
                    return;
                }
            };
            let data = match frame {
                Ok(frame) => frame.into_data().unwrap_or_default(),
                Err(e) => {
                    warn!(%digest, url = %self.url, error = %e, "upstream body ended early: not cached");
                    writer.fail(format!("upstream body: {e}"));
                    return;
                }
            };
            first = first.or(data.first().copied());
            if let Some(at) = at.filter(|at| (written..written + data.len() as u64).contains(at)) {
                sample = Some((at, data[(at - written) as usize]));
            }
            written += data.len() as u64;
            if let Err(e) = writer.write_or_relay(data).await {
                writer.fail(e.to_string());
                return;
            }
        }
        match writer.finish() {
            Ok(()) => info!(%digest, registry = %self.registry, repo = %self.repo, "cached"),
            Err(e) => {
                warn!(%digest, url = %redact(&self.url), error = %e, "not cached");
                return;
            }
        }
        // Only now, with the bytes verified against the digest, is this a grant.
        let expect = Expect {
            digest: Some(digest),
            size: Some(written),
            first,
            sample,
        };
        let (cred, headers) = (&self.cred, &self.headers);
        (self.proxy).granted(
            cred,
            headers,
            &self.registry,
            &self.repo,
            &self.url,
            &expect,
        );
    }
}

/// 401 with `challenge`, in the OCI error format.
fn challenge_response(challenge: HeaderValue) -> Response<Body> {
    let mut resp = error_response(
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
        "authentication required",
    );
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, challenge);
    resp
}

/// The headers for a fetch that fills the cache: the bytes must be the object's own, not a
/// compressed transfer of them.
fn identity(headers: &HeaderMap) -> HeaderMap {
    let mut headers = headers.clone();
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    headers
}

/// The digest a `Docker-Content-Digest` header names.
fn digest_header(h: &HeaderMap) -> Option<Digest> {
    Digest::parse(h.get(DOCKER_CONTENT_DIGEST)?.to_str().ok()?)
}

fn full(bytes: Bytes) -> Body {
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

fn object_headers(h: &mut HeaderMap, media_type: &str, digest: &Digest, cache: &'static str) {
    if let Ok(v) = HeaderValue::try_from(media_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::try_from(digest.to_string()) {
        h.insert(DOCKER_CONTENT_DIGEST, v);
    }
    if let Ok(v) = HeaderValue::try_from(format!("\"{digest}\"")) {
        h.insert(header::ETAG, v);
    }
    h.insert(X_CACHE, HeaderValue::from_static(cache));
}

/// A stored object: whole (200), a byte range (206) or an unsatisfiable range (416).
fn serve_reader(
    reader: Reader,
    range: Option<&HeaderValue>,
    head: bool,
    cache: &'static str,
) -> Response<Body> {
    let size = reader.size;
    let mut resp = Response::new(empty());
    object_headers(
        resp.headers_mut(),
        &reader.media_type.clone(),
        &reader.digest.clone(),
        cache,
    );
    resp.headers_mut()
        .insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let span = match range.map(|r| parse_range(r, size)) {
        None => None,
        Some(Some(span)) => Some(span),
        Some(None) => {
            *resp.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            let v = HeaderValue::try_from(format!("bytes */{size}")).expect("ASCII");
            resp.headers_mut().insert(header::CONTENT_RANGE, v);
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

/// An object still being downloaded, streamed as it grows (`body`, its stream).
fn serve_fill(
    fill: Arc<Fill>,
    body: impl Stream<Item = Result<Bytes, crate::cache::Error>> + Send + 'static,
    cache: &'static str,
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
    object_headers(resp.headers_mut(), &media_type, &digest, cache);
    if let Some(size) = size {
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    }
    resp
}

fn serve_manifest(
    reader: Reader,
    media_type: &str,
    head: bool,
    cache: &'static str,
    stale: bool,
) -> Response<Body> {
    let digest = reader.digest.clone();
    let size = reader.size;
    let mut resp = Response::new(empty());
    object_headers(resp.headers_mut(), media_type, &digest, cache);
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    if stale {
        resp.headers_mut().insert(
            header::WARNING,
            HeaderValue::from_static("110 - \"Response is Stale\""),
        );
    }
    if !head {
        *resp.body_mut() = stream_body(reader.stream(None));
    }
    resp
}

/// One page of a sorted tag list, as `?n=<count>&last=<tag>` asks (the distribution spec's
/// pagination; the whole list without them), and whether more tags follow it.
fn page(tags: Vec<String>, query: &str) -> (Vec<String>, bool) {
    let param = |name: &str| {
        (query.split('&'))
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_owned())
    };
    let last = param("last");
    let n = param("n").and_then(|n| n.parse::<usize>().ok());
    let mut after: Vec<String> = (tags.into_iter())
        .filter(|t| last.as_ref().is_none_or(|last| t.as_str() > last.as_str()))
        .collect();
    let n = n.unwrap_or(usize::MAX);
    let more = after.len() > n;
    after.truncate(n);
    (after, more)
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
    fn tag_lists_page_like_the_distribution_spec() {
        let tags = || vec!["1".to_owned(), "2".to_owned(), "latest".to_owned()];
        let strs = |(p, more): (Vec<String>, bool)| (p.join(" "), more);
        assert_eq!(strs(page(tags(), "")), ("1 2 latest".into(), false));
        assert_eq!(strs(page(tags(), "n=2")), ("1 2".into(), true));
        assert_eq!(strs(page(tags(), "n=3")), ("1 2 latest".into(), false));
        assert_eq!(strs(page(tags(), "n=2&last=2")), ("latest".into(), false));
        assert_eq!(strs(page(tags(), "last=latest")), ("".into(), false));
        assert_eq!(strs(page(tags(), "n=x")), ("1 2 latest".into(), false));
    }

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
}
