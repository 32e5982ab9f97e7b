//! HTTPS through the appliance: certificates per SNI, pass-through of manifests and blobs with
//! their headers, redirects followed on the appliance's side, auth challenges relayed, pushes,
//! upstream failures, malformed input, the access log.

use bytes::Bytes;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::registry::{self, blob, blob_digest, manifest, manifest_digest, TOKEN};
use crate::support::{build, sha256_hex, World};

#[tokio::test]
async fn leaf_certificates_are_issued_for_our_names_and_refused_for_others() {
    let w = World::start().await;
    for name in [
        "registry-1.docker.io",
        "docker.io",
        "x.mirror.test",
        "ghcr.io",
    ] {
        let tls = w.app.tls(name, &[b"h2", b"http/1.1"]).await;
        let tls = tls.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            tls.get_ref().1.alpn_protocol(),
            Some(&b"h2"[..]),
            "{name} offers h2"
        );
    }
    let refused = w.app.tls("example.com", &[b"http/1.1"]).await;
    assert!(
        refused.is_err(),
        "a name outside the list gets no certificate"
    );
    let refused = w.app.tls("mirror.test", &[b"http/1.1"]).await;
    assert!(
        refused.is_err(),
        "the bare suffix of a wildcard is not ours"
    );
}

#[tokio::test]
async fn manifests_pass_through_with_their_headers() {
    let w = World::start().await;
    let accept = [
        ("accept", registry::MANIFEST_TYPE),
        ("authorization", TOKEN),
    ];
    let resp = w
        .app
        .get(
            "registry-1.docker.io",
            "/v2/library/small/manifests/1",
            &accept,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.body(), &manifest());
    let h = resp.headers();
    assert_eq!(h["docker-content-digest"], manifest_digest().as_str());
    assert_eq!(h["content-type"], registry::MANIFEST_TYPE);
    assert_eq!(h["content-length"], manifest().len().to_string().as_str());
    assert_eq!(h["ratelimit-remaining"], "99;w=21600");
    assert!(
        h.get("x-hop").is_none(),
        "headers named by Connection are hop-by-hop"
    );

    let seen: Vec<_> = (w.registry.seen("/v2/library/small/manifests/1").into_iter())
        .filter(|s| s.method == http::Method::GET)
        .collect();
    assert_eq!(seen.len(), 1);
    let up = &seen[0].headers;
    assert_eq!(up["accept"], registry::MANIFEST_TYPE);
    assert_eq!(up["authorization"], TOKEN);
    assert_eq!(up["user-agent"], "regcache-test/1");
    assert_eq!(
        seen[0].host, "registry.test",
        "the upstream authority comes from the route"
    );

    // HEAD too, with an empty body and the same headers.
    let head = build(
        "HEAD",
        "docker.io",
        "/v2/library/small/manifests/1",
        &accept,
        Bytes::new(),
    );
    let resp = w.app.request("docker.io", head).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.body().is_empty());
    assert_eq!(
        resp.headers()["docker-content-digest"],
        manifest_digest().as_str()
    );
}

#[tokio::test]
async fn blob_redirects_are_followed_and_credentials_stay_with_the_registry() {
    let w = World::start().await;
    let path = format!("/v2/library/small/blobs/{}", blob_digest());
    let resp = w
        .app
        .get(
            "registry-1.docker.io",
            &path,
            &[("authorization", TOKEN), ("range", "bytes=0-")],
        )
        .await;
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "the client never sees the 307"
    );
    assert!(resp.headers().get("location").is_none());
    assert_eq!(sha256_hex(resp.body()), sha256_hex(&blob()));

    let to_registry = w.registry.seen(&path);
    assert_eq!(to_registry[0].headers["authorization"], TOKEN);
    let to_cdn = w.registry.seen("/blobs/");
    assert_eq!(to_cdn.len(), 1);
    assert_eq!(to_cdn[0].host, "cdn.test");
    assert!(
        to_cdn[0].path.ends_with("?sig=abc"),
        "query kept: {}",
        to_cdn[0].path
    );
    assert!(
        to_cdn[0].headers.get("authorization").is_none(),
        "no credentials to the CDN"
    );
    assert_eq!(to_cdn[0].headers["range"], "bytes=0-");

    // A relative Location on the same host keeps the credentials.
    let rel = format!("/v2/library/rel/blobs/{}", blob_digest());
    let resp = w
        .app
        .get("registry-1.docker.io", &rel, &[("authorization", TOKEN)])
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.body().len(), blob().len());
    let followed = w.registry.seen("/redirected/blob");
    assert_eq!(followed[0].headers["authorization"], TOKEN);

    // A redirect loop ends in a 502, not a hang.
    let resp = w
        .app
        .get("registry-1.docker.io", "/v2/loop/blobs/x", &[])
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert!(String::from_utf8_lossy(resp.body()).contains("redirects"));
}

