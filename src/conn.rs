//! Connection bounds shared by the proxy and admin listeners: a cap on open connections
//! ([`Slots`]), and the first-byte and idle timeouts ([`Activity`], [`expiry`]) fed by an IO
//! wrapper ([`Watched`]) and a response-body guard ([`Tracked`]).
//!
//! A leaf: it imports nothing else from the crate but the lock helpers of [`crate::sync`]. It decides nothing about HTTP; the listeners
//! close a connection when [`expiry`] returns.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::sync::Locked;

/// A cap on open connections, shared by the listeners it covers; the cap can change while
/// connections are open (config reload). At the cap, a newcomer tells the connection that has
/// been idle longest (no request in flight) to close, and takes over its slot once it has
/// closed: idle connections cannot lock clients out, and taking a slot never raises the count
/// above the cap (nor above the count open when the cap was lowered).
#[derive(Debug)]
pub struct Slots {
    /// Slots held: connections being served and connections told to give way that have not
    /// closed yet. Raised only under `members`' lock while below `max`.
    open: AtomicUsize,
    max: AtomicUsize,
    /// Signalled when `open` drops to zero.
    drained: Notify,
    /// Signalled whenever a slot is released or handed over, for the waiting newcomers.
    freed: Notify,
    /// std Mutex, never held across .await.
    members: Mutex<Members>,
    next: AtomicU64,
}

/// Who holds the slots, and which newcomer waits for which of them.
#[derive(Debug, Default)]
struct Members {
    /// The activity of each connection that is serving HTTP (see [`Slot::watch`]).
    watched: HashMap<u64, Weak<Activity>>,
    /// Slot of a connection told to give way → the newcomer its slot goes to when it closes.
    bound: HashMap<u64, u64>,
    /// Newcomers whose evicted connection has closed: they own its slot (still counted).
    handed: HashSet<u64>,
}

/// How long a newcomer at the cap waits for the connection it evicted to close before it is
/// refused. An idle connection closes at once, or within the listeners' one-second close grace;
/// one that took a request just as it was told to go (an HTTP/2 stream) keeps its slot until
/// that request ends, and the newcomer is refused rather than exceed the cap.
pub const GIVE_WAY_WAIT: Duration = Duration::from_secs(3);

/// One open connection, counted in its [`Slots`] until dropped.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    id: u64,
}

/// A newcomer's claim from [`Slots::try_take`]: a slot at once, or the slot of the connection
/// told to give way. Await [`Admission::slot`] outside the accept loop: the wait is bounded by
/// [`GIVE_WAY_WAIT`], and there is at most one waiting newcomer per evicted connection.
#[derive(Debug)]
pub enum Admission {
    Now(Slot),
    Waiting(Waiter),
}

/// A newcomer waiting for the slot of the connection it evicted.
#[derive(Debug)]
pub struct Waiter {
    slots: Arc<Slots>,
    id: u64,
    /// The evicted connection's slot.
    victim: u64,
}

impl Slots {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
            drained: Notify::new(),
            freed: Notify::new(),
            members: Mutex::default(),
            next: AtomicU64::new(0),
        })
    }

    /// Changes the cap; connections over a lowered cap stay open.
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
        self.freed.notify_waiters();
    }

    /// Slots held, by served connections and by evicted ones not yet closed.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// A slot when one is free; at the cap, a wait for the slot of the idlest connection, told
    /// to close now; `None` when every connection has a request in flight or already gives way.
    pub fn try_take(self: &Arc<Self>) -> Option<Admission> {
        let mut members = self.members.locked();
        if self.open() < self.max.load(Ordering::Relaxed) {
            self.open.fetch_add(1, Ordering::AcqRel);
            return Some(Admission::Now(self.slot()));
        }
        let victim = evict_idlest(&members.watched)?;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        members.bound.insert(victim, id);
        Some(Admission::Waiting(Waiter {
            slots: self.clone(),
            id,
            victim,
        }))
    }

    /// A handle on a slot already counted in `open`.
    fn slot(self: &Arc<Self>) -> Slot {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        Slot {
            slots: self.clone(),
            id,
        }
    }

    fn release(&self) {
        if self.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.drained.notify_waiters();
        }
        self.freed.notify_waiters();
    }

    /// Waits until no slot is taken.
    pub async fn drained(&self) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Tells the connection idle the longest to close (it goes within a second or so) and returns
