//! The attacks of the trust review, each against the appliance in-process: registries that
//! redirect everything or send clients to a login page must not unlock cached private objects of
//! another registry; a HEAD naming a foreign digest must not map a tag to it; credentials stay on
//! the registry's host; a throttled upstream opens no offline access.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;

use crate::support::registry::{digest_of, secret, TOKEN};
use crate::support::{build, World};

const HUB: &str = "registry-1.docker.io";
/// Redirects every request to a bucket that holds nothing (like registry.k8s.io).
const K8S: &str = "registry.k8s.io";
/// Sends every request to a login page that answers 200 HTML (an SSO proxy).
const SSO: &str = "quay.io";

/// A world whose cache holds the private blob, fetched by its owner.
async fn with_cached_secret(extra: &str) -> (World, String) {
    let w = World::start_with(extra).await;
    let digest = digest_of(&secret());
    let private = format!("/v2/private/app/blobs/{digest}");
    let filled = w.app.get(HUB, &private, &[("authorization", TOKEN)]).await;
    assert_eq!(filled.status(), StatusCode::OK);
    assert!(filled.body() == &secret(), "the owner gets the secret");
    (w, digest)
}

/// Not the secret, and nothing from the cache (a login page passed through may be a 200).
fn assert_not_served(resp: &http::Response<Bytes>, what: &str) {
    assert!(resp.body() != &secret(), "{what}: the secret's bytes");
    let cache = resp.headers().get("x-cache").map(|v| v.to_str().unwrap());
    assert!(
        !matches!(cache, Some("HIT" | "JOIN" | "STALE" | "REVALIDATED")),
        "{what}: served from the cache ({cache:?}, {})",
        resp.status()
    );
    if resp.status().is_success() {
        assert_eq!(
            resp.headers()["content-type"],
            "text/html; charset=utf-8",
            "{what}"
        );
    }
}

#[tokio::test]
async fn a_registry_that_redirects_everything_unlocks_nothing() {
    let (w, digest) = with_cached_secret("[http]\nlisten = [\"127.0.0.1:0\"]").await;
    for registry in [K8S, SSO] {
        for repo in ["any/thing", "private/app"] {
            let blob = format!("/v2/{repo}/blobs/{digest}");
            let manifest = format!("/v2/{repo}/manifests/{digest}");
            for path in [&blob, &manifest] {
                for method in ["GET", "HEAD"] {
                    let req = build(method, registry, path, &[], Bytes::new());
                    let resp = w.app.request(registry, req).await;
                    assert_not_served(&resp, &format!("{method} {registry}{path}"));
                }
                let ranged = w.app.get(registry, path, &[("range", "bytes=0-9")]).await;
                assert_not_served(&ranged, &format!("ranged GET {registry}{path}"));
            }
            let mirror = format!("{blob}?ns={registry}");
            let resp = w.app.mirror_get(&mirror, &[]).await;
            assert_not_served(&resp, &format!("mirror GET {mirror}"));
        }
    }
    // Nothing was granted along the way: with every upstream down, still nothing.
    w.registry.down.store(true, Ordering::SeqCst);
    for registry in [K8S, SSO] {
        let resp = w
            .app
            .get(registry, &format!("/v2/any/thing/blobs/{digest}"), &[])
            .await;
        assert_not_served(&resp, &format!("offline {registry}"));
    }
}

