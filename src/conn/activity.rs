//! What a connection is doing ([`Activity`]) and when it should close ([`expiry`]): no first
//! byte, idle too long, evicted at the cap, or stalled with a request in flight.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// What a connection is doing, for its timeouts: whether a byte arrived, how many requests are in
/// flight, and since when none is.
#[derive(Debug)]
pub struct Activity {
    born: Instant,
    pub(super) first_byte: AtomicBool,
    in_flight: AtomicUsize,
    /// Milliseconds after `born` when the connection last became idle (no request in flight).
    idle_since: AtomicU64,
    /// One waiter (the connection's [`expiry`]); `notify_one` keeps a permit, so no wake is lost.
    changed: Notify,
    /// Set when a newcomer at the connection cap needs this idle connection's slot.
    evicted: AtomicBool,
    /// Milliseconds after `born` when a byte last moved either way.
    progress: AtomicU64,
}

impl Activity {
    /// Starts the clock: the first-byte timeout counts from now.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            born: Instant::now(),
            first_byte: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            changed: Notify::new(),
            evicted: AtomicBool::new(false),
            progress: AtomicU64::new(0),
        })
    }

    pub(super) fn moved(&self) {
        self.progress.store(self.elapsed_ms(), Ordering::Relaxed);
    }

    /// Returns once a newcomer at the cap has asked this connection to give way.
    pub async fn evicted(&self) {
        while !self.evicted.load(Ordering::Acquire) {
            self.changed.notified().await;
        }
    }

    /// Whether a newcomer at the cap may tell it to give way: idle, and not told already.
    pub(super) fn evictable(&self) -> bool {
        self.in_flight() == 0 && !self.evicted.load(Ordering::Acquire)
    }

    /// Tells it to give way (its [`expiry`] returns [`Expired::Evicted`] once it is idle).
    pub(super) fn evict(&self) {
        self.evicted.store(true, Ordering::Release);
        self.changed.notify_one();
    }

    /// Since when it has been idle (its start, before the first byte).
    pub(super) fn idle_since_instant(&self) -> Instant {
        self.born + Duration::from_millis(self.idle_since.load(Ordering::Acquire))
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub(super) fn saw_first_byte(&self) {
        self.idle_since.store(self.elapsed_ms(), Ordering::Release);
        self.first_byte.store(true, Ordering::Release);
        self.changed.notify_one();
    }

    /// A request starts; it is in flight until the guard is dropped (put it in the response body
    /// with [`Tracked`](super::Tracked), so a response being sent counts).
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

/// One request in flight on a connection.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        // Idle-since is set before the count drops, so a reader that sees zero sees the new time.
        activity
            .idle_since
            .store(activity.elapsed_ms(), Ordering::Release);
        if activity.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            activity.changed.notify_one();
        }
    }
}

/// Which timeout ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expired {
    /// No byte within `first_byte` of the start.
    FirstByte,
    /// No request in flight for `idle`, since the last request ended (or the first byte came).
    Idle,
    /// Idle when a new connection needed its slot at the cap.
    Evicted,
    /// A request in flight, but no byte moved either way for [`STALL_TIMEOUT`] (a client that
    /// stopped reading its response, or trickles nothing).
    Stalled,
}

/// A busy connection on which no byte moves for this long is closed: a client that stops reading
/// (a zero TCP window) must not hold its slot, and the objects it pins, forever. Longer than any
/// wait on the upstream (60 s for a response head or a body's next bytes).
pub const STALL_TIMEOUT: Duration = Duration::from_secs(300);

/// Returns when the connection should be closed: no byte within `first_byte` of
/// [`Activity::new`], or, later, no request in flight for `idle`. Bytes that arrive while no
/// request is in flight (an HTTP/2 PING answer, a request head on its way) do not count as
/// activity: HTTP/2 keep-alive pings must not keep an idle connection open forever, and a slow
/// request head is bounded by the header timeout anyway.
pub async fn expiry(activity: &Activity, first_byte: Duration, idle: Duration) -> Expired {
    expiry_within(activity, first_byte, idle, STALL_TIMEOUT).await
}

/// [`expiry`], with the stall timeout given.
pub async fn expiry_within(
    activity: &Activity,
    first_byte: Duration,
    idle: Duration,
    stall: Duration,
) -> Expired {
    let deadline = activity.born + first_byte;
    let evicted = || activity.evicted.load(Ordering::Acquire) && activity.in_flight() == 0;
    while !activity.first_byte.load(Ordering::Acquire) {
        if evicted() {
            return Expired::Evicted;
        }
        tokio::select! {
            () = activity.changed.notified() => {}
            () = tokio::time::sleep_until(deadline) => {
                if !activity.first_byte.load(Ordering::Acquire) {
                    return Expired::FirstByte;
                }
            }
        }
    }
    loop {
        if evicted() {
            return Expired::Evicted;
        }
        if activity.in_flight() > 0 {
            let last = activity.progress.load(Ordering::Relaxed);
            let deadline = activity.born + Duration::from_millis(last) + stall;
            tokio::select! {
                () = activity.changed.notified() => {}
                () = tokio::time::sleep_until(deadline) => {
                    let busy = activity.in_flight() > 0;
                    if busy && activity.progress.load(Ordering::Relaxed) == last {
                        return Expired::Stalled;
                    }
                }
            }
            continue;
        }
        let since = Duration::from_millis(activity.idle_since.load(Ordering::Acquire));
        let deadline = activity.born + since + idle;
        tokio::select! {
            () = activity.changed.notified() => {}
            () = tokio::time::sleep_until(deadline) => {
                let still = activity.idle_since.load(Ordering::Acquire);
                if activity.in_flight() == 0 && Duration::from_millis(still) == since {
                    return Expired::Idle;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_busy_connection_on_which_nothing_moves_is_stalled() {
        let a = Activity::new();
        a.saw_first_byte();
        let _busy = a.begin();
        let (long, stall) = (Duration::from_secs(3600), Duration::from_secs(30));
        let expired = expiry_within(&a, long, long, stall);
        tokio::pin!(expired);
        // Bytes moving keep it open.
        for _ in 0..5 {
            tokio::select! {
                why = &mut expired => panic!("expired while bytes moved: {why:?}"),
                () = tokio::time::sleep(Duration::from_secs(20)) => a.moved(),
            }
        }
        let started = Instant::now();
        assert_eq!(expired.await, Expired::Stalled);
        assert!(started.elapsed() >= Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn silence_expires_at_the_first_byte_timeout() {
        let activity = Activity::new();
        let started = Instant::now();
        let why = expiry(&activity, Duration::from_secs(10), Duration::from_secs(60)).await;
        assert_eq!(why, Expired::FirstByte);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_counts_from_the_end_of_the_last_request() {
        let activity = Activity::new();
        let watch = tokio::spawn({
            let activity = activity.clone();
            async move {
                let why = expiry(&activity, Duration::from_secs(10), Duration::from_secs(60)).await;
                (why, Instant::now())
            }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        activity.saw_first_byte();
        let request = activity.begin();
        // A request in flight for longer than the idle timeout is not cut.
        tokio::time::sleep(Duration::from_secs(100)).await;
        assert!(!watch.is_finished());
        let ended = Instant::now();
        drop(request);
        let (why, at) = watch.await.unwrap();
        assert_eq!(why, Expired::Idle);
        assert_eq!(at - ended, Duration::from_secs(60));
    }
}
