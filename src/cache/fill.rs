//! A fill: one upstream download written to a temp file, which every concurrent reader streams
//! from as it grows. The last byte is released only after the digest matched and the object was
//! committed, so a reader can never receive a complete-looking body with wrong content.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::watch;

use super::chunk;
use super::store::{
    create_private_dirs, io_err, meta_path, meta_text, write_atomic, Store, PRIVATE_FILE,
};
use super::{Digest, Error, Hasher, CHUNK};

/// A fill tells the store what it has written (so that stored objects make room) every this
/// many bytes.
const WROTE_STEP: u64 = 8 << 20;

/// Where a fill stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FillState {
    /// Waiting for the upstream's response head.
    Waiting,
    /// `written` bytes are in the temp file; `size` is the upstream's Content-Length, if any.
    Writing {
        size: Option<u64>,
        media_type: String,
        written: u64,
    },
    /// Verified and committed to the store.
    Done { size: u64, media_type: String },
    /// The upstream answered with something other than the object (a 401, a 404…): every
    /// reader has to ask the upstream for itself.
    Declined,
    /// The download or the verification failed.
    Failed(String),
}

/// The shared side of a fill.
pub struct Fill {
    pub digest: Digest,
    /// Read with `read_at` by every reader; the writer writes it with `write_at`. Stays valid
    /// after the commit renames the file.
    file: Arc<File>,
    state: watch::Sender<FillState>,
    /// The (registry, repository) whose upstream answered with the object.
    origin: std::sync::Mutex<Option<(String, String)>>,
}

impl Fill {
    /// The (registry, repository) the object is being fetched from, once the upstream answered.
    pub fn origin(&self) -> Option<(String, String)> {
        self.origin
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many clients are reading along (or waiting for the response head).
    pub fn readers(&self) -> usize {
        self.state.receiver_count()
    }

    pub fn state(&self) -> FillState {
        self.state.borrow().clone()
    }

    /// Waits until the upstream's response head has arrived (or the fill ended).
    pub async fn head(&self) -> FillState {
        let mut rx = self.state.subscribe();
        let state = rx.wait_for(|s| *s != FillState::Waiting).await;
        state.map_or(FillState::Failed("fill abandoned".into()), |s| s.clone())
    }

    /// Streams the object from the start, following the download.
    pub fn stream(self: Arc<Self>) -> impl Stream<Item = Result<Bytes, Error>> + Send {
        let rx = self.state.subscribe();
        futures_util::stream::unfold(Some((self, rx, 0u64)), |st| async move {
            let (fill, mut rx, offset) = st?;
            loop {
                let state = rx.borrow_and_update().clone();
                // While writing, the last byte written stays back until the commit.
                let readable = match state {
                    FillState::Writing { written, .. } => written.saturating_sub(1),
                    FillState::Done { size, .. } => size,
                    FillState::Failed(why) => return Some((Err(Error::Upstream(why)), None)),
                    FillState::Declined => {
                        return Some((Err(Error::Upstream("upstream declined".into())), None))
                    }
                    FillState::Waiting => 0,
                };
                if offset < readable {
                    let len = (readable - offset).min(CHUNK as u64) as usize;
                    let chunk = match chunk::read(fill.file.clone(), offset, len).await {
                        Ok(chunk) => chunk,
                        Err(e) => return Some((Err(Error::Upstream(e.to_string())), None)),
                    };
                    let next = offset + chunk.len() as u64;
                    return Some((Ok(chunk), Some((fill, rx, next))));
                }
                if matches!(state, FillState::Done { .. }) {
                    return None;
                }
                if rx.changed().await.is_err() {
                    return Some((Err(Error::Upstream("fill abandoned".into())), None));
                }
            }
        })
    }
}

/// The writing side of a fill, owned by the task that downloads. Dropping it unfinished fails
/// the fill and removes the temp file.
pub struct FillWriter {
    store: Arc<Store>,
    fill: Arc<Fill>,
    tmp: PathBuf,
    hasher: Hasher,
    written: u64,
    size: Option<u64>,
    media_type: String,
    refs: Vec<(String, String)>,
    ended: bool,
}

impl FillWriter {
    pub(super) fn create(store: Arc<Store>, digest: &Digest) -> Result<Self, Error> {
        let tmp = store.tmp_path(digest);
        store.check_fault().map_err(io_err(&tmp))?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(PRIVATE_FILE)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        let (state, _) = watch::channel(FillState::Waiting);
        let fill = Arc::new(Fill {
            digest: digest.clone(),
            file: Arc::new(file),
            state,
            origin: std::sync::Mutex::default(),
        });
        Ok(Self {
            store,
            fill,
            tmp,
            hasher: Hasher::new(),
            written: 0,
            size: None,
            media_type: String::new(),
            refs: Vec::new(),
            ended: false,
        })
    }

    pub fn fill(&self) -> &Arc<Fill> {
        &self.fill
    }

