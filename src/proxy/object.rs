//! Blobs and manifests by digest: immutable, stored once, shared by every repository that the
//! upstream says this client may read. A stored object is a HIT, a download under way is joined
//! (JOIN), anything else is read from the fleet's shared tier when it has it (SHARED,
//! [`super::shared`]) or starts one ([`super::download`]) that this client reads as it grows (MISS),
//! or, when the upstream cannot answer or `mirrors_first` is set, one from the registry's mirrors
//! that is served only once verified ([`super::fallback`]).

use std::sync::Arc;

use http::header;
use http::{Method, Response};
use tokio::sync::oneshot;
use tracing::warn;

use super::confirm::{random_offset, Expect};
use super::download::{Download, Started};
use super::outcome::CacheOutcome;
use super::peer::Owner;
use super::request::Outbound;
use super::response::{relay, serve_fill, serve_head, serve_reader};
use super::shared::Shared;
use super::{Body, Error, Proxy};
use crate::cache::{Claim, Digest, Fill, FillState, FillWriter, Reader};

impl Proxy {
    /// A blob or a manifest by digest.
    pub(super) async fn object(
        self: &Arc<Self>,
        out: &Outbound<'_>,
        repo: &str,
        digest: Digest,
    ) -> Result<Response<Body>, Error> {
        let ranged = out.headers.contains_key(header::RANGE);
        if out.method == Method::HEAD && !ranged {
            if let Some(resp) = self.head_from_index(out, repo, &digest) {
                return Ok(resp);
            }
        }
        let partial = out.method == Method::HEAD || ranged;
        // Partial and HEAD requests are served from the cache only when it has the object.
        let claim = match partial {
            true => match self.cache.get(&digest) {
                Some(reader) => Claim::Hit(reader),
                None => return self.pass(out).await,
            },
            false => self
                .cache
                .claim_for(&digest, &out.route.host)
                .unwrap_or_else(|e| {
                    warn!(error = %e, "cache unavailable for this request");
                    Claim::Bypass
                }),
        };
        match claim {
            Claim::Hit(reader) => {
                if let Err(refused) = self.authorize_stored(out, repo, digest, &reader).await {
                    return Ok(refused);
                }
                let (range, head) = (out.headers.get(header::RANGE), out.method == Method::HEAD);
                Ok(serve_reader(reader, range, head, CacheOutcome::Hit))
            }
            Claim::Join(fill) => {
                let Some((expect, confirmed)) = fill_evidence(out, repo, digest, &fill).await
                else {
                    return self.pass(out).await;
                };
                if let Err(refused) = self.authorize(out, repo, &expect, confirmed).await {
                    return Ok(refused);
                }
                Ok(serve_fill(fill.clone(), fill.stream(), CacheOutcome::Join))
            }
            Claim::Lead(writer) if out.route.mirrors.first => {
                // The fleet's own verified copy comes before a third party's.
                match self.from_shared(out, repo, writer).await {
                    Shared::Served(answer) => answer,
                    Shared::Miss(writer) => self.from_mirrors(out, repo, writer, None).await,
                }
            }
            Claim::Lead(writer) => self.lead(out, repo, writer).await,
            // Not cached here: the owner's copy rather than another upstream fetch.
            Claim::Bypass => match self.pass_via_owner(out, repo, &digest).await {
                Some(resp) => Ok(resp),
                None => self.pass(out).await,
            },
        }
    }

    /// A HEAD of a stored object that this client may read without asking the upstream (the
    /// repository is confirmed to have it and the client's access is remembered: the first
    /// test of [`Proxy::authorize`]), answered from the index without opening the file.
    fn head_from_index(
        &self,
        out: &Outbound<'_>,
        repo: &str,
        digest: &Digest,
    ) -> Option<Response<Body>> {
        let (size, media_type) = self.cache.stored_in(digest, &out.route.host, repo)?;
        let allowed = self.remembered(out, repo);
        allowed.then(|| serve_head(size, &media_type, digest, CacheOutcome::Hit))
    }

