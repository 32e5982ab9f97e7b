//! Write health: after a cache write fails, caching pauses for a while (requests pass through,
//! see `Claim::Bypass`) and the failure is logged once per episode; a commit that works ends it.
//! No test hook lives here: tests break the disk for real (a file where `tmp/` should be).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::Error;
use crate::sync::Locked;

/// After a write error, caching pauses this long before it is tried again.
const WRITE_PAUSE: Duration = Duration::from_secs(30);

#[derive(Default)]
pub(super) struct WriteHealth {
    /// Set while caching is paused (tokio's clock, so tests can move past it).
    paused_until: Mutex<Option<Instant>>,
    /// A write failed and none has worked since; logged once per episode.
    failing: AtomicBool,
}

impl WriteHealth {
    /// Whether caching is paused now.
    pub(super) fn paused(&self) -> bool {
        let mut until = self.paused_until.locked();
        match *until {
            Some(t) if t > Instant::now() => true,
            Some(_) => {
                *until = None;
                false
            }
            None => false,
        }
    }

    /// Pauses caching after `error`; logs once per episode.
    pub(super) fn failed(&self, error: &Error) {
        *self.paused_until.locked() = Some(Instant::now() + WRITE_PAUSE);
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::error!(%error, pause = ?WRITE_PAUSE, "cache write failed; serving without the cache until writes work again");
        }
    }

    /// A write worked.
    pub(super) fn recovered(&self) {
        if self.failing.swap(false, Ordering::Relaxed) {
            tracing::info!("cache writes work again; caching resumed");
        }
    }

    pub(super) fn failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }
}