/// its slot; `None` when none is idle.
fn evict_idlest(watched: &HashMap<u64, Weak<Activity>>) -> Option<u64> {
    let (id, activity) = (watched.iter())
        .filter_map(|(id, a)| Some((*id, a.upgrade()?)))
        .filter(|(_, a)| a.in_flight() == 0 && !a.evicted.load(Ordering::Acquire))
        .min_by_key(|(_, a)| a.idle_since_instant())?;
    activity.evicted.store(true, Ordering::Release);
    activity.changed.notify_one();
    Some(id)
}

impl Admission {
    /// The slot, once there is one; `None` when none was freed within [`GIVE_WAY_WAIT`].
    pub async fn slot(self) -> Option<Slot> {
        match self {
            Self::Now(slot) => Some(slot),
            Self::Waiting(waiter) => waiter.wait(GIVE_WAY_WAIT).await,
        }
    }
}

impl Waiter {
    /// The evicted connection's slot once it has closed, or a slot freed by another, whichever
    /// comes first within `patience`.
    async fn wait(self, patience: Duration) -> Option<Slot> {
        let slots = self.slots.clone();
        let deadline = Instant::now() + patience;
        loop {
            let freed = slots.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut members = slots.members.locked();
                if members.handed.remove(&self.id) {
                    return Some(slots.slot());
                }
                if slots.open() < slots.max.load(Ordering::Relaxed) {
                    members.bound.remove(&self.victim);
                    slots.open.fetch_add(1, Ordering::AcqRel);
                    return Some(slots.slot());
                }
            }
            tokio::select! {
                () = freed => {}
                () = tokio::time::sleep_until(deadline) => return None,
            }
        }
    }
}

impl Drop for Waiter {
    /// Gives up the claim: the evicted connection releases its slot when it closes, or, if it
    /// has closed already, the handed-over slot is released now.
    fn drop(&mut self) {
        let mut members = self.slots.members.locked();
        if members.bound.get(&self.victim) == Some(&self.id) {
            members.bound.remove(&self.victim);
        }
        if members.handed.remove(&self.id) {
            drop(members);
            self.slots.release();
        }
    }
}

impl Slot {
    /// Makes this connection one that a newcomer at the cap may close while it is idle.
    pub fn watch(&self, activity: &Arc<Activity>) {
        let mut members = self.slots.members.locked();
        members.watched.insert(self.id, Arc::downgrade(activity));
    }
}

impl Drop for Slot {
    /// Releases the slot, or hands it to the newcomer this connection gave way to.
    fn drop(&mut self) {
        let mut members = self.slots.members.locked();
        members.watched.remove(&self.id);
        if let Some(newcomer) = members.bound.remove(&self.id) {
            members.handed.insert(newcomer);
            drop(members);
            self.slots.freed.notify_waiters();
            return;
        }
        drop(members);
        self.slots.release();
    }
}

/// What a connection is doing, for its timeouts: whether a byte arrived, how many requests are in
/// flight, and since when none is.
#[derive(Debug)]
pub struct Activity {
    born: Instant,
    first_byte: AtomicBool,
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

    fn moved(&self) {
        self.progress.store(self.elapsed_ms(), Ordering::Relaxed);
    }

    /// Returns once a newcomer at the cap has asked this connection to give way.
    pub async fn evicted(&self) {
        while !self.evicted.load(Ordering::Acquire) {
            self.changed.notified().await;
        }
    }

