//! Every listener refuses what it should, for IPv4 and IPv6 clients alike (`access.allow`), and
//! no client can hold a connection for free (`[limits]`): real sockets on 127.0.0.1 and [::1].
//!
//! IPv6 loopback is required: these tests fail, loudly, where `::1` cannot be bound.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_server::proto::op::{Message, ResponseCode};
use hickory_server::proto::rr::RecordType;
use regcache::proxy::access_log::AccessLog;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

use crate::support::dns::query;
use crate::support::{tls_connect, SharedBuf};

/// The registry name the test appliance serves (its upstream is a closed port: only whether the
/// appliance answers at all matters here).
const NAME: &str = "registry.test";

/// An appliance listening on both loopbacks (DNS, HTTPS, mirror) with one admin address.
struct Dual {
    dns: Vec<SocketAddr>,
    https: Vec<SocketAddr>,
    mirror: Vec<SocketAddr>,
    admin: SocketAddr,
    ca_pem: String,
    /// The config text, `{limits}` standing for the `[limits]` keys (for reloads).
    template: String,
    reloader: regcache::app::Reloader,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    _state: tempfile::TempDir,
}

impl Dual {
    /// `allow`: the `access.allow` list; `admin`: `admin.listen`; `limits`: the `[limits]` keys.
    async fn start(allow: &str, admin: &str, limits: &str) -> Self {
        assert_ipv6_loopback();
        let state = tempfile::tempdir().unwrap();
        let both = "[\"127.0.0.1:0\", \"[::1]:0\"]";
        let template = format!(
            "state_dir = {state:?}\n\
             [dns]\nlisten = {both}\nanswer_ipv4 = [\"10.9.8.7\"]\nupstream = [\"127.0.0.1:9\"]\n\
             [tls]\nlisten = {both}\n[http]\nlisten = {both}\n[admin]\nlisten = \"{admin}\"\n\
             [access]\nallow = {allow}\n[limits]\n{{limits}}\n\
             [[registry]]\nhost = \"{NAME}\"\nupstream = \"https://127.0.0.1:1\"\n",
            state = state.path().display().to_string(),
        );
        let config = parse(&template, limits);
        let log = AccessLog::to_writer(Box::new(SharedBuf::default()));
        let mut bound = regcache::app::build(config, log)
            .await
            .expect("appliance starts");
        let reloader = bound.reloader.take().expect("a reloader");
        let ca_pem = std::fs::read_to_string(state.path().join("certs/ca.crt")).unwrap();
        let shutdown = CancellationToken::new();
        Self {
            dns: bound.dns_addrs.clone(),
            https: bound.https_addrs.clone(),
            mirror: bound.http_addrs.clone(),
            admin: bound.admin_addr,
            ca_pem,
            template,
            reloader,
            shutdown: shutdown.clone(),
            task: tokio::spawn(regcache::app::run(bound, shutdown)),
            _state: state,
        }
    }

    /// Reloads the same configuration with other `[limits]` keys (what SIGHUP does).
    fn reload(&mut self, limits: &str) {
        let notes = (self.reloader)
            .apply(parse(&self.template, limits))
            .expect("reload applies");
        assert!(notes.is_empty(), "{notes:?}");
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("appliance stops within the grace period")
            .unwrap();
    }

    /// The address of `list` in the family of `v6`.
    fn pick(list: &[SocketAddr], v6: bool) -> SocketAddr {
        *list
            .iter()
            .find(|a| a.is_ipv6() == v6)
            .expect("one per family")
    }

    /// The admin's `/metrics` text (from an allowed client).
    async fn metrics(&self) -> String {
        let mut tcp = TcpStream::connect(self.admin).await.unwrap();
        let head = "GET /metrics HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n";
        tcp.write_all(head.as_bytes()).await.unwrap();
        let mut text = String::new();
        let read = tcp.read_to_string(&mut text);
        tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .expect("metrics answered")
            .unwrap();
        text
    }
}

fn parse(template: &str, limits: &str) -> regcache::config::Config {
    let text = template.replace("{limits}", limits);
    regcache::config::parse(&text, regcache::config::Source::Embedded)
        .unwrap_or_else(|e| panic!("test config invalid: {e}\n{text}"))
}

/// Fails the test (never skips it) when IPv6 loopback is not usable.
fn assert_ipv6_loopback() {
    std::net::UdpSocket::bind("[::1]:0").expect(
        "IPv6 loopback (::1) is needed for the listener tests: `ip -6 addr show lo` must list \
         ::1 (sysctl net.ipv6.conf.lo.disable_ipv6=0)",
    );
}

