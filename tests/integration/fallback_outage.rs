//! The decision for public images while the primary is wholly down: a mirror's copy of a digest is
//! served only when the primary said earlier that the repository holds it (a mirror's word never
//! widens who is served, nor what a repository unlocks); what an operator does instead is warm the
//! images ahead of time, and they are then served from the cache through the outage.

use std::sync::atomic::Ordering;

use http::StatusCode;
use regcache::warm::{self, Options, Platforms};

use crate::fallback::{mirrors, small, stored};
use crate::support::registry::{blob, blob2};
use crate::support::World;

const HUB: &str = "registry-1.docker.io";

#[tokio::test]
async fn in_a_full_outage_a_mirror_serves_no_digest_the_primary_never_listed_but_a_warmed_image_is_served(
) {
    let (w, mirror) = World::start_mirrored("", mirrors(false)).await;
    // The repository is public and this (anonymous) client's access is established: it read blob2.
    let read = w.app.get(HUB, &small(&blob2()), &[]).await;
    assert_eq!(read.status(), StatusCode::OK);
    // The primary wholly down. The mirror holds library/small:1's layer, which nobody pulled here.
    w.registry.down.store(true, Ordering::SeqCst);
    let layer = w.app.get(HUB, &small(&blob()), &[]).await;
    assert_eq!(
        layer.status(),
        StatusCode::BAD_GATEWAY,
        "a mirror's copy would unlock a digest the primary never listed"
    );
    assert!(layer.body() != &blob(), "not a byte of the mirror's copy");
    assert!(!stored(&w, &blob()));
    assert_eq!(mirror.count("GET", &small(&blob())), 1, "the mirror had it");
    let established = w.app.get(HUB, &small(&blob2()), &[]).await;
    assert_eq!(
        established.status(),
        StatusCode::OK,
        "the offline rule, from the cache"
    );
    // What the operator does instead: warm the image while the primary is up.
    w.registry.down.store(false, Ordering::SeqCst);
    let options = Options {
        images: vec!["docker.io/library/small:1".to_owned()],
        platforms: Platforms::All,
        via: Some(format!("https://127.0.0.1:{}", w.app.https.port())),
        ca: Some(w.app.state_dir().join("certs/ca.crt")),
        quiet: true,
    };
    let warmed = warm::run(&w.app.config, options).await.unwrap();
    assert_eq!(warmed[0].error, None);
    w.registry.down.store(true, Ordering::SeqCst);
    let layer = w.app.get(HUB, &small(&blob()), &[]).await;
    assert_eq!(
        layer.status(),
        StatusCode::OK,
        "warmed: served through the outage"
    );
    assert!(layer.body() == &blob());
    assert_eq!(layer.headers()["x-cache"], "HIT");
    w.app.stop().await;
}
