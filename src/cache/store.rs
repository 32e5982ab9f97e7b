//! The store: the object index, claims (hit, join a fill, lead a fill), LRU eviction, tag
//! mappings, and the maintenance operations behind `regcache cache …`.

use std::collections::HashMap;
use std::fs::{self, File};

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use super::files::{
    append_line, create_private_dirs, hash_file, io_err, meta_path, meta_text, tighten_dir,
    write_atomic,
};
use super::fill::Fill;
use super::health::WriteHealth;
use super::reader::{Reader, Shelf};
use super::scan::{clear_dir, scan_objects};
use super::tags::{TagEntry, TagFiles, TagKey, Tags, MAX_TAGS};
use super::writer::{FillWriter, Sink};
use super::{Digest, Error};
use crate::metrics::Metrics;
use crate::sync::Locked;

/// A hit refreshes the file's mtime (the persisted LRU clock) at most this often.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// The outcome of asking for an object.
pub enum Claim {
    /// Stored: read it.
    Hit(Reader),
    /// Being fetched by someone else: read along as it grows.
    Join(Arc<Fill>),
    /// Not stored: the caller fetches it and writes it through this writer.
    Lead(FillWriter),
    /// Caching is paused (a write failed recently): pass the request through.
    Bypass,
}

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

struct State {
    objects: HashMap<Digest, Entry>,
    total: u64,
    fills: HashMap<Digest, Arc<Fill>>,
    /// The registry each fill fetches from (for the per-registry cap).
    fill_registry: HashMap<Digest, String>,
    /// For each fill under way: the bytes it may write (its size, or what it has grown to) and
    /// the bytes it has written. Fills are admitted while their promises fit `max_size`; stored
    /// objects are evicted for the bytes as they are written, not for promises, so fills that are
    /// abandoned early do not empty the cache.
    reserved: HashMap<Digest, (u64, u64)>,
    reserved_total: u64,
    written_total: u64,
    tags: Tags,
}

/// How many upstream downloads may fill the cache at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FillLimits {
    /// In all.
    pub max_fills: usize,
    /// For one registry.
    pub max_fills_per_registry: usize,
}

impl Default for FillLimits {
    fn default() -> Self {
        Self {
            max_fills: 64,
            max_fills_per_registry: 16,
        }
    }
}

/// An object is remembered as fetched from at most this many repositories; past it the oldest
/// reference goes (its repository is then checked upstream again).
pub const MAX_REFS: usize = 1024;

/// The content store. Share it as `Arc<Store>`.
pub struct Store {
    dir: PathBuf,
    max_size: u64,
    /// std Mutex, never held across .await or file I/O of object contents.
    state: Mutex<State>,
    /// Paused after a write error.
    health: WriteHealth,
    /// std Mutex, never held across .await.
    limits: Mutex<FillLimits>,
    /// [`MAX_TAGS`], smaller in tests.
    max_tags: std::sync::atomic::AtomicUsize,
    /// Keeps `tags/` in step with `State::tags`, in a thread of its own.
    tag_files: Arc<TagFiles>,
    pub(super) metrics: Arc<Metrics>,
}

/// Files to remove once the store's lock is released: objects with their metadata, and the
/// files of dropped tag mappings.
#[derive(Default)]
struct Doomed {
    files: Vec<PathBuf>,
    tags: Vec<TagKey>,
}

/// A store that is gone has its tag mappings on disk (a restart finds them).
impl Drop for Store {
    fn drop(&mut self) {
        self.tag_files.flush();
    }
}

/// One stored object, as listed by `regcache cache ls`.
#[derive(Clone, Debug)]
pub struct ObjectInfo {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    pub refs: Vec<(String, String)>,
    pub last_used: SystemTime,
}

/// What `regcache cache verify` found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub checked: usize,
    pub bytes: u64,
    pub dropped: Vec<(Digest, String)>,
}

