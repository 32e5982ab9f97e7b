//! The plain-HTTP mirror (`[http] listen`) and the appliance's own upstream credentials: for
//! clients that send none, the appliance runs the registry token flow itself.

use http::StatusCode;

use crate::support::registry::{blob, blob_digest, manifest, ALICE, TOKEN};
use crate::support::{alice_keys, World};

const MIRROR: &str = "[http]\nlisten = [\"127.0.0.1:0\"]";

#[tokio::test]
async fn the_mirror_serves_docker_hub_by_default_and_other_registries_by_ns() {
    let w = World::start_with(MIRROR).await;
    let root = w.app.mirror_get("/v2/", &[]).await;
    assert_eq!(
        root.status(),
        StatusCode::OK,
        "dockerd's mirror check is answered"
    );
    assert_eq!(
        root.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );

    let plain = w.app.mirror_get("/v2/library/small/manifests/1", &[]).await;
    assert_eq!(
        (plain.status(), plain.body()),
        (StatusCode::OK, &manifest())
    );
    let ns = w
        .app
        .mirror_get("/v2/library/small/manifests/1?ns=docker.io", &[])
        .await;
    assert_eq!((ns.status(), ns.body()), (StatusCode::OK, &manifest()));
    let blob_path = format!("/v2/library/small/blobs/{}?ns=docker.io", blob_digest());
    let b = w.app.mirror_get(&blob_path, &[]).await;
    assert_eq!((b.status(), b.body()), (StatusCode::OK, &blob()));
    assert!(
        w.registry
            .seen("/v2/library/small")
            .iter()
            .all(|s| !s.path.contains("ns=")),
        "ns is not sent upstream"
    );

    let ghcr = w
        .app
        .mirror_get("/v2/acme/tool/manifests/1?ns=ghcr.io", &[])
        .await;
    assert_eq!(ghcr.status(), StatusCode::BAD_GATEWAY);
    assert!(
        String::from_utf8_lossy(ghcr.body()).contains("registry.test:1"),
        "routed to ghcr.io's upstream"
    );
    let unknown = w
        .app
        .mirror_get("/v2/x/manifests/1?ns=elsewhere.example", &[])
        .await;
    assert_eq!(unknown.status(), StatusCode::MISDIRECTED_REQUEST);
    assert!(w
        .app
        .log
        .text()
        .contains("\"GET /v2/library/small/manifests/1?ns=docker.io HTTP/1.1\" 200"));
}

#[tokio::test]
async fn configured_credentials_serve_clients_that_send_none_and_a_clients_own_win() {
    let dir = tempfile::tempdir().unwrap();
    let keys = alice_keys(dir.path());
    let w = World::start_full("", &keys).await;
    let hub = "registry-1.docker.io";
    let private = format!("/v2/private/app/blobs/{}", blob_digest());

    assert_eq!(
        w.app.get(hub, "/v2/", &[]).await.status(),
        StatusCode::OK,
        "no challenge for them"
    );
    let anonymous = w.app.get(hub, &private, &[]).await;
    assert_eq!(
        (anonymous.status(), anonymous.body()),
        (StatusCode::OK, &blob())
    );
    let to_registry = w.registry.seen(&private);
    assert_eq!(
        to_registry[0].headers["authorization"], TOKEN,
        "the appliance's token"
    );
    let with_login = |w: &World| -> Vec<_> {
        (w.registry.seen("/token?").into_iter())
            .filter(|s| s.headers.contains_key("authorization"))
            .collect()
    };
    let token_requests = with_login(&w);
    assert_eq!(token_requests.len(), 1);
    assert_eq!(
        token_requests[0].headers["authorization"], ALICE,
        "Basic credentials at the realm"
    );
    assert!(
        token_requests[0]
            .path
            .contains("scope=repository%3Aprivate%2Fapp%3Apull"),
        "{}",
        token_requests[0].path
    );

    // The token is reused until it expires.
    let manifest_path = "/v2/private/app/manifests/1";
    w.app.get(hub, manifest_path, &[]).await;
    assert_eq!(with_login(&w).len(), 1);

    // A client that brings its own credentials is judged by those.
    let own = w
        .app
        .get(hub, &private, &[("authorization", "Bearer someone-else")])
        .await;
    assert_eq!(own.status(), StatusCode::UNAUTHORIZED);

    // Pushes never carry the appliance's credentials.
    let push = crate::support::build(
        "POST",
        hub,
        "/v2/acme/pushed/blobs/uploads/",
        &[],
        bytes::Bytes::new(),
    );
    assert_eq!(
        w.app.request(hub, push).await.status(),
        StatusCode::ACCEPTED
    );
    let upstream = w.registry.seen("/v2/acme/pushed/blobs/uploads/");
    assert!(
        upstream[0].headers.get("authorization").is_none(),
        "no credentials on a push"
    );

    // The password never reaches the logs.
    assert!(!w.app.log.text().contains("s3cret"));
}
