//! The writing side of a fill ([`FillWriter`]), owned by the task that downloads: it reserves
//! room, writes and hashes the bytes, verifies and commits them (atomic rename), or, past the
//! room, relays the rest to the readers (see `fill.rs`). It knows the store only as a [`Sink`],
//! so that `store.rs` depends on it and not the other way round.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::files::{create_private_dirs, io_err, meta_path, meta_text, write_atomic, PRIVATE_FILE};
use super::fill::{Fill, FillState, Relayed, Seats};
use super::{Digest, Error, Hasher};
use crate::sync::Locked;

/// A fill tells the store what it has written (so that stored objects make room) every this
/// many bytes.
const WROTE_STEP: u64 = 8 << 20;
/// A relayed reader that takes no chunk for this long is dropped (the others are waiting).
const SEAT_STALL: std::time::Duration = std::time::Duration::from_secs(120);

/// What a fill asks of the store it fills (implemented by `Store`).
pub(super) trait Sink: Send + Sync {
    /// Sets aside room for `bytes` of `digest` within `cache.max_size`; false when it cannot.
    fn reserve(&self, digest: &Digest, bytes: u64) -> bool;
    /// `written` bytes of `digest` are on disk: stored objects make room for them.
    fn wrote(&self, digest: &Digest, written: u64);
    /// The disk is full: evict `bytes` beyond what the fills need.
    fn make_room(&self, bytes: u64);
    /// The fill stopped writing to disk: give back what it set aside beyond what it wrote.
    fn cap_reservation(&self, digest: &Digest);
    /// Give back all the fill set aside (it goes on uncached).
    fn release_reservation(&self, digest: &Digest);
    /// Where the object `digest` is stored.
    fn object_path(&self, digest: &Digest) -> PathBuf;
    /// The object is verified and in place: index it.
    fn committed(&self, digest: &Digest, size: u64, media_type: &str, refs: Vec<(String, String)>);
    /// The fill ended without a commit.
    fn ended(&self, digest: &Digest);
    /// A cache write failed (caching pauses).
    fn write_failed(&self, error: &Error);
    /// The content did not match its digest (counted).
    fn digest_mismatch(&self);
}

/// The writer's side of a relay: one slot ready in every seat, and the chunk held back.
struct Relay {
    seats: Vec<mpsc::OwnedPermit<Relayed>>,
    held: Option<Bytes>,
}

/// The writing side of a fill, owned by the task that downloads. Dropping it unfinished fails
/// the fill and removes the temp file.
pub struct FillWriter {
    store: Arc<dyn Sink>,
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
    /// A fill of `digest` into the new temp file `tmp`, for `store`.
    pub(super) fn create(
        store: Arc<dyn Sink>,
        digest: &Digest,
        tmp: PathBuf,
    ) -> Result<Self, Error> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(PRIVATE_FILE)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        let fill = Fill::new(digest, file);
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

    /// Marks where the bytes come from: another appliance of the fleet (`true`), or the
    /// upstream (`false`, the default; also after a takeover). See [`Fill::from_peer`].
    pub fn set_from_peer(&mut self, from_peer: bool) {
        (self.fill.from_peer).store(from_peer, std::sync::atomic::Ordering::Release);
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
        self.put(data, None)
    }

    /// [`write`](Self::write), and `kept` (the same bytes) goes to the fill's memory of its
    /// newest bytes, for the readers following closely.
    fn put(&mut self, data: &[u8], kept: Option<&Bytes>) -> Result<(), Error> {
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
        if let Some(kept) = kept {
            self.fill.recent.locked().push(self.written, kept.clone());
        }
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
            match self.put(&data, Some(&data)) {
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

    /// Before [`start`](Self::start), while no reader follows: whether what was written matches
    /// the digest (and `size`, when announced); a digest mismatch is counted. The fill goes on:
    /// [`finish`](Self::finish) commits it, or [`rewind`](Self::rewind) lets another source try.
    pub fn check(&mut self, size: Option<u64>) -> Result<(), Error> {
        self.size = size;
        self.verify()
    }

    /// Before [`start`](Self::start), while no reader follows: forgets what was written (temp
    /// file, hash, room set aside), so that another source may fill it anew.
    pub fn rewind(&mut self) -> Result<(), Error> {
        self.fill.file.set_len(0).map_err(io_err(&self.tmp))?;
        self.fill.recent.locked().clear();
        self.store.release_reservation(&self.fill.digest);
        (self.hasher, self.written, self.size) = (Hasher::new(), 0, None);
        Ok(())
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
        // A copy: `check` then `finish` verify the same bytes.
        let actual = self.hasher.clone().finish();
        if actual != expected {
            self.store.digest_mismatch();
            return Err(Error::DigestMismatch { expected, actual });
        }
        Ok(())
    }

    /// Verifies, releases the last bytes to the readers, then makes the object durable and
    /// commits it.
    fn commit(&mut self) -> Result<(), Error> {
        self.verify()?;
        if self.fill.verified.set(self.written).is_ok() {
            // Wakes the readers: the verified bytes are theirs while the disk catches up.
            self.fill.state.send_modify(|_| {});
        }
        let expected = self.fill.digest.clone();
        let target = self.store.object_path(&expected);
        let write = || -> std::io::Result<()> {
            // A write-back error: the readers still reading stop (see `Fill::unsynced`).
            (self.fill.file.sync_data()).inspect_err(|_| {
                (self.fill.unsynced).store(true, std::sync::atomic::Ordering::Release)
            })?;
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
        self.store.ended(&self.fill.digest);
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
