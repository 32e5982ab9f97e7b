use std::sync::Arc;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};

use super::*;

fn data(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn lead(store: &Arc<Store>, d: &Digest) -> FillWriter {
    match store.claim(d).unwrap() {
        Claim::Lead(w) => w,
        _ => panic!("expected to lead the fill of {d}"),
    }
}

async fn fill(store: &Arc<Store>, content: &[u8]) -> Digest {
    let d = Digest::of(content);
    let mut w = lead(store, &d);
    w.start(
        Some(content.len() as u64),
        "application/octet-stream",
        "reg",
        "lib/a",
    );
    for chunk in content.chunks(1000) {
        w.write(chunk).unwrap();
    }
    w.finish().unwrap();
    d
}

async fn read(store: &Arc<Store>, d: &Digest) -> Result<Vec<u8>, Error> {
    let Claim::Hit(reader) = store.claim(d).unwrap() else {
        panic!("expected a hit for {d}")
    };
    let chunks: Vec<bytes::Bytes> = reader.stream(None).try_collect().await?;
    Ok(chunks.concat())
}

fn tmp_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("tmp")).unwrap().count()
}

#[test]
fn digests_parse_strictly() {
    let hex = "a".repeat(64);
    assert!(Digest::parse(&format!("sha256:{hex}")).is_some());
    assert!(Digest::parse(&format!("sha512:{hex}")).is_none());
    assert!(Digest::parse(&format!("sha256:{}", "A".repeat(64))).is_none());
    assert!(Digest::parse("sha256:../../etc/passwd").is_none());
    assert_eq!(
        Digest::of(b"").to_string(),
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}

#[tokio::test]
async fn a_miss_is_filled_verified_and_then_hit() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1 << 30).unwrap();
    let content = data(3_000_000, 1);
    let d = fill(&store, &content).await;
    assert_eq!(read(&store, &d).await.unwrap(), content);
    assert_eq!(store.usage(), (1, content.len() as u64));
    assert_eq!(tmp_files(dir.path()), 0);

    // Ranges come from the same file.
    let Claim::Hit(reader) = store.claim(&d).unwrap() else {
        panic!()
    };
    let part: Vec<bytes::Bytes> = reader.stream(Some((10, 19))).try_collect().await.unwrap();
    assert_eq!(part.concat(), &content[10..20]);
}

#[tokio::test]
async fn a_digest_mismatch_is_never_committed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1 << 30).unwrap();
    let d = Digest::of(b"the real thing");
    let mut w = lead(&store, &d);
    w.start(None, "x", "reg", "lib/a");
    w.write(b"something else").unwrap();
    let err = w.finish().unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    assert!(!store.contains(&d));
    assert_eq!(tmp_files(dir.path()), 0, "the temp file is gone");
    assert!(
        matches!(store.claim(&d).unwrap(), Claim::Lead(_)),
        "the next asker fetches again"
    );

    // A short body (size mismatch) likewise.
    let content = b"0123456789";
    let d = Digest::of(content);
    let mut w = lead(&store, &d);
    w.start(Some(20), "x", "reg", "lib/a");
    w.write(content).unwrap();
    assert!(matches!(w.finish(), Err(Error::SizeMismatch { .. })));
    assert!(!store.contains(&d));
}

#[tokio::test]
async fn concurrent_askers_join_one_fill_and_never_see_the_last_byte_early() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1 << 30).unwrap();
    let content = data(2_500_000, 2);
    let d = Digest::of(&content);
    let mut w = lead(&store, &d);
    let joiners: Vec<Arc<Fill>> = (0..7)
        .map(|_| match store.claim(&d).unwrap() {
            Claim::Join(f) => f,
            _ => panic!("expected to join"),
        })
        .collect();
    w.start(Some(content.len() as u64), "t", "reg", "lib/a");
    let readers: Vec<_> = joiners
        .iter()
        .map(|f| tokio::spawn(f.clone().stream().try_collect::<Vec<bytes::Bytes>>()))
        .collect();
    w.write(&content).unwrap();
    // Everything is written but not committed: a reader gets all but the last byte.
    let mut early = Box::pin(joiners[0].clone().stream());
    let mut got = 0;
    while let Ok(Some(chunk)) = tokio::time::timeout(Duration::from_millis(200), early.next()).await
    {
        got += chunk.unwrap().len();
    }
    assert_eq!(got, content.len() - 1);
    w.finish().unwrap();
    for r in readers {
        assert_eq!(r.await.unwrap().unwrap().concat(), content);
    }
}

