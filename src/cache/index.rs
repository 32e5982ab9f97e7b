//! The object index, under the store's lock: what is stored (size, media type, references,
//! recency, pins), the fills under way and the room they reserved, and the tag map. Removing an
//! object here only collects its files ([`Doomed`]); the store unlinks them after the lock.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use super::files::{meta_path, object_path};
use super::fill::Fill;
use super::tag_map::{TagKey, Tags};
use super::Digest;

pub(super) struct Entry {
    pub(super) size: u64,
    pub(super) media_type: String,
    /// (registry, repository) pairs that fetched this object.
    pub(super) refs: Vec<(String, String)>,
    pub(super) last_used: SystemTime,
    /// Readers and fills holding it: never evicted while > 0.
    pub(super) pins: usize,
    /// Hashed since this process started (written by it, or read through once).
    pub(super) verified: bool,
}

pub(super) struct State {
    pub(super) objects: HashMap<Digest, Entry>,
    pub(super) total: u64,
    pub(super) fills: HashMap<Digest, Arc<Fill>>,
    /// The registry each fill fetches from (for the per-registry cap).
    pub(super) fill_registry: HashMap<Digest, String>,
    /// For each fill under way: the bytes it may write (its size, or what it has grown to) and
    /// the bytes it has written. Fills are admitted while their promises fit `max_size`; stored
    /// objects are evicted for the bytes as they are written, not for promises, so fills that are
    /// abandoned early do not empty the cache.
    pub(super) reserved: HashMap<Digest, (u64, u64)>,
    pub(super) reserved_total: u64,
    pub(super) written_total: u64,
    pub(super) tags: Tags,
}

/// Files to remove once the store's lock is released: objects with their metadata, and the
/// files of dropped tag mappings.
#[derive(Default)]
pub(super) struct Doomed {
    pub(super) files: Vec<PathBuf>,
    pub(super) tags: Vec<TagKey>,
}

impl State {
    pub(super) fn new(objects: HashMap<Digest, Entry>, total: u64, tags: Tags) -> Self {
        Self {
            objects,
            total,
            fills: HashMap::new(),
            fill_registry: HashMap::new(),
            reserved: HashMap::new(),
            reserved_total: 0,
            written_total: 0,
            tags,
        }
    }

    /// Whether `digest` is stored and referenced by `registry`/`repo`.
    pub(super) fn held_for(&self, digest: &Digest, registry: &str, repo: &str) -> bool {
        let entry = self.objects.get(digest);
        entry.is_some_and(|e| e.refs.iter().any(|(r, p)| r == registry && p == repo))
    }

    /// Drops `digest` and its tag mappings from the index; their files go into `doomed`.
    pub(super) fn remove(&mut self, dir: &Path, digest: &Digest, doomed: &mut Doomed) {
        if let Some(entry) = self.objects.remove(digest) {
            self.total -= entry.size;
        }
        let path = object_path(dir, digest);
        doomed.files.push(meta_path(&path));
        doomed.files.push(path);
        doomed.tags.extend(self.tags.remove_digest(digest));
    }
}
