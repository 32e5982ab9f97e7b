//! The tier against `object_store`'s `InMemory`, and one that fails on demand (`failing.rs`) for the
//! down, backoff and catch-up logic (with the clock paused).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::TryStreamExt;
use object_store::memory::InMemory;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt};

use super::failing::Flaky;
use super::*;
use crate::metrics::UploadResult;

fn tier_over(store: Arc<dyn ObjectStore>) -> (Arc<SharedTier>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    (
        SharedTier::new(store, "/site/", "test", metrics.clone()),
        metrics,
    )
}

fn object(dir: &std::path::Path, data: &[u8]) -> (Digest, PathBuf) {
    let digest = Digest::of(data);
    let path = dir.join(digest.hex());
    std::fs::write(&path, data).unwrap();
    (digest, path)
}

async fn read_all(tier: &SharedTier, digest: &Digest) -> Vec<u8> {
    let (size, body) = tier.get(digest).await.unwrap();
    let chunks: Vec<Bytes> = body.try_collect().await.unwrap();
    let data = chunks.concat();
    assert_eq!(size, data.len() as u64);
    data
}

#[tokio::test]
async fn a_verified_file_is_uploaded_under_its_digest_then_read_listed_and_deleted() {
    let store = Arc::new(InMemory::new());
    let (tier, metrics) = tier_over(store.clone());
    let dir = tempfile::tempdir().unwrap();
    let (digest, path) = object(dir.path(), b"a small layer");
    assert_eq!(tier.head(&digest).await, None);
    let result = tier.upload(&digest, &path).await.unwrap();
    assert_eq!(result, UploadResult::Uploaded);
    let key = Key::from(format!("site/sha256/{}", digest.hex()));
    assert_eq!(tier.key(&digest), key);
    assert!(store.head(&key).await.is_ok());
    assert_eq!(tier.head(&digest).await, Some(13));
    assert_eq!(read_all(&tier, &digest).await, b"a small layer");
    assert_eq!(
        tier.upload(&digest, &path).await.unwrap(),
        UploadResult::Present
    );
    let listed = tier.list().await.unwrap();
    assert_eq!(
        listed,
        vec![Listed {
            digest: digest.clone(),
            size: 13
        }]
    );
    tier.delete(&digest).await.unwrap();
    tier.delete(&digest).await.unwrap();
    assert_eq!(tier.head(&digest).await, None);
    assert_eq!(metrics.tier.totals(Tier::Shared).2, 0, "a miss is no error");
}

