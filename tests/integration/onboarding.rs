//! Onboarding: `regcache ca cert --fingerprint`, `ca install` without a CA, and
//! scripts/client-setup.sh against a small in-process HTTP server (and against `serve` itself),
//! writing under a temp `--root`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, GeneralSubtree, IsCa, KeyPair, NameConstraints};
use regcache::ca::Ca;
use regcache::names::NamePattern;

const BIN: &str = env!("CARGO_BIN_EXE_regcache");
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/client-setup.sh");
const REGISTRIES: &str = "ghcr.io\ndocker.io\n";

/// An HTTP server on 127.0.0.1:0 answering `/ca.crt` and `/registries`, until dropped (60 s at most).
struct Appliance {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Appliance {
    fn start(ca_pem: &str, registries: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (ca, regs, stopped) = (ca_pem.to_owned(), registries.to_owned(), stop.clone());
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stopped.load(Ordering::SeqCst) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((tcp, _)) => answer(tcp, &ca, &regs),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn answer(mut tcp: std::net::TcpStream, ca: &str, registries: &str) {
    tcp.set_nonblocking(false).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
        if tcp.read(&mut byte).unwrap_or(0) == 0 {
            return;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    let (status, body) = match head.split_whitespace().nth(1) {
        Some("/ca.crt") => ("200 OK", ca),
        Some("/registries") => ("200 OK", registries),
        _ => ("404 Not Found", "not found\n"),
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tcp.write_all(reply.as_bytes());
}

/// A temp folder holding the client's `root/` (with containerd and the system store present).
struct Client {
    dir: tempfile::TempDir,
}

impl Client {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for d in [
            "root/etc/containerd",
            "root/usr/local/share/ca-certificates",
        ] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        Self { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// Runs client-setup.sh with `args` against `port` on 127.0.0.1.
    fn setup(&self, port: u16, args: &[&str]) -> (Option<i32>, String, String) {
        let out: Output = Command::new("bash")
            .arg(SCRIPT)
            .args(["--port", &port.to_string(), "--root"])
            .arg(self.root())
            .arg("--no-dns")
            .args(args)
            .arg("127.0.0.1")
            .output()
            .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    }

    /// Every file anywhere in the temp folder (inside `root/` or not).
    fn files(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![self.dir.path().to_owned()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                match e.path().is_dir() {
                    true => stack.push(e.path()),
                    false => out.push(
                        (e.path().strip_prefix(self.dir.path()).unwrap())
                            .display()
                            .to_string(),
                    ),
                }
            }
        }
        out.sort();
        out
    }
}

/// regcache's own CA for ghcr.io and docker.io: (PEM, fingerprint).
fn appliance_ca(dir: &Path) -> (String, String) {
    let names: Vec<NamePattern> = ["ghcr.io", "docker.io"]
        .iter()
        .map(|n| NamePattern::parse(n).unwrap())
        .collect();
    let ca = Ca::load_or_create(dir, &names).unwrap();
    (ca.cert_pem().to_owned(), ca.fingerprint())
}

/// A self-signed certificate minted now: a CA or not, with name constraints or not.
fn minted(is_ca: bool, constrained: bool) -> String {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["ghcr.io".to_owned()]).unwrap();
    if is_ca {
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    }
    if constrained {
        params.name_constraints = Some(NameConstraints {
            permitted_subtrees: vec![GeneralSubtree::DnsName("ghcr.io".into())],
            excluded_subtrees: vec![],
        });
    }
    params.self_signed(&key).unwrap().pem()
}

fn assert_installed(client: &Client, pem: &str) {
    for h in ["ghcr.io", "docker.io"] {
        for f in [
            format!("etc/docker/certs.d/{h}/ca.crt"),
            format!("etc/containers/certs.d/{h}/ca.crt"),
            format!("etc/containerd/certs.d/{h}/regcache-ca.crt"),
        ] {
            let got = std::fs::read_to_string(client.root().join(&f)).unwrap();
            assert_eq!(got, pem, "{f}");
        }
    }
    let system = client
        .root()
        .join("usr/local/share/ca-certificates/regcache.crt");
    assert_eq!(std::fs::read_to_string(system).unwrap(), pem);
}

#[test]
fn client_setup_installs_a_ca_with_the_right_fingerprint_in_any_spelling() {
    let state = tempfile::tempdir().unwrap();
    let (pem, fp) = appliance_ca(state.path());
    let site = Appliance::start(&pem, REGISTRIES);
    let client = Client::new();
    let bare = fp.replace(':', "").to_lowercase();
    let (code, out, err) = client.setup(site.addr.port(), &["--fingerprint", &bare]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(&format!("CA fingerprint: {fp}")), "{out}");
    assert!(out.contains("registries:     ghcr.io docker.io"), "{out}");
    assert_installed(&client, &pem);
    assert_eq!(client.files().len(), 9, "{:?}", client.files());

    let (code, _, err) = client.setup(site.addr.port(), &["--fingerprint", &fp]);
    assert_eq!(code, Some(0), "the colon form too: {err}");
}

#[test]
fn client_setup_refuses_a_wrong_fingerprint_or_none_and_writes_nothing() {
    let state = tempfile::tempdir().unwrap();
    let (pem, fp) = appliance_ca(state.path());
    let other = tempfile::tempdir().unwrap();
    let (_, other_fp) = appliance_ca(other.path());
    let site = Appliance::start(&pem, REGISTRIES);
    let client = Client::new();

    let (code, _, err) = client.setup(site.addr.port(), &["--fingerprint", &other_fp]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&fp) && err.contains(&other_fp), "{err}");
    assert!(err.contains("nothing was installed"), "{err}");

    let (code, _, err) = client.setup(site.addr.port(), &[]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("regcache ca cert --fingerprint"), "{err}");
    assert!(err.contains("CA fingerprint (SHA-256)"), "{err}");

    let (code, _, err) = client.setup(site.addr.port(), &["--fingerprint", "AB:CD"]);
    assert_eq!(code, Some(64), "{err}");
    assert_eq!(client.files(), Vec::<String>::new());
}

#[test]
fn client_setup_trusts_on_first_use_only_when_told_and_says_so() {
    let state = tempfile::tempdir().unwrap();
    let (pem, fp) = appliance_ca(state.path());
    let site = Appliance::start(&pem, REGISTRIES);
    let client = Client::new();
    let (code, out, err) = client.setup(site.addr.port(), &["--insecure-trust-on-first-use"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(err.contains("WARNING") && err.contains(&fp), "{err}");
    assert_installed(&client, &pem);
}

#[test]
fn client_setup_refuses_anything_but_one_name_constrained_ca() {
    let state = tempfile::tempdir().unwrap();
    let (pem, fp) = appliance_ca(state.path());
    let cases = [
        (format!("{pem}{}", minted(true, true)), "exactly one PEM"),
        (minted(false, true), "not a CA"),
        (minted(true, false), "name constraints"),
        (
            format!("{pem}-----BEGIN PRIVATE KEY-----\n"),
            "exactly one PEM",
        ),
    ];
    for (served, why) in cases {
        let site = Appliance::start(&served, REGISTRIES);
        let client = Client::new();
        // The fingerprint of what is served: only the shape of the certificate is wrong.
        let first = served.split_inclusive("-----END CERTIFICATE-----\n").next();
        let served_fp = fingerprint_of(first.unwrap());
        let want = if served.starts_with(&pem) {
            &fp
        } else {
            &served_fp
        };
        let (code, _, err) = client.setup(site.addr.port(), &["--fingerprint", want]);
        assert_eq!(code, Some(1), "{why}: {err}");
        assert!(err.contains(why), "{why}: {err}");
        assert_eq!(client.files(), Vec::<String>::new(), "{why}");
    }
}

#[test]
fn client_setup_refuses_registry_names_that_are_not_host_names() {
    let state = tempfile::tempdir().unwrap();
    let (pem, fp) = appliance_ca(state.path());
    let long = format!("{}.io", "a".repeat(64));
    let longest = vec!["a".repeat(63); 4].join("."); // 255 characters
    let bad = [
        "..",
        "../../../../escape",
        "ghcr.io/../../x",
        "a..b.io",
        "ghcr.io:5000",
        "-ghcr.io",
        "ghcr-.io",
        "GHCR.io",
        "ghcr.io.",
        "",
        "gh cr.io",
        long.as_str(),
        longest.as_str(),
    ];
    for name in bad {
        let site = Appliance::start(&pem, &format!("ghcr.io\n{name}\ndocker.io\n"));
        let client = Client::new();
        let (code, _, err) = client.setup(site.addr.port(), &["--fingerprint", &fp]);
        assert_eq!(code, Some(1), "{name:?}: {err}");
        assert!(
            err.contains(&format!("'{name}' is not a valid host name")),
            "{err}"
        );
        assert_eq!(client.files(), Vec::<String>::new(), "{name:?}");
    }
    let ok = format!("{}.io", "a".repeat(63));
    let site = Appliance::start(&pem, &format!("{ok}\nx-1.b2.io\n"));
    let client = Client::new();
    let (code, _, err) = client.setup(site.addr.port(), &["--fingerprint", &fp]);
    assert_eq!(code, Some(0), "63-character labels are fine: {err}");
    assert!(client
        .root()
        .join(format!("etc/docker/certs.d/{ok}/ca.crt"))
        .exists());
}

/// `openssl x509 -noout -fingerprint -sha256` of `pem`, without the "sha256 Fingerprint=".
fn fingerprint_of(pem: &str) -> String {
    let mut child = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(pem.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().rsplit('=').next().unwrap().to_owned()
}

fn regcache(args: &[&str], dir: &Path) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("REGCACHE_CONFIG")
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn ca_cert_fingerprint_is_what_openssl_prints() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.toml"), "state_dir = \"state\"\n").unwrap();
    let (ok, pem, err) = regcache(&["ca", "cert", "--config", "c.toml"], dir.path());
    assert!(
        ok && pem.starts_with("-----BEGIN CERTIFICATE-----"),
        "{err}"
    );
    let (ok, fp, err) = regcache(
        &["ca", "cert", "--fingerprint", "--config", "c.toml"],
        dir.path(),
    );
    assert!(ok, "{err}");
    assert_eq!(fp.trim(), fingerprint_of(&pem));
    assert_eq!(fp.trim().len(), 95, "32 upper-case hex pairs: {fp}");
}

#[test]
fn ca_install_refuses_to_mint_a_ca_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.toml"), "state_dir = \"state\"\n").unwrap();
    let install = ["ca", "install", "--config", "c.toml", "--root", "client"];
    let (ok, _, err) = regcache(&install, dir.path());
    assert!(!ok);
    assert!(
        err.contains("no CA here: run this on the appliance, or use scripts/client-setup.sh with the CA's fingerprint"),
        "{err}"
    );
    assert!(
        !dir.path().join("state/certs/ca.key").exists(),
        "no CA minted"
    );
    assert!(!dir.path().join("client").exists(), "nothing installed");

    let (ok, out, err) = regcache(&[&install[..], &["--create"]].concat(), dir.path());
    assert!(ok, "{err}");
    assert!(dir.path().join("state/certs/ca.key").exists());
    assert!(out.contains("CA fingerprint (SHA-256): "), "{out}");
    let (ok, _, err) = regcache(&install, dir.path());
    assert!(ok, "an existing CA is used without --create: {err}");
}

/// `serve` logs its CA's fingerprint; client-setup.sh onboards from its admin listener with it.
#[tokio::test]
async fn serve_logs_the_fingerprint_and_client_setup_onboards_from_it() {
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
    let mut child = Command::new(BIN)
        .args(["serve", "--config", "c.toml"])
        .current_dir(dir.path())
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
    let (mut logged, mut admin) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        if let Some(fp) = line.split("CA fingerprint (SHA-256): ").nth(1) {
            logged = Some(fp.trim().to_owned());
        }
        if let Some(addr) = line.split("listening for admin on ").nth(1) {
            admin = Some(addr.trim().parse::<SocketAddr>().unwrap());
            break;
        }
    }
    let (ok, fp, err) = regcache(
        &["ca", "cert", "--fingerprint", "--config", "c.toml"],
        dir.path(),
    );
    let client = Client::new();
    let port = admin.map(|a| a.port());
    let setup = port.map(|p| client.setup(p, &["--fingerprint", fp.trim()]));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(ok, "{err}");
    assert_eq!(logged.as_deref(), Some(fp.trim()), "logged at start");
    let (code, out, err) = setup.expect("the admin listener was announced");
    assert_eq!(code, Some(0), "{out}{err}");
    let (_, pem, _) = regcache(&["ca", "cert", "--config", "c.toml"], dir.path());
    let installed = client.root().join("etc/docker/certs.d/ghcr.io/ca.crt");
    assert_eq!(std::fs::read_to_string(installed).unwrap(), pem);
}
