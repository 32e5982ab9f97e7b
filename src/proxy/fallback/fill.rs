//! One object's download from a mirror into the store, in its own task: the body is written while
//! the fill still waits (no reader can follow it), then the fill starts and finishes at once, so
//! that readers see nothing before the digest matched (see the parent module).

use std::sync::Arc;

use http::header;
use http::Response;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{info, warn};

use super::content_length;
use crate::cache::{Error as CacheError, FillWriter};
use crate::metrics::MirrorResult;
use crate::proxy::download::{ABANDONED_AFTER, BODY_IDLE_TIMEOUT};
use crate::proxy::upstream::redact;
use crate::proxy::Proxy;

/// A download from one mirror.
pub(super) struct MirrorFill {
    pub proxy: Arc<Proxy>,
    /// The mirror's label (`host[:port]`).
    pub mirror: String,
    pub url: String,
    pub registry: String,
    pub repo: String,
}

impl MirrorFill {
    /// Fills `writer` from `resp`; tells `done` whether the object is verified and stored.
    pub async fn run(
        self,
        resp: Response<Incoming>,
        writer: FillWriter,
        done: oneshot::Sender<bool>,
    ) {
        let result = self.fill(resp, writer, &done).await;
        let (outcome, stored) = match &result {
            Ok(()) => (MirrorResult::Verified, true),
            Err(CacheError::DigestMismatch { .. } | CacheError::SizeMismatch { .. }) => {
                (MirrorResult::Mismatch, false)
            }
            Err(_) => (MirrorResult::Failed, false),
        };
        self.proxy.metrics.mirror_fetch(&self.mirror, outcome);
        let (mirror, url) = (&self.mirror, redact(&self.url));
        match result {
            Ok(()) => {
                info!(%mirror, %url, registry = %self.registry, repo = %self.repo, "cached from a mirror, verified")
            }
            Err(e) => {
                warn!(%mirror, %url, error = %e, "mirror's object refused: not stored, not served")
            }
        }
        let _ = done.send(stored);
    }

    async fn fill(
        &self,
        resp: Response<Incoming>,
        mut writer: FillWriter,
        done: &oneshot::Sender<bool>,
    ) -> Result<(), CacheError> {
        let h = resp.headers();
        let size = content_length(h);
        let media_type = (h.get(header::CONTENT_TYPE))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_owned();
        if size.is_some_and(|size| !writer.reserve(size)) {
            let digest = writer.fill().digest.clone();
            writer.fail("no room within cache.max_size".into());
            return Err(CacheError::NoRoom {
                digest,
                size: size.unwrap_or_default(),
            });
        }
        if let Err(e) = self.copy(resp, &mut writer, size, done).await {
            writer.fail(e.to_string());
            return Err(e);
        }
        // Only now may readers follow the fill: it is whole, and verified before it is Done.
        writer.start(size, &media_type, &self.registry, &self.repo);
        writer.finish()
    }

    /// Writes the body to the fill's temp file; an error when it cannot be completed.
    async fn copy(
        &self,
        resp: Response<Incoming>,
        writer: &mut FillWriter,
        size: Option<u64>,
        done: &oneshot::Sender<bool>,
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
            writer.write(&data)?;
        }
    }
}
