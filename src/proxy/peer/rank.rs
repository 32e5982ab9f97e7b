//! Who owns a digest: the rendezvous (highest-random-weight) hash of (peer, digest) over the
//! configured peers, skipping those marked dead for a while. Every appliance computes the same
//! order from the same list, with no messages; a dead owner's objects go to the next in rank,
//! and only those (each peer's share moves alone when it fails).

use std::collections::HashMap;
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tokio::time::Instant;

use crate::sync::Locked;

/// How long a peer that failed is passed over (then it is tried again).
pub(super) const DEAD_FOR: Duration = Duration::from_secs(30);

/// The peers in rank order for `digest`: highest weight first (ties, which need a SHA-256
/// collision, by name).
pub(super) fn rank<'a>(peers: &'a [String], digest: &str) -> Vec<&'a str> {
    let mut ranked: Vec<(u64, &str)> = (peers.iter())
        .map(|peer| (weight(peer, digest), peer.as_str()))
        .collect();
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    ranked.into_iter().map(|(_, peer)| peer).collect()
}

/// The weight of `peer` for `digest`: the first 8 bytes of SHA-256(peer, NUL, digest), the
/// same on every machine and build (std's hasher promises neither).
fn weight(peer: &str, digest: &str) -> u64 {
    let mut hash = Sha256::new();
    hash.update(peer.as_bytes());
    hash.update([0]);
    hash.update(digest.as_bytes());
    let out = hash.finalize();
    u64::from_be_bytes(out[..8].try_into().expect("8 bytes"))
}

/// The peers, this appliance's own entry, and those recently found dead.
pub(super) struct Owners {
    pub(super) peers: Vec<String>,
    pub(super) node: String,
    /// Until when each failed peer is passed over. std Mutex, never held across .await.
    dead: std::sync::Mutex<HashMap<String, Instant>>,
}

impl Owners {
    pub(super) fn new(peers: Vec<String>, node: String) -> Self {
        Self {
            peers,
            node,
            dead: std::sync::Mutex::default(),
        }
    }

    /// The owner of `digest`: the first in rank not marked dead (this appliance never is).
    pub(super) fn owner(&self, digest: &str) -> &str {
        let now = Instant::now();
        let mut dead = self.dead.locked();
        dead.retain(|_, until| *until > now);
        let alive = |p: &&str| *p == self.node || !dead.contains_key(*p);
        let owner = rank(&self.peers, digest).into_iter().find(alive);
        owner.unwrap_or(&self.node)
    }

    /// `peer` failed: pass it over for [`DEAD_FOR`].
    pub(super) fn mark_dead(&self, peer: &str) {
        let until = Instant::now() + DEAD_FOR;
        self.dead.locked().insert(peer.to_owned(), until);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers() -> Vec<String> {
        ["10.0.0.1:443", "10.0.0.2:443", "10.0.0.3:443"]
            .map(str::to_owned)
            .to_vec()
    }

    fn digest(i: u32) -> String {
        format!("sha256:{:064x}", i)
    }

    #[test]
    fn the_rank_is_stable_and_independent_of_list_order() {
        let d = digest(7);
        let peers = peers();
        let forward = rank(&peers, &d);
        let mut reversed = peers.clone();
        reversed.reverse();
        assert_eq!(rank(&reversed, &d), forward);
        assert_eq!(forward.len(), 3);
        // Fixed by SHA-256 alone: the same on every appliance, build and run.
        assert_eq!(weight("10.0.0.1:443", &d), weight("10.0.0.1:443", &d));
        assert_ne!(weight("10.0.0.1:443", &d), weight("10.0.0.2:443", &d));
        let known = weight("a:1", "sha256:00");
        assert_eq!(
            known,
            u64::from_be_bytes(Sha256::digest(b"a:1\0sha256:00")[..8].try_into().unwrap())
        );
    }

    #[test]
    fn ownership_spreads_over_the_peers() {
        let peers = peers();
        let mut owned: HashMap<&str, usize> = HashMap::new();
        for i in 0..3000 {
            *owned.entry(rank(&peers, &digest(i))[0]).or_default() += 1;
        }
        assert_eq!(owned.len(), 3);
        for (peer, n) in owned {
            assert!((800..1200).contains(&n), "{peer} owns {n} of 3000");
        }
    }

    #[test]
    fn a_new_peer_takes_only_its_share() {
        let mut four = peers();
        four.push("10.0.0.4:443".into());
        let moved = (0..2000)
            .map(digest)
            .filter(|d| rank(&peers(), d)[0] != rank(&four, d)[0])
            .inspect(|d| assert_eq!(rank(&four, d)[0], "10.0.0.4:443"))
            .count();
        assert!((300..700).contains(&moved), "{moved} of 2000 moved");
    }

    #[tokio::test(start_paused = true)]
    async fn a_dead_owner_gives_way_to_the_next_in_rank_for_a_while() {
        let d = digest(42);
        let ranked: Vec<String> = rank(&peers(), &d).into_iter().map(str::to_owned).collect();
        // This appliance is last in rank for `d`.
        let owners = Owners::new(peers(), ranked[2].clone());
        assert_eq!(owners.owner(&d), ranked[0]);
        owners.mark_dead(&ranked[0]);
        assert_eq!(owners.owner(&d), ranked[1]);
        owners.mark_dead(&ranked[1]);
        assert_eq!(owners.owner(&d), ranked[2]);
        // This appliance is never passed over.
        owners.mark_dead(&ranked[2]);
        assert_eq!(owners.owner(&d), ranked[2]);
        tokio::time::advance(DEAD_FOR + Duration::from_secs(1)).await;
        assert_eq!(owners.owner(&d), ranked[0]);
    }
}
