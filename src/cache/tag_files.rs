//! The tag file writer: keeps `tags/` in step with the tag map, in a thread of its own, so that
//! no tag file I/O (or fsync) happens under the store's lock or on an async worker.

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};

use super::files::write_atomic;
use super::tag_map::{tag_text, TagEntry, TagKey};
use crate::sync::Locked;

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
