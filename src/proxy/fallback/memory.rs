//! What the mirrors did wrong, remembered so that it is not paid for again on the next request:
//! - a mirror whose bytes for a digest did not match is not asked for that digest again for
//!   [`MISMATCH_TTL`] (at most [`MAX_MISMATCHES`] such pairs are kept; past it the one that expires
//!   first goes), so that with `mirrors_first` a bad copy is not downloaded on every request;
//! - a mirror that failed [`FAILURES_BEFORE_BACKOFF`] times in a row (unreachable, 5xx, 429) is not
//!   asked at all for a while: [`BACKOFF_MIN`], doubled at each further failure up to
//!   [`BACKOFF_MAX`]; once it is due, the next request asks it again, and any answer that is not a
//!   failure (a 404 too: the mirror is up) clears its record.
//!
//! One entry per configured mirror at most in the backoff table; a reload forgets everything (the
//! operator who mended or replaced a mirror reloads). Times are tokio's, so that tests move them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::cache::Digest;
use crate::sync::Locked;

/// How long a (mirror, digest) whose bytes did not match is skipped.
pub const MISMATCH_TTL: Duration = Duration::from_secs(30 * 60);
/// At most this many (mirror, digest) mismatches are remembered.
pub const MAX_MISMATCHES: usize = 4096;
/// Failures in a row before a mirror is skipped.
pub const FAILURES_BEFORE_BACKOFF: u32 = 3;
/// The first backoff; doubled at each further failure.
pub const BACKOFF_MIN: Duration = Duration::from_secs(30);
/// The longest backoff.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10 * 60);

/// Why a mirror is not asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Its bytes for this digest did not match, within [`MISMATCH_TTL`].
    Mismatch,
    /// It failed repeatedly and is backed off.
    Backoff,
}

/// The memory; std Mutex, never held across .await.
#[derive(Default)]
pub struct MirrorMemory {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// (mirror, digest) → until when it is skipped.
    mismatches: HashMap<(String, Digest), Instant>,
    /// mirror → its failures in a row and, once backed off, until when.
    failing: HashMap<String, Failing>,
}

#[derive(Clone, Copy)]
struct Failing {
    failures: u32,
    until: Option<Instant>,
}

impl MirrorMemory {
    /// Whether `mirror` should not be asked for `digest` now, and why.
    pub fn skip(&self, mirror: &str, digest: &Digest) -> Option<Skip> {
        let now = Instant::now();
        let inner = self.inner.locked();
        let failing = inner.failing.get(mirror).and_then(|f| f.until);
        if failing.is_some_and(|until| now < until) {
            return Some(Skip::Backoff);
        }
        let key = (mirror.to_owned(), digest.clone());
        let mismatch = inner.mismatches.get(&key);
        mismatch
            .is_some_and(|until| now < *until)
            .then_some(Skip::Mismatch)
    }

    /// `mirror`'s bytes for `digest` did not match.
    pub fn mismatched(&self, mirror: &str, digest: &Digest) {
        let now = Instant::now();
        let mut inner = self.inner.locked();
        let map = &mut inner.mismatches;
        if map.len() >= MAX_MISMATCHES {
            map.retain(|_, until| now < *until);
        }
        if map.len() >= MAX_MISMATCHES {
            let first = map.iter().min_by_key(|(_, until)| **until);
            if let Some(key) = first.map(|(k, _)| k.clone()) {
                map.remove(&key);
            }
        }
        map.insert((mirror.to_owned(), digest.clone()), now + MISMATCH_TTL);
    }

    /// `mirror` could not be reached, or answered 5xx or 429.
    pub fn failed(&self, mirror: &str) {
        let now = Instant::now();
        let mut inner = self.inner.locked();
        let entry = (inner.failing.entry(mirror.to_owned())).or_insert(Failing {
            failures: 0,
            until: None,
        });
        entry.failures = entry.failures.saturating_add(1);
        if let Some(beyond) = entry.failures.checked_sub(FAILURES_BEFORE_BACKOFF) {
            let factor = 2u32.saturating_pow(beyond.min(16));
            entry.until = Some(now + BACKOFF_MIN.saturating_mul(factor).min(BACKOFF_MAX));
        }
    }

