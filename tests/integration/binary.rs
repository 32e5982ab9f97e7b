//! The real `regcache` binary: config checking and exit codes, `ca cert`, and `serve` on port 0
//! announcing its listeners and stopping on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::RecordType;

const BIN: &str = env!("CARGO_BIN_EXE_regcache");

pub(crate) fn regcache(args: &[&str], dir: &std::path::Path) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("REGCACHE_CONFIG")
        .output()
        .unwrap()
}

/// Problems on lines 3 (`dns.answer_ipv4`) and 5 (`access.allow`).
pub(crate) const BAD_SITE_TOML: &str =
    "[dns]\nlisten = [\"0.0.0.0:53\"]\nanswer_ipv4 = [\"::1\"]\n[access]\nallow = [\"nope\"]\n";

#[test]
fn config_check_reports_each_bad_line_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("site.toml");
    std::fs::write(&bad, BAD_SITE_TOML).unwrap();
    let out = regcache(
        &["config", "check", "--config", bad.to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("site.toml:3: dns.answer_ipv4: \"::1\": not an IPv4 address"),
        "{err}"
    );
    assert!(err.contains("site.toml:5: access.allow: \"nope\""), "{err}");

    std::fs::write(&bad, "[tls]\nlisten = []\ncolour = \"blue\"\n").unwrap();
    let out = regcache(&["serve", "--config", bad.to_str().unwrap()], dir.path());
    assert_eq!(
        out.status.code(),
        Some(64),
        "serve refuses a bad config too"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("site.toml:3: unknown field `colour`"), "{err}");

    let missing = regcache(&["config", "check", "--config", "absent.toml"], dir.path());
    assert_eq!(missing.status.code(), Some(64));
}

#[test]
fn config_lookup_order_and_the_embedded_default() {
    let dir = tempfile::tempdir().unwrap();
    let out = regcache(&["config", "check"], dir.path());
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("<embedded default>: OK (9 registries")
    );

    let default = regcache(&["config", "default"], dir.path());
    let text = String::from_utf8_lossy(&default.stdout).into_owned();
    assert!(text.contains("# ") && text.contains("host = \"nvcr.io\""));
    // The printed default is itself a valid config file.
    std::fs::write(dir.path().join("regcache.toml"), &text).unwrap();
    let out = regcache(&["config", "check"], dir.path());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("regcache.toml: OK"));

    // $REGCACHE_CONFIG wins over ./regcache.toml.
    std::fs::write(
        dir.path().join("env.toml"),
        "[[registry]]\nhost = \"only.example\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["config", "check"])
        .current_dir(dir.path())
        .env("REGCACHE_CONFIG", "env.toml")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("env.toml: OK (1 registries"));
    // --config wins over $REGCACHE_CONFIG; an empty $REGCACHE_CONFIG counts as unset.
    for (args, env, expect) in [
        (
            &["--config", "regcache.toml"][..],
            "env.toml",
            "regcache.toml: OK",
        ),
        (&[][..], "", "regcache.toml: OK"),
    ] {
        let out = Command::new(BIN)
            .args(["config", "check"])
            .args(args)
            .current_dir(dir.path())
            .env("REGCACHE_CONFIG", env)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.starts_with(expect), "{args:?} {env:?}: {stdout}");
    }
}

#[test]
fn ca_cert_creates_the_ca_once_and_prints_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "state_dir = \"state\"\n").unwrap();
    let first = regcache(&["ca", "cert", "--config", "c.toml"], dir.path());
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let pem = String::from_utf8_lossy(&first.stdout).into_owned();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
    let second = regcache(&["ca", "cert", "--config", "c.toml"], dir.path());
    assert_eq!(
        String::from_utf8_lossy(&second.stdout),
        pem,
        "the same CA is reused"
    );
    assert!(dir.path().join("state/certs/ca.key").exists());

    // A registry the CA was not made for: a clear error naming it.
    std::fs::write(
        &cfg,
        "state_dir = \"state\"\n[[registry]]\nhost = \"new.example\"\n",
    )
    .unwrap();
    let out = regcache(&["ca", "cert", "--config", "c.toml"], dir.path());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("does not permit new.example") && err.contains("Delete"),
        "{err}"
    );
}