/// A UDP query for NAME from the loopback of `server`'s family; `None`: no answer within 1 s.
async fn udp_code(server: SocketAddr) -> Option<ResponseCode> {
    let local = if server.is_ipv6() {
        "[::1]:0"
    } else {
        "127.0.0.1:0"
    };
    let socket = UdpSocket::bind(local).await.unwrap();
    let packet = query(&format!("{NAME}."), RecordType::A, false);
    socket.send_to(&packet, server).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let got = tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut buf)).await;
    let n = got.ok()?.ok()?;
    Some(Message::from_vec(&buf[..n]).unwrap().metadata.response_code)
}

/// The same over TCP; `None`: closed or no answer within 2 s.
async fn tcp_code(server: SocketAddr) -> Option<ResponseCode> {
    let packet = query(&format!("{NAME}."), RecordType::A, false);
    let mut stream = TcpStream::connect(server).await.ok()?;
    stream.write_u16(packet.len() as u16).await.ok()?;
    stream.write_all(&packet).await.ok()?;
    let read = async {
        let len = stream.read_u16().await.ok()?;
        let mut buf = vec![0u8; len as usize];
        stream.read_exact(&mut buf).await.ok()?;
        Some(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(2), read)
        .await
        .ok()??;
    Some(Message::from_vec(&buf).unwrap().metadata.response_code)
}

/// Whether an HTTP/1.1 GET of `path` on a fresh plain connection gets a response (`false`: the
/// connection was closed without one).
async fn plain_http_answers(addr: SocketAddr, path: &str) -> bool {
    let Ok(mut tcp) = TcpStream::connect(addr).await else {
        return false;
    };
    let head = format!("GET {path} HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n");
    if tcp.write_all(head.as_bytes()).await.is_err() {
        return false;
    }
    let mut got = Vec::new();
    let read = tcp.read_to_end(&mut got);
    let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
    got.starts_with(b"HTTP/1.1 ")
}

/// Whether a TLS handshake for NAME completes and a GET gets a response.
async fn https_answers(app: &Dual, addr: SocketAddr) -> bool {
    let connect = tls_connect(addr, &app.ca_pem, NAME, &[b"http/1.1"]);
    let Ok(Ok(mut tls)) = tokio::time::timeout(Duration::from_secs(5), connect).await else {
        return false;
    };
    let head = format!("GET /v2/ HTTP/1.1\r\nhost: {NAME}\r\nconnection: close\r\n\r\n");
    if tls.write_all(head.as_bytes()).await.is_err() {
        return false;
    }
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut got)).await;
    got.starts_with(b"HTTP/1.1 ")
}

/// Asserts every listener serves the family `served_v6` and refuses the other one.
async fn assert_one_family(app: &Dual, served_v6: bool) {
    for v6 in [false, true] {
        let served = v6 == served_v6;
        let family = if v6 { "IPv6" } else { "IPv4" };
        let dns = Dual::pick(&app.dns, v6);
        let (udp, tcp) = (udp_code(dns).await, tcp_code(dns).await);
        if served {
            assert_eq!(udp, Some(ResponseCode::NoError), "{family} DNS over UDP");
            assert_eq!(tcp, Some(ResponseCode::NoError), "{family} DNS over TCP");
        } else {
            assert!(
                matches!(udp, None | Some(ResponseCode::Refused)),
                "{family} DNS over UDP must be refused, got {udp:?}"
            );
            assert!(
                matches!(tcp, None | Some(ResponseCode::Refused)),
                "{family} DNS over TCP must be refused, got {tcp:?}"
            );
        }
        let https = https_answers(app, Dual::pick(&app.https, v6)).await;
        assert_eq!(https, served, "{family} HTTPS served");
        let mirror = plain_http_answers(Dual::pick(&app.mirror, v6), "/v2/").await;
        assert_eq!(mirror, served, "{family} mirror served");
    }
    // The admin listener has one address, in the refused family.
    assert_eq!(app.admin.is_ipv6(), !served_v6);
    assert!(
        !plain_http_answers(app.admin, "/healthz").await,
        "admin must close a client of the refused family"
    );
}

#[tokio::test]
async fn an_ipv4_only_list_refuses_ipv6_clients_on_every_listener() {
    let app = Dual::start("[\"127.0.0.1/32\"]", "[::1]:0", "").await;
    assert_one_family(&app, false).await;
    app.stop().await;
}

#[tokio::test]
async fn an_ipv6_only_list_refuses_ipv4_clients_on_every_listener() {
    let app = Dual::start("[\"::1/128\"]", "127.0.0.1:0", "").await;
    assert_one_family(&app, true).await;
    app.stop().await;
}

