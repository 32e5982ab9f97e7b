//! Connection bounds shared by the proxy and admin listeners: a cap on open connections
//! ([`Slots`], in `slots`), the first-byte, idle and stall timeouts ([`Activity`], [`expiry`], in
//! `activity`), fed by an IO wrapper ([`Watched`]) and a response-body guard ([`Tracked`], both in
//! `io`).
//!
//! A leaf: it imports nothing else from the crate but the lock helpers of [`crate::sync`]. It
//! decides nothing about HTTP; the listeners close a connection when [`expiry`] returns.

mod activity;
mod io;
mod slots;

pub use activity::{expiry, expiry_within, Activity, Expired, InFlight, STALL_TIMEOUT};
pub use io::{Tracked, Watched};
pub use slots::{Admission, Slot, Slots, Waiter, GIVE_WAY_WAIT};
