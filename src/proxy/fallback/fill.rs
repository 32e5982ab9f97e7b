//! One object's download from the mirrors into the store, in its own task: the body is written
//! while the fill still waits (no reader can follow it) and checked against the digest; only
//! then does the fill start and finish at once, so that readers see nothing before the digest
//! matched (see the parent module). A mirror whose bytes do not match, or whose download fails,
//! is counted, its bytes forgotten ([`FillWriter::rewind`]), the mismatch remembered
//! (`memory.rs`), and the next configured mirror is asked, each at most once, until one delivers
//! verified bytes.

use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderMap;
use http::Response;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{info, warn};

use super::{content_length, Answer};
use crate::cache::{Error as CacheError, FillWriter};
use crate::metrics::MirrorResult;
use crate::proxy::download::{ABANDONED_AFTER, BODY_IDLE_TIMEOUT};
use crate::proxy::manifest::{media_type_of, MAX_MANIFEST};
use crate::proxy::upstream::redact;
use crate::proxy::Proxy;

/// No further mirror is asked once a request has spent this long on its mirrors (the client's
/// connection gives up after as long without a byte).
const NEXT_MIRROR_WITHIN: Duration = Duration::from_secs(300);

/// A download from a registry's mirrors.
pub(super) struct MirrorFill {
    pub proxy: Arc<Proxy>,
    pub registry: String,
    pub repo: String,
    /// The primary's path of the object (`/v2/<repo>/blobs/<digest>`).
    pub path: String,
    /// The client's headers (the mirrors get none that identify it).
    pub headers: HeaderMap,
    /// The mirrors after the one that answered, in their configured order.
    pub rest: Vec<String>,
}

impl MirrorFill {
    /// Fills `writer` from `answer`, then from the other mirrors in turn while a mirror's bytes
    /// are refused; tells `done` whether the object is verified and stored.
    pub async fn run(
        mut self,
        mut answer: Answer,
        mut writer: FillWriter,
        done: oneshot::Sender<bool>,
    ) {
        let began = Instant::now();
        loop {
            let why = match self.fill(answer.resp, &mut writer, &done).await {
                Ok((size, media_type)) => {
                    let stored =
                        self.commit(&answer.mirror, &answer.url, writer, size, &media_type);
                    let _ = done.send(stored);
                    return;
                }
                Err(e) => self.refused(&answer.mirror, &answer.url, e),
            };
            let Some(why) = why.filter(|_| self.next_worth_asking(began, &writer, &done)) else {
                break;
            };
            if let Err(e) = writer.rewind() {
                warn!(error = %e, "cannot empty the fill for the next mirror");
                break;
            }
            let (path, digest) = (self.path.clone(), writer.fill().digest.clone());
            let found = (self.proxy)
                .mirror_answer(&self.rest, &path, &self.headers, &self.repo, &digest)
                .await;
            let Some((at, next)) = found else { break };
            info!(after = %why, mirror = %next.mirror, "trying the next mirror");
            self.rest.drain(..=at);
            answer = next;
        }
        writer.fail("no mirror delivered verified bytes".into());
        let _ = done.send(false);
    }

    /// Counts and logs a mirror's refused download; the reason when the next mirror may try.
    fn refused(&self, mirror: &str, url: &str, e: CacheError) -> Option<String> {
        let (outcome, next) = match &e {
            CacheError::DigestMismatch {
                expected: digest, ..
            }
            | CacheError::SizeMismatch { digest, .. } => {
                // Not asked for this digest again for a while (`memory.rs`).
                self.proxy.mirror_memory.mismatched(mirror, digest);
                (MirrorResult::Mismatch, true)
            }
            // The store cannot write: no other mirror would do better.
            CacheError::Io { .. } => (MirrorResult::Failed, false),
            _ => (MirrorResult::Failed, true),
        };
        self.proxy.metrics.mirror_fetch(mirror, outcome);
        let url = redact(url);
        warn!(%mirror, %url, error = %e, "mirror's object refused: not stored, not served");
        next.then(|| format!("{mirror}: {e}"))
    }

    /// Whether another mirror should be asked: time is left and someone still waits.
    fn next_worth_asking(
        &self,
        began: Instant,
        writer: &FillWriter,
        done: &oneshot::Sender<bool>,
    ) -> bool {
        let waited = !done.is_closed() || writer.fill().readers() > 0;
        waited && !self.rest.is_empty() && began.elapsed() < NEXT_MIRROR_WITHIN
    }

