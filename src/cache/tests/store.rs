//! The store: digests, LRU eviction and pins, restart, corruption, write faults, verify and purge.

use std::time::Duration;

use futures_util::StreamExt;

use super::*;

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

#[test]
fn one_owner_at_a_time_and_maintenance_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let owner = Store::open(dir.path(), 1 << 20).unwrap();
    let second = Store::open(dir.path(), 1 << 20);
    assert!(
        matches!(second, Err(Error::Owned { .. })),
        "a second owner is refused"
    );
    // `regcache cache …` may look while the owner runs.
    assert!(Store::open_for_maintenance(dir.path()).is_ok());
    drop(owner);
    assert!(
        Store::open(dir.path(), 1 << 20).is_ok(),
        "the lock goes with the owner"
    );
}