#[tokio::test]
async fn serve_announces_its_listeners_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = crate::support::dns::Upstream::start().await;
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "state_dir = \"state\"\n[dns]\nlisten = [\"127.0.0.1:0\"]\nanswer_ipv4 = [\"10.1.1.1\"]\n\
             upstream = [\"{}\"]\n[tls]\nlisten = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n",
            upstream.addr
        ),
    )
    .unwrap();
    let (mut child, _stderr, addrs) = spawn_serve(dir.path());
    let reply = crate::support::dns::udp(addrs["dns"], "nvcr.io.", RecordType::A).await;
    assert_eq!(
        crate::support::dns::ipv4s(&reply),
        ["10.1.1.1".parse::<std::net::Ipv4Addr>().unwrap()]
    );

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "serve did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "clean exit after SIGTERM: {status:?}");
}

#[tokio::test]
async fn cache_commands_list_measure_verify_and_purge() {
    use crate::support::registry::{blob_digest, manifest_digest};
    let w = crate::support::World::start().await;
    let hub = "registry-1.docker.io";
    let blob = format!("/v2/library/small/blobs/{}", blob_digest());
    assert_eq!(w.app.get(hub, &blob, &[]).await.status(), 200);
    assert_eq!(
        w.app
            .get(hub, "/v2/library/small/manifests/1", &[])
            .await
            .status(),
        200
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    let state = w.app.state_dir().display().to_string();
    std::fs::write(&cfg, format!("state_dir = {state:?}\n")).unwrap();
    let cfg = cfg.to_str().unwrap();
    let run = |args: &[&str]| {
        let out = regcache(args, dir.path());
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (
            out.status.code(),
            text,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, ls, _) = run(&["cache", "ls", "--config", cfg]);
    assert_eq!(code, Some(0));
    assert!(
        ls.contains(&blob_digest()) && ls.contains(&manifest_digest()),
        "{ls}"
    );
    assert!(ls.contains("registry-1.docker.io/library/small"), "{ls}");
    assert!(
        ls.lines().last().unwrap().starts_with("2 objects, "),
        "{ls}"
    );
    let (_, none, _) = run(&["cache", "ls", "--config", cfg, "--repo", "acme/*"]);
    assert!(none.starts_with("0 objects"), "{none}");
    let (_, du, _) = run(&["cache", "du", "--config", cfg]);
    assert!(
        du.starts_with("2 objects, ") && du.contains("of 50.0 GiB"),
        "{du}"
    );

    let object = w
        .app
        .state_dir()
        .join("cache/objects/sha256")
        .join(&blob_digest()[7..9])
        .join(&blob_digest()[7..]);
    let mut bytes = std::fs::read(&object).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&object, bytes).unwrap();
    let (code, verify, _) = run(&["cache", "verify", "--config", cfg]);
    assert_eq!(code, Some(65), "verify found a bad object: {verify}");
    assert!(
        verify.contains(&format!("bad {}", blob_digest())),
        "{verify}"
    );
    assert!(verify.trim_end().ends_with("1 bad, dropped"), "{verify}");
    assert!(!object.exists());

    let (code, _, err) = run(&["cache", "purge", "--config", cfg]);
    assert_eq!(code, Some(2), "purge needs to be told what: {err}");
    let (_, purged, _) = run(&["cache", "purge", "--config", cfg, "--repo", "library/*"]);
    assert!(purged.starts_with("purged 1 objects"), "{purged}");
    let (_, du, _) = run(&["cache", "du", "--config", cfg]);
    assert!(du.starts_with("0 objects"), "{du}");
    let (code, _, err) = run(&["cache", "purge", "--config", cfg, "--digest", "sha256:zz"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("64 lower-case hex"), "{err}");
}

#[test]
fn ca_install_writes_under_root_for_every_runtime_and_uninstall_undoes_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.toml"), "state_dir = \"state\"\n").unwrap();
    let root = dir.path().join("client");
    let out = regcache(
        &[
            "ca",
            "install",
            "--create",
            "--config",
            "c.toml",
            "--root",
            root.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let pem = std::fs::read_to_string(dir.path().join("state/certs/ca.crt")).unwrap();
    for host in [
        "registry-1.docker.io",
        "docker.io",
        "index.docker.io",
        "auth.docker.io",
        "nvcr.io",
        "ghcr.io",
        "quay.io",
    ] {
        let docker = root.join(format!("etc/docker/certs.d/{host}/ca.crt"));
        assert_eq!(std::fs::read_to_string(&docker).unwrap(), pem, "{host}");
        assert!(
            root.join(format!("etc/containers/certs.d/{host}/ca.crt"))
                .exists(),
            "{host}"
        );
        assert!(
            root.join(format!("etc/containerd/certs.d/{host}/hosts.toml"))
                .exists(),
            "{host}"
        );
    }
    assert!(root
        .join("usr/local/share/ca-certificates/regcache.crt")
        .exists());
    assert!(text.contains("CA fingerprint (SHA-256): "), "{text}");
    assert!(text.contains("update-ca-certificates"), "{text}");

    let out = regcache(
        &["ca", "uninstall", "--root", root.to_str().unwrap()],
        dir.path(),
    );
    assert!(out.status.success());
    assert!(
        !root.join("etc").exists() && !root.join("usr").exists(),
        "everything install made is gone"
    );
}

#[tokio::test]
async fn healthcheck_asks_the_admin_listener() {
    let w = crate::support::World::start().await;
    let admin = w.app.admin.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["healthcheck", "--admin", &admin])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let out = Command::new(BIN)
        .args(["healthcheck", "--admin", &addr])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"));
}

/// Starts `regcache serve` on port 0 in `dir` with `c.toml`; returns the child, its stderr lines
/// and the announced addresses.
pub(crate) fn spawn_serve(
    dir: &std::path::Path,
) -> (
    std::process::Child,
    std::sync::mpsc::Receiver<String>,
    std::collections::HashMap<&'static str, std::net::SocketAddr>,
) {
    let mut child = Command::new(BIN)
        .args(["serve", "--config", "c.toml"])
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut addrs = std::collections::HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while addrs.len() < 3 && Instant::now() < deadline {
        let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        for what in ["dns", "https", "admin"] {
            if let Some(rest) = line.split(&format!("listening for {what} on ")).nth(1) {
                addrs.insert(what, rest.trim().parse().unwrap());
            }
        }
    }
    assert_eq!(addrs.len(), 3, "listeners announced");
    (child, rx, addrs)
}

/// Waits (bounded) for a stderr line containing `needle`.
pub(crate) fn wait_line(rx: &std::sync::mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            if line.contains(needle) {
                return line;
            }
        }
    }
    panic!("no log line with {needle:?}");
}

