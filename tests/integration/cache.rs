//! The content cache through the appliance: hits and misses, one upstream fetch for many
//! askers, verification, tag freshness and revalidation, Accept variants, the auth rule, offline
//! service, eviction and write errors.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use regcache::cache::Digest;

use crate::support::registry::{
    self, big, blob, blob2, blob_digest, digest_of, mutable, INDEX_TYPE, MANIFEST_TYPE, TOKEN,
};
use crate::support::{build, sha256_hex, World};

const HUB: &str = "registry-1.docker.io";

fn x_cache(resp: &http::Response<Bytes>) -> &str {
    resp.headers()
        .get("x-cache")
        .map_or("-", |v| v.to_str().unwrap())
}

/// Moves the runtime's clock past the default manifest and auth TTLs (60 s).
async fn past_the_ttls() {
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(61)).await;
    tokio::time::resume();
}

fn digest(s: &str) -> Digest {
    Digest::parse(s).unwrap()
}

#[tokio::test]
async fn blobs_are_fetched_once_then_served_from_disk_with_ranges() {
    let w = World::start().await;
    let path = format!("/v2/library/small/blobs/{}", blob_digest());
    let first = w.app.get(HUB, &path, &[]).await;
    assert_eq!((first.status(), x_cache(&first)), (StatusCode::OK, "MISS"));
    assert_eq!(first.body(), &blob());
    let second = w.app.get(HUB, &path, &[]).await;
    assert_eq!((second.status(), x_cache(&second)), (StatusCode::OK, "HIT"));
    assert_eq!(second.body(), &blob());
    let h = second.headers();
    assert_eq!(h["docker-content-digest"], blob_digest().as_str());
    assert_eq!(h["content-length"], blob().len().to_string().as_str());
    assert_eq!(h["etag"], format!("\"{}\"", blob_digest()).as_str());
    assert_eq!(w.registry.count("GET", &path), 1, "one upstream fetch");
    assert_eq!(w.registry.seen("/blobs/").len(), 1, "one CDN fetch");

    let range = w.app.get(HUB, &path, &[("range", "bytes=100-199")]).await;
    assert_eq!(range.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        range.headers()["content-range"],
        format!("bytes 100-199/{}", blob().len()).as_str()
    );
    assert_eq!(range.body(), &blob().slice(100..200));
    let bad = w.app.get(HUB, &path, &[("range", "bytes=999999-")]).await;
    assert_eq!(bad.status(), StatusCode::RANGE_NOT_SATISFIABLE);

    let head = w
        .app
        .request(HUB, build("HEAD", HUB, &path, &[], Bytes::new()))
        .await;
    assert_eq!((head.status(), x_cache(&head)), (StatusCode::OK, "HIT"));
    assert!(head.body().is_empty());
    // Answered from the index (the grant is remembered): the same head as a GET's.
    let length = blob().len().to_string();
    assert_eq!(head.headers()["content-length"], length.as_str());
    assert_eq!(
        head.headers()["docker-content-digest"],
        digest_of(&blob()).as_str()
    );
    assert_eq!(w.registry.count("GET", &path), 1);
}

#[tokio::test]
async fn eight_concurrent_cold_gets_cause_one_upstream_fetch() {
    let w = World::start().await;
    let path = format!("/v2/library/big/blobs/{}", digest_of(&big()));
    let app = std::sync::Arc::new(w.app);
    let gets: Vec<_> = (0..8)
        .map(|_| {
            let app = app.clone();
            let path = path.clone();
            tokio::spawn(async move { app.get(HUB, &path, &[]).await })
        })
        .collect();
    let mut kinds = Vec::new();
    for get in gets {
        let resp = get.await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(sha256_hex(resp.body()), sha256_hex(&big()));
        kinds.push(x_cache(&resp).to_owned());
    }
    assert_eq!(w.registry.count("GET", &path), 1, "coalesced: {kinds:?}");
    assert!(
        kinds.iter().filter(|k| *k == "MISS").count() == 1,
        "{kinds:?}"
    );
    assert!(
        kinds.iter().any(|k| k == "JOIN"),
        "others read along: {kinds:?}"
    );
}

