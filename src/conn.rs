//! Connection bounds shared by the proxy and admin listeners: a cap on open connections
//! ([`Slots`]), and the first-byte and idle timeouts ([`Activity`], [`expiry`]) fed by an IO
//! wrapper ([`Watched`]) and a response-body guard ([`Tracked`]).
//!
//! A leaf: it imports nothing else from the crate. It decides nothing about HTTP; the listeners
//! close a connection when [`expiry`] returns.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

/// A cap on open connections, shared by the listeners it covers; the cap can change while
/// connections are open (config reload). At the cap, a new connection closes the one that has
/// been idle longest (no request in flight), so idle connections cannot lock clients out.
#[derive(Debug)]
pub struct Slots {
    open: AtomicUsize,
    max: AtomicUsize,
    /// Signalled when `open` drops to zero.
    drained: Notify,
    /// The activity of each connection that is serving HTTP (see [`Slot::watch`]). std Mutex,
    /// never held across .await.
    members: Mutex<HashMap<u64, Weak<Activity>>>,
    next: AtomicU64,
}

/// One open connection, counted in its [`Slots`] until dropped.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    id: u64,
}

impl Slots {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
            drained: Notify::new(),
            members: Mutex::default(),
            next: AtomicU64::new(0),
        })
    }

    /// Changes the cap; connections over a lowered cap stay open.
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// A slot; at the cap, one made by closing the idlest connection, or `None` when every
    /// connection has a request in flight (or is still in its TLS handshake).
    pub fn try_take(self: &Arc<Self>) -> Option<Slot> {
        let before = self.open.fetch_add(1, Ordering::AcqRel);
        if before >= self.max.load(Ordering::Relaxed) && !self.evict_idlest() {
            self.release();
            return None;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        Some(Slot {
            slots: self.clone(),
            id,
        })
    }

    /// Tells the connection idle the longest to close (it goes within a second or so); false
    /// when none is idle.
    fn evict_idlest(&self) -> bool {
        let members = self.members.lock().unwrap_or_else(|e| e.into_inner());
        let idlest = (members.values())
            .filter_map(Weak::upgrade)
            .filter(|a| a.in_flight() == 0 && !a.evicted.load(Ordering::Acquire))
            .min_by_key(|a| a.idle_since_instant());
        let Some(activity) = idlest else {
            return false;
        };
        activity.evicted.store(true, Ordering::Release);
        activity.changed.notify_one();
        true
    }

    fn release(&self) {
        if self.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.drained.notify_waiters();
        }
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

impl Slot {
    /// Makes this connection one that a newcomer at the cap may close while it is idle.
    pub fn watch(&self, activity: &Arc<Activity>) {
        let mut members = self.slots.members.lock().unwrap_or_else(|e| e.into_inner());
        members.insert(self.id, Arc::downgrade(activity));
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut members = self.slots.members.lock().unwrap_or_else(|e| e.into_inner());
        members.remove(&self.id);
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

    #[tokio::test]
    async fn at_the_cap_the_idlest_gives_way_and_busy_ones_do_not() {
        let slots = Slots::new(2);
        let (a, b) = (Activity::new(), Activity::new());
        let slot_a = slots.try_take().unwrap();
        slot_a.watch(&a);
        let slot_b = slots.try_take().unwrap();
        slot_b.watch(&b);
        let (busy_a, _busy_b) = (a.begin(), b.begin());
        assert!(slots.try_take().is_none(), "every connection is busy");
        drop(busy_a);
        let _c = slots.try_take().expect("the idle one gives way");
        let long = Duration::from_secs(3600);
        let why = tokio::time::timeout(Duration::from_secs(1), expiry(&a, long, long)).await;
        assert_eq!(why.ok(), Some(Expired::Evicted));
        assert!(
            slots.try_take().is_none(),
            "b is busy and a already gives way"
        );
        drop(slot_a);
        assert_eq!(slots.open(), 2);
    }

    #[test]
    fn slots_cap_and_release() {
        let slots = Slots::new(2);
        let a = slots.try_take().unwrap();
        let _b = slots.try_take().unwrap();
        assert!(slots.try_take().is_none());
        assert_eq!(slots.open(), 2);
        drop(a);
        let _c = slots.try_take().unwrap();
        slots.set_max(4);
        let _d = slots.try_take().unwrap();
        assert_eq!(slots.open(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn drained_waits_for_the_last_slot() {
        let slots = Slots::new(8);
        let slot = slots.try_take().unwrap();
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
