//! Uploads to the shared store: queued by the proxy once a fill from the upstream is verified
//! and committed, sent by one background task (a client never waits), the file hashed again
//! while it is read (a mismatch aborts), in parts beyond [`MULTIPART_OVER`]. While the store is
//! down they wait in a bounded pending set, sent once it answers again.

use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::{timeout_err, Error, SharedTier, Upload};
use super::{HEAD_TIMEOUT, MAX_PENDING, MULTIPART_OVER};
use crate::cache::{Digest, Hasher};
use crate::metrics::{TierOp, UploadResult};
use crate::sync::Locked;

/// The uploader looks at the pending set at least this often.
const RETRY_EVERY: Duration = Duration::from_millis(500);
/// Parts of a multipart upload in flight at once.
const PARTS_IN_FLIGHT: usize = 4;
/// Attempts of one upload that the store refuses (a 4xx) before it is dropped (counted).
pub(super) const MAX_REFUSED: u32 = 3;

impl SharedTier {
    /// Queues a verified local object for upload; never waits. When the queue is full the
    /// object joins the pending set, and when that is full it is dropped (counted).
    pub fn queue_upload(&self, digest: &Digest, path: &Path) {
        let upload = Upload {
            digest: digest.clone(),
            path: path.to_owned(),
            refused: 0,
        };
        if let Err(e) = self.queue.try_send(upload) {
            let upload = match e {
                mpsc::error::TrySendError::Full(u) | mpsc::error::TrySendError::Closed(u) => u,
            };
            self.park(upload);
        }
    }

    /// Starts the background uploader (once; later calls do nothing). It ends with the tier.
    pub fn start_uploads(self: &Arc<Self>) {
        let Some(receiver) = self.receiver.locked().take() else {
            return;
        };
        tokio::spawn(run(Arc::downgrade(self), receiver));
    }

    /// Objects waiting for the store.
    pub fn pending(&self) -> usize {
        self.pending.locked().len()
    }

    fn park(&self, upload: Upload) {
        let mut pending = self.pending.locked();
        let key = upload.digest.hex().to_owned();
        if pending.len() >= MAX_PENDING && !pending.contains_key(&key) {
            self.metrics.tier.upload(UploadResult::Dropped);
            return;
        }
        pending.insert(key, upload);
        self.metrics.tier.pending_uploads.set(pending.len() as i64);
    }

    fn unpark(&self) -> Option<Upload> {
        let mut pending = self.pending.locked();
        let first = pending.pop_first().map(|(_, u)| u);
        self.metrics.tier.pending_uploads.set(pending.len() as i64);
        first
    }

    /// Uploads one object, or parks it while the store is down. Whether the store took it (or
    /// the object needs nothing more).
    async fn send(&self, mut upload: Upload) -> bool {
        if self.health.is_down() {
            self.park(upload);
            return false;
        }
        match self.upload(&upload.digest, &upload.path).await {
            Ok(result) => {
                self.metrics.tier.upload(result);
                true
            }
            Err(e @ (Error::Local { .. } | Error::Mismatch { .. })) => {
                // The local copy went (evicted) or changed: nothing to upload.
                self.metrics.tier.upload(UploadResult::Mismatch);
                tracing::warn!(digest = %upload.digest, error = %e, "not uploaded to the shared store");
                true
            }
            Err(Error::Refused { .. }) if upload.refused + 1 >= MAX_REFUSED => {
                self.metrics.tier.upload(UploadResult::Failed);
                self.metrics.tier.upload(UploadResult::Dropped);
                tracing::warn!(digest = %upload.digest, "the shared store refused it {MAX_REFUSED} times: dropped");
                true
            }
            Err(e) => {
                self.metrics.tier.upload(UploadResult::Failed);
                upload.refused += matches!(e, Error::Refused { .. }) as u32;
                self.park(upload);
                false
            }
        }
    }

    /// Sends the pending uploads while the store takes them.
    async fn catch_up(&self) {
        while !self.health.is_down() {
            let Some(upload) = self.unpark() else { return };
            if !self.send(upload).await {
                return;
            }
        }
    }