#[tokio::test]
async fn the_fill_goes_on_when_the_client_that_started_it_leaves() {
    let w = World::start().await;
    let path = format!("/v2/library/big/blobs/{}", digest_of(&big()));
    let app = std::sync::Arc::new(w.app);
    let leaver = {
        let (app, path) = (app.clone(), path.clone());
        tokio::spawn(async move { app.get(HUB, &path, &[]).await })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    leaver.abort();
    let d = digest(&digest_of(&big()));
    for _ in 0..100 {
        if app.cache.contains(&d) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        app.cache.contains(&d),
        "the download finished for the cache"
    );
    let resp = app.get(HUB, &path, &[]).await;
    assert_eq!((x_cache(&resp), resp.body().len()), ("HIT", big().len()));
    assert_eq!(w.registry.count("GET", &path), 1);
}

#[tokio::test]
async fn bad_upstream_bodies_are_never_committed_and_the_client_sees_an_abort() {
    let w = World::start().await;
    for repo in ["library/bad", "library/trunc"] {
        let path = format!("/v2/{repo}/blobs/{}", blob_digest());
        for _ in 0..2 {
            let got = w
                .app
                .try_request(HUB, build("GET", HUB, &path, &[], Bytes::new()))
                .await;
            assert!(
                got.is_err(),
                "{repo}: the response must not complete: {:?}",
                got.map(|r| r.status())
            );
        }
        assert_eq!(
            w.registry.count("GET", &path),
            2,
            "{repo}: nothing was cached"
        );
        assert!(!w.app.cache.contains(&digest(&blob_digest())));
    }
}

/// Issue 9 (trust): a blob of unknown length (no Content-Length) larger than the cache's room
/// reaches its client whole, and nothing of it is cached.
#[tokio::test]
async fn a_blob_without_length_larger_than_the_room_is_served_whole_uncached() {
    let w = World::start_with("[cache]\nmax_size = \"1MB\"").await;
    let path = format!("/v2/library/unsized/blobs/{}", digest_of(&big()));
    let got = (w.app)
        .try_request(HUB, build("GET", HUB, &path, &[], Bytes::new()))
        .await;
    let resp = got.expect("the response completes");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.body().len(), big().len());
    assert_eq!(sha256_hex(resp.body()), sha256_hex(&big()));
    assert!(!w.app.cache.contains(&digest(&digest_of(&big()))));
    assert_eq!(w.app.cache.usage(), (0, 0));
    let tmp = std::fs::read_dir(w.app.cache.dir().join("tmp"))
        .unwrap()
        .count();
    assert_eq!(tmp, 0, "no temp file left");
}

#[tokio::test]
async fn tags_are_fresh_for_the_ttl_then_revalidated_with_a_head() {
    let w = World::start().await;
    let path = "/v2/library/mut/manifests/latest";
    let accept = [("accept", MANIFEST_TYPE)];
    let first = w.app.get(HUB, path, &accept).await;
    assert_eq!(
        (x_cache(&first), first.body()),
        ("MISS", &mutable(1, false))
    );
    assert_eq!(first.headers()["content-type"], MANIFEST_TYPE);
    let fresh = w.app.get(HUB, path, &accept).await;
    assert_eq!((x_cache(&fresh), fresh.body()), ("HIT", &mutable(1, false)));
    assert_eq!(
        (
            w.registry.count("GET", path),
            w.registry.count("HEAD", path)
        ),
        (1, 0)
    );

    past_the_ttls().await;
    let same = w.app.get(HUB, path, &accept).await;
    assert_eq!(
        (x_cache(&same), same.body()),
        ("REVALIDATED", &mutable(1, false))
    );
    assert_eq!(
        (
            w.registry.count("GET", path),
            w.registry.count("HEAD", path)
        ),
        (1, 1)
    );

    w.registry
        .version
        .store(2, std::sync::atomic::Ordering::SeqCst);
    past_the_ttls().await;
    let changed = w.app.get(HUB, path, &accept).await;
    assert_eq!(
        (x_cache(&changed), changed.body()),
        ("MISS", &mutable(2, false))
    );
    assert_eq!(
        (
            w.registry.count("GET", path),
            w.registry.count("HEAD", path)
        ),
        (2, 2)
    );
    let digest2 = digest_of(&mutable(2, false));
    assert_eq!(changed.headers()["docker-content-digest"], digest2.as_str());
}

