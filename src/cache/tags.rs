//! Tag mappings (registry, repository, tag, Accept → digest): the in-memory map, indexed by
//! digest so that dropping an object touches only its own mappings, and the writer that keeps
//! `tags/` in step with it off the store's lock and off the async runtime.
//!
//! Only mappings to objects the store holds are written to disk (a restart drops the others
//! anyway); a mapping recorded from a HEAD for a digest not held stays in memory until that
//! object is committed.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};

use super::files::write_atomic;
use super::Digest;
use crate::sync::Locked;

/// At most this many tag mappings are kept (each is a small file under `tags/`).
pub const MAX_TAGS: usize = 100_000;

/// Which tag mapping: a tag of a repository, as asked for with a given (normalised) Accept.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TagKey {
    pub registry: String,
    pub repo: String,
    pub tag: String,
    pub accept: String,
}

impl TagKey {
    /// The name of its file under `tags/`.
    pub(super) fn file_name(&self) -> String {
        let key = format!(
            "{}\n{}\n{}\n{}",
            self.registry, self.repo, self.tag, self.accept
        );
        Digest::of(key.as_bytes()).hex().to_owned()
    }
}

#[derive(Clone, Debug)]
pub struct TagEntry {
    pub digest: Digest,
    pub media_type: String,
    /// Fresh (served without asking upstream) until then; entries loaded at start are stale.
    pub fresh_until: tokio::time::Instant,
}

/// A tag file's text: `registry`, `repo`, `tag`, `accept`, `digest`, `media type`, one a line.
fn tag_text(key: &TagKey, entry: &TagEntry) -> String {
    format!(
        "{}\n{}\n{}\n{}\n{}\n{}\n",
        key.registry, key.repo, key.tag, key.accept, entry.digest, entry.media_type
    )
}

/// A tag file's text (see [`tag_text`]), fresh until `fresh_until`.
pub fn parse_tag(text: &str, fresh_until: tokio::time::Instant) -> Option<(TagKey, TagEntry)> {
    let lines: Vec<&str> = text.lines().collect();
    let [registry, repo, tag, accept, digest, media_type] = lines.as_slice() else {
        return None;
    };
    let key = TagKey {
        registry: registry.to_string(),
        repo: repo.to_string(),
        tag: tag.to_string(),
        accept: accept.to_string(),
    };
    let entry = TagEntry {
        digest: Digest::parse(digest)?,
        media_type: media_type.to_string(),
        fresh_until,
    };
    Some((key, entry))
}

/// The mappings, with an index from digest to the keys that map to it.
#[derive(Default)]
pub(super) struct Tags {
    map: HashMap<TagKey, TagEntry>,
    by_digest: HashMap<Digest, HashSet<TagKey>>,
}

impl Tags {
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    pub(super) fn get(&self, key: &TagKey) -> Option<&TagEntry> {
        self.map.get(key)
    }

    pub(super) fn get_mut(&mut self, key: &TagKey) -> Option<&mut TagEntry> {
        self.map.get_mut(key)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&TagKey, &TagEntry)> {
        self.map.iter()
    }

    /// The keys that map to `digest`.
    pub(super) fn of_digest(&self, digest: &Digest) -> impl Iterator<Item = &TagKey> {
        self.by_digest.get(digest).into_iter().flatten()
    }

    /// Maps `key` to `entry`; returns the mapping it replaced.
    pub(super) fn insert(&mut self, key: TagKey, entry: TagEntry) -> Option<TagEntry> {
        let digest = entry.digest.clone();
        let old = self.map.insert(key.clone(), entry);
        if let Some(old) = &old {
            self.unindex(&old.digest, &key);
        }
        self.by_digest.entry(digest).or_default().insert(key);
        old
    }

    pub(super) fn remove(&mut self, key: &TagKey) -> Option<TagEntry> {
        let old = self.map.remove(key)?;
        self.unindex(&old.digest, key);
        Some(old)
    }