#[tokio::test]
async fn a_failed_fill_ends_its_readers_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1 << 30).unwrap();
    let d = Digest::of(b"abc");
    let mut w = lead(&store, &d);
    let Claim::Join(f) = store.claim(&d).unwrap() else {
        panic!()
    };
    w.start(Some(3), "t", "reg", "lib/a");
    w.write(b"ab").unwrap();
    let reader = tokio::spawn(f.clone().stream().try_collect::<Vec<bytes::Bytes>>());
    w.fail("connection reset".into());
    assert!(reader.await.unwrap().is_err());
    assert!(!store.contains(&d));
    assert_eq!(tmp_files(dir.path()), 0);
    // An abandoned (dropped) writer too.
    let w = lead(&store, &d);
    let Claim::Join(f) = store.claim(&d).unwrap() else {
        panic!()
    };
    drop(w);
    assert!(matches!(f.head().await, FillState::Failed(_)));
}

#[tokio::test]
async fn eviction_is_lru_and_spares_objects_being_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 2_500).unwrap();
    let a = fill(&store, &data(1000, 1)).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    let b = fill(&store, &data(1000, 2)).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    // Reading `a` makes `b` the least recently used; holding the reader pins `a`.
    let pinned = store.get(&a).unwrap();
    let c = fill(&store, &data(1000, 3)).await;
    assert!(store.contains(&a) && !store.contains(&b) && store.contains(&c));
    let d = fill(&store, &data(1000, 4)).await;
    assert!(store.contains(&a), "a pinned object is never evicted");
    assert!(!store.contains(&c) && store.contains(&d));
    drop(pinned);
    let _e = fill(&store, &data(1000, 5)).await;
    assert!(!store.contains(&a), "unpinned, it goes");
    assert!(store.usage().1 <= 2_500);
}

#[tokio::test]
async fn restart_finds_the_cache_as_it_was_and_cleans_crash_leftovers() {
    let dir = tempfile::tempdir().unwrap();
    let content = data(5000, 9);
    let d = {
        let store = Store::open(dir.path(), 1 << 30).unwrap();
        let d = fill(&store, &content).await;
        let key = TagKey {
            registry: "reg".into(),
            repo: "lib/a".into(),
            tag: "1".into(),
            accept: "x".into(),
        };
        store.put_tag(
            key,
            d.clone(),
            "application/vnd.oci.image.manifest.v1+json",
            Duration::from_secs(60),
        );
        d
    };
    std::fs::write(dir.path().join("tmp/deadbeef.123"), b"half a download").unwrap();
    let store = Store::open(dir.path(), 1 << 30).unwrap();
    assert_eq!(tmp_files(dir.path()), 0, "leftovers removed at start");
    assert_eq!(read(&store, &d).await.unwrap(), content);
    let key = TagKey {
        registry: "reg".into(),
        repo: "lib/a".into(),
        tag: "1".into(),
        accept: "x".into(),
    };
    let tag = store.tag(&key).expect("the tag mapping survived");
    assert_eq!(tag.digest, d);
    assert!(
        tag.fresh_until <= tokio::time::Instant::now(),
        "loaded tags are stale"
    );
    assert_eq!(
        store.list()[0].refs,
        [("reg".to_string(), "lib/a".to_string())]
    );
}

#[tokio::test]
async fn a_corrupt_file_is_dropped_when_detected_and_never_served_whole() {
    let dir = tempfile::tempdir().unwrap();
    let content = data(3_000_000, 4);
    let d = fill(&Store::open(dir.path(), 1 << 30).unwrap(), &content).await;
    let path = dir
        .path()
        .join("objects/sha256")
        .join(&d.hex()[..2])
        .join(d.hex());
    let mut bad = content.clone();
    bad[1_000_000] ^= 0xff;
    std::fs::write(&path, &bad).unwrap();

    let store = Store::open(dir.path(), 1 << 30).unwrap();
    let Claim::Hit(reader) = store.claim(&d).unwrap() else {
        panic!()
    };
    let mut stream = Box::pin(reader.stream(None));
    let mut served = 0;
    let mut failed = false;
    while let Some(item) = stream.next().await {
        match item {
            Ok(chunk) => served += chunk.len(),
            Err(e) => {
                assert!(matches!(e, Error::DigestMismatch { .. }), "{e}");
                failed = true;
            }
        }
    }
    assert!(
        failed && served < content.len(),
        "served {served} of {}",
        content.len()
    );
    assert!(!store.contains(&d), "dropped");
    assert!(!path.exists());

    // A truncated file is caught by its size before anything is served.
    let d2 = fill(&store, &data(1000, 5)).await;
    let p2 = dir
        .path()
        .join("objects/sha256")
        .join(&d2.hex()[..2])
        .join(d2.hex());
    std::fs::write(&p2, b"short").unwrap();
    assert!(matches!(store.claim(&d2).unwrap(), Claim::Lead(_)));
}

