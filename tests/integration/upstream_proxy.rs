//! `upstream.proxy`: every upstream request (registry, token service, CDN redirect target) goes
//! through an HTTP CONNECT proxy that resolves the names itself, with `Proxy-Authorization`;
//! `upstream.no_proxy` hosts go direct; a wrong proxy password fails clearly and never prints.

use http::StatusCode;

use crate::support::connect_proxy::ConnectProxy;
use crate::support::registry::{blob, blob_digest, TOKEN};
use crate::support::{admin_get, alice_keys, World};

const HUB: &str = "registry-1.docker.io";
/// Environment variables given to a command.
type Env<'a> = &'a [(&'a str, &'a str)];

const NAMES: [&str; 3] = ["registry.test", "auth.test", "cdn.test"];

/// The appliance with the hub's credentials (so it asks the token service itself) and `proxy`.
async fn world(
    proxy: &ConnectProxy,
    userinfo: &str,
    no_proxy: &[&str],
) -> (World, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let keys = alice_keys(dir.path());
    let extra = format!(
        "proxy = \"http://{userinfo}@{}\"\nno_proxy = {no_proxy:?}",
        proxy.addr
    );
    (World::start_full(&extra, &keys).await, dir)
}

/// A private blob (token fetched by the appliance) and a blob redirected to the CDN.
async fn pull(w: &World) -> (StatusCode, StatusCode) {
    let private = format!("/v2/private/app/blobs/{}", blob_digest());
    let a = w.app.get(HUB, &private, &[]).await;
    let public = format!("/v2/library/small/blobs/{}", blob_digest());
    let b = w.app.get(HUB, &public, &[("authorization", TOKEN)]).await;
    for resp in [&a, &b] {
        if resp.status() == StatusCode::OK {
            assert_eq!(resp.body(), &blob());
        }
    }
    (a.status(), b.status())
}

#[tokio::test]
async fn registry_token_service_and_cdn_are_reached_only_through_the_proxy() {
    // base64("u:p@ss"): the password is %-escaped in the URL.
    let proxy = ConnectProxy::start(Some("Basic dTpwQHNz")).await;
    let (w, _dir) = world(&proxy, "u:p%40ss", &["elsewhere.test"]).await;
    assert_eq!(pull(&w).await, (StatusCode::OK, StatusCode::OK));
    let port = w.registry.addr.port();
    let tunnels = proxy.tunnels();
    for name in NAMES {
        assert!(
            tunnels.contains(&format!("{name}:{port}")),
            "{name}: {tunnels:?}"
        );
        let asked = w.resolver.asked_about(&format!("{name}."));
        assert!(
            asked.is_empty(),
            "{name} is resolved by the proxy, not here: {asked:?}"
        );
    }
    assert_eq!(proxy.refused(), 0);
    // Pooled: a second pull opens no new tunnel to hosts already connected.
    let before = tunnels.len();
    pull(&w).await;
    assert!(proxy.tunnels().len() <= before + 1, "{:?}", proxy.tunnels());
    w.app.stop().await;
}

#[tokio::test]
async fn no_proxy_hosts_go_direct_and_are_resolved_here() {
    let proxy = ConnectProxy::start(None).await;
    let (w, _dir) = world(&proxy, "u:pw", &["cdn.test", "10.0.0.0/8"]).await;
    assert_eq!(pull(&w).await, (StatusCode::OK, StatusCode::OK));
    let port = w.registry.addr.port();
    let tunnels = proxy.tunnels();
    assert!(
        tunnels.contains(&format!("registry.test:{port}")),
        "{tunnels:?}"
    );
    assert!(
        !tunnels.iter().any(|t| t.starts_with("cdn.test")),
        "{tunnels:?}"
    );
    assert!(!w.resolver.asked_about("cdn.test.").is_empty());
    assert!(w.resolver.asked_about("registry.test.").is_empty());
    w.app.stop().await;
}

#[tokio::test]
async fn a_wrong_proxy_password_fails_clearly_and_is_never_shown() {
    let proxy = ConnectProxy::start(Some("Basic dTpyaWdodA==")).await; // u:right
    let (w, _dir) = world(&proxy, "u:wrong-secret", &[]).await;
    let public = format!("/v2/library/small/blobs/{}", blob_digest());
    let resp = w.app.get(HUB, &public, &[("authorization", TOKEN)]).await;
    assert!(resp.status().is_server_error(), "{}", resp.status());
    assert!(proxy.refused() >= 1);
    assert!(proxy.tunnels().is_empty());
    let status = admin_get(w.app.admin, "/api/status").await;
    let json: serde_json::Value = serde_json::from_str(&status).unwrap();
    let error = json["registries"][HUB]["last_error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        error.contains("answered 407 \"Proxy Authentication"),
        "{error}"
    );
    assert!(error.contains("refused the user and password"), "{error}");
    assert!(error.contains("http://u:***@127.0.0.1"), "{error}");
    let body = String::from_utf8_lossy(resp.body());
    for shown in [status.as_str(), &body, &w.app.log.text()] {
        assert!(
            !shown.contains("wrong-secret"),
            "the password leaked: {shown}"
        );
    }
    w.app.stop().await;
}

#[test]
fn config_check_shows_the_proxy_masked_and_reads_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    // `config check` of `toml` with only `env` of the proxy variables: (exit code, stdout + stderr).
    let run = |toml: &str, env: Env| {
        std::fs::write(dir.path().join("site.toml"), toml).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_regcache"))
            .args(["config", "check", "--config", "site.toml"])
            .current_dir(dir.path())
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (
            out.status.code(),
            text + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let hub = "[upstream]\nproxy = \"http://ops:hunter2@proxy.corp:3128\"\n";
    let plain = "[dns]\nttl = 5\n";
    let no_port = "[upstream]\nextra_ca = []\nproxy = \"http://u:hunter2@p\"\n";
    let from_env = [
        ("https_proxy", "http://e:hunter2@envproxy:8080"),
        ("NO_PROXY", "a.io,.b.io"),
    ];
    let bad_env = [("HTTPS_PROXY", "https://e:hunter2@p:1")];
    // (config, environment, exit code, expected in the output)
    let cases: [(&str, Env, i32, &str); 4] = [
        (hub, &[], 0, "upstream.proxy: http://ops:***@proxy.corp:3128"),
        (plain, &from_env, 0, "http://e:***@envproxy:8080 (no_proxy: [\"a.io\", \".b.io\"])"),
        (plain, &bad_env, 64, "site.toml: HTTPS_PROXY (environment, used as upstream.https_proxy): \"https://e:***@p:1\": https:// proxies are not supported"),
        (no_port, &[], 64, "site.toml:3: upstream.proxy: \"http://u:***@p\": give the port"),
    ];
    for (toml, env, code, expected) in cases {
        let (got, out) = run(toml, env);
        assert_eq!(got, Some(code), "{out}");
        assert!(out.contains(expected), "{out}");
        assert!(!out.contains("hunter2"), "the password leaked: {out}");
    }
}
