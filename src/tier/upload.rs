//! Uploads to the shared store: queued by the proxy once a fill from the upstream is verified
//! and committed, sent by a background task two at a time (a client never waits), the file
//! read and hashed again on a blocking thread (a mismatch aborts), in parts beyond
//! [`MULTIPART_OVER`] (aborted on any failure or at the deadline: no orphan parts). A store
//! that refuses an upload (a 4xx) is not down; after a few refusals the upload is dropped. While the store is
//! down they wait in a bounded pending set, sent once it answers again.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

use super::{timeout_err, Error, SharedTier, Upload};
use super::{HEAD_TIMEOUT, MAX_PENDING, MULTIPART_OVER};
use crate::cache::{Digest, Hasher};
use crate::metrics::{TierOp, UploadResult};
use crate::sync::Locked;

/// The uploader looks at the pending set at least this often.
const RETRY_EVERY: Duration = Duration::from_millis(500);
/// Parts of a multipart upload in flight at once.
const PARTS_IN_FLIGHT: usize = 4;
/// Uploads sent at once.
const UPLOADS_AT_ONCE: usize = 2;
/// What a multipart upload reads from its file at a time.
const READ_CHUNK: usize = 4 << 20;
/// An abort that takes longer is left to the bucket's lifecycle rules.
const ABORT_TIMEOUT: Duration = Duration::from_secs(10);
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
        if !self.health.may_ask() {
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
        let file = tokio::fs::File::open(path).await.map_err(local)?;
        let size = file.metadata().await.map_err(local)?.len();
        let file = file.into_std().await;
        // Generous: 1 MiB/s and a minute.
        let limit = Duration::from_secs(60 + size / (1 << 20));
        match size > MULTIPART_OVER {
            true => self.put_parts(digest, path, file, limit).await?,
            false => self.put_whole(digest, path, file, limit).await?,
        }
        self.ok();
        tracing::info!(%digest, size, store = %self.label, "uploaded to the shared store");
        Ok(UploadResult::Uploaded)
    }

    /// One PUT of the whole (small) object, once its bytes hashed to the digest (read and
    /// hashed off the runtime's threads).
    async fn put_whole(
        &self,
        digest: &Digest,
        path: &Path,
        file: std::fs::File,
        limit: Duration,
    ) -> Result<(), Error> {
        let at = Instant::now() + limit;
        let data = read_whole(file, path, digest).await?;
        let key = self.key(digest);
        let put = self.store.put(&key, PutPayload::from(data));
        match tokio::time::timeout_at(at, put).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(source)) => Err(self.failed_call(TierOp::Put, "PUT", &key, source)),
            Err(_) => Err(self.timed_out(&key, limit)),
        }
    }

    /// A multipart upload, completed only once every byte read hashed to the digest; aborted
    /// otherwise, and when it outlasts `limit` (its parts never become an object, and S3 keeps
    /// no orphan parts).
    async fn put_parts(
        &self,
        digest: &Digest,
        path: &Path,
        file: std::fs::File,
        limit: Duration,
    ) -> Result<(), Error> {
        let at = Instant::now() + limit;
        let key = self.key(digest);
        let fail = |source| self.failed_call(TierOp::Put, "PUT", &key, source);
        let upload = match tokio::time::timeout_at(at, self.store.put_multipart(&key)).await {
            Ok(started) => started.map_err(fail)?,
            Err(_) => return Err(self.timed_out(&key, limit)),
        };
        let mut parts = WriteMultipart::new_with_chunk_size(upload, MULTIPART_OVER as usize);
        let reading = Reading {
            file,
            hasher: Hasher::new(),
            path: path.to_owned(),
        };
        let sent = tokio::time::timeout_at(at, send_parts(reading, digest, &mut parts)).await;
        let sent = match sent {
            Ok(sent) => sent.map_err(|e| e.into_error(fail)),
            Err(_) => Err(self.timed_out(&key, limit)),
        };
        if let Err(e) = sent {
            let _ = tokio::time::timeout(ABORT_TIMEOUT, parts.abort()).await;
            return Err(e);
        }
        // Every part is in: what is left is the completion.
        match tokio::time::timeout_at(at, parts.finish()).await {
            Ok(done) => done.map(drop).map_err(fail),
            Err(_) => Err(self.timed_out(&key, limit)),
        }
    }

    fn timed_out(&self, key: &object_store::path::Path, limit: Duration) -> Error {
        self.failed_err(TierOp::Put, timeout_err("PUT", key, limit))
    }
}