/// Replaces the folder `path` with a file (a real write fault: nothing can be created in it).
fn break_folder(path: &std::path::Path) {
    std::fs::remove_dir_all(path).unwrap();
    std::fs::write(path, b"").unwrap();
}

fn mend_folder(path: &std::path::Path) {
    std::fs::remove_file(path).unwrap();
    std::fs::create_dir(path).unwrap();
}

async fn past_the_write_pause() {
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(31)).await;
    tokio::time::resume();
}

#[tokio::test]
async fn a_write_error_pauses_caching_until_writes_work() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1 << 30).unwrap();
    let content = data(10_000, 6);
    let d = Digest::of(&content);
    // The commit fails: its shard folder cannot be made.
    let shard = dir.path().join("objects/sha256").join(&d.hex()[..2]);
    std::fs::write(&shard, b"").unwrap();
    let mut w = lead(&store, &d);
    w.start(Some(10_000), "t", "reg", "lib/a");
    w.write(&content).unwrap();
    assert!(matches!(w.finish(), Err(Error::Io { .. })));
    assert!(store.writes_failing());
    assert!(
        matches!(store.claim(&d).unwrap(), Claim::Bypass),
        "paused: pass through"
    );
    std::fs::remove_file(&shard).unwrap();
    // A fill that cannot even start (no temp folder) pauses caching too.
    past_the_write_pause().await;
    break_folder(&dir.path().join("tmp"));
    assert!(matches!(store.claim(&d).unwrap(), Claim::Bypass));
    mend_folder(&dir.path().join("tmp"));
    assert!(
        matches!(store.claim(&d).unwrap(), Claim::Bypass),
        "still paused"
    );
    past_the_write_pause().await;
    let d = fill(&store, &content).await;
    assert!(store.contains(&d));
    assert!(!store.writes_failing(), "recovered");
}

#[tokio::test]
async fn verify_rehashes_and_purge_selects_by_repository() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1 << 30).unwrap();
    let a = fill(&store, &data(2000, 1)).await;
    let b = fill(&store, &data(2000, 2)).await;
    store.add_ref(&b, "ghcr.io", "acme/tool");
    let path = dir
        .path()
        .join("objects/sha256")
        .join(&a.hex()[..2])
        .join(a.hex());
    std::fs::write(&path, data(2000, 3)).unwrap();
    let report = store.verify();
    assert_eq!(report.checked, 2);
    assert_eq!(report.dropped.len(), 1);
    assert_eq!(report.dropped[0].0, a);
    let (n, bytes) = store.purge(|o| o.refs.iter().any(|(_, repo)| repo == "acme/tool"));
    assert_eq!((n, bytes), (1, 2000));
    assert_eq!(store.usage(), (0, 0));
}

#[tokio::test]
async fn fills_are_capped_in_all_and_per_registry() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1 << 30).unwrap();
    store.set_fill_limits(FillLimits {
        max_fills: 3,
        max_fills_per_registry: 2,
    });
    let d = |i: u8| Digest::of(&[i]);
    let claim = |i: u8, registry: &str| store.claim_for(&d(i), registry).unwrap();
    let _a = match claim(1, "r1") {
        Claim::Lead(w) => w,
        _ => panic!("first fill leads"),
    };
    let b = match claim(2, "r1") {
        Claim::Lead(w) => w,
        _ => panic!("second fill of r1 leads"),
    };
    assert!(matches!(claim(3, "r1"), Claim::Bypass), "r1's cap");
    let _c = match claim(4, "r2") {
        Claim::Lead(w) => w,
        _ => panic!("another registry still fills"),
    };
    assert!(matches!(claim(5, "r3"), Claim::Bypass), "the overall cap");
    assert!(
        matches!(claim(2, "r1"), Claim::Join(_)),
        "joining is not capped"
    );
    drop(b);
    assert!(matches!(claim(3, "r1"), Claim::Lead(_)), "room again");
}

