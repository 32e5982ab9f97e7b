//! A registry's `mirrors`: objects by digest fetched from a second fake registry when the primary
//! throttles blob GETs (or first, with `mirrors_first`), served only verified and only to clients
//! the primary admits; wrong bytes refused, never stored, counted per mirror, the next mirror
//! tried within the same request, and that mirror not asked for that digest again until the
//! mismatch memory's TTL passed.

use std::sync::atomic::Ordering;

use http::StatusCode;
use regcache::cache::Digest;
use regcache::proxy::{MIRROR_BACKOFF_MIN, MIRROR_MISMATCH_TTL};

use crate::metrics::{scrape, value};
use crate::support::registry::{big, blob, blob2, digest_of, secret, Registry, TOKEN};
use crate::support::World;

const HUB: &str = "registry-1.docker.io";

pub fn mirrors(first: bool) -> impl FnOnce(u16) -> String {
    move |port| format!("mirrors = [\"https://registry.test:{port}\"]\nmirrors_first = {first}")
}

/// `library/small` serves blob2 itself; blob (`library/small` too) is redirected to a CDN host.
pub fn small(data: &[u8]) -> String {
    format!("/v2/library/small/blobs/{}", digest_of(data))
}

pub fn stored(w: &World, data: &[u8]) -> bool {
    w.app
        .cache
        .contains(&Digest::parse(&digest_of(data)).unwrap())
}

