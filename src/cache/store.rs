//! The store ([`Store`]): opening it, claims (hit, join a fill, lead a fill, bypass) under the
//! fill caps, references (which repositories an object was confirmed in), and what fills and
//! readers report back (the `Sink` and `Shelf` impls). Room and eviction are in `room.rs`, the tag
//! API in `tags.rs`, `regcache cache …` in `maintenance.rs`.

use std::fs::{self, File};

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use super::files::{create_private_dirs, io_err, object_path, tighten_dir};
use super::fill::Fill;
use super::health::WriteHealth;
use super::index::{Doomed, Entry, State};
use super::reader::{Reader, Shelf};
use super::scan::{clear_dir, scan_objects};
use super::tag_files::TagFiles;
use super::tag_map::{TagEntry, TagKey, Tags, MAX_TAGS};
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

/// The content store. Share it as `Arc<Store>`.
pub struct Store {
    pub(super) dir: PathBuf,
    pub(super) max_size: u64,
    /// std Mutex, never held across .await or file I/O of object contents.
    state: Mutex<State>,
    /// Paused after a write error.
    health: WriteHealth,
    /// std Mutex, never held across .await.
    limits: Mutex<FillLimits>,
    /// [`MAX_TAGS`], smaller in tests.
    pub(super) max_tags: std::sync::atomic::AtomicUsize,
    /// Keeps `tags/` in step with `State::tags`, in a thread of its own.
    pub(super) tag_files: Arc<TagFiles>,
    pub(super) metrics: Arc<Metrics>,
    /// The owner's exclusive lock on `{dir}/lock`, held while the store is open (`None` for
    /// maintenance, which may run beside the owner).
    _owner: Option<fs::File>,
}

/// A store that is gone has its tag mappings on disk (a restart finds them).
impl Drop for Store {
    fn drop(&mut self) {
        self.tag_files.flush();
    }
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
        let owner_lock = match owner {
            true => Some(take_ownership(dir)?),
            false => None,
        };
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
            state: Mutex::new(State::new(objects, total, tags)),
            health: WriteHealth::default(),
            limits: Mutex::new(FillLimits::default()),
            max_tags: std::sync::atomic::AtomicUsize::new(MAX_TAGS),
            tag_files: TagFiles::new(dir.join("tags")),
            metrics,
            _owner: owner_lock,
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

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
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

    pub fn object_path(&self, d: &Digest) -> PathBuf {
        object_path(&self.dir, d)
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
                    self.drop_unreadable(state, digest, &e);
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
                self.drop_unreadable(state, digest, &e);
                None
            }
        }
    }

    /// A stored object that cannot be opened is dropped; its files go after the lock.
    fn drop_unreadable(&self, mut state: MutexGuard<'_, State>, digest: &Digest, e: &Error) {
        tracing::warn!(%digest, error = %e, "stored object unreadable; dropping it");
        let mut doomed = Doomed::default();
        state.remove(&self.dir, digest, &mut doomed);
        drop(state);
        self.bury(doomed);
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

    /// Called by a fill that verified its content: index it and evict down to the size cap.
    pub(super) fn committed(
        &self,
        digest: &Digest,
        size: u64,
        media_type: &str,
        refs: Vec<(String, String)>,
    ) {
        let mut state = self.lock();
        state.release(digest);
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
        self.lock().release(digest);
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
        state.remove(&self.dir, digest, &mut doomed);
        self.gauge(&state);
        drop(state);
        self.bury(doomed);
    }
}

impl Store {
    /// Removes the files of what was dropped from the index (call without the lock). A fill that
    /// commits the same digest in between loses its file: the next claim finds it unreadable and
    /// fetches it again.
    pub(super) fn bury(&self, doomed: Doomed) {
        for path in &doomed.files {
            let _ = fs::remove_file(path);
        }
        self.tag_files.remove(&doomed.tags);
    }

    // ---- write health ------------------------------------------------------------------------

    /// Pauses caching after a write error; logs once per episode.
    pub(super) fn write_failed(&self, error: &Error) {
        self.metrics.cache_write_errors.inc();
        (self.metrics.tier).error(crate::metrics::Tier::Local, crate::metrics::TierOp::Write);
        self.health.failed(error);
    }

    /// Whether a write error paused caching.
    pub fn writes_failing(&self) -> bool {
        self.health.failing()
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

/// An exclusive, non-blocking `flock` on `{dir}/lock`: two owners would clear each other's fills
/// in `tmp/` and evict each other's objects. Released when the file closes (the store is dropped,
/// or the process dies).
fn take_ownership(dir: &Path) -> Result<fs::File, Error> {
    use rustix::fs::{flock, FlockOperation};
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let path = dir.join("lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(io_err(&path))?;
    // Private like every file of the cache, whatever the umask or an older file's mode.
    let private = fs::Permissions::from_mode(0o600);
    file.set_permissions(private).map_err(io_err(&path))?;
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(Error::Owned { path }),
        Err(e) => Err(io_err(&path)(e.into())),
    }
}