#[tokio::test]
async fn accept_headers_keep_single_arch_and_index_apart() {
    let w = World::start().await;
    let path = "/v2/library/mut/manifests/latest";
    for round in ["MISS", "HIT"] {
        let index = w.app.get(HUB, path, &[("accept", INDEX_TYPE)]).await;
        assert_eq!((x_cache(&index), index.body()), (round, &mutable(1, true)));
        assert_eq!(index.headers()["content-type"], INDEX_TYPE);
        let single = w.app.get(HUB, path, &[("accept", MANIFEST_TYPE)]).await;
        assert_eq!(
            (x_cache(&single), single.body()),
            (round, &mutable(1, false))
        );
        assert_eq!(single.headers()["content-type"], MANIFEST_TYPE);
    }
    // The manifest by digest comes from the cache as well.
    let by_digest = format!("/v2/library/mut/manifests/{}", digest_of(&mutable(1, true)));
    let resp = w.app.get(HUB, &by_digest, &[("accept", INDEX_TYPE)]).await;
    assert_eq!((x_cache(&resp), resp.body()), ("HIT", &mutable(1, true)));
}

#[tokio::test]
async fn cached_private_content_is_never_served_to_clients_the_upstream_would_refuse() {
    let w = World::start().await;
    let private = format!("/v2/private/app/blobs/{}", blob_digest());
    let filled = w.app.get(HUB, &private, &[("authorization", TOKEN)]).await;
    assert_eq!(
        (filled.status(), x_cache(&filled)),
        (StatusCode::OK, "MISS")
    );
    assert!(w.app.cache.contains(&digest(&blob_digest())));

    let anonymous = w.app.get(HUB, &private, &[]).await;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert!(
        String::from_utf8_lossy(anonymous.body()).contains("UNAUTHORIZED"),
        "the upstream's body"
    );
    assert_eq!(
        anonymous.headers()["www-authenticate"],
        registry::challenge(w.registry.addr.port()).as_str()
    );
    assert_ne!(anonymous.body(), &blob());
    let other = w
        .app
        .get(HUB, &private, &[("authorization", "Bearer someone-else")])
        .await;
    assert_eq!(other.status(), StatusCode::UNAUTHORIZED);

    // The same bytes in a public repository are served to anyone, from the one stored copy.
    let public = format!("/v2/library/small/blobs/{}", blob_digest());
    let resp = w.app.get(HUB, &public, &[]).await;
    assert_eq!((resp.status(), x_cache(&resp)), (StatusCode::OK, "HIT"));
    assert_eq!(
        w.registry.count("GET", &public),
        0,
        "checked with a HEAD, not fetched"
    );
    // The authorised client is remembered: no second check within auth_ttl.
    let heads = w.registry.count("HEAD", &private);
    let again = w.app.get(HUB, &private, &[("authorization", TOKEN)]).await;
    assert_eq!((again.status(), x_cache(&again)), (StatusCode::OK, "HIT"));
    assert_eq!(w.registry.count("HEAD", &private), heads);
}

/// Fills the cache with the small image (tag + blob), then stops the upstream.
async fn fill_then_go_offline(w: &World) -> (String, String) {
    let tag = "/v2/library/small/manifests/1".to_owned();
    let blob_path = format!("/v2/library/small/blobs/{}", blob_digest());
    assert_eq!(w.app.get(HUB, &tag, &[]).await.status(), StatusCode::OK);
    assert_eq!(
        w.app.get(HUB, &blob_path, &[]).await.status(),
        StatusCode::OK
    );
    w.registry
        .down
        .store(true, std::sync::atomic::Ordering::SeqCst);
    past_the_ttls().await;
    (tag, blob_path)
}