    /// Whether this client may read a stored object in `repo` ([`Proxy::authorize`]): at once
    /// when the upstream already confirmed that this repository has the digest and the client's
    /// access (or the repository's being public) is remembered; otherwise the upstream must show
    /// the object's size and its bytes at two offsets, which are read from the file only then.
    async fn authorize_stored(
        self: &Arc<Self>,
        out: &Outbound<'_>,
        repo: &str,
        digest: Digest,
        reader: &Reader,
    ) -> Result<(), Response<Body>> {
        let confirmed = self.cache.has_ref(&digest, &out.route.host, repo);
        if confirmed && self.remembered(out, repo) {
            return Ok(());
        }
        let at = random_offset(reader.size);
        let expect = Expect {
            digest: Some(digest),
            size: Some(reader.size),
            first: reader.byte_at(0),
            sample: reader.byte_at(at).map(|b| (at, b)),
        };
        self.authorize(out, repo, &expect, confirmed).await
    }

    /// Starts the upstream download in its own task (it goes on for the cache and the other
    /// readers if this client leaves) and serves this client from the growing file; to the
    /// registry's mirrors when the upstream cannot answer.
    pub(super) async fn lead(
        self: &Arc<Self>,
        out: &Outbound<'_>,
        repo: &str,
        writer: FillWriter,
    ) -> Result<Response<Body>, Error> {
        match self.from_shared(out, repo, writer).await {
            Shared::Served(answer) => answer,
            Shared::Miss(writer) => self.lead_past_shared(out, repo, writer).await,
        }
    }

    /// [`Proxy::lead`] once the shared tier missed (asked once per request, also with
    /// `mirrors_first`, whose mirrors come between).
    pub(super) async fn lead_past_shared(
        self: &Arc<Self>,
        out: &Outbound<'_>,
        repo: &str,
        writer: FillWriter,
    ) -> Result<Response<Body>, Error> {
        // The object's owner in the fleet, when that is another appliance ([`super::peer`]).
        let writer = match self.via_owner(out, repo, writer).await {
            Owner::Answered(answer) => return answer,
            Owner::Upstream(writer) => writer,
        };
        let fill = writer.fill().clone();
        // Started before the download: a body that outgrows the cache is relayed to it.
        let body = fill.clone().stream();
        let (tx, rx) = oneshot::channel();
        let download = Download {
            proxy: self.clone(),
            url: out.url.clone(),
            headers: out.headers.clone(),
            registry: out.route.host.clone(),
            repo: repo.to_owned(),
            cred: out.cred.clone(),
            fallback: !out.route.mirrors.urls.is_empty() && !out.route.mirrors.first,
        };
        tokio::spawn(download.run(writer, tx));
        match rx.await {
            Ok(Started::Streaming) => Ok(serve_fill(fill, body, CacheOutcome::Miss)),
            Ok(Started::Relay(resp)) => Ok(relay(resp, out.route, out.host)),
            Ok(Started::Failed(e)) => Err(e),
            Ok(Started::Fallback(f)) => {
                let primary = Some(f.primary);
                Box::pin(self.from_mirrors(out, repo, f.writer, primary)).await
            }
            Err(_) => Err(Error::Unavailable("the download task ended early".into())),
        }
    }
}

/// What the upstream must show for an object still being downloaded (its size, once known), and
/// whether the download is this very repository's: only that counts as the upstream's word that
/// the repository has this digest; any other is checked upstream first. `None` when the download
/// failed before it started.
async fn fill_evidence(
    out: &Outbound<'_>,
    repo: &str,
    digest: Digest,
    fill: &Fill,
) -> Option<(Expect, bool)> {
    let size = match fill.head().await {
        FillState::Writing { size, .. } => size,
        FillState::Done { size, .. } => Some(size),
        _ => return None,
    };
    let confirmed = (fill.origin()).is_some_and(|(r, p)| r == out.route.host && p == repo);
    let expect = Expect {
        digest: Some(digest),
        size,
        ..Expect::default()
    };
    Some((expect, confirmed))
}
