//! References: `referenced_in` answers what a scan of `list()` would, without copying the index.

use std::time::{Instant, SystemTime};

use super::index::Entry;
use super::*;

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// `n` objects in the index (no files): every 100th a manifest, each referenced by two of 50
/// repositories.
fn index_of(store: &Store, n: u32) {
    let mut state = store.lock();
    for i in 0..n {
        let media_type = match i % 100 {
            0 => MANIFEST,
            _ => "application/octet-stream",
        };
        let refs = [i % 50, (i + 7) % 50].map(|r| ("reg".to_owned(), format!("lib/r{r}")));
        let entry = Entry {
            size: 1000 + u64::from(i % 5000),
            media_type: media_type.to_owned(),
            refs: refs.to_vec(),
            last_used: SystemTime::now(),
            pins: 0,
            verified: true,
        };
        state.objects.insert(Digest::of(&i.to_le_bytes()), entry);
    }
}

#[test]
fn referenced_in_answers_like_a_scan_of_the_list_without_copying_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), u64::MAX).unwrap();
    index_of(&store, 50_000);
    let small_manifest = |size: u64, media_type: &str| size <= 3000 && media_type == MANIFEST;
    let t = Instant::now();
    let listed = store.list();
    let list_took = t.elapsed();
    let mut want: Vec<Digest> = (listed.into_iter())
        .filter(|o| small_manifest(o.size, &o.media_type))
        .filter(|o| o.refs.iter().any(|(r, p)| r == "reg" && p == "lib/r7"))
        .map(|o| o.digest)
        .collect();
    let t = Instant::now();
    let mut got = store.referenced_in("reg", "lib/r7", small_manifest);
    let took = t.elapsed();
    want.sort();
    got.sort();
    assert!(!want.is_empty(), "the fixture has such manifests");
    assert_eq!(got, want);
    assert!(store
        .referenced_in("reg", "lib/none", |_, _| true)
        .is_empty());
    assert!(store
        .referenced_in("other", "lib/r7", |_, _| true)
        .is_empty());
    let all = store.referenced_in("reg", "lib/r7", |_, _| true);
    assert_eq!(
        all.len(),
        2_000,
        "every object lib/r7 referenced, blobs too"
    );
    // A measurement, not an assertion (the machine is shared): the fastest of 5 runs of each.
    let fastest = |f: &dyn Fn()| {
        let runs = (0..5).map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        });
        runs.min().unwrap_or_default()
    };
    let list_took = list_took.min(fastest(&|| drop(store.list())));
    let took = took.min(fastest(&|| {
        drop(store.referenced_in("reg", "lib/r7", small_manifest))
    }));
    eprintln!("50,000 objects: list() {list_took:?}, referenced_in {took:?}");
}
