//! The shared tier in a request's path (`[storage] backend = "s3"`, [`crate::tier`]): a local
//! miss asks the fleet's store before the upstream, and a fill from the upstream is uploaded to
//! it once verified.
//!
//! # Never served unverified, never to a client the upstream would refuse
//! The store's object is read only after [`Proxy::authorize`] admitted the client, on the same
//! evidence as a local hit (the upstream's own check with the client's credentials, or a
//! remembered grant where the upstream already said that this repository holds the digest;
//! with the upstream down, the offline policy). The store says nothing about who may read what.
//! Its bytes go into a local fill that verifies the digest: a blob is streamed to the client as
//! it arrives with its last byte held until the digest matched (as for the upstream's bytes, and
//! the same accepted risk: the store holds only what an appliance of this fleet verified from an
//! upstream), a manifest is read whole and checked before anything is served, its media type
//! taken from the verified bytes. Whether it is read as a manifest or a blob is the endpoint's
//! kind ([`Outbound::manifest`]), never the URL's text. An object whose whole body was read and
//! does not match is refused, counted, never stored, and deleted from the store (it is not the
//! object; the next upstream fill uploads the right one); the request then goes on to the
//! upstream (a manifest), or fails before its last byte (a blob already under way: the client
//! retries, misses the store, gets the upstream's). Anything else (a read error or stall, a
//! blob asked for as a manifest, our own disk failing) is a miss that leaves the store's copy.
//!
//! # When the store is slow or down
//! Its HEAD waits a few seconds at most; a store marked down is not asked (see `tier/`). Either
//! way the request goes on to the upstream as it would without a shared tier.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt};
use http::Response;
use tracing::{info, warn};

use super::confirm::Expect;
use super::manifest::{media_type_of, MAX_MANIFEST};
use super::outcome::CacheOutcome;
use super::request::Outbound;
use super::response::{serve_fill, serve_reader};
use super::{Body, Error, Proxy};
use crate::cache::{Digest, Error as CacheError, FillWriter};
use crate::tier::{self, SharedTier};

/// A store whose body yields nothing for this long is abandoned (the fill fails).
const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

type Stream = BoxStream<'static, Result<Bytes, tier::Error>>;

/// The store's answer for an admitted client: the object's size and bytes, for whom.
struct Found<'a> {
    tier: &'a Arc<SharedTier>,
    size: u64,
    body: Stream,
    registry: &'a str,
    repo: &'a str,
}

/// What the shared tier did for a local miss.
pub(super) enum Shared {
    /// Answered: the object (or the upstream's refusal).
    Served(Result<Response<Body>, Error>),
    /// Not there, not reachable, or not usable: the fill goes on to the upstream.
    Miss(FillWriter),
}

impl Proxy {
    /// Sets the shared tier (the app, once, at start; tests with an in-memory store).
    pub fn set_shared_tier(&self, tier: Arc<SharedTier>) {
        tier.start_uploads();
        let _ = self.shared.set(tier);
    }

    pub fn shared_tier(&self) -> Option<&Arc<SharedTier>> {
        self.shared.get()
    }

    /// Queues a verified object fetched from the upstream for the shared tier.
    pub(super) fn share(&self, digest: &Digest) {
        if let Some(tier) = self.shared.get() {
            tier.queue_upload(digest, &self.cache.object_path(digest));
        }
    }

    /// A local miss: the object from the shared tier, for a client admitted as for a local hit.
    pub(super) async fn from_shared(
        self: &Arc<Self>,
        out: &Outbound<'_>,
        repo: &str,
        writer: FillWriter,
    ) -> Shared {
        let Some(tier) = self.shared.get() else {
            return Shared::Miss(writer);
        };
        let digest = writer.fill().digest.clone();
        let Some(size) = tier.head(&digest).await else {
            return Shared::Miss(writer);
        };
        let expect = Expect {
            digest: Some(digest.clone()),
            size: Some(size),
            ..Expect::default()
        };
        let confirmed = self.shared_confirmed(out, repo, &digest).await;
        if let Err(refused) = self.authorize(out, repo, &expect, confirmed).await {
            writer.decline();
            return Shared::Served(Ok(refused));
        }
        let body = match tier.get(&digest).await {
            Ok((got, body)) if got == size => body,
            Ok(_) | Err(_) => return Shared::Miss(writer),
        };
        let found = Found {
            tier,
            size,
            body,
            registry: &out.route.host,
            repo,
        };
        match out.manifest {
            true => self.shared_manifest(found, writer).await,
            false => shared_blob(found, writer),
        }
    }

    /// Whether the upstream already confirmed that `repo` holds `digest`, as
    /// [`Proxy::authorize`] uses it: only together with a grant remembered for this client
    /// (within `auth_ttl`, or with `offline` within `offline_auth_window`). Without one it
    /// cannot count, and the repository's stored manifests are not scanned for it.
    async fn shared_confirmed(&self, out: &Outbound<'_>, repo: &str, digest: &Digest) -> bool {
        let registry = &out.route.host;
        if self.cache.has_ref(digest, registry, repo) {
            return true;
        }
        let policy = self.policy();
        let remembered = |within| {
            self.auth.public(registry, repo, within)
                || self.auth.granted(&out.cred, registry, repo, within)
        };
        let window = policy.offline_auth_window.max(policy.auth_ttl);
        let counts = remembered(policy.auth_ttl) || (policy.offline && remembered(window));
        counts && self.repo_holds(registry, repo, digest).await
    }

