//! `[[cache.rule]]` through the appliance: a `"0s"` rule sends a HEAD upstream for every tag
//! request, a `"forever"` rule serves from the cache long past `cache.manifest_ttl`, and the
//! status page counts each rule's answers.

use std::time::Duration;

use bytes::Bytes;

use crate::support::registry::{manifest, mutable, MANIFEST_TYPE};
use crate::support::World;

const HUB: &str = "registry-1.docker.io";
const LATEST: &str = "/v2/library/mut/manifests/latest";
const PINNED: &str = "/v2/library/small/manifests/1";

/// `mut:latest` always revalidated; numbered tags of `library/*` immutable. Grants last an hour,
/// so that only the rules decide when the upstream is asked.
const RULES: &str = "[cache]\nauth_ttl = \"1h\"\n\
    [[cache.rule]]\nname = \"always\"\nmatch = \"docker.io/library/mut\"\ntags = \"latest\"\n\
    manifest_ttl = \"0s\"\n\
    [[cache.rule]]\nname = \"pinned\"\nmatch = \"docker.io/library/*\"\ntags = \"[0-9]*\"\n\
    manifest_ttl = \"forever\"\n";

fn x_cache(resp: &http::Response<Bytes>) -> &str {
    resp.headers()
        .get("x-cache")
        .map_or("-", |v| v.to_str().unwrap())
}

/// (GETs, HEADs) of `path` the upstream saw.
fn asked(w: &World, path: &str) -> (usize, usize) {
    (
        w.registry.count("GET", path),
        w.registry.count("HEAD", path),
    )
}

#[tokio::test]
async fn a_0s_rule_revalidates_every_time_and_a_forever_rule_never() {
    let w = World::start_with(RULES).await;
    let accept = [("accept", MANIFEST_TYPE)];
    let first = w.app.get(HUB, LATEST, &accept).await;
    assert_eq!(
        (x_cache(&first), first.body()),
        ("MISS", &mutable(1, false))
    );
    for n in 1..=3 {
        let again = w.app.get(HUB, LATEST, &accept).await;
        assert_eq!(x_cache(&again), "REVALIDATED");
        assert_eq!(
            asked(&w, LATEST),
            (1, n),
            "one HEAD per request under \"0s\""
        );
    }

    let first = w.app.get(HUB, PINNED, &[]).await;
    assert_eq!((x_cache(&first), first.body()), ("MISS", &manifest()));
    // past the default manifest_ttl (60 s), which would revalidate
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(3600 - 1)).await;
    tokio::time::resume();
    for _ in 0..2 {
        let again = w.app.get(HUB, PINNED, &[]).await;
        assert_eq!((x_cache(&again), again.body()), ("HIT", &manifest()));
    }
    assert_eq!(
        asked(&w, PINNED),
        (1, 0),
        "never asked again under \"forever\""
    );

    tokio::time::sleep(Duration::from_millis(100)).await;
    let status = crate::support::admin_get(w.app.admin, "/api/status").await;
    let json: serde_json::Value = serde_json::from_str(&status).unwrap();
    let rows = json["tag_rules"].as_array().unwrap();
    let row = |i: usize, k: &str| rows[i][k].clone();
    assert_eq!(rows.len(), 3, "two rules and the default: {rows:?}");
    assert_eq!(
        (row(0, "rule"), row(0, "manifest_ttl")),
        ("always".into(), "0s".into())
    );
    assert_eq!(
        (row(0, "upstream"), row(0, "revalidated")),
        (1.into(), 3.into())
    );
    assert_eq!(
        row(0, "last_tag"),
        "registry-1.docker.io/library/mut:latest"
    );
    assert_eq!(
        (row(1, "rule"), row(1, "manifest_ttl")),
        ("pinned".into(), "forever".into())
    );
    assert_eq!((row(1, "upstream"), row(1, "hits")), (1.into(), 2.into()));
    assert_eq!(
        (row(2, "rule"), row(2, "manifest_ttl")),
        ("cache.manifest_ttl".into(), "1m".into())
    );
    assert_eq!(row(2, "hits"), 0);

    let metrics = crate::support::admin_get(w.app.admin, "/metrics").await;
    for line in [
        "regcache_cache_tag_rule_requests_total{rule=\"1\",served=\"revalidated\"} 3",
        "regcache_cache_tag_rule_requests_total{rule=\"1\",served=\"upstream\"} 1",
        "regcache_cache_tag_rule_requests_total{rule=\"2\",served=\"hit\"} 2",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
}