/// Moves tokio's clock (the appliance runs on the test's runtime) by `by`.
async fn advance_clock(by: std::time::Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

/// Past the time a mirror's mismatch for a digest is remembered.
async fn past_mismatch_ttl() {
    advance_clock(MIRROR_MISMATCH_TTL + std::time::Duration::from_secs(1)).await;
}

/// `regcache_mirror_{family}_total{mirror="registry.test:PORT",{label}="{value}"}`.
async fn mirror_metric(
    w: &World,
    mirror: &Registry,
    family: &str,
    label: &str,
    value: &str,
) -> f64 {
    let text = scrape(w.app.admin).await;
    let port = mirror.addr.port();
    let line = format!(
        "regcache_mirror_{family}_total{{mirror=\"registry.test:{port}\",{label}=\"{value}\"}}"
    );
    crate::metrics::value(&text, &line)
}

async fn skip_count(w: &World, mirror: &Registry, reason: &str) -> f64 {
    mirror_metric(w, mirror, "skips", "reason", reason).await
}

async fn mirror_count(w: &World, mirror: &Registry, result: &str) -> f64 {
    mirror_metric(w, mirror, "fetches", "result", result).await
}

#[tokio::test]
async fn a_primary_that_throttles_blob_gets_is_served_from_the_mirror() {
    let (w, mirror) = World::start_mirrored("", mirrors(false)).await;
    w.registry
        .faults
        .throttle_blob_gets
        .store(true, Ordering::SeqCst);
    for data in [blob2(), blob()] {
        let resp = w.app.get(HUB, &small(&data), &[]).await;
        assert_eq!(resp.status(), StatusCode::OK, "{:?}", resp.body());
        assert!(resp.body() == &data, "the object's own bytes");
        assert_eq!(resp.headers()["x-cache"], "MISS");
        assert!(stored(&w, &data), "stored once verified");
        assert_eq!(mirror.count("GET", &small(&data)), 1);
    }
    // The CDN hop of the mirror's redirect was followed (and of the primary's check).
    assert!(!mirror.seen("/blobs/").is_empty());
    let again = w.app.get(HUB, &small(&blob2()), &[]).await;
    assert_eq!(again.headers()["x-cache"], "HIT");
    assert_eq!(mirror.count("GET", &small(&blob2())), 1, "no second fetch");
    assert_eq!(mirror_count(&w, &mirror, "verified").await, 2.0);
    let asked = mirror.seen("/v2/library/small/blobs/");
    assert!(
        asked
            .iter()
            .all(|s| !s.headers.contains_key("authorization")),
        "mirrors are asked anonymously"
    );
    w.app.stop().await;
}

#[tokio::test]
async fn a_mirror_serving_wrong_bytes_is_refused_not_stored_counted_and_skipped_until_the_ttl() {
    let (w, mirror) = World::start_mirrored("", mirrors(false)).await;
    w.registry
        .faults
        .throttle_blob_gets
        .store(true, Ordering::SeqCst);
    mirror.faults.corrupt.store(true, Ordering::SeqCst);
    let resp = w.app.get(HUB, &small(&blob2()), &[]).await;
    assert_eq!(
        resp.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the primary's own answer"
    );
    assert!(resp.body().is_empty(), "not a byte of the mirror's");
    assert!(!stored(&w, &blob2()));
    assert_eq!(mirror.count("GET", &small(&blob2())), 1);
    assert_eq!(mirror_count(&w, &mirror, "mismatch").await, 1.0);
    let text = scrape(w.app.admin).await;
    assert_eq!(value(&text, "regcache_cache_digest_mismatches_total"), 1.0);
    // Remembered: the next requests do not download the bad copy again, even once it is mended.
    for corrupt in [true, false] {
        mirror.faults.corrupt.store(corrupt, Ordering::SeqCst);
        let resp = w.app.get(HUB, &small(&blob2()), &[]).await;
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    }
    assert_eq!(mirror.count("GET", &small(&blob2())), 1, "not asked again");
    assert_eq!(skip_count(&w, &mirror, "mismatch").await, 2.0);
    assert_eq!(mirror_count(&w, &mirror, "mismatch").await, 1.0);
    // Other digests are still asked of it.
    let other = w.app.get(HUB, &small(&blob()), &[]).await;
    assert!(other.status() == StatusCode::OK && other.body() == &blob());
    // Past the TTL the mended mirror is asked again and serves.
    past_mismatch_ttl().await;
    let resp = w.app.get(HUB, &small(&blob2()), &[]).await;
    assert!(resp.status() == StatusCode::OK && resp.body() == &blob2());
    assert_eq!(mirror.count("GET", &small(&blob2())), 2);
    w.app.stop().await;
}

fn two_mirrors(first: u16, second: u16) -> String {
    format!("mirrors = [\"https://registry.test:{first}\", \"https://registry.test:{second}\"]")
}

#[tokio::test]
async fn one_request_tries_the_next_mirror_when_the_first_serves_wrong_bytes() {
    let (w, first, second) = World::start_two_mirrors("", two_mirrors).await;
    w.registry
        .faults
        .throttle_blob_gets
        .store(true, Ordering::SeqCst);
    first.faults.corrupt.store(true, Ordering::SeqCst);
    second.faults.corrupt.store(true, Ordering::SeqCst);
    let path = small(&blob2());
    let resp = w.app.get(HUB, &path, &[]).await;
    assert_eq!(
        resp.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "no mirror had it right"
    );
    assert!(resp.body().is_empty(), "not a byte of either mirror's");
    assert!(!stored(&w, &blob2()));
    assert_eq!(
        (first.count("GET", &path), second.count("GET", &path)),
        (1, 1),
        "each once"
    );
    assert_eq!(mirror_count(&w, &first, "mismatch").await, 1.0);
    assert_eq!(mirror_count(&w, &second, "mismatch").await, 1.0);
    // The second mirror fixed and the mismatches forgotten (past their TTL): one request, the
    // first's wrong bytes refused, the second's served.
    second.faults.corrupt.store(false, Ordering::SeqCst);
    past_mismatch_ttl().await;
    let resp = w.app.get(HUB, &path, &[]).await;
    assert_eq!(resp.status(), StatusCode::OK, "{:?}", resp.body());
    assert!(resp.body() == &blob2(), "the object's own bytes");
    assert_eq!(resp.headers()["x-cache"], "MISS");
    assert_eq!(
        (first.count("GET", &path), second.count("GET", &path)),
        (2, 2)
    );
    assert_eq!(mirror_count(&w, &first, "mismatch").await, 2.0);
    assert_eq!(mirror_count(&w, &second, "verified").await, 1.0);
    let text = scrape(w.app.admin).await;
    assert_eq!(value(&text, "regcache_cache_digest_mismatches_total"), 3.0);
    let digest = Digest::parse(&digest_of(&blob2())).unwrap();
    let entries = w
        .app
        .cache
        .list()
        .into_iter()
        .filter(|o| o.digest == digest);
    let sizes: Vec<u64> = entries.map(|o| o.size).collect();
    assert_eq!(sizes, [blob2().len() as u64], "stored once, whole");
    let again = w.app.get(HUB, &path, &[]).await;
    assert_eq!(again.headers()["x-cache"], "HIT");
    assert_eq!(
        (first.count("GET", &path), second.count("GET", &path)),
        (2, 2),
        "no refetch"
    );
    w.app.stop().await;
}

#[tokio::test]
async fn mirrors_first_asks_the_mirror_before_the_primary() {
    let (w, mirror) = World::start_mirrored("", mirrors(true)).await;
    let resp = w.app.get(HUB, &small(&blob2()), &[]).await;
    assert!(resp.status() == StatusCode::OK && resp.body() == &blob2());
    assert_eq!(mirror.count("GET", &small(&blob2())), 1);
    assert_eq!(
        w.registry.count("GET", &small(&blob2())),
        0,
        "no GET upstream"
    );
    assert_eq!(
        w.registry.count("HEAD", &small(&blob2())),
        1,
        "the primary's check admitted the client"
    );
    // A mirror with wrong bytes: the primary's object, passed through, not stored.
    mirror.faults.corrupt.store(true, Ordering::SeqCst);
    let resp = w.app.get(HUB, &small(&blob()), &[]).await;
    assert!(resp.status() == StatusCode::OK && resp.body() == &blob());
    assert!(!stored(&w, &blob()));
    assert_eq!(mirror_count(&w, &mirror, "mismatch").await, 1.0);
    // The next request does not download the mirror's bad copy again: the primary fills the cache.
    let resp = w.app.get(HUB, &small(&blob()), &[]).await;
    assert!(resp.status() == StatusCode::OK && resp.body() == &blob());
    assert_eq!(mirror.count("GET", &small(&blob())), 1, "not asked again");
    assert_eq!(skip_count(&w, &mirror, "mismatch").await, 1.0);
    assert!(stored(&w, &blob()), "from the primary");
    w.app.stop().await;
}

#[tokio::test]
async fn a_private_repository_is_not_opened_by_a_mirror() {
    let (w, mirror) = World::start_mirrored("", mirrors(false)).await;
    let private = format!("/v2/private/app/blobs/{}", digest_of(&secret()));
    // The mirror holds a copy and serves it to anyone; the primary throttles blob GETs.
    mirror.faults.open.store(true, Ordering::SeqCst);
    w.registry
        .faults
        .throttle_blob_gets
        .store(true, Ordering::SeqCst);
    let anonymous = w.app.get(HUB, &private, &[]).await;
    assert_ne!(anonymous.status(), StatusCode::OK);
    assert!(anonymous.body() != &secret());
    assert!(!stored(&w, &secret()), "not stored for a refused client");
    let owner = w.app.get(HUB, &private, &[("authorization", TOKEN)]).await;
    assert_eq!(
        owner.status(),
        StatusCode::OK,
        "the primary admits the owner"
    );
    assert!(owner.body() == &secret());
    assert!(mirror.count("GET", &private) >= 2, "the mirror was asked");
    assert_eq!(
        mirror.faults.credentialed.load(Ordering::SeqCst),
        0,
        "the client's credentials never go to a mirror"
    );
    w.app.stop().await;
}

#[tokio::test]
async fn while_the_primary_is_down_a_mirror_serves_established_clients_what_their_manifests_list() {
    let (w, mirror) = World::start_mirrored("", mirrors(false)).await;
    mirror.faults.open.store(true, Ordering::SeqCst);
    // Established: anyone pulled library/small:1, whose manifest lists blob (not stored).
    let tag = w.app.get(HUB, "/v2/library/small/manifests/1", &[]).await;
    assert_eq!(tag.status(), StatusCode::OK);
    w.registry.down.store(true, Ordering::SeqCst);
    let listed = w.app.get(HUB, &small(&blob()), &[]).await;
    assert_eq!(listed.status(), StatusCode::OK, "{:?}", listed.body());
    assert!(
        listed.body() == &blob(),
        "a layer the repository's manifest lists"
    );
    assert!(stored(&w, &blob()));
    let unlisted = w.app.get(HUB, &small(&blob2()), &[]).await;
    assert_ne!(
        unlisted.status(),
        StatusCode::OK,
        "no manifest of it lists blob2"
    );
    assert!(!stored(&w, &blob2()));
    // The owner reads private/app (blob, now confirmed there too); then the primary goes down.
    w.registry.down.store(false, Ordering::SeqCst);
    let owner = [("authorization", TOKEN)];
    let other = format!("/v2/private/app/blobs/{}", digest_of(&blob()));
    assert_eq!(
        w.app.get(HUB, &other, &owner).await.status(),
        StatusCode::OK
    );
    w.registry.down.store(true, Ordering::SeqCst);
    let private = format!("/v2/private/app/blobs/{}", digest_of(&secret()));
    let anonymous = w.app.get(HUB, &private, &[]).await;
    assert_ne!(anonymous.status(), StatusCode::OK, "no established access");
    assert!(anonymous.body() != &secret());
    let resp = w.app.get(HUB, &private, &owner).await;
    assert_ne!(
        resp.status(),
        StatusCode::OK,
        "nothing says private/app holds it"
    );
    assert!(!stored(&w, &secret()));
    assert!(
        w.app.get(HUB, &other, &owner).await.body() == &blob(),
        "the offline rule"
    );
    w.app.stop().await;
}

/// Two clients, the second joining the first's mirror fill (the mirror sends big slowly).
async fn two_pulls(w: &World, path: &str) -> [Result<http::Response<bytes::Bytes>, String>; 2] {
    let get = || crate::support::build("GET", HUB, path, &[], bytes::Bytes::new());
    let first = w.app.try_request(HUB, get());
    let second = async {
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        w.app.try_request(HUB, get()).await
    };
    let (a, b) = tokio::join!(first, second);
    [a, b]
}

#[tokio::test]
async fn clients_joining_a_mirror_fill_get_verified_bytes_or_none() {
    let (w, mirror) = World::start_mirrored("", mirrors(false)).await;
    w.registry
        .faults
        .throttle_blob_gets
        .store(true, Ordering::SeqCst);
    let path = format!("/v2/library/big/blobs/{}", digest_of(&big()));
    mirror.faults.corrupt.store(true, Ordering::SeqCst);
    for resp in two_pulls(&w, &path).await {
        let served = resp.is_ok_and(|r| r.status() == StatusCode::OK || !r.body().is_empty());
        assert!(!served, "not a byte of the mirror's wrong object");
    }
    assert!(!stored(&w, &big()));
    mirror.faults.corrupt.store(false, Ordering::SeqCst);
    past_mismatch_ttl().await;
    let before = mirror.count("GET", &path);
    let mut outcomes = Vec::new();
    for resp in two_pulls(&w, &path).await {
        let resp = resp.expect("a whole body");
        assert!(resp.status() == StatusCode::OK && resp.body() == &big());
        outcomes.push(resp.headers()["x-cache"].to_str().unwrap().to_owned());
    }
    assert_eq!(
        outcomes,
        ["MISS", "JOIN"],
        "the second joined the mirror fill"
    );
    assert_eq!(mirror.count("GET", &path) - before, 1, "one fetch for both");
    w.app.stop().await;
}

#[tokio::test]
async fn a_mirror_that_keeps_failing_is_backed_off_then_asked_again() {
    let (w, first, second) = World::start_two_mirrors("", two_mirrors).await;
    w.registry
        .faults
        .throttle_blob_gets
        .store(true, Ordering::SeqCst);
    first.down.store(true, Ordering::SeqCst);
    let path = format!("/v2/library/small/blobs/{}", digest_of(b"in no registry"));
    let get = || w.app.get(HUB, &path, &[]);
    for _ in 0..3 {
        assert_eq!(get().await.status(), StatusCode::TOO_MANY_REQUESTS);
    }
    assert_eq!(mirror_count(&w, &first, "failed").await, 3.0);
    // Three failures in a row: the first mirror is not asked; the second (a 404: up) still is.
    assert_eq!(get().await.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(mirror_count(&w, &first, "failed").await, 3.0, "not asked");
    assert_eq!(skip_count(&w, &first, "backoff").await, 1.0);
    assert_eq!(second.count("GET", &path), 4);
    assert_eq!(skip_count(&w, &second, "backoff").await, 0.0);
    // Once its backoff is over it is asked again, and being up, it is no longer skipped.
    first.down.store(false, Ordering::SeqCst);
    advance_clock(MIRROR_BACKOFF_MIN).await;
    for _ in 0..2 {
        assert_eq!(get().await.status(), StatusCode::TOO_MANY_REQUESTS);
    }
    assert_eq!(first.count("GET", &path), 2, "asked again");
    assert_eq!(skip_count(&w, &first, "backoff").await, 1.0);
    w.app.stop().await;
}