    /// `mirror` answered (an object or not): it is up.
    pub fn answered(&self, mirror: &str) {
        let mut inner = self.inner.locked();
        if !inner.failing.is_empty() {
            inner.failing.remove(mirror);
        }
    }

    /// Forgets everything (a reload).
    pub fn forget(&self) {
        *self.inner.locked() = Inner::default();
    }

    #[cfg(test)]
    fn mismatches(&self) -> usize {
        self.inner.locked().mismatches.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(i: u32) -> Digest {
        Digest::of(&i.to_le_bytes())
    }

    #[tokio::test(start_paused = true)]
    async fn a_mismatch_is_skipped_for_its_mirror_and_digest_until_the_ttl() {
        let memory = MirrorMemory::default();
        memory.mismatched("a.example", &digest(1));
        assert_eq!(memory.skip("a.example", &digest(1)), Some(Skip::Mismatch));
        assert_eq!(memory.skip("a.example", &digest(2)), None, "other digests");
        assert_eq!(memory.skip("b.example", &digest(1)), None, "other mirrors");
        tokio::time::advance(MISMATCH_TTL - Duration::from_secs(1)).await;
        assert_eq!(memory.skip("a.example", &digest(1)), Some(Skip::Mismatch));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(memory.skip("a.example", &digest(1)), None, "asked again");
        memory.mismatched("a.example", &digest(1));
        memory.forget();
        assert_eq!(
            memory.skip("a.example", &digest(1)),
            None,
            "a reload forgets"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_mismatches_are_bounded_and_the_one_expiring_first_goes() {
        let memory = MirrorMemory::default();
        for i in 0..MAX_MISMATCHES as u32 + 10 {
            memory.mismatched("a.example", &digest(i));
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert_eq!(memory.mismatches(), MAX_MISMATCHES);
        assert_eq!(
            memory.skip("a.example", &digest(0)),
            None,
            "the oldest went"
        );
        let last = digest(MAX_MISMATCHES as u32 + 9);
        assert_eq!(memory.skip("a.example", &last), Some(Skip::Mismatch));
        // Expired ones go before any that still counts.
        tokio::time::advance(MISMATCH_TTL).await;
        memory.mismatched("b.example", &digest(0));
        assert_eq!(memory.mismatches(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_mirror_failing_in_a_row_is_backed_off_longer_each_time_until_it_answers() {
        let memory = MirrorMemory::default();
        let d = digest(1);
        for _ in 1..FAILURES_BEFORE_BACKOFF {
            memory.failed("a.example");
            assert_eq!(memory.skip("a.example", &d), None, "not yet");
        }
        memory.failed("a.example");
        assert_eq!(memory.skip("a.example", &d), Some(Skip::Backoff));
        assert_eq!(memory.skip("b.example", &d), None, "only that mirror");
        tokio::time::advance(BACKOFF_MIN).await;
        assert_eq!(memory.skip("a.example", &d), None, "due: asked again");
        memory.failed("a.example");
        tokio::time::advance(BACKOFF_MIN).await;
        assert_eq!(memory.skip("a.example", &d), Some(Skip::Backoff), "doubled");
        tokio::time::advance(BACKOFF_MIN).await;
        assert_eq!(memory.skip("a.example", &d), None);
        for _ in 0..20 {
            memory.failed("a.example");
        }
        tokio::time::advance(BACKOFF_MAX).await;
        assert_eq!(memory.skip("a.example", &d), None, "never past the cap");
        memory.answered("a.example");
        memory.failed("a.example");
        assert_eq!(
            memory.skip("a.example", &d),
            None,
            "an answer clears the count"
        );
    }
}
