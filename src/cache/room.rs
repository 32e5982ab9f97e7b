//! Room within `cache.max_size`: fills reserve what they may write and are admitted while their
//! promises fit; stored objects are evicted least-recently-used for the bytes as they are
//! written (not for promises), and never while pinned by a reader or a fill.

use std::time::SystemTime;

use super::index::{Doomed, State};
use super::store::Store;
use super::Digest;

impl Store {
    /// Admits a fill of `digest` that may write `bytes` (more, if it already has some): false
    /// when the fills under way would then promise more than `max_size` (the fill should then
    /// not be cached). Nothing is evicted yet: see [`Store::wrote`].
    pub(super) fn reserve(&self, digest: &Digest, bytes: u64) -> bool {
        let mut state = self.lock();
        let (had, written) = state.reserved.get(digest).copied().unwrap_or((0, 0));
        let more = bytes.saturating_sub(had);
        if bytes > self.max_size || state.reserved_total + more > self.max_size {
            return false;
        }
        state.reserved_total += more;
        state.reserved.insert(digest.clone(), (had + more, written));
        true
    }

    /// The fill of `digest` has written `written` bytes: stored objects make room for them.
    pub(super) fn wrote(&self, digest: &Digest, written: u64) {
        let mut doomed = Doomed::default();
        let mut guard = self.lock();
        let state = &mut *guard;
        if let Some((_, w)) = state.reserved.get_mut(digest) {
            state.written_total += written.saturating_sub(*w);
            *w = written.max(*w);
        }
        self.evict(state, &mut doomed);
        drop(guard);
        self.bury(doomed);
    }

    /// The disk itself is full: evicts `bytes` more than the fills' written bytes need.
    pub(super) fn make_room(&self, bytes: u64) {
        let mut doomed = Doomed::default();
        let mut state = self.lock();
        state.written_total += bytes;
        self.evict(&mut state, &mut doomed);
        state.written_total -= bytes;
        drop(state);
        self.bury(doomed);
    }

    /// A fill that stopped writing to disk: what it set aside beyond the bytes it wrote is
    /// given back (those stay counted until it ends).
    pub(super) fn cap_reservation(&self, digest: &Digest) {
        let mut guard = self.lock();
        let state = &mut *guard;
        if let Some((reserved, written)) = state.reserved.get_mut(digest) {
            let spare = reserved.saturating_sub(*written);
            *reserved -= spare;
            state.reserved_total -= spare;
        }
    }

    /// Gives back what [`Store::reserve`] set aside for `digest` (the fill goes on uncached).
    pub(super) fn release_reservation(&self, digest: &Digest) {
        self.lock().unreserve(digest);
    }

    /// Evicts least-recently-used, unpinned objects until the total fits `max_size`.
    /// Fills under way count with the bytes they have written.
    pub(super) fn evict(&self, state: &mut State, doomed: &mut Doomed) {
        let fits = |state: &State| state.total + state.written_total <= self.max_size;
        if fits(state) {
            return;
        }
        let mut candidates: Vec<(SystemTime, Digest)> = (state.objects.iter())
            .filter(|(_, e)| e.pins == 0)
            .map(|(d, e)| (e.last_used, d.clone()))
            .collect();
        candidates.sort();
        for (_, digest) in candidates {
            if fits(state) {
                break;
            }
            tracing::info!(%digest, "evicted (cache.max_size)");
            self.metrics.cache_evictions.inc();
            state.remove(&self.dir, &digest, doomed);
        }
    }

    pub(super) fn gauge(&self, state: &State) {
        let m = &self.metrics;
        m.cache_stored_bytes
            .set(i64::try_from(state.total).unwrap_or(i64::MAX));
        m.cache_stored_objects.set(state.objects.len() as i64);
    }
}

impl State {
    /// A fill ended (committed or not): it no longer counts.
    pub(super) fn release(&mut self, digest: &Digest) {
        self.fills.remove(digest);
        self.fill_registry.remove(digest);
        self.unreserve(digest);
    }

    fn unreserve(&mut self, digest: &Digest) {
        let (reserved, written) = self.reserved.remove(digest).unwrap_or((0, 0));
        self.reserved_total -= reserved;
        self.written_total -= written;
    }
}
