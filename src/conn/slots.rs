//! The cap on open connections: a newcomer at the cap makes the idlest connection give way and
//! takes over its slot once it has closed, so the cap is never exceeded.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::Activity;
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
        .filter(|(_, a)| a.evictable())
        .min_by_key(|(_, a)| a.idle_since_instant())?;
    activity.evict();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::{expiry, Expired};

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
        let a = Activity::new();
        let slot_a = free_slot(&slots);
        slot_a.watch(&a);
        // `a` has been idle longer (the clock is paused: without this, a tie).
        tokio::time::sleep(Duration::from_millis(1)).await;
        let b = Activity::new();
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
}
