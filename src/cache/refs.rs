//! References: which (registry, repository) pairs an object was fetched from or confirmed in, kept
//! in the index and appended to the object's `.meta` file (at most [`MAX_REFS`], oldest first out).

use super::files::{append_line, meta_path, meta_text, write_atomic};
use super::store::Store;
use super::Digest;

/// An object is remembered as fetched from at most this many repositories; past it the oldest
/// reference goes (its repository is then checked upstream again).
pub const MAX_REFS: usize = 1024;

impl Store {
    /// The size and media type of `digest` when it is stored and the upstream confirmed that
    /// `registry`/`repo` has it (as [`Store::has_ref`]), from the index alone (a HEAD needs no
    /// file); counts as a use for eviction.
    pub fn stored_in(&self, digest: &Digest, registry: &str, repo: &str) -> Option<(u64, String)> {
        let mut state = self.lock();
        let entry = state.objects.get_mut(digest)?;
        if !entry.refs.iter().any(|(r, p)| r == registry && p == repo) {
            return None;
        }
        entry.last_used = std::time::SystemTime::now();
        Some((entry.size, entry.media_type.clone()))
    }

    /// Whether the upstream confirmed that `registry`/`repo` has `digest` (it was fetched from
    /// there, or a check there succeeded).
    pub fn has_ref(&self, digest: &Digest, registry: &str, repo: &str) -> bool {
        let state = self.lock();
        let refs = state
            .objects
            .get(digest)
            .map(|e| e.refs.as_slice())
            .unwrap_or_default();
        refs.iter().any(|(r, p)| r == registry && p == repo)
    }

    /// The stored objects `registry`/`repo` referenced for which `pick(size, media_type)` holds,
    /// found under the lock without copying the index: only the chosen digests are cloned.
    pub fn referenced_in(
        &self,
        registry: &str,
        repo: &str,
        pick: impl Fn(u64, &str) -> bool,
    ) -> Vec<Digest> {
        let state = self.lock();
        let ours = |refs: &[(String, String)]| refs.iter().any(|(r, p)| r == registry && p == repo);
        (state.objects.iter())
            .filter(|(_, e)| pick(e.size, &e.media_type) && ours(&e.refs))
            .map(|(d, _)| d.clone())
            .collect()
    }

    /// Records that `registry`/`repo` referenced `digest` (for `cache ls` and `purge --repo`).
    pub fn add_ref(&self, digest: &Digest, registry: &str, repo: &str) {
        let mut state = self.lock();
        let Some(entry) = state.objects.get_mut(digest) else {
            return;
        };
        if entry.refs.iter().any(|(r, p)| r == registry && p == repo) {
            return;
        }
        entry.refs.push((registry.to_owned(), repo.to_owned()));
        let path = meta_path(&self.object_path(digest));
        let written = if entry.refs.len() > MAX_REFS {
            entry.refs.remove(0);
            let meta = meta_text(&entry.media_type, &entry.refs);
            drop(state);
            write_atomic(&path, meta.as_bytes())
        } else {
            // One line appended: no rewrite of every reference per new one.
            drop(state);
            append_line(&path, &format!("{registry} {repo}\n"))
        };
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "cannot record a reference");
        }
    }
}