#[tokio::test]
async fn tags_no_rule_covers_keep_cache_manifest_ttl() {
    let w = World::start_with(RULES).await;
    // "always" covers mut:latest only, "pinned" numbered tags only: the default decides
    let path = "/v2/library/mut/manifests/other";
    let resp = w.app.get(HUB, path, &[]).await;
    assert_ne!(x_cache(&resp), "HIT");
    let status = crate::support::admin_get(w.app.admin, "/api/status").await;
    let json: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(json["tag_rules"][2]["upstream"], 1, "{json}");
    assert_eq!(
        json["tag_rules"][2]["last_tag"],
        "registry-1.docker.io/library/mut:other"
    );
    assert_eq!(json["tag_rules"][0]["upstream"], 0);
}

#[test]
fn config_check_names_bad_rules_by_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("site.toml");
    let text = "[cache]\nmanifest_ttl = \"1m\"\n\
                [[cache.rule]]\nmatch = \"docker.io/library/*\"\ntags = \"latest\"\nmanifest_ttl = \"1m\"\n\
                [[cache.rule]]\nmatch = \"ghcr.io/[acme\"\ntags = '/v(\\d+/'\nmanifest_ttl = \"ever\"\n";
    std::fs::write(&file, text).unwrap();
    let out = crate::binary::regcache(&["config", "check", "--config", "site.toml"], dir.path());
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "site.toml:8: cache.rule[2].match: \"ghcr.io/[acme\": an unclosed [",
        "site.toml:9: cache.rule[2].tags: \"/v(\\\\d+/\": an unclosed (",
        "site.toml:10: cache.rule[2].manifest_ttl: \"ever\": write a duration",
    ] {
        assert!(err.contains(want), "{want} in:\n{err}");
    }
    assert_eq!(err.lines().count(), 3, "{err}");
    std::fs::write(
        &file,
        &text[..text.find("[[cache.rule]]\nmatch = \"ghcr").unwrap()],
    )
    .unwrap();
    let out = crate::binary::regcache(&["config", "check", "--config", "site.toml"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[tokio::test]
async fn sighup_applies_new_rules() {
    use crate::binary::{signal, spawn_serve, wait_line};
    let dir = tempfile::tempdir().unwrap();
    let config = |rules: &str| {
        let text = format!(
            "state_dir = \"state\"\n[dns]\nlisten = [\"127.0.0.1:0\"]\nanswer_ipv4 = [\"10.1.1.1\"]\n\
             upstream = [\"127.0.0.1:1\"]\n[tls]\nlisten = [\"127.0.0.1:0\"]\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n{rules}\n\
             [[registry]]\nhost = \"ghcr.io\"\nupstream = \"https://127.0.0.1:1\"\n"
        );
        std::fs::write(dir.path().join("c.toml"), text).unwrap();
    };
    let rule = |name: &str, ttl: &str| {
        format!(
            "[[cache.rule]]\nname = \"{name}\"\nmatch = \"ghcr.io/**\"\nmanifest_ttl = \"{ttl}\"\n"
        )
    };
    config(&rule("old", "1d"));
    let (mut child, rx, addrs) = spawn_serve(dir.path());
    let rows = || async {
        let status = crate::support::admin_get(addrs["admin"], "/api/status").await;
        let json: serde_json::Value = serde_json::from_str(&status).unwrap();
        let rows = json["tag_rules"].as_array().unwrap().clone();
        let text = |r: &serde_json::Value| format!("{} {}", r["rule"], r["manifest_ttl"]);
        rows.iter().map(text).collect::<Vec<_>>().join(", ")
    };
    assert_eq!(
        rows().await,
        "\"old\" \"1d\", \"cache.manifest_ttl\" \"1m\""
    );

    config(&format!(
        "{}{}",
        rule("new", "0s"),
        rule("pinned", "forever")
    ));
    signal(&child, "-HUP");
    wait_line(&rx, "configuration reloaded");
    assert_eq!(
        rows().await,
        "\"new\" \"0s\", \"pinned\" \"forever\", \"cache.manifest_ttl\" \"1m\""
    );
    signal(&child, "-TERM");
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
}
