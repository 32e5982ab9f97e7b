//! A fill's shared side and its readers: one upstream download written to a temp file (by
//! [`FillWriter`](super::FillWriter), in `writer.rs`), which every concurrent reader streams from
//! as it grows. The last byte is released only after the digest matched, so a reader can never
//! receive a complete-looking body with wrong content. It is released before the object is made
//! durable and committed (fsync, rename): the readers do not wait for the disk, and a commit that
//! fails after that loses only the cached copy, never the readers' verified bytes.
//!
//! The newest bytes written also stay in memory for a while ([`Recent`]): a reader close behind
//! the writer takes them from there, without a read of the file (a syscall, a buffer and a copy
//! per chunk).
//!
//! A body of unknown length that outgrows the cache's room stops going to disk: the readers
//! already following it read the file up to there, then get the rest from the writer through a
//! small channel each (a *seat*, taken when the reader started), at the pace of the slowest;
//! nothing is committed, and the last chunk is again held back until the digest matched.

use std::collections::VecDeque;
use std::fs::File;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::{mpsc, watch};

use super::chunk;
use super::{Digest, Error, CHUNK};
use crate::sync::Locked;

/// Chunks a relayed reader may have waiting for it.
const SEAT_DEPTH: usize = 8;
/// How many of the newest bytes written a fill keeps in memory for the readers following it,
/// in at most [`RECENT_CHUNKS`] chunks (a chunk may pin a larger buffer it is a slice of: the
/// count bounds that too, and a trickle of tiny chunks).
const RECENT_MAX: usize = 1 << 20;
const RECENT_CHUNKS: usize = 16;

/// What a relayed reader receives after the file's part.
#[derive(Clone)]
pub(super) enum Relayed {
    Chunk(Bytes),
    /// The held-back last chunk: the digest matched.
    Last(Bytes),
    Failed(String),
}

/// The readers' seats: open while the fill writes to disk; taken (with the offset where the
/// file ends) once it relays.
pub(super) enum Seats {
    Open(Vec<mpsc::Sender<Relayed>>),
    Taken { at: u64 },
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
    pub(super) file: Arc<File>,
    pub(super) state: watch::Sender<FillState>,
    /// The (registry, repository) whose upstream answered with the object.
    pub(super) origin: std::sync::Mutex<Option<(String, String)>>,
    /// std Mutex, never held across .await.
    pub(super) seats: std::sync::Mutex<Seats>,
    /// The bytes come from another appliance of the fleet (which stores the object in the
    /// shared tier itself); set by [`FillWriter::set_from_peer`](super::FillWriter::set_from_peer).
    pub(super) from_peer: std::sync::atomic::AtomicBool,
    /// The object's size, set once its bytes matched the digest (before the commit): readers
    /// may then read to the end, whatever becomes of the commit.
    pub(super) verified: OnceLock<u64>,
    /// The commit's fsync of the file failed after the bytes were verified: what the page cache
    /// gives back may no longer be the bytes that were hashed, so readers still reading stop.
    pub(super) unsynced: std::sync::atomic::AtomicBool,
    /// The newest bytes written. std Mutex, never held across .await.
    pub(super) recent: std::sync::Mutex<Recent>,
}

/// The newest bytes of a fill's file (about [`RECENT_MAX`]), as the writer wrote them: chunks
/// that follow each other, each with its offset in the file.
#[derive(Default)]
pub(super) struct Recent {
    chunks: VecDeque<(u64, Bytes)>,
    bytes: usize,
}

impl Recent {
    /// `chunk` was written at `at` (right after the previous one).
    pub(super) fn push(&mut self, at: u64, chunk: Bytes) {
        self.bytes += chunk.len();
        self.chunks.push_back((at, chunk));
        while (self.bytes > RECENT_MAX || self.chunks.len() > RECENT_CHUNKS)
            && self.chunks.len() > 1
        {
            let (_, old) = self.chunks.pop_front().expect("more than one");
            self.bytes -= old.len();
        }
    }

    /// The file was truncated.
    pub(super) fn clear(&mut self) {
        *self = Self::default();
    }

    /// The bytes from `offset` to the end of the chunk that holds it, at most to `end`; `None`
    /// when they are no longer (or not yet) in memory.
    fn get(&self, offset: u64, end: u64) -> Option<Bytes> {
        // Readers follow close behind the writer: search from the newest.
        let (at, chunk) = (self.chunks.iter().rev())
            .find(|(at, chunk)| (*at..*at + chunk.len() as u64).contains(&offset))?;
        let to = (at + chunk.len() as u64).min(end);
        (offset < to).then(|| chunk.slice((offset - at) as usize..(to - at) as usize))
    }
}

impl Fill {
    /// A fill of `digest` into `file`, waiting for the upstream's answer.
    pub(super) fn new(digest: &Digest, file: File) -> Arc<Self> {
        let (state, _) = watch::channel(FillState::Waiting);
        Arc::new(Self {
            digest: digest.clone(),
            file: Arc::new(file),
            state,
            origin: std::sync::Mutex::default(),
            seats: std::sync::Mutex::new(Seats::Open(Vec::new())),
            from_peer: std::sync::atomic::AtomicBool::new(false),
            verified: OnceLock::new(),
            unsynced: std::sync::atomic::AtomicBool::new(false),
            recent: std::sync::Mutex::default(),
        })
    }

    /// The (registry, repository) the object is being fetched from, once the upstream answered.
    pub fn origin(&self) -> Option<(String, String)> {
        self.origin.locked().clone()
    }

    /// Whether the bytes came from another appliance of the fleet, not from the upstream: such
    /// a fill is not uploaded to the shared tier (its owner does that).
    pub fn from_peer(&self) -> bool {
        self.from_peer.load(std::sync::atomic::Ordering::Acquire)
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
            if let Some(&size) = self.fill.verified.get() {
                if self
                    .fill
                    .unsynced
                    .load(std::sync::atomic::Ordering::Acquire)
                {
                    return failed("the file failed to reach the disk".into());
                }
                return match self.offset < size {
                    true => self.read(size).await,
                    false => None,
                };
            }
            // While writing, the last byte written stays back until the digest matched.
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

    /// The next chunk of the file, up to `end`: from memory while the writer still has it.
    async fn read(mut self, end: u64) -> Step {
        let recent = self.fill.recent.locked().get(self.offset, end);
        if let Some(chunk) = recent {
            self.offset += chunk.len() as u64;
            return Some((Ok(chunk), Some(self)));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_keeps_the_newest_bytes_within_its_size_and_chunk_count() {
        let mut recent = Recent::default();
        // A trickle of tiny chunks: only the newest RECENT_CHUNKS stay.
        for i in 0..100u64 {
            recent.push(i, Bytes::from(vec![i as u8]));
        }
        assert_eq!(recent.chunks.len(), RECENT_CHUNKS);
        assert_eq!(recent.get(99, 100).as_deref(), Some(&[99u8][..]));
        assert_eq!(recent.get(100 - RECENT_CHUNKS as u64 - 1, 100), None);
        // Large chunks: at most about RECENT_MAX bytes, each served from its offset, up to `end`.
        let mut recent = Recent::default();
        let chunk = |at: u64| Bytes::from(vec![(at >> 18) as u8; 256 << 10]);
        for k in 0..8u64 {
            recent.push(k << 18, chunk(k << 18));
        }
        assert!(recent.bytes <= RECENT_MAX);
        let got = recent.get((7 << 18) + 10, (7 << 18) + 20).unwrap();
        assert_eq!(&got[..], &[7u8; 10][..]);
        assert_eq!(recent.get(0, 8 << 18), None, "the oldest are gone");
    }
}