/// Waits (at most `within`) for the peer to close `stream`, reading and discarding what comes;
/// returns how long it took.
async fn closed_within<S: AsyncReadExt + Unpin>(stream: &mut S, within: Duration) -> Duration {
    let started = Instant::now();
    let drain = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, drain)
        .await
        .unwrap_or_else(|_| panic!("the connection is still open after {within:?}"));
    started.elapsed()
}

const SHORT: &str = "first_byte_timeout = \"300ms\"\nidle_timeout = \"600ms\"\n\
                     header_read_timeout = \"10s\"\nh2_keepalive_interval = \"100ms\"\n";

#[tokio::test]
async fn a_silent_client_is_closed_after_the_first_byte_timeout() {
    let app = Dual::start("[]", "127.0.0.1:0", SHORT).await;
    for v6 in [false, true] {
        let mut mirror = TcpStream::connect(Dual::pick(&app.mirror, v6))
            .await
            .unwrap();
        let took = closed_within(&mut mirror, Duration::from_secs(5)).await;
        assert!(
            took >= Duration::from_millis(250),
            "mirror closed early: {took:?}"
        );

        let https = Dual::pick(&app.https, v6);
        let mut tls = tls_connect(https, &app.ca_pem, NAME, &[b"h2", b"http/1.1"])
            .await
            .expect("TLS handshake completes");
        let took = closed_within(&mut tls, Duration::from_secs(5)).await;
        assert!(
            took >= Duration::from_millis(250),
            "TLS closed early: {took:?}"
        );
    }
    let metrics = app.metrics().await;
    for listener in ["https", "mirror"] {
        let line = format!(
            "regcache_connections_expired_total{{listener=\"{listener}\",timeout=\"first_byte\"}} 2"
        );
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    app.stop().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let app = Dual::start("[]", "127.0.0.1:0", SHORT).await;
    for v6 in [false, true] {
        // HTTP/1.1 on the mirror: one request, then nothing.
        let mut tcp = TcpStream::connect(Dual::pick(&app.mirror, v6))
            .await
            .unwrap();
        tcp.write_all(b"GET /v2/ HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 "), "{:?}", &buf[..n]);
        let took = closed_within(&mut tcp, Duration::from_secs(5)).await;
        assert!(
            took >= Duration::from_millis(500),
            "h1 closed early: {took:?}"
        );

        // HTTP/2 over TLS, with keep-alive pings every 100 ms: they do not keep it open.
        let https = Dual::pick(&app.https, v6);
        let tls = tls_connect(https, &app.ca_pem, NAME, &[b"h2"])
            .await
            .unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .timer(hyper_util::rt::TokioTimer::new())
                .handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .unwrap();
        let conn = tokio::spawn(conn);
        let uri = format!("https://{NAME}/v2/");
        let req = http::Request::get(uri)
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.expect("an h2 response");
        let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
        let ended = Instant::now();
        tokio::time::timeout(Duration::from_secs(5), conn)
            .await
            .expect("the idle h2 connection is closed")
            .unwrap()
            .ok();
        let took = ended.elapsed();
        assert!(
            took >= Duration::from_millis(500),
            "h2 closed early: {took:?}"
        );
    }
    let metrics = app.metrics().await;
    for listener in ["https", "mirror"] {
        let line = format!(
            "regcache_connections_expired_total{{listener=\"{listener}\",timeout=\"idle\"}} 2"
        );
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    app.stop().await;
}

/// An HTTP/1.1 keep-alive connection on the mirror that has been served one request.
async fn served_mirror_connection(addr: SocketAddr) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /v2/ HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("served")
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 "), "{:?}", &buf[..n]);
    tcp
}

