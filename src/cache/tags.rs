//! The store's tag API: look-ups that answer only with manifests held for that very registry
//! and repository, recording (persisted when the object is held, by the tag file writer),
//! refreshing, and the cap of [`MAX_TAGS`] mappings.
//!
//! Only mappings to objects the store holds are written to disk (a restart drops the others
//! anyway); a mapping recorded from a HEAD for a digest not held stays in memory until that
//! object is committed.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::index::{Doomed, State};
use super::store::Store;
#[cfg(doc)]
use super::tag_map::MAX_TAGS;
use super::tag_map::{TagEntry, TagKey};
use super::Digest;

impl Store {
    /// The mapping of `key`, when the manifest it names is stored and was fetched from, or
    /// confirmed in, that very registry and repository (a mapping recorded from a HEAD waits
    /// until the bytes are fetched and verified).
    pub fn tag(&self, key: &TagKey) -> Option<TagEntry> {
        let state = self.lock();
        let entry = state.tags.get(key)?;
        state
            .held_for(&entry.digest, &key.registry, &key.repo)
            .then(|| entry.clone())
    }

    /// Any mapping of `tag` (whatever Accept it was made for) whose object is stored and whose
    /// media type is one of `accepted` (any, when `accepted` is empty).
    pub fn tag_any(
        &self,
        registry: &str,
        repo: &str,
        tag: &str,
        accepted: &[&str],
    ) -> Option<TagEntry> {
        let state = self.lock();
        let fits = |t: &TagEntry| {
            accepted.is_empty() || accepted.iter().any(|a| *a == t.media_type || *a == "*/*")
        };
        let found = (state.tags.iter())
            .filter(|(k, _)| k.registry == registry && k.repo == repo && k.tag == tag)
            .find(|(_, t)| fits(t) && state.held_for(&t.digest, registry, repo));
        found.map(|(_, t)| t.clone())
    }

    /// The tags of a repository that map to a stored manifest, sorted: what an offline
    /// `/tags/list` can truthfully say.
    pub fn tags_of(&self, registry: &str, repo: &str) -> Vec<String> {
        let state = self.lock();
        let mut tags: Vec<String> = (state.tags.iter())
            .filter(|(k, t)| {
                k.registry == registry
                    && k.repo == repo
                    && state.held_for(&t.digest, registry, repo)
            })
            .map(|(k, _)| k.tag.clone())
            .collect();
        tags.sort();
        tags.dedup();
        tags
    }

    /// Maps `key` to `digest`, fresh for `ttl`. The mapping is persisted (by the tag file
    /// writer, not here) when `digest` is held; otherwise it stays in memory until it is.
    pub fn put_tag(&self, key: TagKey, digest: Digest, media_type: &str, ttl: Duration) {
        let entry = TagEntry {
            digest,
            media_type: media_type.to_owned(),
            fresh_until: fresh_until(ttl),
        };
        let mut doomed = Doomed::default();
        let mut guard = self.lock();
        let state = &mut *guard;
        let old = state.tags.insert(key.clone(), entry.clone());
        let held = |d: &Digest| state.objects.contains_key(d);
        let persist = held(&entry.digest);
        // A file of the older mapping (to a held object) must not come back at a restart.
        let unpersist = !persist && old.is_some_and(|old| held(&old.digest));
        if state.tags.len() > self.max_tags.load(Ordering::Relaxed) {
            doomed.tags = self.shed_tags(state);
        }
        // Queued under the lock (a queue push): two moves of one tag reach the disk in the order
        // they reached the map, so a restart never finds the older one.
        if persist {
            self.tag_files.write(&key, &entry);
        }
        if unpersist {
            self.tag_files.remove([&key]);
        }
        drop(guard);
        self.bury(doomed);
    }

    /// Past [`MAX_TAGS`] mappings: those whose manifest is not held go first, then the least
    /// recently confirmed, down to nine tenths of the cap. Returns the keys dropped.
    fn shed_tags(&self, state: &mut State) -> Vec<TagKey> {
        let keep = self.max_tags.load(Ordering::Relaxed) / 10 * 9;
        let mut order: Vec<(bool, tokio::time::Instant, TagKey)> = (state.tags.iter())
            .map(|(k, t)| {
                let held = state.held_for(&t.digest, &k.registry, &k.repo);
                (held, t.fresh_until, k.clone())
            })
            .collect();
        order.sort_by_key(|a| (a.0, a.1));
        let excess = order.len().saturating_sub(keep);
        let dropped: Vec<TagKey> = order.into_iter().take(excess).map(|(_, _, k)| k).collect();
        for key in &dropped {
            state.tags.remove(key);
        }
        tracing::info!(excess, "tag mappings over their cap: the oldest forgotten");
        dropped
    }

    /// Marks a tag mapping fresh again for `ttl` (the upstream confirmed the digest).
    pub fn refresh_tag(&self, key: &TagKey, ttl: Duration) {
        if let Some(t) = self.lock().tags.get_mut(key) {
            t.fresh_until = fresh_until(ttl);
        }
    }

    #[cfg(test)]
    pub(super) fn set_max_tags(&self, n: usize) {
        self.max_tags.store(n, Ordering::Relaxed);
    }
}

/// `ttl` from now; a TTL past what the clock can hold is "as long as it can" (config caps TTLs at
/// 100 years, so this only guards the arithmetic).
fn fresh_until(ttl: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(ttl)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(now)
}