#[tokio::test]
async fn fills_reserve_their_bytes_within_max_size() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 10_000).unwrap();
    let old = fill(&store, &data(4_000, 1)).await;
    let (d1, d2) = (Digest::of(&data(7_000, 2)), Digest::of(&data(7_000, 3)));
    let mut w1 = lead(&store, &d1);
    assert!(w1.reserve(7_000), "admitted: the promise fits max_size");
    assert!(store.contains(&old), "nothing evicted for a promise alone");
    let mut w2 = lead(&store, &d2);
    assert!(!w2.reserve(7_000), "the first fill's bytes are spoken for");
    store.wrote(&d1, 7_000);
    assert!(!store.contains(&old), "evicted once the bytes were written");
    drop(w1);
    assert!(w2.reserve(7_000), "released when the first fill ended");
    // A body of unknown length cannot outgrow the room either.
    let d3 = Digest::of(&data(20_000, 4));
    let mut w3 = lead(&store, &d3);
    w3.start(None, "application/octet-stream", "reg", "lib/a");
    let content = data(20_000, 4);
    let failed = content
        .chunks(1000)
        .map(|c| w3.write(c))
        .find(|r| r.is_err());
    assert!(matches!(failed, Some(Err(Error::NoRoom { .. }))));
    assert!(tmp_files(dir.path()) >= 1);
}

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
    let key = tag_key(1);
    let fifo = dir
        .path()
        .join("tags")
        .join(format!("{}.partial", key.file_name()));
    rustix::fs::mkfifoat(rustix::fs::CWD, &fifo, rustix::fs::Mode::RWXU).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let (s, d) = (store.clone(), objects[0].clone());
    std::thread::spawn(move || {
        s.put_tag(key, d, "application/json", Duration::from_secs(60));
        let _ = tx.send(());
    });
    let returned = rx.recv_timeout(Duration::from_secs(5)).is_ok();
    let reader = fifo.clone();
    let written = std::thread::spawn(move || std::fs::read_to_string(reader).unwrap());
    assert!(returned, "put_tag waited for the disk");
    assert!(written.join().unwrap().contains(&objects[0].to_string()));
    std::fs::remove_file(fifo).unwrap();

    // 30,000 mappings (HEADs of digests not held), then 500 objects purged in one go: the lock
    // is held for the index work only (ms), not for a scan of every mapping per object (seconds).
    store.set_max_tags(50_000);
    for i in 2..30_000 {
        let other = Digest::of(format!("other {i}").as_bytes());
        store.put_tag(tag_key(i), other, "application/json", ttl);
    }
    store.put_tag(tag_key(30_000), objects[1].clone(), "application/json", ttl);
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (s, stop, probe) = (store.clone(), done.clone(), objects[5].clone());
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
    let (n, _) = store.purge(|_| true);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let worst = prober.join().unwrap();
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

/// Issue 9 (trust), fills past the room: a body of unknown length that outgrows the cache's
/// room goes on, whole and verified, to the readers already reading; nothing is committed and
/// the room is given back.
#[tokio::test]
async fn a_fill_of_unknown_length_that_outgrows_the_room_is_relayed_uncached() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 10_000).unwrap();
    let relay = |content: Vec<u8>, claimed: Digest| {
        let store = store.clone();
        async move {
            let mut w = lead(&store, &claimed);
            let joined: Vec<Arc<Fill>> = (0..3)
                .map(|_| match store.claim(&claimed).unwrap() {
                    Claim::Join(f) => f,
                    _ => panic!("expected to join"),
                })
                .collect();
            let mut streams = vec![w.fill().clone().stream().boxed()];
            streams.extend(joined.iter().map(|f| f.clone().stream().boxed()));
            let readers: Vec<_> = (streams.into_iter())
                .map(|s| tokio::spawn(s.try_collect::<Vec<bytes::Bytes>>()))
                .collect();
            w.start(None, "application/octet-stream", "reg", "lib/a");
            for chunk in content.chunks(1000) {
                let chunk = bytes::Bytes::copy_from_slice(chunk);
                w.write_or_relay(chunk).await.unwrap();
            }
            let Claim::Join(late) = store.claim(&claimed).unwrap() else {
                panic!("the fill is still under way")
            };
            assert_eq!(
                late.head().await,
                FillState::Declined,
                "a late reader asks upstream"
            );
            let finished = w.finish();
            let mut got = Vec::new();
            for r in readers {
                got.push(r.await.unwrap().map(|chunks| chunks.concat()));
            }
            (finished, got)
        }
    };
    let content = data(50_000, 8);
    let (finished, got) = relay(content.clone(), Digest::of(&content)).await;
    assert!(
        matches!(finished, Err(Error::NoRoom { .. })),
        "{finished:?}"
    );
    for body in got {
        assert_eq!(body.unwrap(), content, "every reader got it whole");
    }
    assert!(!store.contains(&Digest::of(&content)), "not cached");
    assert_eq!((store.usage(), tmp_files(dir.path())), ((0, 0), 0));
    let mut w = lead(&store, &Digest::of(b"next"));
    assert!(w.reserve(10_000), "the room was given back");
    drop(w);

    // Relayed bytes are verified too: on a mismatch the readers never get the last chunk.
    let (finished, got) = relay(data(50_000, 9), Digest::of(b"other")).await;
    assert!(matches!(finished, Err(Error::DigestMismatch { .. })));
    assert!(got.iter().all(|body| body.is_err()));
}