    /// The upstream answered with the object: readers may start.
    pub fn start(&mut self, size: Option<u64>, media_type: &str, registry: &str, repo: &str) {
        self.size = size;
        self.media_type = media_type.to_owned();
        self.refs = vec![(registry.to_owned(), repo.to_owned())];
        *self.fill.origin.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((registry.to_owned(), repo.to_owned()));
        self.fill.state.send_replace(FillState::Writing {
            size,
            media_type: media_type.to_owned(),
            written: 0,
        });
    }

    /// Sets `size` bytes aside within the cache's size cap (evicting to make room); false when
    /// they cannot be, and the object should not be cached.
    /// The blocks are allocated on disk too (`fallocate`), so that a full filesystem shows
    /// now, when the upstream's answer can still go to the client whole, and not halfway through.
    pub fn reserve(&mut self, size: u64) -> bool {
        if !self.store.reserve(&self.fill.digest, size) {
            return false;
        }
        use rustix::fs::{fallocate, FallocateFlags};
        let allocate = || fallocate(&*self.fill.file, FallocateFlags::KEEP_SIZE, 0, size);
        let mut allocated = allocate();
        if allocated == Err(rustix::io::Errno::NOSPC) {
            // The disk is full of stored objects that eviction would free as the bytes come:
            // free them now, once.
            self.store.make_room(size);
            allocated = allocate();
        }
        match allocated {
            Ok(()) => true,
            // A filesystem that cannot preallocate: writes will tell.
            Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => true,
            Err(e) => {
                tracing::warn!(digest = %self.fill.digest, size, error = %e, "no room on disk for the object: not cached");
                self.store.release_reservation(&self.fill.digest);
                false
            }
        }
    }

    /// The upstream did not answer with the object; readers must ask for themselves.
    pub fn decline(mut self) {
        self.end(FillState::Declined);
    }

    /// Appends downloaded bytes. A write error pauses caching (the caller should then fail).
    pub fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        if data.is_empty() {
            return Ok(());
        }
        let end = self.written + data.len() as u64;
        // In steps of 8 MiB where there is room (one lock per step, not per write).
        let reserve = |end: u64| {
            let digest = &self.fill.digest;
            self.store.reserve(digest, end.next_multiple_of(8 << 20))
                || self.store.reserve(digest, end)
        };
        if self.size.is_none_or(|size| end > size) && !reserve(end) {
            // A body longer than announced, or of unknown length, outgrew the cache's room.
            return Err(Error::NoRoom {
                digest: self.fill.digest.clone(),
                size: end,
            });
        }
        let result = self
            .store
            .check_fault()
            .and_then(|()| self.fill.file.write_all_at(data, self.written));
        if let Err(e) = result {
            let error = Error::Io {
                path: self.tmp.clone(),
                source: e,
            };
            self.store.write_failed(&error);
            return Err(error);
        }
        self.hasher.update(data);
        let before = self.written;
        self.written += data.len() as u64;
        let written = self.written;
        if before / WROTE_STEP != written / WROTE_STEP {
            self.store.wrote(&self.fill.digest, written);
        }
        self.fill.state.send_modify(|s| {
            if let FillState::Writing { written: w, .. } = s {
                *w = written;
            }
        });
        Ok(())
    }

    /// Verifies size and digest, then commits the object to the store.
    pub fn finish(mut self) -> Result<(), Error> {
        let result = self.commit();
        match &result {
            Ok(()) => {
                self.ended = true;
                self.fill.state.send_replace(FillState::Done {
                    size: self.written,
                    media_type: self.media_type.clone(),
                });
            }
            Err(e) => self.end(FillState::Failed(e.to_string())),
        }
        result
    }

    fn commit(&mut self) -> Result<(), Error> {
        let expected = self.fill.digest.clone();
        if let Some(size) = self.size.filter(|s| *s != self.written) {
            return Err(Error::SizeMismatch {
                digest: expected,
                expected: size,
                actual: self.written,
            });
        }
        let actual = std::mem::take(&mut self.hasher).finish();
        if actual != expected {
            self.store.metrics.cache_digest_mismatches.inc();
            return Err(Error::DigestMismatch { expected, actual });
        }
        let target = self.store.object_path(&expected);
        let write = || -> std::io::Result<()> {
            self.fill.file.sync_data()?;
            create_private_dirs(target.parent().expect("object paths have a parent"))?;
            write_atomic(
                &meta_path(&target),
                meta_text(&self.media_type, &self.refs).as_bytes(),
            )?;
            fs::rename(&self.tmp, &target)
        };
        if let Err(e) = write() {
            let error = Error::Io {
                path: target,
                source: e,
            };
            self.store.write_failed(&error);
            return Err(error);
        }
        let refs = std::mem::take(&mut self.refs);
        self.store
            .committed(&expected, self.written, &self.media_type, refs);
        Ok(())
    }

    /// The download failed.
    pub fn fail(mut self, why: String) {
        self.end(FillState::Failed(why));
    }

    fn end(&mut self, state: FillState) {
        if self.ended {
            return;
        }
        self.ended = true;
        let _ = fs::remove_file(&self.tmp);
        self.store.fill_ended(&self.fill.digest);
        self.fill.state.send_replace(state);
    }
}

impl Drop for FillWriter {
    fn drop(&mut self) {
        self.end(FillState::Failed("the download was abandoned".into()));
    }
}
