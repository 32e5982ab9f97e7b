//! `/metrics` on the admin listener: the figures move with real traffic, and the exposition
//! passes `promtool check metrics` (Debian package `prometheus`; that test is `#[ignore]`d so that a
//! plain `cargo test` needs no outside tool, and `scripts/test.sh` runs it with `--ignored`).

use std::io::Write;
use std::process::{Command, Stdio};

use hickory_server::proto::rr::RecordType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::registry::{blob_digest, TOKEN};
use crate::support::{dns, World};

pub(crate) async fn scrape(admin: std::net::SocketAddr) -> String {
    let mut tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    body.to_owned()
}

/// The value of the sample line that starts with `prefix` (labels included), or 0.
pub(crate) fn value(text: &str, prefix: &str) -> f64 {
    (text.lines())
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Sends traffic through a fresh appliance, checks that the figures moved and returns the
/// exposition text.
async fn scrape_after_traffic() -> String {
    let w = World::start().await;
    let hub = "registry-1.docker.io";
    let path = format!("/v2/library/small/blobs/{}", blob_digest());
    w.app.get(hub, &path, &[]).await;
    w.app.get(hub, &path, &[]).await;
    w.app
        .get(
            hub,
            "/v2/library/small/manifests/1",
            &[("authorization", TOKEN)],
        )
        .await;
    w.app.get("ghcr.io", "/v2/acme/tool/manifests/1", &[]).await;
    dns::udp(w.app.dns, "ghcr.io.", RecordType::A).await;
    dns::udp(w.app.dns, "www.example.test.", RecordType::A).await;
    dns::udp(w.app.dns, "nope.example.test.", RecordType::A).await;
    assert!(w.app.tls("example.com", &[b"http/1.1"]).await.is_err());
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;

    let text = scrape(w.app.admin).await;
    let blob_200 = "regcache_http_requests_total{registry=\"registry-1.docker.io\",method=\"GET\",kind=\"blob\",status=\"2xx\"}";
    assert_eq!(value(&text, blob_200), 2.0, "{text}");
    assert_eq!(value(&text, "regcache_cache_hits_total"), 1.0);
    assert!(
        value(&text, "regcache_cache_misses_total") >= 2.0,
        "blob and manifest misses"
    );
    assert!(
        value(
            &text,
            "regcache_http_response_bytes_total{source=\"cache\"}"
        ) >= 300_000.0
    );
    let failed = "regcache_http_requests_total{registry=\"ghcr.io\",method=\"GET\",kind=\"manifest\",status=\"5xx\"}";
    assert_eq!(value(&text, failed), 1.0);
    assert!(
        value(
            &text,
            "regcache_upstream_errors_total{registry=\"ghcr.io\",reason=\"connect\"}"
        ) >= 1.0,
        "{text}"
    );
    assert!(
        value(&text, "regcache_upstream_requests_total{registry=\"cdn\"}") >= 1.0,
        "redirect target counted"
    );
    assert_eq!(
        value(
            &text,
            "regcache_upstream_ratelimit_remaining{registry=\"registry-1.docker.io\"}"
        ),
        99.0
    );
    assert_eq!(
        value(
            &text,
            "regcache_dns_queries_total{qtype=\"A\",outcome=\"intercepted\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "regcache_dns_queries_total{qtype=\"A\",outcome=\"forwarded\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "regcache_dns_queries_total{qtype=\"A\",outcome=\"nxdomain\"}"
        ),
        1.0
    );
    assert!(value(&text, "regcache_tls_handshakes_total{outcome=\"refused\"}") >= 1.0);
    assert!(value(&text, "regcache_tls_leaf_certificates_issued_total") >= 2.0);
    assert!(value(&text, "regcache_cache_stored_bytes") >= 300_000.0);
    assert_eq!(
        value(&text, "regcache_cache_max_bytes"),
        50.0 * 1024.0 * 1024.0 * 1024.0
    );
    assert!(value(&text, "regcache_ca_expiry_timestamp_seconds") > 2.0e9);
    text
}

#[tokio::test]
async fn metrics_follow_the_traffic() {
    scrape_after_traffic().await;
}

#[tokio::test]
#[ignore = "needs promtool (Debian package prometheus); run by scripts/test.sh"]
async fn metrics_pass_promtool() {
    let text = scrape_after_traffic().await;
    let promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child =
        promtool.expect("promtool runs (Debian package prometheus; scripts/test.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}"
    );
}

/// Every metric the Grafana dashboard queries exists in `/metrics`.
#[tokio::test]
async fn the_grafana_dashboard_queries_metrics_that_exist() {
    let w = World::start().await;
    // Per-registry families appear with their first sample.
    w.app
        .get("registry-1.docker.io", "/v2/library/small/manifests/1", &[])
        .await;
    w.app.get("ghcr.io", "/v2/acme/tool/manifests/1", &[]).await;
    dns::udp(w.app.dns, "www.example.test.", RecordType::A).await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let text = scrape(w.app.admin).await;
    let families: Vec<&str> = (text.lines())
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/regcache.json"
    ))
    .unwrap();
    let json: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let mut used = Vec::new();
    for panel in json["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for (i, _) in expr.match_indices("regcache_") {
                let name: String = expr[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                used.push(name);
            }
        }
    }
    assert!(
        used.len() > 15,
        "the dashboard queries regcache metrics: {used:?}"
    );
    for name in &used {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        assert!(
            families.contains(&family),
            "the dashboard queries {name}, which /metrics does not have"
        );
    }
}
