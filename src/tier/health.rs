//! The shared store's health: marked down after a failure for a backoff that doubles with each
//! consecutive failure (1 s … 1 min); reads skip it and uploads wait while it is down; after the
//! backoff one caller makes the trial while the others go on skipping it, and the trial's
//! success marks the store up again (its failure starts the next backoff).

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::sync::Locked;

/// The first backoff after a failure.
pub const MIN_BACKOFF: Duration = Duration::from_secs(1);
/// The longest backoff.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A trial that reported nothing for this long is forgotten (another caller may try).
const TRIAL_STALE: Duration = Duration::from_secs(15);

/// Whether the store may be asked now.
#[derive(Debug, Default)]
pub struct Health {
    /// std Mutex, never held across .await.
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Until when the store is skipped; `None` while it answers.
    down_until: Option<Instant>,
    /// The last backoff; zero while the store answers.
    backoff: Duration,
    /// Failures since the store last answered.
    failures: u64,
    /// When the trial after the backoff began; `None` while none is under way.
    trial: Option<Instant>,
}

/// What the status page shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthView {
    pub up: bool,
    pub failures: u64,
    /// Left of the backoff.
    pub retry_in: Option<Duration>,
}

impl State {
    fn trying(&self, now: Instant) -> bool {
        self.trial.is_some_and(|t| now < t + TRIAL_STALE)
    }
}

impl Health {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the store is within a backoff, or another caller makes the trial (skip it).
    pub fn is_down(&self) -> bool {
        let state = self.state.locked();
        let now = Instant::now();
        state.down_until.is_some_and(|t| now < t) || state.trying(now)
    }

    /// Whether this caller may ask the store now: it answers, or the backoff is over and no one
    /// else makes the trial (this caller makes it, and must report it as a success or failure).
    pub fn may_ask(&self) -> bool {
        let mut state = self.state.locked();
        let now = Instant::now();
        let Some(until) = state.down_until else {
            return true;
        };
        if now < until || state.trying(now) {
            return false;
        }
        state.trial = Some(now);
        true
    }

    /// An operation failed: the store is down for the next backoff, which is returned.
    pub fn failed(&self) -> Duration {
        let mut state = self.state.locked();
        state.backoff = match state.backoff.is_zero() {
            true => MIN_BACKOFF,
            false => (state.backoff * 2).min(MAX_BACKOFF),
        };
        state.failures += 1;
        state.down_until = Some(Instant::now() + state.backoff);
        state.trial = None;
        state.backoff
    }

    /// An operation succeeded; true when the store had been failing.
    pub fn succeeded(&self) -> bool {
        let mut state = self.state.locked();
        let was_failing = state.failures > 0;
        *state = State::default();
        was_failing
    }

    pub fn view(&self) -> HealthView {
        let state = self.state.locked();
        let now = Instant::now();
        HealthView {
            up: state.failures == 0,
            failures: state.failures,
            retry_in: (state.down_until).and_then(|t| t.checked_duration_since(now)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_backoff_doubles_up_to_a_minute_and_a_success_resets_it() {
        let health = Health::new();
        assert!(!health.is_down() && health.view().up);
        assert_eq!(health.failed(), MIN_BACKOFF);
        assert!(health.is_down());
        tokio::time::advance(MIN_BACKOFF).await;
        assert!(
            !health.is_down(),
            "the trial is let through after the backoff"
        );
        assert_eq!(health.failed(), MIN_BACKOFF * 2);
        for _ in 0..10 {
            health.failed();
        }
        assert_eq!(health.view().retry_in, Some(MAX_BACKOFF));
        assert_eq!(health.view().failures, 12);
        tokio::time::advance(MAX_BACKOFF - Duration::from_millis(1)).await;
        assert!(health.is_down());
        assert!(health.succeeded());
        assert!(!health.is_down() && health.view().up);
        assert!(!health.succeeded(), "already up");
        assert_eq!(health.failed(), MIN_BACKOFF);
    }
}