#[tokio::test]
async fn a_login_page_is_neither_a_manifest_nor_a_grant() {
    let w = World::start().await;
    let tag = "/v2/team/app/manifests/latest";
    let resp = w.app.get(SSO, tag, &[]).await;
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "the login page, passed through"
    );
    assert_eq!(resp.headers()["x-cache"], "BYPASS");
    let page = digest_of(resp.body());
    assert!(
        !w.app
            .cache
            .contains(&regcache::cache::Digest::parse(&page).unwrap()),
        "the login page was stored as a manifest"
    );
    // Not public, not mapped: while the upstream is down nothing is served for the tag.
    w.registry.down.store(true, Ordering::SeqCst);
    let offline = w.app.get(SSO, tag, &[]).await;
    assert_ne!(offline.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_head_naming_a_foreign_digest_maps_no_tag_to_it() {
    let (w, _) = with_cached_secret("").await;
    let tag = "/v2/evil/tagged/manifests/v1";
    let head = w
        .app
        .request(HUB, build("HEAD", HUB, tag, &[], Bytes::new()))
        .await;
    assert_eq!(
        head.status(),
        StatusCode::OK,
        "the upstream's HEAD, relayed"
    );
    let get = w.app.get(HUB, tag, &[]).await;
    assert_eq!(
        get.status(),
        StatusCode::NOT_FOUND,
        "fetched, not served from the cache"
    );
    assert!(get.body() != &secret());
}

#[tokio::test]
async fn cookies_and_credentials_stay_on_the_registry_host() {
    let w = World::start().await;
    let blob = format!(
        "/v2/library/small/blobs/{}",
        crate::support::registry::blob_digest()
    );
    let headers = [
        ("authorization", TOKEN),
        ("cookie", "session=s3cret"),
        ("x-registry-auth", "s3cret"),
    ];
    let resp = w.app.get(HUB, &blob, &headers).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let at_cdn: Vec<_> = w
        .registry
        .seen("/")
        .into_iter()
        .filter(|s| s.host == "cdn.test")
        .collect();
    assert!(!at_cdn.is_empty(), "the blob came from the CDN");
    for seen in at_cdn {
        for name in ["authorization", "cookie", "x-registry-auth"] {
            assert!(!seen.headers.contains_key(name), "{name} reached the CDN");
        }
    }
}

#[tokio::test]
async fn a_throttled_upstream_extends_no_grant() {
    let (w, digest) = with_cached_secret("[cache]\nauth_ttl = \"1s\"").await;
    let private = format!("/v2/private/app/blobs/{digest}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // The site's shared quota is spent: 429 to every request. The owner's grant is past auth_ttl
    // and the upstream cannot confirm it (it may have been revoked): the 429, not the secret.
    w.registry.throttled.store(true, Ordering::SeqCst);
    let resp = w.app.get(HUB, &private, &[("authorization", TOKEN)]).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(resp.body() != &secret());
    // A real outage inside offline_auth_window serves the owner from the cache.
    w.registry.throttled.store(false, Ordering::SeqCst);
    w.registry.down.store(true, Ordering::SeqCst);
    let resp = w.app.get(HUB, &private, &[("authorization", TOKEN)]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.body() == &secret(), "the owner, offline");
}

#[tokio::test]
async fn a_revoked_credential_loses_its_offline_access() {
    let (w, digest) = with_cached_secret("[cache]\nauth_ttl = \"1s\"").await;
    let private = format!("/v2/private/app/blobs/{digest}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // The owner's token is revoked upstream; the next check is refused...
    w.registry.revoked.store(true, Ordering::SeqCst);
    let refused = w.app.get(HUB, &private, &[("authorization", TOKEN)]).await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    // ...and the outage that follows does not bring the secret back.
    w.registry.down.store(true, Ordering::SeqCst);
    let offline = w.app.get(HUB, &private, &[("authorization", TOKEN)]).await;
    assert_not_served(&offline, "offline, revoked credential");
}

/// A fill whose 200 is a login page (an SSO proxy's answer to an anonymous client) records no
/// grant: before, it marked the repository public, and the owner's cached blob was then served
/// to anyone.
#[tokio::test]
async fn a_fill_that_fails_verification_grants_nothing() {
    let w = World::start().await;
    let digest = digest_of(&secret());
    let private = format!("/v2/private/app/blobs/{digest}");
    let owner = w.app.get(SSO, &private, &[("authorization", TOKEN)]).await;
    assert_eq!(owner.status(), StatusCode::OK);
    assert!(owner.body() == &secret(), "the owner gets the secret");
    // An anonymous GET of another digest in the same repository: 302 to the login page, which
    // answers 200; the fill fails verification.
    let other = format!("/v2/private/app/blobs/{}", digest_of(b"anything else"));
    let req = build("GET", SSO, &other, &[], Bytes::new());
    // Its body is streamed as it comes and cut before the end when the digest does not match.
    let login = w.app.try_request(SSO, req).await;
    assert!(login.is_err() || login.is_ok_and(|r| r.body() != &secret()));
    let anonymous = w.app.get(SSO, &private, &[]).await;
    assert_not_served(&anonymous, "anonymous, after a login page was 'filled'");
}

/// A GET that announces a body (Content-Length) must not reach the upstream announcing one: it
/// would wait for bytes that never come, and the timeout would look like an outage that opens
/// offline access to a revoked credential. Nor does an outage the client's own request meets
/// count while the upstream answers the appliance's clean request.
#[tokio::test]
async fn a_client_cannot_fake_an_outage() {
    let (w, digest) = with_cached_secret("[cache]\nauth_ttl = \"1s\"").await;
    let private = format!("/v2/private/app/blobs/{digest}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    w.registry.revoked.store(true, Ordering::SeqCst);
    let headers = [("authorization", TOKEN), ("content-length", "5")];
    let req = build("GET", HUB, &private, &headers, Bytes::from_static(b"abcde"));
    let started = std::time::Instant::now();
    let resp = w.app.request(HUB, req).await;
    assert_not_served(&resp, "a GET announcing a body, revoked credential");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "no upstream wait"
    );
    let seen = w.registry.seen(&private);
    assert!(seen
        .iter()
        .all(|s| !s.headers.contains_key("content-length")));
}