#[tokio::test]
async fn with_the_upstream_down_cached_content_is_still_served() {
    let w = World::start().await;
    let (tag, blob_path) = fill_then_go_offline(&w).await;
    let root = w.app.get(HUB, "/v2/", &[]).await;
    assert_eq!(root.status(), StatusCode::OK, "/v2/ answered locally");
    let manifest = w.app.get(HUB, &tag, &[]).await;
    assert_eq!(
        (manifest.status(), x_cache(&manifest)),
        (StatusCode::OK, "STALE")
    );
    assert!(manifest.headers()["warning"]
        .to_str()
        .unwrap()
        .starts_with("110"));
    assert_eq!(manifest.body(), &crate::support::registry::manifest());
    let blob_resp = w.app.get(HUB, &blob_path, &[]).await;
    assert_eq!(
        (blob_resp.status(), blob_resp.body()),
        (StatusCode::OK, &blob())
    );
    let uncached = format!("/v2/library/small/blobs/{}", digest_of(&blob2()));
    assert_eq!(
        w.app.get(HUB, &uncached, &[]).await.status(),
        StatusCode::BAD_GATEWAY
    );
    // The tag list: the tags the cache holds (skopeo inspect asks for it).
    let tags = w.app.get(HUB, "/v2/library/small/tags/list", &[]).await;
    assert_eq!((tags.status(), x_cache(&tags)), (StatusCode::OK, "STALE"));
    let list: serde_json::Value = serde_json::from_slice(tags.body()).unwrap();
    assert_eq!(
        list,
        serde_json::json!({ "name": "library/small", "tags": ["1"] })
    );
    let none = w.app.get(HUB, "/v2/library/other/tags/list", &[]).await;
    assert_eq!(none.status(), StatusCode::BAD_GATEWAY, "nothing cached");
}

#[tokio::test]
async fn with_offline_off_the_upstream_being_down_is_an_error() {
    let w = World::start_with("[cache]\noffline = false").await;
    let (tag, blob_path) = fill_then_go_offline(&w).await;
    assert_eq!(
        w.app.get(HUB, "/v2/", &[]).await.status(),
        StatusCode::BAD_GATEWAY
    );
    assert_eq!(
        w.app.get(HUB, &tag, &[]).await.status(),
        StatusCode::BAD_GATEWAY
    );
    assert_eq!(
        w.app.get(HUB, &blob_path, &[]).await.status(),
        StatusCode::BAD_GATEWAY
    );
    assert_eq!(
        (w.app.get(HUB, "/v2/library/small/tags/list", &[]).await).status(),
        StatusCode::BAD_GATEWAY
    );
}

#[tokio::test]
async fn offline_tag_lists_need_access_established_within_the_window() {
    let w = World::start_with("[cache]\noffline_auth_window = \"30s\"").await;
    let (tag, _) = fill_then_go_offline(&w).await;
    // 61 s have passed: this client's access is older than the window.
    let list = w.app.get(HUB, "/v2/library/small/tags/list", &[]).await;
    assert_eq!(list.status(), StatusCode::BAD_GATEWAY);
    assert!(!String::from_utf8_lossy(list.body()).contains("\"tags\""));
    assert_eq!(
        w.app.get(HUB, &tag, &[]).await.status(),
        StatusCode::BAD_GATEWAY
    );
}

#[tokio::test]
async fn least_recently_used_objects_are_evicted_under_max_size() {
    let w = World::start_with("[cache]\nmax_size = \"400KB\"").await;
    let one = format!("/v2/library/small/blobs/{}", blob_digest());
    let two = format!("/v2/library/small/blobs/{}", digest_of(&blob2()));
    assert_eq!(x_cache(&w.app.get(HUB, &one, &[]).await), "MISS");
    assert_eq!(x_cache(&w.app.get(HUB, &two, &[]).await), "MISS");
    assert!(!w.app.cache.contains(&digest(&blob_digest())), "evicted");
    assert!(w.app.cache.contains(&digest(&digest_of(&blob2()))));
    assert!(w.app.cache.usage().1 <= 400_000);
    assert_eq!(
        x_cache(&w.app.get(HUB, &one, &[]).await),
        "MISS",
        "fetched again"
    );
}

