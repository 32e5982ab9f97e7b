//! A fill: one upstream download written to a temp file, which every concurrent reader streams
//! from as it grows. The last byte is released only after the digest matched and the object was
//! committed, so a reader can never receive a complete-looking body with wrong content.
//!
//! A body of unknown length that outgrows the cache's room stops going to disk: the readers
//! already following it read the file up to there, then get the rest from the writer through a
//! small channel each (a *seat*, taken when the reader started), at the pace of the slowest;
//! nothing is committed, and the last chunk is again held back until the digest matched.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::{mpsc, watch};

use super::chunk;
use super::files::{create_private_dirs, io_err, meta_path, meta_text, write_atomic, PRIVATE_FILE};
use super::store::Store;
use super::{Digest, Error, Hasher, CHUNK};
use crate::sync::Locked;

/// A fill tells the store what it has written (so that stored objects make room) every this
/// many bytes.
const WROTE_STEP: u64 = 8 << 20;
/// Chunks a relayed reader may have waiting for it.
const SEAT_DEPTH: usize = 8;
/// A relayed reader that takes no chunk for this long is dropped (the others are waiting).
const SEAT_STALL: std::time::Duration = std::time::Duration::from_secs(120);

/// What a relayed reader receives after the file's part.
#[derive(Clone)]
enum Relayed {
    Chunk(Bytes),
    /// The held-back last chunk: the digest matched.
    Last(Bytes),
    Failed(String),
}

/// The readers' seats: open while the fill writes to disk; taken (with the offset where the
/// file ends) once it relays.
enum Seats {
    Open(Vec<mpsc::Sender<Relayed>>),
    Taken { at: u64 },
}

/// The writer's side of a relay: one slot ready in every seat, and the chunk held back.
struct Relay {
    seats: Vec<mpsc::OwnedPermit<Relayed>>,
    held: Option<Bytes>,
}

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
    /// std Mutex, never held across .await.
    seats: std::sync::Mutex<Seats>,
}

impl Fill {
    /// The (registry, repository) the object is being fetched from, once the upstream answered.
    pub fn origin(&self) -> Option<(String, String)> {
        self.origin.locked().clone()
    }

    /// How many clients are reading along (or waiting for the response head).
    pub fn readers(&self) -> usize {
        self.state.receiver_count()
    }

    pub fn state(&self) -> FillState {
        self.state.borrow().clone()
    }

    /// Waits until the upstream's response head has arrived (or the fill ended). A fill that
    /// relays (it outgrew the cache) is `Declined` for a reader that has not started yet.
    pub async fn head(&self) -> FillState {
        let mut rx = self.state.subscribe();
        let state = rx.wait_for(|s| *s != FillState::Waiting).await;
        let state = state.map_or(FillState::Failed("fill abandoned".into()), |s| s.clone());
        match self.relayed_from() {
            Some(_) => FillState::Declined,
            None => state,
        }
    }

    /// Streams the object from the start, following the download. The reader's seat is taken
    /// now: a reader must start before the fill outgrows the cache to be relayed to.
    pub fn stream(self: Arc<Self>) -> impl Stream<Item = Result<Bytes, Error>> + Send {
        let follow = Follow {
            rx: self.state.subscribe(),
            seat: self.take_seat(),
            fill: self,
            offset: 0,
        };
        futures_util::stream::unfold(Some(follow), |follow| async move { follow?.next().await })
    }

    fn take_seat(&self) -> Option<mpsc::Receiver<Relayed>> {
        let mut seats = self.seats.locked();
        let Seats::Open(senders) = &mut *seats else {
            return None;
        };
        senders.retain(|tx| !tx.is_closed());
        let (tx, rx) = mpsc::channel(SEAT_DEPTH);
        senders.push(tx);
        Some(rx)
    }

    /// Where the file ends, once the fill relays.
    fn relayed_from(&self) -> Option<u64> {
        match *self.seats.locked() {
            Seats::Taken { at } => Some(at),
            Seats::Open(_) => None,
        }
    }
}

/// One reader following a fill.
struct Follow {
    fill: Arc<Fill>,
    rx: watch::Receiver<FillState>,
    offset: u64,
    seat: Option<mpsc::Receiver<Relayed>>,
}

type Step = Option<(Result<Bytes, Error>, Option<Follow>)>;

impl Follow {
    async fn next(mut self) -> Step {
        loop {
            let state = self.rx.borrow_and_update().clone();
            if let Some(at) = self.fill.relayed_from() {
                return self.relayed(at).await;
            }
            // While writing, the last byte written stays back until the commit.
            let readable = match state {
                FillState::Writing { written, .. } => written.saturating_sub(1),
                FillState::Done { size, .. } => size,
                FillState::Failed(why) => return failed(why),
                FillState::Declined => return failed("upstream declined".into()),
                FillState::Waiting => 0,
            };
            if self.offset < readable {
                return self.read(readable).await;
            }
            if matches!(state, FillState::Done { .. }) {
                return None;
            }
            if self.rx.changed().await.is_err() {
                return failed("fill abandoned".into());
            }
        }
    }

    /// The next chunk of the file, up to `end`.
    async fn read(mut self, end: u64) -> Step {
        let len = (end - self.offset).min(CHUNK as u64) as usize;
        match chunk::read(self.fill.file.clone(), self.offset, len).await {
            Ok(chunk) => {
                self.offset += chunk.len() as u64;
                Some((Ok(chunk), Some(self)))
            }
            Err(e) => failed(e.to_string()),
        }
    }

