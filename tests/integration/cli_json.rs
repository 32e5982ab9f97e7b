//! The real binary as scripts drive it: `--json` on `cache ls|du|verify` and `config check`
//! (parsed with serde_json, field by field), exit codes, and the progress line only on a terminal.

use crate::binary::regcache;
use crate::support::registry::{blob, blob_digest, manifest_digest, MANIFEST_TYPE};

/// A store with the test image's blob and manifest, and a config file naming it.
struct Filled {
    w: crate::support::World,
    dir: tempfile::TempDir,
    cfg: String,
}

async fn filled() -> Filled {
    let w = crate::support::World::start().await;
    let hub = "registry-1.docker.io";
    let blob_path = format!("/v2/library/small/blobs/{}", blob_digest());
    assert_eq!(w.app.get(hub, &blob_path, &[]).await.status(), 200);
    let manifest = "/v2/library/small/manifests/1";
    assert_eq!(w.app.get(hub, manifest, &[]).await.status(), 200);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    let state = w.app.state_dir().display().to_string();
    std::fs::write(&cfg, format!("state_dir = {state:?}\n")).unwrap();
    let cfg = cfg.to_str().unwrap().to_owned();
    Filled { w, dir, cfg }
}

impl Filled {
    /// Exit code, stdout parsed as JSON, stderr.
    fn json(&self, args: &[&str]) -> (Option<i32>, serde_json::Value, String) {
        let mut all = args.to_vec();
        all.extend(["--config", &self.cfg, "--json"]);
        let out = regcache(&all, self.dir.path());
        let stdout = String::from_utf8_lossy(&out.stdout);
        let value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("{args:?}: not one JSON document ({e}): {stdout}"));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), value, stderr)
    }

    fn blob_file(&self) -> std::path::PathBuf {
        let hex = &blob_digest()[7..];
        let objects = self.w.app.state_dir().join("cache/objects/sha256");
        objects.join(&hex[..2]).join(hex)
    }
}

/// No live progress line: no carriage return, no ETA.
fn assert_no_progress(stderr: &str) {
    assert!(
        !stderr.contains('\r') && !stderr.contains("ETA"),
        "{stderr:?}"
    );
}

#[tokio::test]
async fn cache_ls_and_du_json_give_every_documented_field() {
    let f = filled().await;
    let (code, ls, _) = f.json(&["cache", "ls"]);
    assert_eq!(code, Some(0));
    let objects = ls["objects"].as_array().unwrap();
    assert_eq!(objects.len(), 2, "{ls}");
    let blob_entry = (objects.iter())
        .find(|o| o["digest"] == blob_digest())
        .expect("the blob is listed");
    assert_eq!(blob_entry["size"], blob().len() as u64);
    assert!(blob_entry["media_type"].is_string(), "{blob_entry}");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    let used = blob_entry["last_used_unix"].as_u64().unwrap();
    assert!(now.unwrap().as_secs().abs_diff(used) < 600, "{used}");
    let refs = &blob_entry["refs"][0];
    assert_eq!(
        (refs["registry"].as_str(), refs["repo"].as_str()),
        (Some("registry-1.docker.io"), Some("library/small"))
    );
    let manifest = objects
        .iter()
        .find(|o| o["digest"] == manifest_digest())
        .unwrap();
    assert_eq!(manifest["media_type"], MANIFEST_TYPE);
    let bytes: u64 = objects.iter().map(|o| o["size"].as_u64().unwrap()).sum();
    assert_eq!(
        (
            ls["total"]["objects"].as_u64(),
            ls["total"]["bytes"].as_u64()
        ),
        (Some(2), Some(bytes))
    );
    let (_, none, _) = f.json(&["cache", "ls", "--repo", "acme/*"]);
    assert_eq!(none["objects"], serde_json::json!([]));

    let (code, du, _) = f.json(&["cache", "du"]);
    assert_eq!(code, Some(0));
    assert_eq!(
        (du["objects"].as_u64(), du["bytes"].as_u64()),
        (Some(2), Some(bytes))
    );
    assert_eq!(du["max_size"], 50u64 << 30);
    assert_eq!(du["used_percent"], 0.0);
    assert!(du["dir"].as_str().unwrap().ends_with("cache"), "{du}");
    let hub = &du["registries"][0];
    assert_eq!(
        (
            hub["registry"].as_str(),
            hub["objects"].as_u64(),
            hub["bytes"].as_u64()
        ),
        (Some("registry-1.docker.io"), Some(2), Some(bytes))
    );
}

#[tokio::test]
async fn cache_verify_json_marks_a_corrupted_object_bad_and_exits_65() {
    let f = filled().await;
    let (code, clean, stderr) = f.json(&["cache", "verify"]);
    assert_eq!(code, Some(0), "{clean}");
    assert_eq!(
        (
            clean["summary"]["checked"].as_u64(),
            clean["summary"]["ok"].as_u64(),
            clean["summary"]["bad"].as_u64()
        ),
        (Some(2), Some(2), Some(0))
    );
    assert!(
        clean["objects"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["verdict"] == "ok" && o["reason"].is_null()),
        "{clean}"
    );
    assert_no_progress(&stderr);

    let mut bytes = std::fs::read(f.blob_file()).unwrap();
    bytes[10] ^= 1;
    std::fs::write(f.blob_file(), bytes).unwrap();
    let (code, found, stderr) = f.json(&["cache", "verify"]);
    assert_eq!(code, Some(65), "bad objects found: {found}");
    assert_no_progress(&stderr);
    let bad = (found["objects"].as_array().unwrap().iter())
        .find(|o| o["digest"] == blob_digest())
        .unwrap();
    assert_eq!(bad["verdict"], "bad");
    assert!(
        bad["reason"]
            .as_str()
            .unwrap()
            .starts_with("content is sha256:"),
        "{bad}"
    );
    assert_eq!(bad["size"], blob().len() as u64);
    let summary = &found["summary"];
    assert_eq!(
        (
            summary["checked"].as_u64(),
            summary["ok"].as_u64(),
            summary["bad"].as_u64()
        ),
        (Some(2), Some(1), Some(1))
    );
    assert!(!f.blob_file().exists(), "the bad object is dropped");

    let text = regcache(&["cache", "verify", "--config", &f.cfg], f.dir.path());
    assert_eq!(text.status.code(), Some(0), "nothing bad is left");
}