    /// Since when it has been idle (its start, before the first byte).
    fn idle_since_instant(&self) -> Instant {
        self.born + Duration::from_millis(self.idle_since.load(Ordering::Acquire))
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn saw_first_byte(&self) {
        self.idle_since.store(self.elapsed_ms(), Ordering::Release);
        self.first_byte.store(true, Ordering::Release);
        self.changed.notify_one();
    }

    /// A request starts; it is in flight until the guard is dropped (put it in the response body
    /// with [`Tracked`], so a response being sent counts).
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

/// An IO stream that tells its [`Activity`] when the first byte arrives.
#[derive(Debug)]
pub struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
    /// A local copy of `activity.first_byte`, so later reads touch no atomic.
    seen: bool,
}

impl<T> Watched<T> {
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        Self {
            inner,
            activity,
            seen: false,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.moved();
            if !self.seen {
                self.seen = true;
                self.activity.saw_first_byte();
            }
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.moved();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.moved();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A response body that keeps its request [`InFlight`] until it is sent (or dropped).
pub struct Tracked<B> {
    inner: B,
    _in_flight: InFlight,
}

impl<B> Tracked<B> {
    pub fn new(inner: B, in_flight: InFlight) -> Self {
        Self {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
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

    /// A slot that is free at once.
    fn free_slot(slots: &Arc<Slots>) -> Slot {
        match slots.try_take() {
            Some(Admission::Now(slot)) => slot,
            other => panic!("no free slot: {other:?}"),
        }
    }

    #[tokio::test]
    async fn at_the_cap_the_idlest_gives_way_and_busy_ones_do_not() {
        let slots = Slots::new(2);
        let (a, b) = (Activity::new(), Activity::new());
        let slot_a = free_slot(&slots);
        slot_a.watch(&a);
        let slot_b = free_slot(&slots);
        slot_b.watch(&b);
        let (busy_a, _busy_b) = (a.begin(), b.begin());
        assert!(slots.try_take().is_none(), "every connection is busy");
        drop(busy_a);
        let c = slots.try_take().expect("the idle one gives way");
        let long = Duration::from_secs(3600);
        let why = tokio::time::timeout(Duration::from_secs(1), expiry(&a, long, long)).await;
        assert_eq!(why.ok(), Some(Expired::Evicted));
        assert!(
            slots.try_take().is_none(),
            "b is busy and a already gives way"
        );
        assert_eq!(slots.open(), 2, "a holds its slot until it closes");
        drop(slot_a);
        let _c = c.slot().await.expect("a's slot, once a closed");
        assert_eq!(slots.open(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_evicted_connection_that_takes_a_request_keeps_its_slot_and_the_cap_holds() {
        let slots = Slots::new(2);
        let (a, b) = (Activity::new(), Activity::new());
        let slot_a = free_slot(&slots);
        slot_a.watch(&a);
        let slot_b = free_slot(&slots);
        slot_b.watch(&b);
        let _busy_b = b.begin();
        // A newcomer tells the idle `a` to give way; before `a` closes, an HTTP/2 stream
        // arrives on it, so it stays open until that request ends.
        let newcomer = slots.try_take().expect("a is idle");
        let busy_a = a.begin();
        assert!(slots.open() <= 2, "the newcomer took a slot over the cap");
        let refused = newcomer.slot().await;
        assert!(refused.is_none(), "no slot was freed within the wait");
        assert_eq!(slots.open(), 2);
        // Once `a`'s request ends it closes, and the next newcomer gets its slot.
        assert!(slots.try_take().is_none(), "a already gives way, b is busy");
        drop(busy_a);
        let long = Duration::from_secs(3600);
        assert_eq!(expiry(&a, long, long).await, Expired::Evicted);
        drop(slot_a);
        let _c = free_slot(&slots);
        assert_eq!(slots.open(), 2);
    }

    /// A connection of the churn test: admitted, serving requests of random lengths, closed when
    /// told to give way or when idle; returns how it ended.
    async fn churning(slots: Arc<Slots>, live: Arc<AtomicUsize>, seed: u64) -> &'static str {
        let Some(admission) = slots.try_take() else {
            return "refused";
        };
        let Some(slot) = admission.slot().await else {
            return "waited in vain";
        };
        let now = live.fetch_add(1, Ordering::SeqCst) + 1;
        assert!(now <= 4, "{now} connections served at a cap of 4");
        let activity = Activity::new();
        slot.watch(&activity);
        activity.saw_first_byte();
        let requests = async {
            for i in 0..seed % 4 {
                let _req = activity.begin();
                tokio::time::sleep(Duration::from_millis((seed * 7 + i * 13) % 50)).await;
                activity.moved();
                drop(_req);
                tokio::time::sleep(Duration::from_millis((seed * 3 + i) % 20)).await;
            }
            std::future::pending::<()>().await;
        };
        let ms = Duration::from_millis;
        let why = tokio::select! {
            why = expiry(&activity, ms(100), ms(200)) => why,
            () = requests => unreachable!(),
        };
        // A connection told to give way takes a moment to close, as a real one does.
        tokio::time::sleep(ms(seed % 30)).await;
        live.fetch_sub(1, Ordering::SeqCst);
        drop(slot);
        if why == Expired::Evicted {
            "evicted"
        } else {
            "closed"
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_cap_is_never_exceeded_under_churn() {
        let slots = Slots::new(4);
        let live = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for seed in 0..400u64 {
            tasks.spawn(churning(slots.clone(), live.clone(), seed));
            tokio::time::sleep(Duration::from_millis(seed * 31 % 17)).await;
            assert!(slots.open() <= 4, "{} slots held", slots.open());
        }
        let mut ends = HashMap::<&str, usize>::new();
        while let Some(end) = tasks.join_next().await {
            *ends.entry(end.expect("no assertion failed")).or_default() += 1;
        }
        assert_eq!(slots.open(), 0);
        // Every path was taken: the churn is not one-sided.
        for end in ["evicted", "closed", "refused"] {
            assert!(ends.get(end).copied().unwrap_or(0) > 0, "{ends:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn under_a_lowered_cap_a_newcomer_takes_over_the_evicted_slot_only() {
        let slots = Slots::new(2);
        let (a, b) = (Activity::new(), Activity::new());
        let slot_a = free_slot(&slots);
        slot_a.watch(&a);
        let slot_b = free_slot(&slots);
        slot_b.watch(&b);
        slots.set_max(1);
        let newcomer = slots.try_take().expect("a is idle");
        let waiting = tokio::spawn(newcomer.slot());
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiting.is_finished(), "a has not closed yet");
        drop(slot_a);
        let _c = waiting.await.unwrap().expect("a's slot, handed over");
        assert_eq!(slots.open(), 2, "over the lowered cap, but no higher");
        drop(slot_b);
        assert_eq!(slots.open(), 1);
        assert!(
            slots.try_take().is_none(),
            "at the cap, with nobody idle to give way"
        );
    }

    #[test]
    fn slots_cap_and_release() {
        let slots = Slots::new(2);
        let a = free_slot(&slots);
        let _b = free_slot(&slots);
        assert!(slots.try_take().is_none());
        assert_eq!(slots.open(), 2);
        drop(a);
        let _c = free_slot(&slots);
        slots.set_max(4);
        let _d = free_slot(&slots);
        assert_eq!(slots.open(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn drained_waits_for_the_last_slot() {
        let slots = Slots::new(8);
        let slot = free_slot(&slots);
        let waiter = tokio::spawn({
            let slots = slots.clone();
            async move { slots.drained().await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiter.is_finished());
        drop(slot);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("drained after the last slot")
            .unwrap();
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

    #[tokio::test]
    async fn the_io_wrapper_reports_the_first_byte() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, server) = tokio::io::duplex(64);
        let activity = Activity::new();
        let mut server = Watched::new(server, activity.clone());
        let mut client = client;
        assert!(!activity.first_byte.load(Ordering::Acquire));
        client.write_all(b"G").await.unwrap();
        let mut byte = [0u8; 1];
        server.read_exact(&mut byte).await.unwrap();
        assert!(activity.first_byte.load(Ordering::Acquire));
    }
}