    /// The file up to `at`, then what the writer relays to this reader's seat.
    async fn relayed(mut self, at: u64) -> Step {
        if self.offset < at {
            return self.read(at).await;
        }
        let Some(seat) = self.seat.as_mut() else {
            return failed("the download outgrew the cache before this reader started".into());
        };
        match seat.recv().await {
            Some(Relayed::Chunk(chunk)) => Some((Ok(chunk), Some(self))),
            Some(Relayed::Last(chunk)) => Some((Ok(chunk), None)),
            Some(Relayed::Failed(why)) => failed(why),
            None => failed("fill abandoned".into()),
        }
    }
}

fn failed(why: String) -> Step {
    Some((Err(Error::Upstream(why)), None))
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
    /// Set once the body outgrew the cache: the rest goes to the readers only.
    relay: Option<Relay>,
}

impl FillWriter {
    pub(super) fn create(store: Arc<Store>, digest: &Digest) -> Result<Self, Error> {
        let tmp = store.tmp_path(digest);
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
            seats: std::sync::Mutex::new(Seats::Open(Vec::new())),
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
            relay: None,
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
        *self.fill.origin.locked() = Some((registry.to_owned(), repo.to_owned()));
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
        let result = self.fill.file.write_all_at(data, self.written);
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

    /// Like [`FillWriter::write`], except that a body that outgrows the cache's room (one of
    /// unknown length) goes on to the readers that started before, uncached: what it promised
    /// beyond the bytes on disk is given back, and those stay counted until the fill ends.
    /// An error when no reader is left to relay to.
    pub async fn write_or_relay(&mut self, data: Bytes) -> Result<(), Error> {
        if self.relay.is_none() {
            match self.write(&data) {
                Err(Error::NoRoom { .. }) => self.start_relay().await?,
                done => return done,
            }
        }
        self.relay_chunk(data).await
    }

    async fn start_relay(&mut self) -> Result<(), Error> {
        let at = self.written;
        let taken = std::mem::replace(&mut *self.fill.seats.locked(), Seats::Taken { at });
        let Seats::Open(senders) = taken else {
            unreachable!("seats are taken once, here")
        };
        let digest = self.fill.digest.clone();
        self.store.wrote(&digest, at);
        self.store.cap_reservation(&digest);
        // Readers hold the file open; its name can go.
        let _ = fs::remove_file(&self.tmp);
        self.fill.state.send_modify(|_| {});
        let seats = take_slots(senders).await;
        tracing::info!(%digest, at, readers = seats.len(), "the download outgrew the cache's room: relayed to its readers, not cached");
        if seats.is_empty() {
            return Err(Error::NoRoom { digest, size: at });
        }
        self.relay = Some(Relay { seats, held: None });
        Ok(())
    }

    async fn relay_chunk(&mut self, data: Bytes) -> Result<(), Error> {
        self.hasher.update(&data);
        self.written += data.len() as u64;
        let relay = self.relay.as_mut().expect("relaying");
        let Some(chunk) = relay.held.replace(data) else {
            return Ok(());
        };
        let senders = (relay.seats.drain(..))
            .map(|slot| slot.send(Relayed::Chunk(chunk.clone())))
            .collect();
        relay.seats = take_slots(senders).await;
        match relay.seats.is_empty() {
            true => Err(Error::Upstream("every reader left".into())),
            false => Ok(()),
        }
    }

    /// Verifies size and digest, then commits the object to the store. A fill that relays
    /// sends its last chunk to its readers when the digest matched, and ends with `NoRoom`.
    pub fn finish(mut self) -> Result<(), Error> {
        if let Some(relay) = self.relay.take() {
            return self.finish_relay(relay);
        }
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

    fn finish_relay(mut self, relay: Relay) -> Result<(), Error> {
        let verified = self.verify();
        let last = match &verified {
            Ok(()) => Relayed::Last(relay.held.unwrap_or_default()),
            Err(e) => Relayed::Failed(e.to_string()),
        };
        for slot in relay.seats {
            slot.send(last.clone());
        }
        self.end(FillState::Declined);
        verified?;
        Err(Error::NoRoom {
            digest: self.fill.digest.clone(),
            size: self.written,
        })
    }

    /// Checks the size (when announced) and the digest of what was written.
    fn verify(&mut self) -> Result<(), Error> {
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
        Ok(())
    }

    fn commit(&mut self) -> Result<(), Error> {
        self.verify()?;
        let expected = self.fill.digest.clone();
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
        if let (Some(relay), FillState::Failed(why)) = (self.relay.take(), &state) {
            for slot in relay.seats {
                slot.send(Relayed::Failed(why.clone()));
            }
        }
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

/// A free slot in each seat whose reader takes chunks, waiting for them (the slowest sets the
/// pace); a reader that stalls for [`SEAT_STALL`] or left loses its seat.
async fn take_slots(senders: Vec<mpsc::Sender<Relayed>>) -> Vec<mpsc::OwnedPermit<Relayed>> {
    let waits =
        (senders.into_iter()).map(|tx| tokio::time::timeout(SEAT_STALL, tx.reserve_owned()));
    let slots = futures_util::future::join_all(waits).await;
    slots.into_iter().filter_map(|s| s.ok()?.ok()).collect()
}
