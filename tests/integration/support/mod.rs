//! Test fixtures: a "public" PKI, a fake upstream registry with a CDN host, a fake upstream
//! resolver, the appliance itself, and clients for DNS and HTTPS.

pub mod connect_proxy;
pub mod dns;
pub mod registry;
pub mod relay;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use regcache::proxy::access_log::AccessLog;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// A throwaway "public" CA and one server certificate for the fake upstream's names.
pub struct Pki {
    pub ca_pem: String,
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
}

impl Pki {
    pub fn new(names: &[&str]) -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test public CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        Self {
            ca_pem: ca_cert.pem(),
            cert: cert.der().clone(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }
}

/// A `Write` whose bytes the test can read back (the access log).
#[derive(Clone, Default)]
pub struct SharedBuf(pub Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl SharedBuf {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// The appliance's access log as a test reads it: lines still buffered are written out first.
pub struct LogText {
    buf: SharedBuf,
    log: AccessLog,
}

impl LogText {
    pub fn text(&self) -> String {
        self.log.flush();
        self.buf.text()
    }
}

/// The appliance, running in-process.
pub struct Appliance {
    pub dns: SocketAddr,
    pub https: SocketAddr,
    /// The plain-HTTP mirror listener, when configured.
    pub http: Option<SocketAddr>,
    pub admin: SocketAddr,
    pub ca_pem: String,
    pub log: LogText,
    pub cache: std::sync::Arc<regcache::cache::Store>,
    /// The configuration it was started with.
    pub config: regcache::config::Config,
    /// The shared tier, when started over a shared store.
    pub tier: Option<Arc<regcache::tier::SharedTier>>,
    pub state: tempfile::TempDir,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Appliance {
    /// Like `start_with_store` without a store, in the state dir `state` (which may hold a CA
    /// already, `certs/`).
    pub async fn start_in(state: tempfile::TempDir, dns_keys: &str, toml: &str) -> Self {
        Self::start_in_with(state, dns_keys, toml, None).await
    }

    /// Starts the appliance on loopback port 0: `dns_keys` go into the `[dns]` table, `toml` after;
    /// with a shared tier over `store` (under the prefix "fleet") when there is one.
    pub async fn start_with_store(
        dns_keys: &str,
        toml: &str,
        store: Option<Arc<dyn object_store::ObjectStore>>,
    ) -> Self {
        Self::start_in_with(tempfile::tempdir().unwrap(), dns_keys, toml, store).await
    }

    /// Like `start_in`, with a shared tier over `store` when there is one.
    pub async fn start_in_with(
        state: tempfile::TempDir,
        dns_keys: &str,
        toml: &str,
        store: Option<Arc<dyn object_store::ObjectStore>>,
    ) -> Self {
        let text = format!(
            "state_dir = {:?}\n[dns]\nlisten = [\"127.0.0.1:0\"]\n{dns_keys}\n\
             [tls]\nlisten = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n{toml}",
            state.path().display().to_string()
        );
        let mut config = regcache::config::parse(&text, regcache::config::Source::Embedded)
            .unwrap_or_else(|e| panic!("test config invalid: {e}\n{text}"));
        if !toml.contains("proxy =") {
            // Hermetic: the caller's HTTPS_PROXY / NO_PROXY must not route the fake upstreams.
            config.upstream.proxy = None;
        }
        let log = SharedBuf::default();
        let started_with = config.clone();
        let access = AccessLog::to_writer(Box::new(log.clone()));
        let bound = regcache::app::build(config, access.clone())
            .await
            .expect("appliance starts");
        let (dns, https, admin) = (bound.dns_addrs[0], bound.https_addrs[0], bound.admin_addr);
        let cache = bound.cache.clone();
        let http = bound.http_addrs.first().copied();
        let tier = (store.map(|store| bound.set_shared_store(store, "fleet")))
            .or_else(|| bound.shared_tier());
        let ca_pem = std::fs::read_to_string(state.path().join("certs/ca.crt")).unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(regcache::app::run(bound, shutdown.clone()));
        Self {
            dns,
            https,
            http,
            admin,
            ca_pem,
            log: LogText {
                buf: log,
                log: access,
            },
            cache,
            config: started_with,
            tier,
            state,
            shutdown,
            task: Some(task),
        }
    }

    /// Stops the appliance and waits (bounded) for it to drain.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .expect("appliance stops within the grace period")
                .unwrap();
        }
    }

    /// A TLS connection to the appliance's HTTPS listener with SNI `name`, trusting its CA.
    pub async fn tls(
        &self,
        name: &str,
        alpn: &[&[u8]],
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        tls_connect(self.https, &self.ca_pem, name, alpn).await
    }

    /// One HTTP/1.1 request through the appliance to registry `name`.
    pub async fn request(&self, name: &str, req: Request<Full<Bytes>>) -> Response<Bytes> {
        let tls = self
            .tls(name, &[b"http/1.1"])
            .await
            .expect("TLS to appliance");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let resp = sender.send_request(req).await.expect("response");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("whole body").to_bytes();
        Response::from_parts(parts, body)
    }

    /// Like `request`, but a body that fails (an aborted response) is an `Err`.
    pub async fn try_request(
        &self,
        name: &str,
        req: Request<Full<Bytes>>,
    ) -> Result<Response<Bytes>, String> {
        let tls = self
            .tls(name, &[b"http/1.1"])
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Response::from_parts(parts, body))
    }

    /// A plain-HTTP GET on the mirror listener.
    pub async fn mirror_get(&self, path: &str, headers: &[(&str, &str)]) -> Response<Bytes> {
        let tcp = TcpStream::connect(self.http.expect("[http] listen configured"))
            .await
            .unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let resp = sender
            .send_request(build("GET", "appliance", path, headers, Bytes::new()))
            .await;
        let (parts, body) = resp.expect("response").into_parts();
        let body = body.collect().await.expect("whole body").to_bytes();
        Response::from_parts(parts, body)
    }

    /// GET `path` from registry `name` with extra headers.
    pub async fn get(&self, name: &str, path: &str, headers: &[(&str, &str)]) -> Response<Bytes> {
        self.request(name, build("GET", name, path, headers, Bytes::new()))
            .await
    }

    pub fn state_dir(&self) -> PathBuf {
        self.state.path().to_owned()
    }
}

pub fn build(
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Request<Full<Bytes>> {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
        .header("user-agent", "regcache-test/1");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(Full::new(body)).unwrap()
}

pub async fn tls_connect(
    addr: SocketAddr,
    ca_pem: &str,
    name: &str,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    let server_name = ServerName::try_from(name.to_owned()).unwrap();
    connector.connect(server_name, tcp).await
}

/// Hex of SHA-256.
/// `[[registry]]` keys for the fake registry's user alice, her password in a file under `dir`.
pub fn alice_keys(dir: &std::path::Path) -> String {
    let pw = dir.join("password");
    std::fs::write(&pw, b"s3cret\n").unwrap();
    format!(
        "username = \"alice\"\npassword_file = {:?}",
        pw.display().to_string()
    )
}

/// The body of a GET of `path` on the admin listener (HTTP/1.1, connection closed).
pub async fn admin_get(admin: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = TcpStream::connect(admin).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    out.split_once("\r\n\r\n").unwrap().1.to_owned()
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The appliance between a fake upstream registry (`registry-1.docker.io` → registry.test, with a
/// `docker.io` alias; `ghcr.io` → a closed port) and a fake upstream resolver.
pub struct World {
    pub app: Appliance,
    pub registry: registry::Registry,
    pub resolver: dns::Upstream,
    /// The appliance's `[dns]` keys and the rest of its config, to start a second one like it.
    pub dns_keys: String,
    pub toml: String,
    _extra_ca: tempfile::NamedTempFile,
}

impl World {
    pub async fn start() -> Self {
        Self::start_with("").await
    }

    /// With a shared tier over `store`.
    pub async fn start_shared(store: Arc<dyn object_store::ObjectStore>) -> Self {
        Self::start_fixture("", |_| String::new(), 0, Some(store))
            .await
            .0
    }

    /// `extra` is appended to the config (e.g. an `[access]` table).
    pub async fn start_with(extra: &str) -> Self {
        Self::start_full(extra, "").await
    }

    /// The appliance CA's SHA-256 fingerprint as `AB:CD:…`.
    pub fn app_fingerprint(&self) -> String {
        use rustls::pki_types::pem::PemObject;
        let der = CertificateDer::from_pem_slice(self.app.ca_pem.as_bytes()).unwrap();
        let hex = sha256_hex(der.as_ref()).to_uppercase();
        let pairs: Vec<&str> = (0..hex.len()).step_by(2).map(|i| &hex[i..i + 2]).collect();
        pairs.join(":")
    }

    /// Also `hub_keys`, added to the Docker Hub `[[registry]]` table (e.g. credentials).
    pub async fn start_full(extra: &str, hub_keys: &str) -> Self {
        Self::start_fixture(extra, |_| hub_keys.to_owned(), 0, None)
            .await
            .0
    }

    /// With a second fake registry (same names and content, another port) to act as a mirror:
    /// `hub_keys` gets its port.
    pub async fn start_mirrored(
        extra: &str,
        hub_keys: impl FnOnce(u16) -> String,
    ) -> (Self, registry::Registry) {
        let (world, mut mirrors) = Self::start_fixture(extra, |p| hub_keys(p[0]), 1, None).await;
        (world, mirrors.remove(0))
    }

    /// With one mirror and a shared tier over `store`.
    pub async fn start_mirrored_shared(
        hub_keys: impl FnOnce(u16) -> String,
        store: Arc<dyn object_store::ObjectStore>,
    ) -> (Self, registry::Registry) {
        let (world, mut mirrors) =
            Self::start_fixture("", |p| hub_keys(p[0]), 1, Some(store)).await;
        (world, mirrors.remove(0))
    }

    /// With two mirrors (fake registries like the first): `hub_keys` gets their ports.
    pub async fn start_two_mirrors(
        extra: &str,
        hub_keys: impl FnOnce(u16, u16) -> String,
    ) -> (Self, registry::Registry, registry::Registry) {
        let (world, mut m) = Self::start_fixture(extra, |p| hub_keys(p[0], p[1]), 2, None).await;
        let second = m.remove(1);
        (world, m.remove(0), second)
    }

    async fn start_fixture(
        extra: &str,
        hub_keys: impl FnOnce(&[u16]) -> String,
        mirrors: usize,
        store: Option<Arc<dyn object_store::ObjectStore>>,
    ) -> (Self, Vec<registry::Registry>) {
        let (pki, ca_file) = upstream_pki();
        let registry = registry::Registry::start(&pki).await;
        let mut mirror = Vec::new();
        for _ in 0..mirrors {
            mirror.push(registry::Registry::start(&pki).await);
        }
        let hub_keys = hub_keys(&mirror.iter().map(|m| m.addr.port()).collect::<Vec<_>>());
        let resolver = dns::Upstream::start().await;
        let dns_keys = dns_keys(&resolver);
        let toml = hub_toml(&ca_file, registry.addr.port(), extra, &hub_keys);
        let app = Appliance::start_with_store(&dns_keys, &toml, store).await;
        let world = Self {
            app,
            registry,
            resolver,
            dns_keys,
            toml,
            _extra_ca: ca_file,
        };
        (world, mirror)
    }
}

/// The "public" PKI of the fake upstream's names, and its CA in a file (for `extra_ca`).
pub fn upstream_pki() -> (Pki, tempfile::NamedTempFile) {
    let mut names = vec!["registry.test", "cdn.test", "auth.test"];
    names.extend(registry::ODD_HOSTS);
    let pki = Pki::new(&names);
    let mut ca_file = tempfile::NamedTempFile::new().unwrap();
    ca_file.write_all(pki.ca_pem.as_bytes()).unwrap();
    (pki, ca_file)
}

/// The `[dns]` keys of an appliance that answers 10.9.8.7 and asks `resolver`.
pub fn dns_keys(resolver: &dns::Upstream) -> String {
    format!(
        "answer_ipv4 = [\"10.9.8.7\"]\nupstream = [\"{}\"]",
        resolver.addr
    )
}

/// The config of an appliance in front of the fake registry on `port` (whose CA is in
/// `ca_file`): `extra` before the registries, `hub_keys` in Docker Hub's table.
pub fn hub_toml(
    ca_file: &tempfile::NamedTempFile,
    port: u16,
    extra: &str,
    hub_keys: &str,
) -> String {
    format!(
            "[upstream]\nextra_ca = [{ca:?}]\n{extra}\n\
             [[registry]]\nhost = \"registry-1.docker.io\"\naliases = [\"docker.io\", \"*.mirror.test\"]\n\
             upstream = \"https://registry.test:{port}\"\n{hub_keys}\n\
             [[registry]]\nhost = \"ghcr.io\"\nupstream = \"https://registry.test:1\"\n\
             [[registry]]\nhost = \"registry.k8s.io\"\nupstream = \"https://k8s.test:{port}\"\n\
             [[registry]]\nhost = \"quay.io\"\nupstream = \"https://sso.test:{port}\"\n",
            ca = ca_file.path().display().to_string(),
    )
}