    /// Uploads the verified file `path` of `digest` unless the store has it already (the
    /// uploader's work; public for tests against a real store).
    pub async fn upload(&self, digest: &Digest, path: &Path) -> Result<UploadResult, Error> {
        let key = self.key(digest);
        match tokio::time::timeout(HEAD_TIMEOUT, self.store.head(&key)).await {
            Ok(Ok(_)) => return Ok(UploadResult::Present),
            Ok(Err(object_store::Error::NotFound { .. })) => {}
            Ok(Err(source)) => return Err(self.failed_call(TierOp::Head, "HEAD", &key, source)),
            Err(_) => {
                let e = timeout_err("HEAD", &key, HEAD_TIMEOUT);
                return Err(self.failed_err(TierOp::Head, e));
            }
        }
        let local = |source| Error::Local {
            path: path.to_owned(),
            source,
        };
        let mut file = tokio::fs::File::open(path).await.map_err(local)?;
        let size = file.metadata().await.map_err(local)?.len();
        // Generous: 1 MiB/s and a minute.
        let deadline = Duration::from_secs(60 + size / (1 << 20));
        let put = async {
            match size > MULTIPART_OVER {
                true => self.put_parts(digest, path, &mut file).await,
                false => self.put_whole(digest, path, &mut file, size).await,
            }
        };
        match tokio::time::timeout(deadline, put).await {
            Ok(Ok(())) => {
                self.ok();
                tracing::info!(%digest, size, store = %self.label, "uploaded to the shared store");
                Ok(UploadResult::Uploaded)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(self.failed_err(TierOp::Put, timeout_err("PUT", &key, deadline))),
        }
    }

    /// One PUT of the whole (small) object, once its bytes hashed to the digest.
    async fn put_whole(
        &self,
        digest: &Digest,
        path: &Path,
        file: &mut tokio::fs::File,
        size: u64,
    ) -> Result<(), Error> {
        let mut data = Vec::with_capacity(size as usize);
        let read = file.read_to_end(&mut data).await;
        read.map_err(|source| Error::Local {
            path: path.to_owned(),
            source,
        })?;
        if Digest::of(&data) != *digest {
            return Err(mismatch(path, digest));
        }
        let key = self.key(digest);
        let put = self.store.put(&key, PutPayload::from(Bytes::from(data)));
        match put.await {
            Ok(_) => Ok(()),
            Err(source) => Err(self.failed_call(TierOp::Put, "PUT", &key, source)),
        }
    }

    /// A multipart upload, completed only once every byte read hashed to the digest; aborted
    /// otherwise (its parts never become an object).
    async fn put_parts(
        &self,
        digest: &Digest,
        path: &Path,
        file: &mut tokio::fs::File,
    ) -> Result<(), Error> {
        let key = self.key(digest);
        let fail = |source| self.failed_call(TierOp::Put, "PUT", &key, source);
        let upload = self.store.put_multipart(&key).await.map_err(fail)?;
        let mut parts = WriteMultipart::new_with_chunk_size(upload, MULTIPART_OVER as usize);
        let mut hasher = Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match file.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => n,
                Err(source) => {
                    let _ = parts.abort().await;
                    let path = path.to_owned();
                    return Err(Error::Local { path, source });
                }
            };
            hasher.update(&buf[..n]);
            if let Err(source) = parts.wait_for_capacity(PARTS_IN_FLIGHT).await {
                let _ = parts.abort().await;
                return Err(fail(source));
            }
            parts.write(&buf[..n]);
        }
        if hasher.finish() != *digest {
            let _ = parts.abort().await;
            return Err(mismatch(path, digest));
        }
        parts.finish().await.map(drop).map_err(fail)
    }
}

fn mismatch(path: &Path, digest: &Digest) -> Error {
    Error::Mismatch {
        path: path.to_owned(),
        digest: digest.clone(),
    }
}

/// The uploader: each queued object in turn, and the pending ones whenever the store answers.
async fn run(tier: Weak<SharedTier>, mut queue: mpsc::Receiver<Upload>) {
    loop {
        let next = tokio::time::timeout(RETRY_EVERY, queue.recv()).await;
        let Some(tier) = tier.upgrade() else { return };
        match next {
            Ok(Some(upload)) => {
                tier.send(upload).await;
            }
            Ok(None) => return,
            Err(_) => {}
        }
        tier.catch_up().await;
    }
}
