//! Reading a stored object ([`Reader`]): pinned while open (never evicted under a reader),
//! streamed whole or by range; an object not yet hashed by this process is hashed on the way and
//! its last chunk held back until the hash matched. It knows the store only as a [`Shelf`].

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;

use super::{chunk, Digest, Error, Hasher, CHUNK};

/// What a reader tells the store that holds its object (implemented by `Store`).
pub(super) trait Shelf: Send + Sync {
    /// The reader is done: the object may be evicted again.
    fn unpin(&self, digest: &Digest);
    /// The object was read whole and its hash matched.
    fn verified(&self, digest: &Digest);
    /// The object's content turned out wrong: drop it.
    fn discard(&self, digest: &Digest, why: &str);
}

/// A pinned, open stored object. Dropping it unpins.
pub struct Reader {
    file: Arc<File>,
    pub size: u64,
    pub media_type: String,
    pub digest: Digest,
    /// Not yet hashed in this process: hash while streaming the whole object.
    verify: bool,
    path: PathBuf,
    store: Arc<dyn Shelf>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.store.unpin(&self.digest);
    }
}

impl Reader {
    /// A reader of the open file `file` at `path`, pinned in `store` (unpinned when dropped).
    pub(super) fn new(
        file: File,
        path: PathBuf,
        info: (Digest, u64, String),
        verify: bool,
        store: Arc<dyn Shelf>,
    ) -> Self {
        let (digest, size, media_type) = info;
        Self {
            file: Arc::new(file),
            size,
            media_type,
            digest,
            verify,
            path,
            store,
        }
    }

    /// The object's byte at `offset` (`None` past its end or unreadable): evidence a CDN's
    /// ranged answer is compared with.
    pub fn byte_at(&self, offset: u64) -> Option<u8> {
        let mut b = [0u8; 1];
        (self.file.read_at(&mut b, offset).ok()? == 1).then_some(b[0])
    }

    /// The whole object into memory (for manifests, which are small).
    pub async fn read_all(self) -> Result<Bytes, Error> {
        use futures_util::TryStreamExt;
        let chunks: Vec<Bytes> = self.stream(None).try_collect().await?;
        Ok(chunks.concat().into())
    }

    /// Streams `range` (inclusive first..=last) or the whole object. A whole-object stream of
    /// an unverified object is hashed on the way and its last chunk held back until the hash
    /// matches; on a mismatch the object is dropped and the stream ends with an error.
    pub fn stream(
        self,
        range: Option<(u64, u64)>,
    ) -> impl Stream<Item = Result<Bytes, Error>> + Send {
        let (start, end) = range.map_or((0, self.size), |(a, b)| (a, b + 1));
        let hasher = (self.verify && range.is_none()).then(Hasher::new);
        let state = (self, start, end, hasher, None::<Bytes>);
        futures_util::stream::unfold(Some(state), |state| async move {
            let (reader, offset, end, mut hasher, held) = state?;
            if offset >= end {
                // Everything read: release the held-back chunk only if the hash matches.
                if let Some(h) = hasher.take() {
                    let actual = h.finish();
                    if actual != reader.digest {
                        (reader.store).discard(&reader.digest, "hash mismatch on read");
                        let e = Error::DigestMismatch {
                            expected: reader.digest.clone(),
                            actual,
                        };
                        return Some((Err(e), None));
                    }
                    reader.store.verified(&reader.digest);
                }
                return held.map(|chunk| (Ok(chunk), None));
            }
            let len = (end - offset).min(CHUNK as u64) as usize;
            let chunk = match chunk::read(reader.file.clone(), offset, len).await {
                Ok(chunk) => chunk,
                Err(e) => {
                    let e = Error::Io {
                        path: reader.path.clone(),
                        source: e,
                    };
                    return Some((Err(e), None));
                }
            };
            let next = offset + chunk.len() as u64;
            match hasher.as_mut() {
                Some(h) => {
                    h.update(&chunk);
                    // Emit the previous chunk; hold this one.
                    let out = held.unwrap_or_default();
                    Some((Ok(out), Some((reader, next, end, hasher, Some(chunk)))))
                }
                None => Some((Ok(chunk), Some((reader, next, end, None, None)))),
            }
        })
    }
}