    /// Lets readers follow the verified fill, and commits it; whether it is stored.
    fn commit(
        &self,
        mirror: &str,
        url: &str,
        mut writer: FillWriter,
        size: Option<u64>,
        media_type: &str,
    ) -> bool {
        writer.start(size, media_type, &self.registry, &self.repo);
        let (registry, repo, url) = (&self.registry, &self.repo, redact(url));
        match writer.finish() {
            Ok(()) => {
                self.proxy
                    .metrics
                    .mirror_fetch(mirror, MirrorResult::Verified);
                info!(%mirror, %url, %registry, %repo, "cached from a mirror, verified");
                true
            }
            Err(e) => {
                self.proxy
                    .metrics
                    .mirror_fetch(mirror, MirrorResult::Failed);
                warn!(%mirror, %url, error = %e, "mirror's verified object not stored");
                false
            }
        }
    }

    /// Writes `resp`'s body to the waiting fill and checks it: its size and media type when
    /// it matched the digest.
    async fn fill(
        &self,
        resp: Response<Incoming>,
        writer: &mut FillWriter,
        done: &oneshot::Sender<bool>,
    ) -> Result<(Option<u64>, String), CacheError> {
        let size = content_length(resp.headers());
        if size.is_some_and(|size| !writer.reserve(size)) {
            let digest = writer.fill().digest.clone();
            let size = size.unwrap_or_default();
            return Err(CacheError::NoRoom { digest, size });
        }
        // The mirror's Content-Type is not taken on trust (clients pick their parser by the type
        // the cache stores): a blob is octet-stream, a manifest what its verified bytes say.
        let mut kept = (self.path.rsplit('/').nth(1) == Some("manifests")).then(Vec::new);
        self.copy(resp, writer, size, done, &mut kept).await?;
        writer.check(size)?;
        let media_type = match kept {
            None => "application/octet-stream".to_owned(),
            Some(body) => media_type_of(&body).ok_or_else(|| {
                CacheError::Upstream("the mirror's bytes for a manifest are not a manifest".into())
            })?,
        };
        Ok((size, media_type))
    }

    /// Writes the body to the fill's temp file; an error when it cannot be completed.
    async fn copy(
        &self,
        resp: Response<Incoming>,
        writer: &mut FillWriter,
        size: Option<u64>,
        done: &oneshot::Sender<bool>,
        kept: &mut Option<Vec<u8>>,
    ) -> Result<(), CacheError> {
        let digest = writer.fill().digest.clone();
        let mut body = resp.into_body();
        let (mut written, mut alone_since) = (0u64, None::<Instant>);
        loop {
            // The client that asked left and no other waits: the uplink is not spent for nobody.
            let waited = !done.is_closed() || writer.fill().readers() > 0;
            match (waited, alone_since) {
                (true, _) => alone_since = None,
                (false, None) => alone_since = Some(Instant::now()),
                (false, Some(t)) if t.elapsed() > ABANDONED_AFTER => {
                    return Err(CacheError::Upstream("every client left".into()));
                }
                (false, Some(_)) => {}
            }
            let frame = match tokio::time::timeout(BODY_IDLE_TIMEOUT, body.frame()).await {
                Ok(Some(Ok(frame))) => frame,
                Ok(None) => return Ok(()),
                Ok(Some(Err(e))) => return Err(CacheError::Upstream(format!("mirror body: {e}"))),
                Err(_) => {
                    let why = format!("no data from the mirror for {BODY_IDLE_TIMEOUT:?}");
                    return Err(CacheError::Upstream(why));
                }
            };
            let data = frame.into_data().unwrap_or_default();
            written += data.len() as u64;
            if let Some(expected) = size.filter(|s| written > *s) {
                // Longer than announced: not the object, whatever follows.
                let actual = written;
                return Err(CacheError::SizeMismatch {
                    digest,
                    expected,
                    actual,
                });
            }
            if let Some(kept) = kept.as_mut() {
                if kept.len() + data.len() > MAX_MANIFEST {
                    return Err(CacheError::Upstream("a manifest over 4 MiB".into()));
                }
                kept.extend_from_slice(&data);
            }
            writer.write(&data)?;
        }
    }
}