#[tokio::test]
async fn a_write_error_falls_back_to_pass_through_and_caching_resumes_later() {
    let w = World::start().await;
    let path = format!("/v2/library/small/blobs/{}", blob_digest());
    // A real fault: a file where the temp folder should be, so no fill can start.
    let tmp = w.app.cache.dir().join("tmp");
    std::fs::remove_dir_all(&tmp).unwrap();
    std::fs::write(&tmp, b"").unwrap();
    let resp = w.app.get(HUB, &path, &[]).await;
    assert_eq!((resp.status(), resp.body()), (StatusCode::OK, &blob()));
    assert!(!w.app.cache.contains(&digest(&blob_digest())));
    assert!(w.app.cache.writes_failing());
    std::fs::remove_file(&tmp).unwrap();
    std::fs::create_dir(&tmp).unwrap();
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(31)).await; // past the write pause
    tokio::time::resume();
    let resp = w.app.get(HUB, &path, &[]).await;
    assert_eq!((x_cache(&resp), resp.body()), ("MISS", &blob()));
    assert!(w.app.cache.contains(&digest(&blob_digest())));
}

/// dockerd resolves a tag with a HEAD, then GETs the manifest by digest; offline, the tag must
/// still resolve, also for a client whose Accept differs but admits the stored media type.
#[tokio::test]
async fn offline_tags_resolve_for_clients_that_head_them_like_dockerd() {
    let w = World::start().await;
    let tag = "/v2/library/mut/manifests/latest";
    let dockerd_accept = [(
        "accept",
        "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json",
    )];
    let head = w
        .app
        .request(HUB, build("HEAD", HUB, tag, &dockerd_accept, Bytes::new()))
        .await;
    assert_eq!(head.status(), StatusCode::OK);
    let digest = head.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(digest, digest_of(&mutable(1, true)));
    let by_digest = format!("/v2/library/mut/manifests/{digest}");
    let manifest = w.app.get(HUB, &by_digest, &dockerd_accept).await;
    assert_eq!(
        (manifest.status(), manifest.body()),
        (StatusCode::OK, &mutable(1, true))
    );

    w.registry
        .down
        .store(true, std::sync::atomic::Ordering::SeqCst);
    past_the_ttls().await;
    let head = w
        .app
        .request(HUB, build("HEAD", HUB, tag, &dockerd_accept, Bytes::new()))
        .await;
    assert_eq!((head.status(), x_cache(&head)), (StatusCode::OK, "STALE"));
    assert_eq!(head.headers()["docker-content-digest"], digest.as_str());
    let get = w.app.get(HUB, &by_digest, &dockerd_accept).await;
    assert_eq!(
        (get.status(), get.body()),
        (StatusCode::OK, &mutable(1, true))
    );
    // Another client asks by tag for the index type only: the same mapping serves it.
    let other = w.app.get(HUB, tag, &[("accept", INDEX_TYPE)]).await;
    assert_eq!(
        (other.status(), other.body()),
        (StatusCode::OK, &mutable(1, true))
    );
    // One that accepts only single-arch manifests does not get the index.
    let single = w.app.get(HUB, tag, &[("accept", MANIFEST_TYPE)]).await;
    assert_eq!(single.status(), StatusCode::BAD_GATEWAY);
}