/// Why the parts were not all sent: the store's error, or ours.
enum NotSent {
    Store(object_store::Error),
    Local(Error),
}

impl NotSent {
    fn into_error(self, store: impl FnOnce(object_store::Error) -> Error) -> Error {
        match self {
            Self::Store(e) => store(e),
            Self::Local(e) => e,
        }
    }
}

/// Reads the file into `parts` and waits until every part is sent; an error when the file
/// does not hash to `digest`, could not be read, or a part failed.
async fn send_parts(
    mut reading: Reading,
    digest: &Digest,
    parts: &mut WriteMultipart,
) -> Result<(), NotSent> {
    loop {
        let chunk;
        (reading, chunk) = reading.next().await.map_err(NotSent::Local)?;
        if chunk.is_empty() {
            break;
        }
        parts
            .wait_for_capacity(PARTS_IN_FLIGHT)
            .await
            .map_err(NotSent::Store)?;
        parts.put(chunk);
    }
    if reading.hasher.finish() != *digest {
        return Err(NotSent::Local(mismatch(&reading.path, digest)));
    }
    parts.wait_for_capacity(0).await.map_err(NotSent::Store)
}

/// A local file read and hashed a chunk at a time, off the runtime's threads.
struct Reading {
    file: std::fs::File,
    hasher: Hasher,
    path: PathBuf,
}

impl Reading {
    /// The next chunk (empty at the end), hashed.
    async fn next(mut self) -> Result<(Self, Bytes), Error> {
        let path = self.path.clone();
        let read = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; READ_CHUNK];
            let n = self.file.read(&mut buf)?;
            buf.truncate(n);
            self.hasher.update(&buf);
            Ok((self, Bytes::from(buf)))
        });
        read.await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
            .map_err(|source| Error::Local { path, source })
    }
}

/// The whole file, once it hashed to `digest` (read and hashed off the runtime's threads).
async fn read_whole(mut file: std::fs::File, path: &Path, digest: &Digest) -> Result<Bytes, Error> {
    let expected = digest.clone();
    let read = tokio::task::spawn_blocking(move || {
        let mut data = Vec::new();
        file.read_to_end(&mut data)?;
        Ok((Digest::of(&data) == expected).then(|| Bytes::from(data)))
    });
    match read.await.unwrap_or_else(|e| Err(std::io::Error::other(e))) {
        Ok(Some(data)) => Ok(data),
        Ok(None) => Err(mismatch(path, digest)),
        Err(source) => Err(Error::Local {
            path: path.to_owned(),
            source,
        }),
    }
}

fn mismatch(path: &Path, digest: &Digest) -> Error {
    Error::Mismatch {
        path: path.to_owned(),
        digest: digest.clone(),
    }
}

/// The uploader: the queued objects, [`UPLOADS_AT_ONCE`] at a time (one huge layer does not
/// hold back the others), and the pending ones whenever the store answers.
async fn run(tier: Weak<SharedTier>, mut queue: mpsc::Receiver<Upload>) {
    let lanes = Arc::new(Semaphore::new(UPLOADS_AT_ONCE));
    loop {
        let next = tokio::time::timeout(RETRY_EVERY, queue.recv()).await;
        let Some(tier) = tier.upgrade() else { return };
        match next {
            Ok(Some(upload)) => {
                let Ok(lane) = lanes.clone().acquire_owned().await else {
                    return;
                };
                let tier = tier.clone();
                tokio::spawn(async move {
                    tier.send(upload).await;
                    drop(lane);
                });
            }
            Ok(None) => return,
            Err(_) => {}
        }
        tier.catch_up().await;
    }
}