impl Store {
    /// Opens (creating) the store in `dir`: removes crash leftovers in `tmp/`, indexes `objects/`,
    /// loads tag mappings (stale until revalidated), and evicts down to `max_size`.
    pub fn open(dir: &Path, max_size: u64) -> Result<Arc<Self>, Error> {
        Self::open_with(dir, max_size, true, Arc::default())
    }

    /// Like [`Store::open`], recording into `metrics`.
    pub fn open_observed(
        dir: &Path,
        max_size: u64,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, Error> {
        Self::open_with(dir, max_size, true, metrics)
    }

    /// Opens the store for `regcache cache …` while an appliance may be running on it: leaves
    /// `tmp/` (fills in progress) alone and evicts nothing.
    pub fn open_for_maintenance(dir: &Path) -> Result<Arc<Self>, Error> {
        Self::open_with(dir, u64::MAX, false, Arc::default())
    }

    fn open_with(
        dir: &Path,
        max_size: u64,
        owner: bool,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, Error> {
        create_private_dirs(dir).map_err(io_err(dir))?;
        tighten_dir(dir).map_err(io_err(dir))?;
        for sub in ["objects/sha256", "tags", "tmp"] {
            let path = dir.join(sub);
            create_private_dirs(&path).map_err(io_err(&path))?;
        }
        if owner {
            let removed = clear_dir(&dir.join("tmp"))?;
            if removed > 0 {
                tracing::info!(
                    removed,
                    "removed unfinished downloads left by an earlier run"
                );
            }
        }
        let (objects, total) = scan_objects(&dir.join("objects/sha256"))?;
        let tags = Tags::load(&dir.join("tags"), |d| objects.contains_key(d));
        let store = Arc::new(Self {
            dir: dir.to_owned(),
            max_size,
            state: Mutex::new(State {
                objects,
                total,
                fills: HashMap::new(),
                fill_registry: HashMap::new(),
                reserved: HashMap::new(),
                reserved_total: 0,
                written_total: 0,
                tags,
            }),
            health: WriteHealth::default(),
            limits: Mutex::new(FillLimits::default()),
            max_tags: std::sync::atomic::AtomicUsize::new(MAX_TAGS),
            tag_files: TagFiles::new(dir.join("tags")),
            metrics,
        });
        store
            .metrics
            .cache_max_bytes
            .set(i64::try_from(max_size).unwrap_or(i64::MAX));
        let mut doomed = Doomed::default();
        let mut state = store.lock();
        store.evict(&mut state, &mut doomed);
        store.gauge(&state);
        drop(state);
        store.bury(doomed);
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.locked()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn max_size(&self) -> u64 {
        self.max_size
    }

    /// (objects, bytes) stored now.
    pub fn usage(&self) -> (usize, u64) {
        let state = self.lock();
        (state.objects.len(), state.total)
    }

    pub(super) fn object_path(&self, d: &Digest) -> PathBuf {
        self.dir
            .join("objects/sha256")
            .join(&d.hex()[..2])
            .join(d.hex())
    }

    pub(super) fn tmp_path(&self, d: &Digest) -> PathBuf {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        self.dir.join("tmp").join(format!("{}.{nanos:x}", d.hex()))
    }

    /// Whether `digest` is stored (without pinning it).
    pub fn contains(&self, digest: &Digest) -> bool {
        self.lock().objects.contains_key(digest)
    }

    #[cfg(test)]
    pub(super) fn set_max_tags(&self, n: usize) {
        self.max_tags.store(n, Ordering::Relaxed);
    }

    /// Sets the caps on concurrent fills (config load and reload).
    pub fn set_fill_limits(&self, limits: FillLimits) {
        *self.limits.locked() = limits;
    }

    /// Hit, join, lead or bypass, decided atomically so that one fetch serves every asker.
    pub fn claim(self: &Arc<Self>, digest: &Digest) -> Result<Claim, Error> {
        self.claim_for(digest, "")
    }

    /// Like [`Store::claim`] for an object of `registry`: past the fill caps (in all, or for
    /// this registry) the answer is Bypass, so that clients that start many cold downloads
    /// and leave cannot hold the disk or the uplink.
    pub fn claim_for(self: &Arc<Self>, digest: &Digest, registry: &str) -> Result<Claim, Error> {
        let limits = *self.limits.locked();
        let mut state = self.lock();
        if let Some(fill) = state.fills.get(digest) {
            return Ok(Claim::Join(fill.clone()));
        }
        if state.objects.contains_key(digest) {
            match self.open_reader(&mut state, digest) {
                Ok(reader) => return Ok(Claim::Hit(reader)),
                Err(e) => {
                    tracing::warn!(%digest, error = %e, "stored object unreadable; dropping it");
                    let mut doomed = Doomed::default();
                    self.remove(&mut state, digest, &mut doomed);
                    drop(state);
                    self.bury(doomed);
                    state = self.lock();
                    if let Some(fill) = state.fills.get(digest) {
                        return Ok(Claim::Join(fill.clone()));
                    }
                }
            }
        }
        if self.health.paused() {
            return Ok(Claim::Bypass);
        }
        let same = (state.fill_registry.values())
            .filter(|r| *r == registry)
            .count();
        if state.fills.len() >= limits.max_fills || same >= limits.max_fills_per_registry {
            tracing::debug!(%digest, registry, "fill caps reached: passed through uncached");
            self.metrics.cache_fills_capped.inc();
            return Ok(Claim::Bypass);
        }
        let writer = match FillWriter::create(self.clone(), digest, self.tmp_path(digest)) {
            Ok(writer) => writer,
            Err(e) => {
                self.write_failed(&e);
                return Ok(Claim::Bypass);
            }
        };
        state.fills.insert(digest.clone(), writer.fill().clone());
        (state.fill_registry).insert(digest.clone(), registry.to_owned());
        Ok(Claim::Lead(writer))
    }

    /// A reader for a stored object, or `None`.
    pub fn get(self: &Arc<Self>, digest: &Digest) -> Option<Reader> {
        let mut state = self.lock();
        state.objects.get(digest)?;
        match self.open_reader(&mut state, digest) {
            Ok(reader) => Some(reader),
            Err(e) => {
                tracing::warn!(%digest, error = %e, "stored object unreadable; dropping it");
                let mut doomed = Doomed::default();
                self.remove(&mut state, digest, &mut doomed);
                drop(state);
                self.bury(doomed);
                None
            }
        }
    }

    fn open_reader(self: &Arc<Self>, state: &mut State, digest: &Digest) -> Result<Reader, Error> {
        let path = self.object_path(digest);
        let file = File::open(&path).map_err(io_err(&path))?;
        let actual = file.metadata().map_err(io_err(&path))?.len();
        let entry = state.objects.get_mut(digest).expect("caller checked");
        if actual != entry.size {
            return Err(Error::SizeMismatch {
                digest: digest.clone(),
                expected: entry.size,
                actual,
            });
        }
        let now = SystemTime::now();
        if now.duration_since(entry.last_used).unwrap_or_default() > TOUCH_EVERY {
            let _ = file.set_modified(now);
        }
        entry.last_used = now;
        entry.pins += 1;
        let info = (digest.clone(), entry.size, entry.media_type.clone());
        let verify = !entry.verified;
        Ok(Reader::new(file, path, info, verify, self.clone()))
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

    /// Admits a fill of `digest` that may write `bytes` (more, if it already has some): false
    /// when the fills under way would then promise more than `max_size` (the fill should then
    /// not be cached). Nothing is evicted yet: see [`Store::wrote`].
    pub(super) fn reserve(&self, digest: &Digest, bytes: u64) -> bool {
        let mut state = self.lock();
        let (had, written) = state.reserved.get(digest).copied().unwrap_or((0, 0));
        let more = bytes.saturating_sub(had);
        if bytes > self.max_size || state.reserved_total + more > self.max_size {
            return false;
        }
        state.reserved_total += more;
        state.reserved.insert(digest.clone(), (had + more, written));
        true
    }

    /// The fill of `digest` has written `written` bytes: stored objects make room for them.
    pub(super) fn wrote(&self, digest: &Digest, written: u64) {
        let mut doomed = Doomed::default();
        let mut guard = self.lock();
        let state = &mut *guard;
        if let Some((_, w)) = state.reserved.get_mut(digest) {
            state.written_total += written.saturating_sub(*w);
            *w = written.max(*w);
        }
        self.evict(state, &mut doomed);
        drop(guard);
        self.bury(doomed);
    }

    /// The disk itself is full: evicts `bytes` more than the fills' written bytes need.
    pub(super) fn make_room(&self, bytes: u64) {
        let mut doomed = Doomed::default();
        let mut state = self.lock();
        state.written_total += bytes;
        self.evict(&mut state, &mut doomed);
        state.written_total -= bytes;
        drop(state);
        self.bury(doomed);
    }

    /// A fill that stopped writing to disk: what it set aside beyond the bytes it wrote is
    /// given back (those stay counted until it ends).
    pub(super) fn cap_reservation(&self, digest: &Digest) {
        let mut guard = self.lock();
        let state = &mut *guard;
        if let Some((reserved, written)) = state.reserved.get_mut(digest) {
            let spare = reserved.saturating_sub(*written);
            *reserved -= spare;
            state.reserved_total -= spare;
        }
    }

    /// Gives back what [`Store::reserve`] set aside for `digest` (the fill goes on uncached).
    pub(super) fn release_reservation(&self, digest: &Digest) {
        Self::unreserve(&mut self.lock(), digest);
    }

    fn unreserve(state: &mut State, digest: &Digest) {
        let (reserved, written) = state.reserved.remove(digest).unwrap_or((0, 0));
        state.reserved_total -= reserved;
        state.written_total -= written;
    }

    fn release(state: &mut State, digest: &Digest) {
        state.fills.remove(digest);
        state.fill_registry.remove(digest);
        Self::unreserve(state, digest);
    }

    /// Called by a fill that verified its content: index it and evict down to the size cap.
    pub(super) fn committed(
        &self,
        digest: &Digest,
        size: u64,
        media_type: &str,
        refs: Vec<(String, String)>,
    ) {
        let mut state = self.lock();
        Self::release(&mut state, digest);
        let old = state.objects.insert(
            digest.clone(),
            Entry {
                size,
                media_type: media_type.to_owned(),
                refs,
                last_used: SystemTime::now(),
                pins: 0,
                verified: true,
            },
        );
        state.total = state.total + size - old.map_or(0, |e| e.size);
        // Mappings recorded (from a HEAD) before the object was held are persisted now.
        let tags: Vec<(TagKey, TagEntry)> = (state.tags.of_digest(digest))
            .filter_map(|k| Some((k.clone(), state.tags.get(k)?.clone())))
            .collect();
        let mut doomed = Doomed::default();
        self.evict(&mut state, &mut doomed);
        self.gauge(&state);
        drop(state);
        for (key, entry) in &tags {
            self.tag_files.write(key, entry);
        }
        self.bury(doomed);
        self.health.recovered();
    }

    /// Called by a fill that did not commit.
    fn fill_ended(&self, digest: &Digest) {
        Self::release(&mut self.lock(), digest);
    }
}

impl Shelf for Store {
    fn unpin(&self, digest: &Digest) {
        if let Some(entry) = self.lock().objects.get_mut(digest) {
            entry.pins = entry.pins.saturating_sub(1);
        }
    }

    fn verified(&self, digest: &Digest) {
        if let Some(entry) = self.lock().objects.get_mut(digest) {
            entry.verified = true;
        }
    }

    /// Drops a stored object whose content turned out wrong.
    fn discard(&self, digest: &Digest, why: &str) {
        tracing::error!(%digest, why, "stored object is corrupt; dropped, it will be fetched again");
        self.metrics.cache_digest_mismatches.inc();
        let mut doomed = Doomed::default();
        let mut state = self.lock();
        self.remove(&mut state, digest, &mut doomed);
        self.gauge(&state);
        drop(state);
        self.bury(doomed);
    }
}

impl Store {
    fn gauge(&self, state: &State) {
        let m = &self.metrics;
        m.cache_stored_bytes
            .set(i64::try_from(state.total).unwrap_or(i64::MAX));
        m.cache_stored_objects.set(state.objects.len() as i64);
    }

    /// Drops `digest` and its tag mappings from the index; their files go into `doomed`.
    fn remove(&self, state: &mut State, digest: &Digest, doomed: &mut Doomed) {
        if let Some(entry) = state.objects.remove(digest) {
            state.total -= entry.size;
        }
        let path = self.object_path(digest);
        doomed.files.push(meta_path(&path));
        doomed.files.push(path);
        doomed.tags.extend(state.tags.remove_digest(digest));
    }

    /// Removes the files of what was dropped from the index (call without the lock). A fill that
    /// commits the same digest in between loses its file: the next claim finds it unreadable and
    /// fetches it again.
    fn bury(&self, doomed: Doomed) {
        for path in &doomed.files {
            let _ = fs::remove_file(path);
        }
        self.tag_files.remove(&doomed.tags);
    }

    /// Evicts least-recently-used, unpinned objects until the total fits `max_size`.
    /// Fills under way count with the bytes they have written.
    fn evict(&self, state: &mut State, doomed: &mut Doomed) {
        let fits = |state: &State| state.total + state.written_total <= self.max_size;
        if fits(state) {
            return;
        }
        let mut candidates: Vec<(SystemTime, Digest)> = (state.objects.iter())
            .filter(|(_, e)| e.pins == 0)
            .map(|(d, e)| (e.last_used, d.clone()))
            .collect();
        candidates.sort();
        for (_, digest) in candidates {
            if fits(state) {
                break;
            }
            tracing::info!(%digest, "evicted (cache.max_size)");
            self.metrics.cache_evictions.inc();
            self.remove(state, &digest, doomed);
        }
    }

    // ---- write health ------------------------------------------------------------------------

    /// Pauses caching after a write error; logs once per episode.
    pub(super) fn write_failed(&self, error: &Error) {
        self.metrics.cache_write_errors.inc();
        self.health.failed(error);
    }

    /// Whether a write error paused caching.
    pub fn writes_failing(&self) -> bool {
        self.health.failing()
    }

    // ---- tags ----------------------------------------------------------------------------------

    /// The mapping of `key`, when the manifest it names is stored and was fetched from, or
    /// confirmed in, that very registry and repository (a mapping recorded from a HEAD waits
    /// until the bytes are fetched and verified).
    pub fn tag(&self, key: &TagKey) -> Option<TagEntry> {
        let state = self.lock();
        let entry = state.tags.get(key)?;
        held_for(&state, &entry.digest, &key.registry, &key.repo).then(|| entry.clone())
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
            .find(|(_, t)| fits(t) && held_for(&state, &t.digest, registry, repo));
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
                    && held_for(&state, &t.digest, registry, repo)
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
            fresh_until: tokio::time::Instant::now() + ttl,
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
        drop(guard);
        if persist {
            self.tag_files.write(&key, &entry);
        }
        if unpersist {
            doomed.tags.push(key);
        }
        self.bury(doomed);
    }

    /// Past [`MAX_TAGS`] mappings: those whose manifest is not held go first, then the least
    /// recently confirmed, down to nine tenths of the cap. Returns the keys dropped.
    fn shed_tags(&self, state: &mut State) -> Vec<TagKey> {
        let keep = self.max_tags.load(Ordering::Relaxed) / 10 * 9;
        let mut order: Vec<(bool, tokio::time::Instant, TagKey)> = (state.tags.iter())
            .map(|(k, t)| {
                let held = held_for(state, &t.digest, &k.registry, &k.repo);
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
            t.fresh_until = tokio::time::Instant::now() + ttl;
        }
    }

    // ---- maintenance (regcache cache …) -------------------------------------------------------

    pub fn list(&self) -> Vec<ObjectInfo> {
        let state = self.lock();
        let mut out: Vec<ObjectInfo> = (state.objects.iter())
            .map(|(d, e)| ObjectInfo {
                digest: d.clone(),
                size: e.size,
                media_type: e.media_type.clone(),
                refs: e.refs.clone(),
                last_used: e.last_used,
            })
            .collect();
        out.sort_by_key(|o| std::cmp::Reverse(o.last_used));
        out
    }

    /// Removes the objects `select` picks; returns (objects, bytes) removed.
    pub fn purge(&self, select: impl Fn(&ObjectInfo) -> bool) -> (usize, u64) {
        let chosen: Vec<ObjectInfo> = self.list().into_iter().filter(|o| select(o)).collect();
        let mut doomed = Doomed::default();
        let mut state = self.lock();
        let mut bytes = 0;
        for o in &chosen {
            bytes += o.size;
            self.remove(&mut state, &o.digest, &mut doomed);
        }
        self.gauge(&state);
        drop(state);
        self.bury(doomed);
        (chosen.len(), bytes)
    }

    /// Re-hashes every object; drops those whose size or hash is wrong.
    pub fn verify(&self) -> VerifyReport {
        let mut report = VerifyReport::default();
        for o in self.list() {
            let path = self.object_path(&o.digest);
            let problem = match hash_file(&path) {
                Ok((d, n)) if d == o.digest && n == o.size => None,
                Ok((d, n)) => Some(format!("content is {d}, {n} bytes")),
                Err(e) => Some(e.to_string()),
            };
            report.checked += 1;
            report.bytes += o.size;
            if let Some(why) = problem {
                let mut doomed = Doomed::default();
                self.remove(&mut self.lock(), &o.digest, &mut doomed);
                self.bury(doomed);
                report.dropped.push((o.digest, why));
            }
        }
        report
    }
}

impl Sink for Store {
    fn reserve(&self, digest: &Digest, bytes: u64) -> bool {
        Store::reserve(self, digest, bytes)
    }
    fn wrote(&self, digest: &Digest, written: u64) {
        Store::wrote(self, digest, written)
    }
    fn make_room(&self, bytes: u64) {
        Store::make_room(self, bytes)
    }
    fn cap_reservation(&self, digest: &Digest) {
        Store::cap_reservation(self, digest)
    }
    fn release_reservation(&self, digest: &Digest) {
        Store::release_reservation(self, digest)
    }
    fn object_path(&self, digest: &Digest) -> PathBuf {
        Store::object_path(self, digest)
    }
    fn committed(&self, digest: &Digest, size: u64, media_type: &str, refs: Vec<(String, String)>) {
        Store::committed(self, digest, size, media_type, refs)
    }
    fn ended(&self, digest: &Digest) {
        self.fill_ended(digest)
    }
    fn write_failed(&self, error: &Error) {
        Store::write_failed(self, error)
    }
    fn digest_mismatch(&self) {
        self.metrics.cache_digest_mismatches.inc();
    }
}

/// Whether `digest` is stored and referenced by `registry`/`repo`.
fn held_for(state: &State, digest: &Digest, registry: &str, repo: &str) -> bool {
    let entry = state.objects.get(digest);
    entry.is_some_and(|e| e.refs.iter().any(|(r, p)| r == registry && p == repo))
}
