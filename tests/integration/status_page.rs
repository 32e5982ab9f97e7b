//! The status page at `/` on the admin listener, rendered by headless Chromium (Debian package
//! `chromium`) after some traffic: the DOM shows the figures, and a screenshot is kept in
//! `target/status-page.png` as a test artifact. Also its JSON twin, `/api/status`. The Chromium
//! test is `#[ignore]`d so that a plain `cargo test` needs no outside tool; `scripts/test.sh`
//! installs Chromium and runs it with `--ignored`.

use std::process::Command;
use std::time::Duration;

use crate::support::registry::{blob, blob_digest, manifest};
use crate::support::{admin_get as get, World};

/// Runs headless Chromium on `url` with `args` (bounded by a timeout); returns stdout.
fn chromium(url: &str, args: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("timeout")
        .arg("60")
        .arg("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
        ])
        .args([
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .output()
        .expect("chromium runs (Debian package chromium; scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
#[ignore = "needs chromium (Debian package chromium); run by scripts/test.sh"]
async fn the_status_page_renders_the_figures_in_chromium() {
    let w = World::start().await;
    let hub = "registry-1.docker.io";
    let path = format!("/v2/library/small/blobs/{}", blob_digest());
    for _ in 0..3 {
        assert_eq!(w.app.get(hub, &path, &[]).await.body(), &blob());
    }
    assert_eq!(
        w.app
            .get(hub, "/v2/library/small/manifests/1", &[])
            .await
            .body(),
        &manifest()
    );
    w.app.get("ghcr.io", "/v2/acme/tool/manifests/1", &[]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let json: serde_json::Value =
        serde_json::from_str(&get(w.app.admin, "/api/status").await).unwrap();
    assert_eq!(json["total"]["requests"], 5);
    assert_eq!(json["total"]["hits"], 2);
    assert_eq!(json["total"]["bytes_from_cache"], 2 * blob().len() as u64);
    assert_eq!(json["top_repositories"][0]["repo"], "library/small");
    assert!(json["registries"]["ghcr.io"]["last_error"]
        .as_str()
        .unwrap()
        .contains("registry.test:1"));

    let url = format!("http://{}/", w.app.admin);
    let dom = tokio::task::spawn_blocking({
        let url = url.clone();
        move || chromium(&url, &["--dump-dom"])
    })
    .await
    .unwrap();
    assert!(
        dom.contains("<td>library/small</td>"),
        "top repositories rendered: {dom}"
    );
    assert!(
        dom.contains("id=\"requests-total\">5<"),
        "request count rendered"
    );
    assert!(
        dom.contains("id=\"hit-ratio\">50.0%<"),
        "hit ratio rendered (2 hits; blob and manifest misses)"
    );
    assert!(
        dom.contains("id=\"bytes-saved\">585.9 KiB<"),
        "bytes saved rendered"
    );
    assert!(dom.contains("<rect "), "the chart has bars");
    assert!(
        dom.contains("registry.test:1"),
        "ghcr.io's last upstream error shown"
    );
    assert!(dom.contains(&w.app_fingerprint()), "CA fingerprint shown");
    assert!(
        dom.contains("<td>local</td>") && !dom.contains("<td>shared</td>"),
        "the storage tiers table: the local tier alone"
    );
    assert!(
        dom.contains("<td>cache.manifest_ttl</td><td>**</td><td>*</td><td>1m</td>")
            && dom.contains("<td>registry-1.docker.io/library/small:1 ("),
        "the tag freshness rules table: the default's row and its last tag"
    );

    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("../status-page.png");
    let arg = format!("--screenshot={}", shot.display());
    tokio::task::spawn_blocking(move || {
        chromium(
            &url,
            &[&arg, "--window-size=1280,1000", "--hide-scrollbars"],
        )
    })
    .await
    .unwrap();
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot"
    );
}