#[tokio::test]
async fn over_max_connections_the_idlest_connection_gives_way() {
    // (When every connection has a request in flight, the newcomer is closed instead:
    // `conn::tests::at_the_cap_the_idlest_gives_way_and_busy_ones_do_not`.)
    let limits = "max_connections = 2\nfirst_byte_timeout = \"10s\"\nidle_timeout = \"30s\"\n";
    let app = Dual::start("[]", "127.0.0.1:0", limits).await;
    // Two connections stalled in their TLS handshake, one per family: newcomers on either
    // listener are served, and the stalled ones close, oldest first (the cap is shared).
    let mut shaking = [
        TcpStream::connect(Dual::pick(&app.https, false))
            .await
            .unwrap(),
        TcpStream::connect(Dual::pick(&app.https, true))
            .await
            .unwrap(),
    ];
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut held = served_mirror_connection(Dual::pick(&app.mirror, false)).await;
    let took = closed_within(&mut shaking[0], Duration::from_secs(3)).await;
    assert!(
        took < Duration::from_secs(2),
        "the oldest stalled handshake gave way after {took:?}"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut second = served_mirror_connection(Dual::pick(&app.mirror, true)).await;
    let took = closed_within(&mut shaking[1], Duration::from_secs(3)).await;
    assert!(
        took < Duration::from_secs(2),
        "the other gave way after {took:?}"
    );
    // Two idle keep-alive connections: a newcomer is served, and the one idle longest closes.
    assert!(
        plain_http_answers(Dual::pick(&app.mirror, false), "/v2/").await,
        "newcomer served"
    );
    let took = closed_within(&mut held, Duration::from_secs(3)).await;
    assert!(
        took < Duration::from_secs(2),
        "the idlest closed after {took:?}"
    );
    second
        .write_all(b"GET /v2/ HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), second.read(&mut buf))
        .await
        .expect("second still served")
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 "));
    let metrics = app.metrics().await;
    for (listener, n) in [("https", 2), ("mirror", 1)] {
        let line = format!(
            "regcache_connections_expired_total{{listener=\"{listener}\",timeout=\"evicted\"}} {n}"
        );
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_slowloris_client_is_cut_off_by_the_header_timeout() {
    let limits = "first_byte_timeout = \"5s\"\nidle_timeout = \"30s\"\n\
                  header_read_timeout = \"500ms\"\n";
    let app = Dual::start("[]", "127.0.0.1:0", limits).await;
    for v6 in [false, true] {
        let tcp = TcpStream::connect(Dual::pick(&app.mirror, v6))
            .await
            .unwrap();
        let (mut read, mut write) = tcp.into_split();
        let started = Instant::now();
        // One header byte per 100 ms, for at most 10 s: a head that never ends.
        let dribble = tokio::spawn(async move {
            let head = b"GET /v2/ HTTP/1.1\r\nhost: a\r\nx-slow: ";
            let bytes = head.iter().chain(std::iter::repeat(&b'a')).take(100);
            for byte in bytes {
                if write.write_all(&[*byte]).await.is_err() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            false
        });
        let took = closed_within(&mut read, Duration::from_secs(5)).await;
        assert!(
            took >= Duration::from_millis(400),
            "cut too early: {took:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        let refused = tokio::time::timeout(Duration::from_secs(5), dribble)
            .await
            .expect("the writer notices")
            .unwrap();
        assert!(refused, "writes fail once the connection is cut");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_reload_changes_the_connection_cap_at_once() {
    let mut app = Dual::start("[]", "127.0.0.1:0", "").await;
    let mirror = Dual::pick(&app.mirror, false);
    let mut first = served_mirror_connection(mirror).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut second = served_mirror_connection(mirror).await;
    // Lowered to 1 with two open: the next newcomer makes the idlest give way at once.
    app.reload("max_connections = 1\n");
    assert!(plain_http_answers(mirror, "/v2/").await, "newcomer served");
    let took = closed_within(&mut first, Duration::from_secs(3)).await;
    assert!(took < Duration::from_secs(2), "closed after {took:?}");
    // Raised to 3: nobody else has to give way.
    app.reload("max_connections = 3\n");
    assert!(plain_http_answers(mirror, "/v2/").await, "served again");
    second
        .write_all(b"GET /v2/ HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), second.read(&mut buf))
        .await
        .expect("second still served")
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 "));
    app.stop().await;
}

#[tokio::test]
async fn the_admin_listener_at_its_cap_lets_the_idlest_connection_give_way() {
    let app = Dual::start("[]", "127.0.0.1:0", "").await;
    // Fill the admin listener with silent connections, oldest first.
    let mut silent = Vec::new();
    for _ in 0..regcache::admin::MAX_CONNECTIONS {
        silent.push(TcpStream::connect(app.admin).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A newcomer is served (the metrics scrape is one), and the oldest silent one closes.
    let metrics = app.metrics().await;
    let took = closed_within(&mut silent[0], Duration::from_secs(3)).await;
    assert!(
        took < Duration::from_secs(2),
        "the idlest gave way after {took:?}"
    );
    let line = "regcache_connections_expired_total{listener=\"admin\",timeout=\"evicted\"}";
    let after = app.metrics().await;
    assert!(after.contains(&format!("{line} ")), "{line} in\n{after}");
    assert!(metrics.contains("regcache_"), "the newcomer was served");
    // The others are still open: a request on the newest is answered.
    let newest = silent.last_mut().unwrap();
    newest
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), newest.read(&mut buf))
        .await
        .expect("the newest is still served")
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    app.stop().await;
}