/// A repository filled by a client with a token is found public (the probe sends the client's
/// Accept, without which registries answer 404 for OCI manifests), so anonymous clients are
/// served while the upstream is down.
#[tokio::test]
async fn repositories_found_public_serve_anonymous_clients_offline() {
    let w = World::start().await;
    let tag = "/v2/library/mut/manifests/latest";
    let accept = ("accept", INDEX_TYPE);
    let filled = w
        .app
        .get(HUB, tag, &[accept, ("authorization", TOKEN)])
        .await;
    assert_eq!(filled.status(), StatusCode::OK);
    // The probe runs in the background: wait (bounded) for its anonymous HEAD.
    for _ in 0..50 {
        let probed = w
            .registry
            .seen(tag)
            .iter()
            .any(|s| s.method == "HEAD" && !s.headers.contains_key("authorization"));
        if probed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    w.registry
        .down
        .store(true, std::sync::atomic::Ordering::SeqCst);
    past_the_ttls().await;
    let anonymous = w.app.get(HUB, tag, &[accept]).await;
    assert_eq!(
        (anonymous.status(), anonymous.body()),
        (StatusCode::OK, &mutable(1, true))
    );
}

/// dockerd sends one Accept header per media type; the public probe must send them all, or a
/// registry answers 404 for an index (its type is not in the first) and the repository is never
/// found public: anonymous Docker Hub pulls of multi-arch images then fail offline.
#[tokio::test]
async fn the_public_probe_sends_every_accept_header() {
    let w = World::start().await;
    let tag = "/v2/library/mut/manifests/latest";
    let accept = [
        ("accept", "application/vnd.oci.image.manifest.v1+json"),
        ("accept", INDEX_TYPE),
    ];
    let mut headers = accept.to_vec();
    headers.push(("authorization", TOKEN));
    let filled = w.app.get(HUB, tag, &headers).await;
    assert_eq!(filled.body(), &mutable(1, true));
    let probed = || {
        (w.registry.seen(tag).iter()).any(|s| {
            s.method == "HEAD"
                && !s.headers.contains_key("authorization")
                && s.headers.get_all("accept").iter().count() == 2
        })
    };
    for _ in 0..50 {
        if probed() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(probed(), "an anonymous HEAD with both Accept headers");
    tokio::time::sleep(Duration::from_millis(50)).await;
    w.registry
        .down
        .store(true, std::sync::atomic::Ordering::SeqCst);
    past_the_ttls().await;
    let anonymous = w.app.get(HUB, tag, &accept).await;
    assert_eq!(
        (anonymous.status(), anonymous.body()),
        (StatusCode::OK, &mutable(1, true))
    );
}

/// Objects are stored once by digest: a repository a client may read must not unlock a digest
/// that only another (private) repository contains.
#[tokio::test]
async fn a_readable_repository_does_not_unlock_digests_it_does_not_contain() {
    use crate::support::registry::secret;
    let w = World::start().await;
    let secret_digest = digest_of(&secret());
    let private = format!("/v2/private/app/blobs/{secret_digest}");
    let filled = w.app.get(HUB, &private, &[("authorization", TOKEN)]).await;
    assert_eq!(
        (filled.status(), filled.body()),
        (StatusCode::OK, &secret())
    );
    // library/small is public and this client has read it.
    assert_eq!(
        w.app
            .get(HUB, "/v2/library/small/manifests/1", &[])
            .await
            .status(),
        StatusCode::OK
    );
    let through_public = format!("/v2/library/small/blobs/{secret_digest}");
    for method in ["GET", "HEAD"] {
        let resp = w
            .app
            .request(HUB, build(method, HUB, &through_public, &[], Bytes::new()))
            .await;
        assert_eq!(
            resp.status(),
            StatusCode::NOT_FOUND,
            "{method}: the upstream's answer, not the cached secret"
        );
        assert_ne!(resp.body(), &secret());
    }
    let ranged = w
        .app
        .get(HUB, &through_public, &[("range", "bytes=0-9")])
        .await;
    assert_eq!(ranged.status(), StatusCode::NOT_FOUND);
    // Offline, without a confirmation from the upstream, nothing either.
    w.registry
        .down
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let offline = w.app.get(HUB, &through_public, &[]).await;
    assert_ne!(offline.status(), StatusCode::OK);
    assert_ne!(offline.body(), &secret());
}