#[tokio::test]
async fn auth_challenges_are_relayed_unchanged() {
    let w = World::start().await;
    let resp = w.app.get("registry-1.docker.io", "/v2/", &[]).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        resp.headers()["www-authenticate"],
        registry::challenge(w.registry.addr.port()).as_str()
    );
    assert!(String::from_utf8_lossy(resp.body()).contains("UNAUTHORIZED"));
    let resp = w
        .app
        .get("registry-1.docker.io", "/v2/private/app/manifests/1", &[])
        .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = w
        .app
        .get("registry-1.docker.io", "/v2/", &[("authorization", TOKEN)])
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn pushes_pass_through_untouched() {
    let w = World::start().await;
    let host = "registry-1.docker.io";
    let start = build(
        "POST",
        host,
        "/v2/acme/pushed/blobs/uploads/",
        &[("authorization", TOKEN)],
        Bytes::new(),
    );
    let resp = w.app.request(host, start).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(location, "/v2/acme/pushed/blobs/uploads/u1?_state=s");
    assert_eq!(resp.headers()["docker-upload-uuid"], "u1");

    let payload: Bytes = (0..1_500_000u32)
        .map(|i| (i % 253) as u8)
        .collect::<Vec<_>>()
        .into();
    let digest = format!("sha256:{}", sha256_hex(&payload));
    let put_path = format!("{location}&digest={digest}");
    let put = build(
        "PUT",
        host,
        &put_path,
        &[("content-type", "application/octet-stream")],
        payload.clone(),
    );
    let resp = w.app.request(host, put).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(resp.headers()["docker-content-digest"], digest.as_str());
    // An absolute Location naming the upstream's own address is rewritten to the public name.
    let loc = resp.headers()["location"].to_str().unwrap();
    assert_eq!(loc, format!("https://{host}/v2/acme/pushed/blobs/{digest}"));

    let seen = w.registry.seen("/v2/acme/pushed/blobs/uploads/u1");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, http::Method::PUT);
    assert_eq!(seen[0].body.len(), payload.len());
    assert_eq!(
        sha256_hex(&seen[0].body),
        sha256_hex(&payload),
        "the body arrived intact"
    );
    assert_eq!(seen[0].headers["content-type"], "application/octet-stream");
}

#[tokio::test]
async fn an_unreachable_upstream_gets_a_502_in_the_oci_error_format() {
    let w = World::start().await;
    let resp = w.app.get("ghcr.io", "/v2/acme/tool/manifests/1", &[]).await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body = String::from_utf8_lossy(resp.body()).into_owned();
    assert!(
        body.starts_with("{\"errors\":[{\"code\":\"UNAVAILABLE\""),
        "{body}"
    );
    assert!(
        body.contains("registry.test:1"),
        "says which upstream: {body}"
    );
    assert!(body.to_lowercase().contains("refused"), "says why: {body}");
}

#[tokio::test]
async fn malformed_http_and_tls_input_is_rejected_and_the_proxy_lives_on() {
    let w = World::start().await;
    // Not TLS at all.
    let mut tcp = tokio::net::TcpStream::connect(w.app.https).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read(&mut buf)).await;
    assert!(
        matches!(n, Ok(Ok(_)) | Ok(Err(_))),
        "the connection is answered or closed"
    );
    // TLS, then garbage instead of HTTP.
    let mut tls = w.app.tls("ghcr.io", &[b"http/1.1"]).await.unwrap();
    tls.write_all(b"\x00\x01garbage\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let _ =
        tokio::time::timeout(std::time::Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 400"),
        "{text}"
    );
    // Still serving.
    let resp = w
        .app
        .get("registry-1.docker.io", "/v2/", &[("authorization", TOKEN)])
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn http2_clients_are_served_too() {
    use http_body_util::BodyExt;
    let w = World::start().await;
    let tls = w.app.tls("registry-1.docker.io", &[b"h2"]).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri("https://registry-1.docker.io/v2/library/small/manifests/1")
        .header("authorization", TOKEN)
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, manifest());
}

