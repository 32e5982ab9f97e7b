//! Tag mappings (registry, repository, tag, Accept → digest): the key and entry types, the tag
//! file's text, and the in-memory map, indexed by digest so that dropping an object touches only
//! its own mappings.

use std::collections::{HashMap, HashSet};
use std::fs;

use super::Digest;

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
pub(super) fn tag_text(key: &TagKey, entry: &TagEntry) -> String {
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