    /// A manifest from the store, read whole and verified before it is stored and served. Only
    /// a whole body that does not hash to the digest is deleted from the store; one that could
    /// not be read, or is not a manifest (a blob asked for as one), is left there: a miss.
    async fn shared_manifest(&self, found: Found<'_>, mut writer: FillWriter) -> Shared {
        let (tier, size, registry, repo) = (found.tier, found.size, found.registry, found.repo);
        let digest = writer.fill().digest.clone();
        let data = match read_manifest(found.body, size).await {
            Ok(data) => data,
            Err(why) => {
                warn!(%digest, %why, "shared store's manifest not read: asking elsewhere");
                return Shared::Miss(writer);
            }
        };
        if Digest::of(&data) != digest {
            tier.refused(&digest, "does not match its digest");
            // Not the object: no appliance should read it again.
            let _ = tier.delete(&digest).await;
            return Shared::Miss(writer);
        }
        let Some(media_type) = media_type_of(&data) else {
            warn!(%digest, "the shared store's object is not a manifest: asking elsewhere");
            return Shared::Miss(writer);
        };
        if !writer.reserve(size) {
            return Shared::Miss(writer);
        }
        if let Err(e) = writer.write(&data) {
            warn!(%digest, error = %e, "shared store's manifest not stored: asking elsewhere");
            if let Err(e) = writer.rewind() {
                writer.fail(e.to_string());
                return Shared::Served(Err(Error::Unavailable(e.to_string())));
            }
            return Shared::Miss(writer);
        }
        writer.start(Some(size), &media_type, registry, repo);
        if let Err(e) = writer.finish() {
            warn!(%digest, error = %e, "shared store's manifest not stored");
            return Shared::Served(Err(Error::Unavailable(e.to_string())));
        }
        info!(%digest, %registry, %repo, "cached from the shared store, verified");
        match self.cache.get(&digest) {
            Some(reader) => {
                Shared::Served(Ok(serve_reader(reader, None, false, CacheOutcome::Shared)))
            }
            None => Shared::Served(Err(Error::Unavailable("the manifest went at once".into()))),
        }
    }
}

/// A blob from the store: the fill starts at once and the client follows it as it grows; the
/// last byte is held until the digest matched. One larger than the cache's room is relayed.
fn shared_blob(found: Found<'_>, mut writer: FillWriter) -> Shared {
    let (tier, size, body) = (found.tier, found.size, found.body);
    let (registry, repo) = (found.registry, found.repo);
    // Larger than the cache can hold now: of unknown length to the fill, which relays it to
    // its readers once it outgrows the room (verified, the last chunk held), uncached.
    let room = writer.reserve(size);
    let fill = writer.fill().clone();
    let stream = fill.clone().stream();
    let size = room.then_some(size);
    writer.start(size, "application/octet-stream", registry, repo);
    let (tier, registry, repo) = (tier.clone(), registry.to_owned(), repo.to_owned());
    tokio::spawn(async move {
        let digest = writer.fill().digest.clone();
        match copy(body, &mut writer).await {
            Ok(()) => match writer.finish() {
                Ok(()) => {
                    info!(%digest, %registry, %repo, "cached from the shared store, verified")
                }
                Err(e @ (CacheError::DigestMismatch { .. } | CacheError::SizeMismatch { .. })) => {
                    tier.refused(&digest, &e.to_string());
                    // Not the object: no appliance should read it again.
                    let _ = tier.delete(&digest).await;
                }
                Err(CacheError::NoRoom { .. }) => {
                    info!(%digest, %registry, %repo, "relayed from the shared store, verified, not cached")
                }
                // Our side failed (the local disk): the store's copy is not in question.
                Err(e) => warn!(%digest, error = %e, "shared store's object not cached"),
            },
            Err(why) => {
                warn!(%digest, %why, "shared store's object not cached");
                writer.fail(why);
            }
        }
    });
    Shared::Served(Ok(serve_fill(fill, stream, CacheOutcome::Shared)))
}

/// Writes the store's body into the fill.
async fn copy(mut body: Stream, writer: &mut FillWriter) -> Result<(), String> {
    loop {
        let next = tokio::time::timeout(BODY_IDLE_TIMEOUT, body.next()).await;
        let data = match next {
            Ok(Some(Ok(data))) => data,
            Ok(None) => return Ok(()),
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Err(_) => return Err(format!("no data from the store for {BODY_IDLE_TIMEOUT:?}")),
        };
        writer
            .write_or_relay(data)
            .await
            .map_err(|e| e.to_string())?;
    }
}

/// A manifest's bytes, at most `size` (itself at most [`MAX_MANIFEST`]).
async fn read_manifest(mut body: Stream, size: u64) -> Result<Vec<u8>, String> {
    if size > MAX_MANIFEST as u64 {
        return Err("a manifest over 4 MiB".into());
    }
    let mut data = Vec::with_capacity(size as usize);
    loop {
        let next = tokio::time::timeout(BODY_IDLE_TIMEOUT, body.next()).await;
        match next {
            Ok(Some(Ok(chunk))) if data.len() + chunk.len() <= size as usize => {
                data.extend_from_slice(&chunk)
            }
            Ok(Some(Ok(_))) => return Err("longer than its size (changed while read?)".into()),
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(None) => return Ok(data),
            Err(_) => return Err("the store stalled".into()),
        }
    }
}