#[tokio::test]
async fn json_errors_are_an_object_on_stdout_with_a_non_zero_exit() {
    let f = filled().await;
    let bad = f.dir.path().join("bad.toml");
    std::fs::write(&bad, "[cache]\nmax_size = \"lots\"\n").unwrap();
    let out = regcache(
        &["cache", "ls", "--json", "--config", bad.to_str().unwrap()],
        f.dir.path(),
    );
    assert_eq!(out.status.code(), Some(64));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let problem = &doc["error"]["problems"][0];
    assert_eq!(
        (problem["file"].as_str(), problem["line"].as_u64()),
        (bad.to_str(), Some(2))
    );

    let state = f.dir.path().join("broken");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("cache"), "a file where the cache dir should be").unwrap();
    let cfg = f.dir.path().join("broken.toml");
    std::fs::write(
        &cfg,
        format!("state_dir = {:?}\n", state.display().to_string()),
    )
    .unwrap();
    let out = regcache(
        &["cache", "du", "--json", "--config", cfg.to_str().unwrap()],
        f.dir.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let message = doc["error"]["message"].as_str().unwrap();
    assert!(message.contains("cannot open the cache in"), "{message}");
    assert_eq!(doc["error"]["problems"], serde_json::json!([]));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot open the cache in"));
}

/// `config check --json --config FILE`: exit code and the document.
fn check_json(file: &std::path::Path, dir: &std::path::Path) -> (Option<i32>, serde_json::Value) {
    let file = file.to_str().unwrap();
    let out = regcache(&["config", "check", "--json", "--config", file], dir);
    let doc = serde_json::from_slice(&out.stdout).expect("one JSON document");
    (out.status.code(), doc)
}

#[test]
fn config_check_json_lists_file_line_message_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("site.toml");
    std::fs::write(&bad, crate::binary::BAD_SITE_TOML).unwrap();
    let (code, doc) = check_json(&bad, dir.path());
    assert_eq!((code, doc["ok"].as_bool()), (Some(64), Some(false)));
    let problems = doc["problems"].as_array().unwrap();
    let at = |line: u64| {
        (problems.iter())
            .find(|p| p["line"] == line)
            .unwrap_or_else(|| panic!("line {line}: {doc}"))
    };
    assert_eq!(at(3)["file"], bad.to_str().unwrap());
    let message = at(3)["message"].as_str();
    assert_eq!(
        message,
        Some("dns.answer_ipv4: \"::1\": not an IPv4 address")
    );
    let message = at(5)["message"].as_str().unwrap();
    assert!(message.starts_with("access.allow: \"nope\""), "{doc}");

    let (code, doc) = check_json("absent.toml".as_ref(), dir.path());
    let unplaced = doc["problems"][0]["line"].is_null();
    assert_eq!(
        (code, doc["ok"].as_bool(), unplaced),
        (Some(64), Some(false), true)
    );

    let good = dir.path().join("good.toml");
    std::fs::write(&good, "state_dir = \"state\"\n").unwrap();
    let (code, doc) = check_json(&good, dir.path());
    let problems = doc["problems"].as_array().map(Vec::len);
    assert_eq!(
        (code, doc["ok"].as_bool(), problems),
        (Some(0), Some(true), Some(0))
    );
    let counts = (doc["registries"].as_u64(), doc["names"].as_u64());
    assert!(counts.0 > Some(0) && counts.1 > Some(0), "{doc}");
}

#[tokio::test]
async fn progress_only_on_a_terminal() {
    let f = filled().await;
    let piped = regcache(&["cache", "verify", "--config", &f.cfg], f.dir.path());
    assert_eq!(piped.status.code(), Some(0));
    assert_no_progress(&String::from_utf8_lossy(&piped.stderr));

    // script(1) runs the command on a pseudo-terminal: the line is drawn, then cleared.
    let bin = env!("CARGO_BIN_EXE_regcache");
    let on_tty = |args: &str| {
        let command = format!("{bin} {args} --config {}", f.cfg);
        let out = std::process::Command::new("script")
            .args(["-q", "-e", "-c", &command, "/dev/null"])
            .current_dir(f.dir.path())
            .env_remove("REGCACHE_CONFIG")
            .output()
            .expect("script(1) from util-linux");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let shown = on_tty("cache verify");
    assert!(shown.contains("\rverify: 2/2 objects, "), "{shown:?}");
    assert!(
        shown.contains("/s, ETA ") && shown.contains("\r\x1b[K"),
        "{shown:?}"
    );
    assert!(
        !on_tty("cache verify --json").contains("ETA"),
        "--json: quiet"
    );
    let purged = on_tty("cache purge --all");
    assert!(purged.contains("\rpurge: 2/2 objects, "), "{purged:?}");
    assert!(purged.contains("purged 2 objects"), "{purged:?}");
}