/// Over HTTP/2 the appliance coalesces frames into whole TLS records (proxy::records): bodies
/// must still arrive whole and at once, cold and warm, several streams on one connection, with
/// small responses between them.
#[tokio::test]
async fn http2_streams_carry_whole_bodies_through_record_coalescing() {
    use http_body_util::BodyExt;
    let w = World::start().await;
    let tls = w.app.tls("registry-1.docker.io", &[b"h2"]).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let get = |path: String| {
        let mut sender = sender.clone();
        async move {
            let req = http::Request::builder()
                .uri(format!("https://registry-1.docker.io{path}"))
                .header("authorization", TOKEN)
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap();
            let resp = sender.send_request(req).await.unwrap();
            let status = resp.status();
            (status, resp.into_body().collect().await.unwrap().to_bytes())
        }
    };
    let blob_path = format!("/v2/library/small/blobs/{}", blob_digest());
    let rounds = async {
        for _ in 0..3 {
            let (a, b, c, d) = tokio::join!(
                get(blob_path.clone()),
                get("/v2/library/small/manifests/1".to_owned()),
                get(blob_path.clone()),
                get("/v2/".to_owned()),
            );
            assert_eq!((a.0, a.1.len()), (StatusCode::OK, blob().len()));
            assert_eq!(a.1, blob());
            assert_eq!((b.0, b.1), (StatusCode::OK, manifest()));
            assert_eq!(c.1, blob());
            assert_eq!(d.0, StatusCode::OK);
        }
    };
    // Bounded: a partial record held back for good would hang the streams.
    tokio::time::timeout(std::time::Duration::from_secs(30), rounds)
        .await
        .expect("HTTP/2 responses completed");
}

#[tokio::test]
async fn each_request_is_logged_in_the_main_format_with_the_registry_last() {
    let w = World::start().await;
    let path = format!("/v2/library/small/blobs/{}", blob_digest());
    w.app.get("docker.io", &path, &[]).await;
    w.app.get("ghcr.io", "/v2/acme/tool/tags/list", &[]).await;
    // Lines are written when the body ends; give the connection tasks a moment (bounded).
    let mut text = String::new();
    for _ in 0..50 {
        text = w.app.log.text();
        if text.lines().count() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let blob_line = lines.iter().find(|l| l.contains("/blobs/")).unwrap();
    let expected_tail = format!(
        "\"GET {path} HTTP/1.1\" 200 {} \"-\" \"regcache-test/1\" \"registry-1.docker.io\"",
        blob().len()
    );
    assert!(blob_line.starts_with("127.0.0.1 - - ["), "{blob_line}");
    assert!(blob_line.ends_with(&expected_tail), "{blob_line}");
    let error_line = lines.iter().find(|l| l.ends_with("\"ghcr.io\"")).unwrap();
    assert!(
        error_line.contains("\"GET /v2/acme/tool/tags/list HTTP/1.1\" 502 "),
        "{error_line}"
    );
}

#[tokio::test]
async fn the_admin_listener_serves_health_and_the_ca() {
    let w = World::start().await;
    let get = |path: &'static str| {
        let addr = w.app.admin;
        async move {
            let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let req = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
            tcp.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            tcp.read_to_string(&mut out).await.unwrap();
            out
        }
    };
    assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
    let ca = get("/ca.crt").await;
    assert!(ca.ends_with(&w.app.ca_pem), "{ca}");
    assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
    let names = get("/registries").await;
    let body = names.split("\r\n\r\n").nth(1).unwrap();
    assert_eq!(
        body, "registry-1.docker.io\ndocker.io\nghcr.io\nregistry.k8s.io\nquay.io\n",
        "exact names only"
    );
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests_and_refuses_new_ones() {
    let w = World::start().await;
    let crate::support::World {
        app,
        registry: _registry,
        resolver: _resolver,
        ..
    } = w;
    let in_flight = {
        let tls = app
            .tls("registry-1.docker.io", &[b"http/1.1"])
            .await
            .unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = build(
            "GET",
            "registry-1.docker.io",
            "/v2/slow/blobs/x",
            &[],
            Bytes::new(),
        );
        tokio::spawn(async move {
            use http_body_util::BodyExt;
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let https = app.https;
    app.stop().await;
    let (status, body) = in_flight
        .await
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"done"[..]));
    assert!(
        tokio::net::TcpStream::connect(https).await.is_err(),
        "no new connections after shutdown"
    );
}
