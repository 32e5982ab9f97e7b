//! The shared tier between appliances: two in-process appliances (each its own cache directory)
//! over one in-memory object store, in front of one fake upstream. What one fetched, the other
//! serves without an upstream GET, to the clients the upstream admits, verified; a store that
//! fails costs nothing but sharing, and the uploads catch up when it returns.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use object_store::memory::InMemory;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use regcache::cache::Digest;
use regcache::tier::failing::Flaky;

use crate::support::registry::{
    big, blob, blob2, digest_of, mutable, secret, MANIFEST_TYPE, TOKEN,
};
use crate::support::{Appliance, World};

const HUB: &str = "registry-1.docker.io";

fn x_cache(resp: &http::Response<Bytes>) -> &str {
    resp.headers()
        .get("x-cache")
        .map_or("-", |v| v.to_str().unwrap())
}

fn key(data: &[u8]) -> Key {
    Key::from(format!("fleet/sha256/{}", crate::support::sha256_hex(data)))
}

/// Waits (bounded) until the store holds `data`'s object.
async fn uploaded(store: &dyn ObjectStore, data: &[u8]) {
    for _ in 0..200 {
        if store.head(&key(data)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never uploaded to the shared store");
}

/// A second appliance like the world's, over `store`, in front of the same upstream.
async fn second(w: &World, store: Arc<dyn ObjectStore>) -> Appliance {
    Appliance::start_with_store(&w.dns_keys, &w.toml, Some(store)).await
}

#[tokio::test]
async fn what_one_appliance_fetched_the_other_serves_with_no_upstream_get() {
    let store = Arc::new(InMemory::new());
    let w = World::start_shared(store.clone()).await;
    let two = second(&w, store.clone()).await;
    let path = format!("/v2/library/small/blobs/{}", digest_of(&blob2()));
    let first = w.app.get(HUB, &path, &[]).await;
    assert_eq!((first.status(), x_cache(&first)), (StatusCode::OK, "MISS"));
    uploaded(store.as_ref(), &blob2()).await;
    assert_eq!(w.registry.count("GET", &path), 1);

    let shared = two.get(HUB, &path, &[]).await;
    assert_eq!(
        (shared.status(), x_cache(&shared)),
        (StatusCode::OK, "SHARED")
    );
    assert_eq!(shared.body(), &blob2());
    assert_eq!(
        w.registry.count("GET", &path),
        1,
        "no upstream GET for the second"
    );
    let digest = Digest::parse(&digest_of(&blob2())).unwrap();
    assert!(
        two.cache.contains(&digest),
        "the local tier filled at the same time"
    );
    let local = two.get(HUB, &path, &[]).await;
    assert_eq!((local.status(), x_cache(&local)), (StatusCode::OK, "HIT"));

    // A manifest by digest, its media type from the verified bytes.
    let body = mutable(w.registry.version.load(Ordering::SeqCst), false);
    let manifest = format!("/v2/library/mut/manifests/{}", digest_of(&body));
    let accept = ("accept", MANIFEST_TYPE);
    assert_eq!(
        w.app.get(HUB, &manifest, &[accept]).await.status(),
        StatusCode::OK
    );
    uploaded(store.as_ref(), &body).await;
    let resp = two.get(HUB, &manifest, &[accept]).await;
    assert_eq!((resp.status(), x_cache(&resp)), (StatusCode::OK, "SHARED"));
    assert_eq!(
        (
            resp.body(),
            resp.headers()["content-type"].to_str().unwrap()
        ),
        (&body, MANIFEST_TYPE)
    );
    assert_eq!(w.registry.count("GET", &manifest), 1);
    let metrics = crate::support::admin_get(two.admin, "/metrics").await;
    assert!(
        metrics.contains("regcache_tier_hits_total{tier=\"shared\"} 2"),
        "{metrics}"
    );
    let status = crate::support::admin_get(two.admin, "/api/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let (local, shared) = (&status["tiers"][0], &status["tiers"][1]);
    assert_eq!(
        (&shared["tier"], &shared["hits"]),
        (&"shared".into(), &2.into())
    );
    assert_eq!(shared["up"], true);
    assert_eq!(shared["bytes"], (blob2().len() + body.len()) as u64);
    assert_eq!(
        (&local["tier"], &local["hits"]),
        (&"local".into(), &1.into())
    );
    two.stop().await;
}

#[tokio::test]
async fn the_tier_never_serves_a_client_the_upstream_refuses() {
    let store = Arc::new(InMemory::new());
    let w = World::start_shared(store.clone()).await;
    let two = second(&w, store.clone()).await;
    let private = format!("/v2/private/app/blobs/{}", digest_of(&secret()));
    let filled = w.app.get(HUB, &private, &[("authorization", TOKEN)]).await;
    assert_eq!(filled.status(), StatusCode::OK);
    uploaded(store.as_ref(), &secret()).await;

    let refused = two.get(HUB, &private, &[]).await;
    assert_eq!(
        refused.status(),
        StatusCode::UNAUTHORIZED,
        "the upstream's refusal"
    );
    assert!(refused.headers().contains_key("www-authenticate"));
    assert_ne!(refused.body(), &secret());
    let digest = Digest::parse(&digest_of(&secret())).unwrap();
    assert!(
        !two.cache.contains(&digest),
        "nothing fetched for a refused client"
    );
    let admitted = two.get(HUB, &private, &[("authorization", TOKEN)]).await;
    assert_eq!(
        (admitted.status(), x_cache(&admitted)),
        (StatusCode::OK, "SHARED")
    );
    assert_eq!(admitted.body(), &secret());
    two.stop().await;
}

#[tokio::test]
async fn a_corrupt_object_in_the_tier_is_refused_and_never_stored() {
    let store = Arc::new(InMemory::new());
    let w = World::start_shared(store.clone()).await;
    // Same length, other bytes, under blob2's key (and a manifest's).
    store
        .put(&key(&blob2()), PutPayload::from(blob()))
        .await
        .unwrap();
    let body = mutable(w.registry.version.load(Ordering::SeqCst), false);
    let bad = Bytes::from(body.iter().map(|b| b ^ 1).collect::<Vec<u8>>());
    store.put(&key(&body), PutPayload::from(bad)).await.unwrap();

    let path = format!("/v2/library/small/blobs/{}", digest_of(&blob2()));
    let served = w.app.try_request(
        HUB,
        crate::support::build("GET", HUB, &path, &[], Bytes::new()),
    );
    // Cut before its last byte (an error), or at least not the store's bytes whole.
    if let Ok(resp) = served.await {
        assert_ne!(
            resp.body(),
            &blob(),
            "the store's bytes were not served whole"
        );
    }
    let digest = Digest::parse(&digest_of(&blob2())).unwrap();
    assert!(!w.app.cache.contains(&digest), "never stored locally");
    assert!(
        store.head(&key(&blob2())).await.is_err(),
        "removed from the store"
    );
    let retry = w.app.get(HUB, &path, &[]).await;
    assert_eq!((retry.status(), x_cache(&retry)), (StatusCode::OK, "MISS"));
    assert_eq!(retry.body(), &blob2());

    // A manifest is checked before anything is served: the upstream's, at once.
    let manifest = format!("/v2/library/mut/manifests/{}", digest_of(&body));
    let resp = w
        .app
        .get(HUB, &manifest, &[("accept", MANIFEST_TYPE)])
        .await;
    assert_eq!((resp.status(), x_cache(&resp)), (StatusCode::OK, "MISS"));
    assert_eq!(resp.body(), &body);
    let metrics = crate::support::admin_get(w.app.admin, "/metrics").await;
    assert!(
        metrics.contains("regcache_tier_errors_total{tier=\"shared\",op=\"verify\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_good_object_is_never_deleted_for_what_the_url_looks_like() {
    let store = Arc::new(InMemory::new());
    let w = World::start_shared(store.clone()).await;
    store
        .put(&key(&blob2()), PutPayload::from(blob2()))
        .await
        .unwrap();
    // A blob whose URL's query says `/manifests/`: a blob all the same.
    let path = format!(
        "/v2/library/small/blobs/{}?x=/manifests/",
        digest_of(&blob2())
    );
    let resp = w.app.get(HUB, &path, &[]).await;
    assert_eq!((resp.status(), x_cache(&resp)), (StatusCode::OK, "SHARED"));
    assert_eq!(resp.body(), &blob2());
    assert!(
        store.head(&key(&blob2())).await.is_ok(),
        "still in the store"
    );

    // A blob asked for as a manifest is not one: a miss, and the store keeps it.
    let other = Arc::new(InMemory::new());
    let two = second(&w, other.clone()).await;
    other
        .put(&key(&blob2()), PutPayload::from(blob2()))
        .await
        .unwrap();
    let manifest = format!("/v2/library/small/manifests/{}", digest_of(&blob2()));
    let resp = two.get(HUB, &manifest, &[("accept", MANIFEST_TYPE)]).await;
    assert_ne!(x_cache(&resp), "SHARED");
    assert!(
        other.head(&key(&blob2())).await.is_ok(),
        "still in the store"
    );
    two.stop().await;
}

#[tokio::test]
async fn with_the_store_failing_pulls_work_and_uploads_catch_up_after() {
    let flaky = Arc::new(Flaky::default());
    flaky.down.store(true, Ordering::SeqCst);
    let w = World::start_shared(flaky.clone()).await;
    let path = format!("/v2/library/small/blobs/{}", digest_of(&blob2()));
    let resp = w.app.get(HUB, &path, &[]).await;
    assert_eq!((resp.status(), x_cache(&resp)), (StatusCode::OK, "MISS"));
    assert_eq!(resp.body(), &blob2());
    let tier = w.app.tier.clone().unwrap();
    for _ in 0..100 {
        if tier.pending() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(tier.pending(), 1, "waiting for the store");
    let metrics = crate::support::admin_get(w.app.admin, "/metrics").await;
    assert!(
        metrics.contains("regcache_tier_store_up{tier=\"shared\"} 0"),
        "{metrics}"
    );
    let status = crate::support::admin_get(w.app.admin, "/api/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let shared = &status["tiers"][1];
    assert_eq!(
        (&shared["up"], &shared["pending_uploads"]),
        (&false.into(), &1.into())
    );
    assert!(shared["errors"].as_u64().unwrap() >= 1);

    flaky.down.store(false, Ordering::SeqCst);
    uploaded(&flaky.inner, &blob2()).await;
    assert_eq!(tier.pending(), 0);
    let metrics = crate::support::admin_get(w.app.admin, "/metrics").await;
    assert!(
        metrics.contains("regcache_tier_store_up{tier=\"shared\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn with_the_upstream_down_the_tier_serves_clients_whose_access_was_established() {
    let store = Arc::new(InMemory::new());
    let w = World::start_shared(store.clone()).await;
    let two = second(&w, store.clone()).await;
    let tag = "/v2/library/small/manifests/1";
    let blob_path = format!("/v2/library/small/blobs/{}", digest_of(&blob()));
    assert_eq!(
        w.app.get(HUB, &blob_path, &[]).await.status(),
        StatusCode::OK
    );
    uploaded(store.as_ref(), &blob()).await;
    // The second appliance knows the tag (its manifest lists the blob), not the blob.
    assert_eq!(two.get(HUB, tag, &[]).await.status(), StatusCode::OK);
    w.registry.down.store(true, Ordering::SeqCst);
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(61)).await;
    tokio::time::resume();

    let resp = two.get(HUB, &blob_path, &[]).await;
    assert_eq!((resp.status(), x_cache(&resp)), (StatusCode::OK, "SHARED"));
    assert_eq!(resp.body(), &blob());
    // The manifest the second appliance fetched by tag went to the store too.
    let manifest = crate::support::registry::manifest();
    uploaded(store.as_ref(), &manifest).await;
    // A digest no manifest of the repository lists is not served offline, even from the tier.
    let other = format!("/v2/library/other/blobs/{}", digest_of(&blob()));
    let refused = two.get(HUB, &other, &[]).await;
    assert_ne!(refused.status(), StatusCode::OK);
    two.stop().await;
}

#[tokio::test]
async fn with_mirrors_first_the_store_is_asked_once_per_request() {
    let flaky = Arc::new(Flaky::default());
    let mirrors = crate::fallback::mirrors(true);
    let (w, mirror) = World::start_mirrored_shared(mirrors, flaky.clone()).await;
    // The mirror cannot answer: the store, the mirror, then the upstream.
    mirror
        .faults
        .throttle_blob_gets
        .store(true, Ordering::SeqCst);
    let path = format!("/v2/library/small/blobs/{}", digest_of(&blob2()));
    let resp = w.app.get(HUB, &path, &[]).await;
    assert_eq!((resp.status(), x_cache(&resp)), (StatusCode::OK, "MISS"));
    uploaded(&flaky.inner, &blob2()).await;
    // One HEAD for the request, one for the upload.
    assert_eq!(flaky.heads.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_shared_blob_larger_than_the_room_is_relayed_from_the_store_verified() {
    let store = Arc::new(InMemory::new());
    let w = World::start_shared(store.clone()).await;
    store
        .put(&key(&big()), PutPayload::from(big()))
        .await
        .unwrap();
    let toml = format!("{}\n[cache]\nmax_size = \"1MB\"\n", w.toml);
    let small = Appliance::start_with_store(&w.dns_keys, &toml, Some(store.clone())).await;
    let path = format!("/v2/library/big/blobs/{}", digest_of(&big()));
    let resp = small.get(HUB, &path, &[]).await;
    assert_eq!((resp.status(), x_cache(&resp)), (StatusCode::OK, "SHARED"));
    assert_eq!(
        crate::support::sha256_hex(resp.body()),
        crate::support::sha256_hex(&big())
    );
    assert_eq!(w.registry.count("GET", &path), 0, "not from the upstream");
    assert_eq!(small.cache.usage(), (0, 0), "not cached");
    assert!(store.head(&key(&big())).await.is_ok());
    small.stop().await;
}
