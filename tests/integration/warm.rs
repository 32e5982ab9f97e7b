//! `regcache warm` (the library under the command) against the in-process appliance and the fake
//! upstream registry: through a running appliance, and with an appliance of its own.

use regcache::cache::{Digest, Store};
use regcache::warm::{self, Options, Platforms};

use crate::support::registry::{blob, blob_digest, manifest};
use crate::support::World;

fn options(images: &[&str], via: Option<String>, ca: Option<std::path::PathBuf>) -> Options {
    Options {
        images: images.iter().map(|i| i.to_string()).collect(),
        platforms: Platforms::All,
        via,
        ca,
        quiet: true,
    }
}

#[tokio::test]
async fn warm_through_a_running_appliance_fills_the_cache_then_finds_it_cached() {
    let world = World::start().await;
    let via = Some(format!("https://127.0.0.1:{}", world.app.https.port()));
    let ca = Some(world.app.state_dir().join("certs/ca.crt"));
    let config = world.app.config.clone();
    let images = ["docker.io/library/small:1", "docker.io/library/missing:1"];
    let first = warm::run(&config, options(&images, via.clone(), ca.clone()))
        .await
        .unwrap();
    let small = &first[0];
    assert_eq!(small.image, "docker.io/library/small:1");
    assert_eq!(small.error, None);
    assert_eq!((small.tally.fetched, small.tally.cached), (2, 0));
    let bytes = (manifest().len() + blob().len()) as u64;
    assert_eq!(small.tally.bytes, bytes);
    let digest = Digest::parse(&blob_digest()).unwrap();
    assert!(
        world.app.cache.get(&digest).is_some(),
        "the layer is cached"
    );
    // The failing reference says why, and does not stop the others.
    let missing = first[1].error.as_deref().unwrap_or_default();
    assert!(missing.contains("404"), "{missing}");

    let blob_gets = || {
        (world.registry.seen("/blobs/").into_iter())
            .filter(|s| s.method == http::Method::GET)
            .count()
    };
    let gets = blob_gets();
    let again = warm::run(&config, options(&images[..1], via, ca))
        .await
        .unwrap();
    assert_eq!(again[0].error, None);
    assert_eq!((again[0].tally.fetched, again[0].tally.cached), (0, 2));
    assert_eq!(blob_gets(), gets, "a warm cache fetches no blob upstream");
    world.app.stop().await;
}

#[tokio::test]
async fn warm_on_its_own_starts_an_appliance_with_the_configured_cache() {
    let world = World::start().await;
    // Refused while the configured appliance runs: both would write one cache.
    // (as configured, with the port the test appliance got for its admin listener)
    let mut running = world.app.config.clone();
    running.admin.listen = world.app.admin;
    let refused = warm::run(
        &running,
        options(&["docker.io/library/small:1"], None, None),
    )
    .await;
    let why = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(why.contains("an appliance is running here"), "{why}");

    let own = tempfile::tempdir().unwrap();
    let mut config = running.clone();
    config.state_dir = own.path().to_owned();
    config.cache.dir = own.path().join("cache");
    config.admin.listen = "127.0.0.1:0".parse().unwrap();
    let done = warm::run(&config, options(&["docker.io/library/small:1"], None, None))
        .await
        .unwrap();
    assert_eq!(done[0].error, None);
    assert_eq!(done[0].tally.fetched, 2);
    let store = Store::open(&config.cache.dir, config.cache.max_size).unwrap();
    let digest = Digest::parse(&blob_digest()).unwrap();
    assert!(
        store.get(&digest).is_some(),
        "its own appliance cached the layer"
    );
    world.app.stop().await;
}

/// `GET path` on the admin listener: the body.
async fn admin_get(admin: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_warm_job_keeps_its_images_cached_and_reports_on_metrics_and_status() {
    let jobs = "[[warm]]\nimages = [\"docker.io/library/small:1\"]\nevery = \"1h\"\n\
                [[warm]]\nimages = [\"docker.io/library/missing:1\"]\n";
    let world = World::start_with(jobs).await;
    let ok = "regcache_warm_runs_total{job=\"1\",result=\"ok\"} 1";
    let failed = "regcache_warm_runs_total{job=\"2\",result=\"failed\"} 1";
    let mut metrics = String::new();
    // The jobs run 5 s after start; bounded wait for both.
    for _ in 0..100 {
        metrics = admin_get(world.app.admin, "/metrics").await;
        if metrics.contains(ok) && metrics.contains(failed) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(
        metrics.contains(ok) && metrics.contains(failed),
        "{metrics}"
    );
    assert!(metrics.contains("regcache_warm_objects_total{job=\"1\",how=\"fetched\"} 2"));
    let digest = Digest::parse(&blob_digest()).unwrap();
    assert!(
        world.app.cache.get(&digest).is_some(),
        "the job cached the layer"
    );
    let status: serde_json::Value =
        serde_json::from_str(&admin_get(world.app.admin, "/api/status").await).unwrap();
    let jobs = status["warm"].as_array().unwrap();
    assert_eq!(jobs[0]["images"][0], "docker.io/library/small:1");
    assert_eq!(jobs[0]["ok"], true);
    assert_eq!(jobs[0]["every_s"], 3600);
    assert_eq!(jobs[1]["ok"], false);
    assert!(jobs[1]["error"].as_str().unwrap().contains("404"));
    world.app.stop().await;
}

#[test]
fn warm_json_failures_are_one_json_document() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.toml"), crate::binary::BAD_SITE_TOML).unwrap();
    let bad = crate::binary::regcache(&["warm", "--json", "--config", "bad.toml", "x"], dir.path());
    assert_eq!(bad.status.code(), Some(64));
    let doc: serde_json::Value = serde_json::from_slice(&bad.stdout).unwrap();
    assert!(doc["error"]["problems"]
        .as_array()
        .is_some_and(|p| !p.is_empty()));

    let no_ca = dir.path().join("none.crt");
    let no_ca = no_ca.to_str().unwrap();
    let args = [
        "warm",
        "--json",
        "--via",
        "https://127.0.0.1:9",
        "--ca",
        no_ca,
        "alpine",
    ];
    let out = crate::binary::regcache(&args, dir.path());
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let message = doc["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("none.crt"), "{message}");
}
