//! Tag mappings: the cap, and tag work kept off the lock and off the caller's thread.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::*;

#[tokio::test]
async fn tag_mappings_are_bounded_and_keep_the_usable_ones() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1 << 30).unwrap();
    store.set_max_tags(20);
    let held = fill(&store, &data(100, 7)).await;
    let key = |i: usize| TagKey {
        registry: "reg".into(),
        repo: "lib/a".into(),
        tag: format!("t{i}"),
        accept: String::new(),
    };
    let ttl = Duration::from_secs(60);
    store.put_tag(key(0), held.clone(), "application/json", ttl);
    for i in 1..=40 {
        // Mappings named by HEADs of digests never fetched here.
        let other = Digest::of(format!("{i}").as_bytes());
        store.put_tag(key(i), other, "application/json", ttl);
    }
    let files = std::fs::read_dir(dir.path().join("tags")).unwrap().count();
    assert!(files <= 20, "{files} tag files");
    assert_eq!(
        store.tag(&key(0)).map(|t| t.digest),
        Some(held),
        "the usable one stays"
    );
}

/// Writes `n` small objects straight into `objects/` (as a previous run would have left them).
fn planted_objects(dir: &std::path::Path, n: usize) -> Vec<Digest> {
    (0..n)
        .map(|i| {
            let content = format!("object {i}");
            let d = Digest::of(content.as_bytes());
            let shard = dir.join("objects/sha256").join(&d.hex()[..2]);
            std::fs::create_dir_all(&shard).unwrap();
            std::fs::write(shard.join(d.hex()), content).unwrap();
            d
        })
        .collect()
}

fn tag_key(i: usize) -> TagKey {
    TagKey {
        registry: "reg".into(),
        repo: "lib/a".into(),
        tag: format!("t{i}"),
        accept: String::new(),
    }
}

/// Issue 9 (trust), bounded work: what a client triggers cheaply (tag HEADs, pulls that evict)
/// writes no file for digests the cache does not hold, does no tag file I/O on the caller's
/// thread or under the store's lock, and removing objects touches only their own mappings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_work_stays_off_the_lock_and_off_the_callers_thread() {
    let dir = tempfile::tempdir().unwrap();
    let objects = planted_objects(dir.path(), 500);
    let store = Store::open(dir.path(), 1 << 30).unwrap();
    let ttl = Duration::from_secs(60);
    let tag_files = || std::fs::read_dir(dir.path().join("tags")).unwrap().count();

    // A HEAD naming a digest not held maps it in memory only.
    store.put_tag(
        tag_key(0),
        Digest::of(b"elsewhere"),
        "application/json",
        ttl,
    );
    assert_eq!(tag_files(), 0, "no file for a digest not held");

    // The file of a held mapping is written by another thread: a file system that blocks (here a
    // FIFO nobody reads, where the temp file goes) blocks neither the caller nor the lock.
    assert_put_tag_does_not_wait_for_the_disk(&store, dir.path(), &objects[0]);

    // 30,000 mappings (HEADs of digests not held), then 500 objects purged in one go: the lock
    // is held for the index work only (ms), not for a scan of every mapping per object (seconds).
    store.set_max_tags(50_000);
    for i in 2..30_000 {
        let other = Digest::of(format!("other {i}").as_bytes());
        store.put_tag(tag_key(i), other, "application/json", ttl);
    }
    store.put_tag(tag_key(30_000), objects[1].clone(), "application/json", ttl);
    let (worst, (n, _)) = worst_lock_wait(&store, &objects[5], || store.purge(|_| true));
    assert_eq!(n, 500);
    assert!(
        worst < Duration::from_millis(300),
        "the lock was held {worst:?}"
    );
    assert!(
        store.tag(&tag_key(30_000)).is_none(),
        "its object's mapping went with it"
    );
    drop(store);
    assert_eq!(tag_files(), 0, "and so did its file");
}

fn assert_put_tag_does_not_wait_for_the_disk(store: &Arc<Store>, dir: &Path, held: &Digest) {
    let key = tag_key(1);
    let fifo = (dir.join("tags")).join(format!("{}.partial", key.file_name()));
    rustix::fs::mkfifoat(rustix::fs::CWD, &fifo, rustix::fs::Mode::RWXU).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let (s, d) = (store.clone(), held.clone());
    std::thread::spawn(move || {
        s.put_tag(key, d, "application/json", Duration::from_secs(60));
        let _ = tx.send(());
    });
    let returned = rx.recv_timeout(Duration::from_secs(5)).is_ok();
    let reader = fifo.clone();
    let written = std::thread::spawn(move || std::fs::read_to_string(reader).unwrap());
    assert!(returned, "put_tag waited for the disk");
    assert!(written.join().unwrap().contains(&held.to_string()));
    std::fs::remove_file(fifo).unwrap();
}

/// The longest another thread waited for the store's lock (probing `contains(probe)`) while `f`
/// ran, and what `f` returned.
fn worst_lock_wait<T>(store: &Arc<Store>, probe: &Digest, f: impl FnOnce() -> T) -> (Duration, T) {
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (s, stop, probe) = (store.clone(), done.clone(), probe.clone());
    let prober = std::thread::spawn(move || {
        let mut worst = Duration::ZERO;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let t = std::time::Instant::now();
            s.contains(&probe);
            worst = worst.max(t.elapsed());
            std::thread::sleep(Duration::from_micros(200));
        }
        worst
    });
    std::thread::sleep(Duration::from_millis(20));
    let out = f();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    (prober.join().unwrap(), out)
}

#[test]
fn a_ttl_past_the_clock_does_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1 << 20).unwrap();
    let key = TagKey {
        registry: "r".into(),
        repo: "a".into(),
        tag: "1".into(),
        accept: String::new(),
    };
    let digest = Digest::of(b"x");
    store.put_tag(key.clone(), digest, "x/y", Duration::MAX);
    store.refresh_tag(&key, Duration::MAX);
    let fresh_until = store.lock().tags.get(&key).map(|t| t.fresh_until);
    assert!(fresh_until.is_some_and(|t| t > tokio::time::Instant::now()));
}