    /// Drops every mapping to `digest`; returns their keys.
    pub(super) fn remove_digest(&mut self, digest: &Digest) -> Vec<TagKey> {
        let keys: Vec<TagKey> = (self.by_digest.remove(digest))
            .into_iter()
            .flatten()
            .collect();
        for key in &keys {
            self.map.remove(key);
        }
        keys
    }

    fn unindex(&mut self, digest: &Digest, key: &TagKey) {
        if let Some(keys) = self.by_digest.get_mut(digest) {
            keys.remove(key);
            if keys.is_empty() {
                self.by_digest.remove(digest);
            }
        }
    }

    /// Reads `dir`: the mappings to objects `held` says are stored; other files are removed.
    pub(super) fn load(dir: &std::path::Path, held: impl Fn(&Digest) -> bool) -> Self {
        let mut tags = Self::default();
        let now = tokio::time::Instant::now();
        for file in fs::read_dir(dir).into_iter().flatten().flatten() {
            let text = fs::read_to_string(file.path()).unwrap_or_default();
            match parse_tag(&text, now) {
                Some((key, entry)) if held(&entry.digest) => {
                    tags.insert(key, entry);
                }
                _ => {
                    let _ = fs::remove_file(file.path());
                }
            }
        }
        tags
    }
}

/// What the tag file writer has yet to do: file name → its text, or `None` to remove it.
/// The latest request for a file wins, so at most one entry per mapping waits.
#[derive(Default)]
struct Queue {
    pending: HashMap<String, Option<String>>,
    /// A writer thread is at work (it drains `pending` before it stops).
    running: bool,
}

/// Writes and removes tag files in a thread of its own, in the order asked for each file.
pub(super) struct TagFiles {
    dir: PathBuf,
    queue: Mutex<Queue>,
    /// Signalled when the writer stops with nothing pending.
    idle: Condvar,
}

impl TagFiles {
    pub(super) fn new(dir: PathBuf) -> Arc<Self> {
        Arc::new(Self {
            dir,
            queue: Mutex::default(),
            idle: Condvar::new(),
        })
    }

    /// Persists the mapping of `key` to `entry`.
    pub(super) fn write(self: &Arc<Self>, key: &TagKey, entry: &TagEntry) {
        self.enqueue([(key.file_name(), Some(tag_text(key, entry)))]);
    }

    /// Removes the files of `keys`.
    pub(super) fn remove<'a>(self: &Arc<Self>, keys: impl IntoIterator<Item = &'a TagKey>) {
        self.enqueue(keys.into_iter().map(|k| (k.file_name(), None)));
    }

    fn enqueue(self: &Arc<Self>, ops: impl IntoIterator<Item = (String, Option<String>)>) {
        let mut queue = self.queue.locked();
        queue.pending.extend(ops);
        if queue.running || queue.pending.is_empty() {
            return;
        }
        queue.running = true;
        drop(queue);
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("regcache-tags".into())
            .spawn(move || me.run());
        if spawned.is_err() {
            // No thread to be had: do it here rather than not at all.
            self.run();
        }
    }

    /// Drains the queue, then stops.
    fn run(&self) {
        loop {
            let batch = {
                let mut queue = self.queue.locked();
                if queue.pending.is_empty() {
                    queue.running = false;
                    self.idle.notify_all();
                    return;
                }
                std::mem::take(&mut queue.pending)
            };
            for (name, text) in batch {
                let path = self.dir.join(&name);
                let done = match text {
                    Some(text) => write_atomic(&path, text.as_bytes()),
                    None => fs::remove_file(&path).or_else(|e| match e.kind() {
                        std::io::ErrorKind::NotFound => Ok(()),
                        _ => Err(e),
                    }),
                };
                if let Err(e) = done {
                    tracing::warn!(path = %path.display(), error = %e, "cannot persist a tag mapping");
                }
            }
        }
    }

    /// Waits until everything asked so far is on disk.
    pub(super) fn flush(&self) {
        let mut queue = self.queue.locked();
        while queue.running || !queue.pending.is_empty() {
            queue = self.idle.wait(queue).unwrap_or_else(|e| e.into_inner());
        }
    }
}