pub(crate) fn signal(child: &std::process::Child, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn sighup_reloads_registries_ttls_and_logs_and_rejects_bad_configs() {
    use crate::support::dns::{ipv4s, udp};
    let dir = tempfile::tempdir().unwrap();
    let upstream = crate::support::dns::Upstream::start().await;
    let config = |registries: &[&str], ttl: u32, extra: &str| {
        let mut text = format!(
            "state_dir = \"state\"\n[dns]\nlisten = [\"127.0.0.1:0\"]\nanswer_ipv4 = [\"10.1.1.1\"]\n\
             upstream = [\"{}\"]\nttl = {ttl}\n[tls]\nlisten = [\"127.0.0.1:0\"]\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n[log]\naccess_file = \"access.log\"\n{extra}\n",
            upstream.addr
        );
        for r in registries {
            text.push_str(&format!(
                "[[registry]]\nhost = \"{r}\"\nupstream = \"https://127.0.0.1:1\"\n"
            ));
        }
        std::fs::write(dir.path().join("c.toml"), text).unwrap();
    };
    config(&["ghcr.io", "quay.io"], 60, "");
    let (mut child, rx, addrs) = spawn_serve(dir.path());
    let dns = addrs["dns"];
    assert_eq!(udp(dns, "quay.io.", RecordType::A).await.answers[0].ttl, 60);

    // A TLS connection opened before the reloads keeps working after them.
    let ca = std::fs::read_to_string(dir.path().join("state/certs/ca.crt")).unwrap();
    let tls = crate::support::tls_connect(addrs["https"], &ca, "ghcr.io", &[b"http/1.1"])
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let get = |path: &str| crate::support::build("GET", "ghcr.io", path, &[], bytes::Bytes::new());
    assert_eq!(
        sender
            .send_request(get("/v2/a/manifests/1"))
            .await
            .unwrap()
            .status(),
        502
    );

    // Drop quay.io and shorten the TTL.
    config(&["ghcr.io"], 30, "");
    signal(&child, "-HUP");
    wait_line(&rx, "configuration reloaded");
    let quay = udp(dns, "quay.io.", RecordType::A).await;
    assert_eq!(
        quay.metadata.response_code,
        ResponseCode::NXDomain,
        "no longer intercepted: forwarded"
    );
    let ghcr = udp(dns, "ghcr.io.", RecordType::A).await;
    assert_eq!(
        (ipv4s(&ghcr), ghcr.answers[0].ttl),
        (vec![std::net::Ipv4Addr::new(10, 1, 1, 1)], 30)
    );

    // A bad line: rejected, with its line, and the old configuration stays.
    std::fs::write(dir.path().join("c.toml"), "[dns]\nttl = \"soon\"\n").unwrap();
    signal(&child, "-HUP");
    let line = wait_line(&rx, "config reload rejected");
    assert!(line.contains("c.toml:2"), "{line}");
    assert_eq!(udp(dns, "ghcr.io.", RecordType::A).await.answers[0].ttl, 30);

    // Names the CA was not made for: rejected.
    config(&["ghcr.io", "new.example"], 30, "");
    signal(&child, "-HUP");
    let line = wait_line(&rx, "config reload rejected");
    assert!(line.contains("does not permit new.example"), "{line}");

    // logrotate: move the file away, SIGHUP, the next lines go to a new file — now as JSON.
    std::fs::rename(
        dir.path().join("access.log"),
        dir.path().join("access.log.1"),
    )
    .unwrap();
    config(&["ghcr.io", "quay.io"], 60, "access_format = \"json\"");
    signal(&child, "-HUP");
    wait_line(&rx, "configuration reloaded");
    assert_eq!(
        udp(dns, "quay.io.", RecordType::A).await.answers[0].ttl,
        60,
        "quay.io is back"
    );
    assert_eq!(
        sender
            .send_request(get("/v2/b/manifests/1"))
            .await
            .unwrap()
            .status(),
        502
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let old = std::fs::read_to_string(dir.path().join("access.log.1")).unwrap();
    assert!(
        old.contains("\"GET /v2/a/manifests/1 HTTP/1.1\" 502"),
        "{old}"
    );
    let new = std::fs::read_to_string(dir.path().join("access.log")).unwrap();
    let json: serde_json::Value = serde_json::from_str(new.lines().last().unwrap()).unwrap();
    assert_eq!(
        (json["uri"].as_str(), json["status"].as_u64()),
        (Some("/v2/b/manifests/1"), Some(502))
    );
    assert_eq!(json["host"], "ghcr.io");

    signal(&child, "-TERM");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "serve did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn healthcheck_asks_the_configured_admin_address() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = crate::support::dns::Upstream::start().await;
    std::fs::write(
        dir.path().join("c.toml"),
        format!(
            "state_dir = \"state\"\n[dns]\nlisten = [\"127.0.0.1:0\"]\nanswer_ipv4 = [\"10.1.1.1\"]\n\
             upstream = [\"{}\"]\n[tls]\nlisten = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n",
            upstream.addr
        ),
    )
    .unwrap();
    let (mut child, _rx, addrs) = spawn_serve(dir.path());
    // The config's admin port is 0; the real one is what serve announced: write it down.
    let text = std::fs::read_to_string(dir.path().join("c.toml")).unwrap();
    let fixed = text.replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"0.0.0.0:{}\"", addrs["admin"].port()),
    );
    std::fs::write(dir.path().join("h.toml"), fixed).unwrap();
    let out = regcache(&["healthcheck", "--config", "h.toml"], dir.path());
    signal(&child, "-TERM");
    let _ = child.wait();
    assert!(
        out.status.success(),
        "asked 127.0.0.1 for 0.0.0.0: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