#[tokio::test]
async fn a_large_object_goes_in_parts_and_a_changed_file_is_never_uploaded() {
    let store = Arc::new(InMemory::new());
    let (tier, _) = tier_over(store.clone());
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..(MULTIPART_OVER as usize * 2 + 12345))
        .map(|i| (i % 251) as u8)
        .collect();
    let (digest, path) = object(dir.path(), &data);
    assert_eq!(
        tier.upload(&digest, &path).await.unwrap(),
        UploadResult::Uploaded
    );
    assert_eq!(read_all(&tier, &digest).await, data);

    // The file no longer hashes to its name: the upload is aborted, nothing appears.
    for len in [100, MULTIPART_OVER as usize + 1] {
        let (digest, path) = object(dir.path(), &vec![7u8; len]);
        std::fs::write(&path, vec![8u8; len]).unwrap();
        let err = tier.upload(&digest, &path).await.unwrap_err();
        assert!(matches!(err, Error::Mismatch { .. }), "{err}");
        assert_eq!(tier.head(&digest).await, None);
    }
    let listed = tier.list().await.unwrap();
    assert_eq!(listed.len(), 1, "only the verified object: {listed:?}");
    let digest = Digest::of(b"gone");
    let err = tier
        .upload(&digest, &dir.path().join("gone"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Local { .. }), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_failing_store_is_skipped_counted_and_caught_up_with_when_it_returns() {
    let flaky = Arc::new(Flaky::default());
    let (tier, metrics) = tier_over(flaky.clone());
    tier.start_uploads();
    let dir = tempfile::tempdir().unwrap();
    let (a, a_path) = object(dir.path(), b"object a");
    let (b, b_path) = object(dir.path(), b"object b");

    flaky.down.store(true, Ordering::SeqCst);
    assert_eq!(tier.head(&a).await, None);
    assert!(tier.health.is_down());
    assert!(metrics
        .encode()
        .contains("regcache_tier_store_up{tier=\"shared\"} 0"));
    // Skipped while down: no call reaches the store.
    let calls = flaky.calls.load(Ordering::SeqCst);
    assert_eq!(tier.head(&a).await, None);
    assert!(matches!(tier.get(&a).await, Err(Error::Down)));
    assert_eq!(flaky.calls.load(Ordering::SeqCst), calls);

    tier.queue_upload(&a, &a_path);
    tier.queue_upload(&b, &b_path);
    settle().await;
    assert_eq!(tier.pending(), 2, "parked while the store is down");
    // The trials after each backoff fail too: still pending, backoff growing.
    tokio::time::sleep(Duration::from_secs(5)).await;
    settle().await;
    assert_eq!(tier.pending(), 2);
    assert!(metrics.tier.totals(Tier::Shared).2 >= 2);

    flaky.down.store(false, Ordering::SeqCst);
    tokio::time::sleep(health::MAX_BACKOFF).await;
    settle().await;
    assert_eq!(tier.pending(), 0, "caught up");
    assert!(metrics
        .encode()
        .contains("regcache_tier_store_up{tier=\"shared\"} 1"));
    assert_eq!(tier.list().await.unwrap().len(), 2);
    assert_eq!(read_all(&tier, &b).await, b"object b");
}

/// Lets the uploader run its turns (the clock is paused; its timer fires as time is advanced).
async fn settle() {
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_full_queue_spills_to_the_pending_set_and_never_blocks() {
    let (tier, _) = tier_over(Arc::new(InMemory::new()));
    let dir = tempfile::tempdir().unwrap();
    let (digest, path) = object(dir.path(), b"x");
    // No uploader started: the queue fills, then the pending set takes the rest at once.
    for _ in 0..QUEUE + 3 {
        tier.queue_upload(&digest, &path);
    }
    assert_eq!(tier.pending(), 1, "one digest, parked once");
    tier.start_uploads();
    for _ in 0..200 {
        if tier.head(&digest).await.is_some() && tier.pending() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the uploader never sent the object");
}

#[tokio::test(start_paused = true)]
async fn a_stalled_store_costs_a_request_a_few_seconds_once_then_is_skipped() {
    let flaky = Arc::new(Flaky::default());
    let (tier, _) = tier_over(flaky.clone());
    flaky.stalled.store(true, Ordering::SeqCst);
    let digest = Digest::of(b"x");
    let began = tokio::time::Instant::now();
    assert_eq!(tier.head(&digest).await, None);
    assert_eq!(began.elapsed(), HEAD_TIMEOUT);
    assert!(!tier.health().up);
    let began = tokio::time::Instant::now();
    assert_eq!(tier.head(&digest).await, None);
    assert!(matches!(tier.get(&digest).await, Err(Error::Down)));
    assert_eq!(began.elapsed(), Duration::ZERO, "skipped while down");
}

#[tokio::test(start_paused = true)]
async fn a_store_that_refuses_uploads_is_not_down_and_the_upload_is_dropped_after_a_few() {
    let flaky = Arc::new(Flaky::default());
    let (tier, metrics) = tier_over(flaky.clone());
    tier.start_uploads();
    let dir = tempfile::tempdir().unwrap();
    let (a, a_path) = object(dir.path(), b"object a");
    let (b, _) = object(dir.path(), b"object b");
    flaky
        .inner
        .put(&tier.key(&b), b"object b".to_vec().into())
        .await
        .unwrap();
    flaky.rejecting.store(true, Ordering::SeqCst);
    tier.queue_upload(&a, &a_path);
    settle().await;
    assert!(
        tier.health().up,
        "a 403 on PUT does not mark the store down"
    );
    assert_eq!(tier.head(&b).await, Some(8), "reads go on");
    assert_eq!(tier.pending(), 0, "dropped, not retried forever");
    let text = metrics.encode();
    assert!(
        text.contains("regcache_tier_uploads_total{result=\"dropped\"} 1"),
        "{text}"
    );
    let puts = flaky.calls.load(Ordering::SeqCst);
    settle().await;
    assert_eq!(flaky.calls.load(Ordering::SeqCst), puts, "not asked again");
    assert_eq!(tier.head(&a).await, None);
}

#[tokio::test(start_paused = true)]
async fn a_multipart_upload_that_outlasts_its_deadline_is_aborted_and_holds_back_no_other() {
    let flaky = Arc::new(Flaky::default());
    let (tier, _) = tier_over(flaky.clone());
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..(MULTIPART_OVER as usize + 4321))
        .map(|i| (i % 249) as u8)
        .collect();
    let (big, big_path) = object(dir.path(), &data);
    flaky.parts_stalled.store(true, Ordering::SeqCst);
    let err = tier.upload(&big, &big_path).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert_eq!(flaky.aborts.load(Ordering::SeqCst), 1, "aborted");

    // One stalled huge upload in flight: a small one still goes through.
    tier.health.succeeded();
    tier.start_uploads();
    let (small, small_path) = object(dir.path(), b"a small one");
    tier.queue_upload(&big, &big_path);
    tier.queue_upload(&small, &small_path);
    settle().await;
    assert!(flaky.inner.head(&tier.key(&small)).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_slow_head_is_a_miss_and_marks_the_store_down() {
    let flaky = Arc::new(Flaky::default());
    let (tier, _) = tier_over(flaky.clone());
    let digest = Digest::of(b"x");
    flaky
        .inner
        .put(&tier.key(&digest), b"x".to_vec().into())
        .await
        .unwrap();
    flaky.slow.store(true, Ordering::SeqCst);
    assert_eq!(tier.head(&digest).await, None);
    assert!(!tier.health().up, "marked down");
    let began = tokio::time::Instant::now();
    assert_eq!(tier.head(&digest).await, None);
    assert_eq!(began.elapsed(), Duration::ZERO, "skipped while down");
    flaky.slow.store(false, Ordering::SeqCst);
    tokio::time::sleep(health::MIN_BACKOFF).await;
    assert_eq!(tier.head(&digest).await, Some(1), "the trial");
}
