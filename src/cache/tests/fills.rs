//! Fills: verify before commit, rewinding a waiting fill for another source, readers joining and never seeing the last byte early, failures, caps, reservations, and the relay past the room.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};

use super::*;

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
async fn a_waiting_fill_checked_wrong_is_rewound_and_filled_again_by_another_source() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 500_000).unwrap();
    let content = data(300_000, 7);
    let d = Digest::of(&content);
    let mut w = lead(&store, &d);
    let size = Some(content.len() as u64);
    assert!(w.reserve(content.len() as u64));
    w.write(&data(300_000, 8)).unwrap();
    let wrong = w.check(size).unwrap_err();
    assert!(matches!(wrong, Error::DigestMismatch { .. }), "{wrong}");
    assert!(!store.contains(&d));
    w.rewind().unwrap();
    assert!(
        w.reserve(content.len() as u64),
        "the first source's room was given back"
    );
    w.write(&content[..100]).unwrap();
    assert!(matches!(w.check(size), Err(Error::SizeMismatch { .. })));
    w.rewind().unwrap();
    w.write(&content).unwrap();
    w.check(size).unwrap();
    w.start(size, "x", "reg", "lib/a");
    w.finish().unwrap();
    assert_eq!(
        read(&store, &d).await.unwrap(),
        content,
        "only the right bytes"
    );
    assert_eq!(store.usage(), (1, content.len() as u64));
    assert_eq!(tmp_files(dir.path()), 0);
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

/// The last byte goes to the readers once the digest matched, before the commit (fsync,
/// rename): a commit that fails then costs the cached copy, not the readers' verified bytes; a
/// digest that fails gives them an error and never the last byte.
#[tokio::test]
async fn verified_bytes_reach_the_readers_even_when_the_commit_then_fails() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1 << 30).unwrap();
    let follow = |store: Arc<Store>, content: Vec<u8>, d: Digest| async move {
        let mut w = lead(&store, &d);
        let reader = tokio::spawn(w.fill().clone().stream().try_collect::<Vec<bytes::Bytes>>());
        w.start(Some(content.len() as u64), "t", "reg", "lib/a");
        w.write(&content).unwrap();
        let finished = w.finish();
        (finished, reader.await.unwrap().map(|c| c.concat()))
    };
    let content = data(300_000, 5);
    let d = Digest::of(&content);
    // The object's folder cannot be made: the commit fails after the verification.
    let hex = d.hex();
    let objects = dir.path().join("objects/sha256");
    std::fs::create_dir_all(&objects).unwrap();
    std::fs::write(objects.join(&hex[..2]), b"in the way").unwrap();
    let (finished, got) = follow(store.clone(), content.clone(), d.clone()).await;
    assert!(matches!(finished, Err(Error::Io { .. })), "{finished:?}");
    assert_eq!(got.unwrap(), content, "the reader got the verified bytes");
    assert!(!store.contains(&d), "not cached");
    assert_eq!(tmp_files(dir.path()), 0);

    // (A write error pauses caching: the mismatch in a store of its own.)
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1 << 30).unwrap();
    let (finished, got) = follow(store, data(300_000, 6), Digest::of(b"other")).await;
    assert!(matches!(finished, Err(Error::DigestMismatch { .. })));
    assert!(got.is_err(), "a reader of a mismatch gets an error");
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

/// Verified bytes go to the readers before the commit's fsync; when that fsync fails, the page
/// cache may no longer hold the bytes that were hashed, so a reader still reading stops with an
/// error rather than finishing a body that looks whole.
#[tokio::test]
async fn a_reader_stops_when_the_verified_bytes_failed_to_reach_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1 << 30).unwrap();
    let content = data(300_000, 9);
    let d = Digest::of(&content);
    let mut w = lead(&store, &d);
    w.start(Some(content.len() as u64), "t", "reg", "lib/a");
    w.write(&content).unwrap();
    let fill = w.fill().clone();
    // What `commit` does between the digest check and a failed fsync.
    fill.verified.set(content.len() as u64).unwrap();
    let whole = fill
        .clone()
        .stream()
        .try_collect::<Vec<bytes::Bytes>>()
        .await;
    assert_eq!(
        whole.unwrap().concat(),
        content,
        "verified: read to the end"
    );
    (fill.unsynced).store(true, std::sync::atomic::Ordering::Release);
    let after = fill
        .clone()
        .stream()
        .try_collect::<Vec<bytes::Bytes>>()
        .await;
    assert!(
        after.is_err(),
        "after a failed fsync a reader gets an error"
    );
    w.fail("test over".into());
}
