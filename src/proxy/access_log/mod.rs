//! The access log: one line per request in nginx's `main` format with the registry host last (or
//! JSON with the same fields and more),
//! made when the response body ends (or is abandoned), so `$body_bytes_sent` is what was sent,
//! formatted straight into the buffer of [`AccessLog`] (`sink.rs`), which writes it out within
//! [`FLUSH_DELAY`].

use std::io::Write;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{AUTHORIZATION, REFERER, USER_AGENT};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, Version};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use time::OffsetDateTime;

mod sink;

pub use sink::{AccessLog, FLUSH_DELAY};

use super::outcome::CacheOutcome;
use super::{Body, BoxError};

/// The request half of a log line, captured before the request is forwarded (raw values, most
/// of them shared with the request rather than copied; each format escapes them its own way).
pub struct Entry {
    remote: IpAddr,
    user: Option<String>,
    time: OffsetDateTime,
    started: std::time::Instant,
    method: Method,
    uri: Uri,
    version: Version,
    referer: Option<HeaderValue>,
    user_agent: Option<HeaderValue>,
    host: String,
    /// What the cache did, once the response head is known.
    cache: Option<CacheOutcome>,
    /// Seconds until the upstream's response head, for responses that came from upstream.
    upstream_time: Option<f64>,
}

impl Entry {
    pub fn new(
        remote: IpAddr,
        method: &Method,
        uri: &Uri,
        version: Version,
        headers: &HeaderMap,
        host: &str,
    ) -> Self {
        Self {
            remote: remote.to_canonical(),
            user: basic_user(headers),
            time: OffsetDateTime::now_utc(),
            started: std::time::Instant::now(),
            method: method.clone(),
            uri: uri.clone(),
            version,
            referer: headers.get(REFERER).cloned(),
            user_agent: headers.get(USER_AGENT).cloned(),
            host: host.to_owned(),
            cache: None,
            upstream_time: None,
        }
    }

    /// What the response head said: the cache outcome, and whether it came from upstream.
    pub fn response(&mut self, cache: Option<CacheOutcome>, from_upstream: bool) {
        self.cache = cache;
        if from_upstream {
            self.upstream_time = Some(self.started.elapsed().as_secs_f64());
        }
    }

    fn path(&self) -> &str {
        self.uri.path_and_query().map_or("/", |p| p.as_str())
    }

    fn protocol(&self) -> &'static str {
        match self.version {
            Version::HTTP_09 => "HTTP/0.9",
            Version::HTTP_10 => "HTTP/1.0",
            Version::HTTP_11 => "HTTP/1.1",
            Version::HTTP_2 => "HTTP/2.0",
            Version::HTTP_3 => "HTTP/3.0",
            _ => "HTTP/?",
        }
    }

    /// The full `main`-format line.
    pub fn line(&self, status: StatusCode, bytes: u64) -> String {
        let mut out = Vec::with_capacity(256);
        self.write_line(&mut out, status, bytes);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Appends the `main`-format line (without its newline) to `out`, allocating nothing else.
    fn write_line(&self, out: &mut Vec<u8>, status: StatusCode, bytes: u64) {
        let dash = |out: &mut Vec<u8>, v: Option<&[u8]>| match v {
            Some(v) => escape_into(out, v),
            None => out.push(b'-'),
        };
        push_ip(out, self.remote);
        out.extend_from_slice(b" - ");
        dash(out, self.user.as_deref().map(str::as_bytes));
        out.extend_from_slice(b" [");
        push_time(out, self.time);
        out.extend_from_slice(b"] \"");
        escape_into(out, self.method.as_str().as_bytes());
        out.push(b' ');
        escape_into(out, self.path().as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.protocol().as_bytes());
        out.extend_from_slice(b"\" ");
        push_u64(out, u64::from(status.as_u16()));
        out.push(b' ');
        push_u64(out, bytes);
        out.extend_from_slice(b" \"");
        dash(out, self.referer.as_ref().map(HeaderValue::as_bytes));
        out.extend_from_slice(b"\" \"");
        dash(out, self.user_agent.as_ref().map(HeaderValue::as_bytes));
        out.extend_from_slice(b"\" \"");
        escape_into(out, self.host.as_bytes());
        out.push(b'"');
    }

    /// The same fields as one JSON object, plus cache status, request and upstream time.
    pub fn json(&self, status: StatusCode, bytes: u64) -> String {
        let time = (self.time)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let text = |v: &Option<HeaderValue>| {
            v.as_ref()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        let (method, uri, protocol) = (self.method.as_str(), self.path(), self.protocol());
        serde_json::json!({
            "time": time,
            "remote_addr": self.remote.to_string(),
            "remote_user": self.user,
            "request": format!("{method} {uri} {protocol}"),
            "method": method,
            "uri": uri,
            "protocol": protocol,
            "status": status.as_u16(),
            "body_bytes_sent": bytes,
            "http_referer": text(&self.referer),
            "http_user_agent": text(&self.user_agent),
            "host": self.host,
            "cache": self.cache.map(CacheOutcome::as_str),
            "request_time": self.started.elapsed().as_secs_f64(),
            "upstream_time": self.upstream_time,
        })
        .to_string()
    }
}

/// A response body that counts the bytes it yields and writes the log line when the last byte
/// has gone out (when the length is known), at the end of the stream, or when it is dropped
/// (an aborted response) — whichever comes first.
pub struct Logged {
    inner: Body,
    entry: Option<Entry>,
    status: StatusCode,
    bytes: u64,
    /// The exact length, when known: hyper stops polling a body after its last byte, so
    /// reaching it is the end.
    expected: Option<u64>,
    log: AccessLog,
    /// Called once with the status and the bytes sent (metrics, status page).
    done: Option<Done>,
}

/// What to do when a response has been sent: given the status and the body bytes sent.
pub type Done = Box<dyn FnOnce(StatusCode, u64) + Send>;

impl Logged {
    /// Wraps a response body; `length` is what the response declares (Content-Length, or 0 for
    /// a HEAD request), used when the body itself does not know its size.
    pub fn wrap(
        inner: Body,
        entry: Entry,
        status: StatusCode,
        length: Option<u64>,
        log: AccessLog,
        done: Done,
    ) -> Body {
        let expected = inner.size_hint().exact().or(length);
        let mut logged = Self {
            inner,
            entry: Some(entry),
            status,
            bytes: 0,
            expected,
            log,
            done: Some(done),
        };
        if logged.expected == Some(0) || logged.inner.is_end_stream() {
            logged.finish();
        }
        http_body_util::BodyExt::boxed_unsync(logged)
    }

    fn finish(&mut self) {
        if let Some(entry) = self.entry.take() {
            self.log.write(&entry, self.status, self.bytes);
        }
        if let Some(done) = self.done.take() {
            done(self.status, self.bytes);
        }
    }
}

impl HttpBody for Logged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
                if self.expected == Some(self.bytes) {
                    self.finish();
                }
            }
            Poll::Ready(None) => self.finish(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The user name of a Basic Authorization header (nginx's `$remote_user`).
fn basic_user(headers: &HeaderMap) -> Option<String> {
    use base64::Engine as _;
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = (base64::engine::general_purpose::STANDARD)
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let user = text.split(':').next()?;
    (!user.is_empty()).then(|| user.to_owned())
}

/// `n` in decimal, without the formatting machinery.
fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// The client's address: IPv4 by hand (nearly every line), IPv6 through `Display`.
fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_u64(out, u64::from(octet));
            }
        }
        // Writing into a Vec cannot fail.
        IpAddr::V6(v6) => drop(write!(out, "{v6}")),
    }
}

/// `02/Sep/2025:15:00:21 +0000`, formatted once per second per thread and copied after that.
fn push_time(out: &mut Vec<u8>, time: OffsetDateTime) {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[day]/[month repr:short]/[year]:[hour]:[minute]:[second] +0000"
    );
    thread_local! {
        static LAST: std::cell::RefCell<(i64, Vec<u8>)> = const { std::cell::RefCell::new((i64::MIN, Vec::new())) };
    }
    LAST.with_borrow_mut(|(second, text)| {
        if *second != time.unix_timestamp() {
            text.clear();
            if time.format_into(text, FORMAT).is_err() {
                text.clear();
            }
            *second = time.unix_timestamp();
        }
        out.extend_from_slice(text);
    });
}

/// nginx-style escaping onto `out`: `"`, `\\`, control and non-ASCII bytes become `\\xHH`.
fn escape_into(out: &mut Vec<u8>, s: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            out.extend_from_slice(&[
                b'\\',
                b'x',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 15)],
            ]);
        } else {
            out.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_matches_the_seed_format() {
        let mut headers = HeaderMap::new();
        headers.insert(USER_AGENT, "docker/25.0.3 go/go1.21.0".parse().unwrap());
        let mut entry = Entry::new(
            "172.17.0.1".parse().unwrap(),
            &Method::GET,
            &"/v2/library/ubuntu/manifests/22.04".parse().unwrap(),
            Version::HTTP_11,
            &headers,
            "registry-1.docker.io",
        );
        entry.time = time::macros::datetime!(2025-09-02 15:00:21 UTC);
        assert_eq!(
            entry.line(StatusCode::OK, 546),
            "172.17.0.1 - - [02/Sep/2025:15:00:21 +0000] \"GET /v2/library/ubuntu/manifests/22.04 \
             HTTP/1.1\" 200 546 \"-\" \"docker/25.0.3 go/go1.21.0\" \"registry-1.docker.io\""
        );
    }

    #[test]
    fn basic_user_and_escaping() {
        let mut headers = HeaderMap::new();
        // "alice:secret"
        headers.insert(AUTHORIZATION, "Basic YWxpY2U6c2VjcmV0".parse().unwrap());
        headers.insert(USER_AGENT, "evil\"agent".parse().unwrap());
        let entry = Entry::new(
            "::ffff:10.0.0.2".parse().unwrap(),
            &Method::HEAD,
            &"/v2/".parse().unwrap(),
            Version::HTTP_2,
            &headers,
            "ghcr.io",
        );
        let line = entry.line(StatusCode::UNAUTHORIZED, 0);
        let json: serde_json::Value =
            serde_json::from_str(&entry.json(StatusCode::UNAUTHORIZED, 0)).unwrap();
        assert_eq!(json["remote_user"], "alice");
        assert_eq!(json["http_user_agent"], "evil\"agent");
        assert_eq!(json["request"], "HEAD /v2/ HTTP/2.0");
        assert_eq!(json["status"], 401);
        assert!(json["cache"].is_null() && json["upstream_time"].is_null());
        assert!(line.starts_with("10.0.0.2 - alice ["), "{line}");
        assert!(line.contains("\"HEAD /v2/ HTTP/2.0\" 401 0"), "{line}");
        assert!(line.contains("evil\\x22agent"), "{line}");
        assert!(!line.contains("secret"));
    }

    #[test]
    fn numbers_addresses_and_times_written_by_hand_match_display() {
        for n in [0, 7, 10, 546, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
        for ip in [
            "0.0.0.0",
            "10.255.0.19",
            "255.255.255.255",
            "2001:db8::1",
            "::1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut out = Vec::new();
            push_ip(&mut out, ip);
            assert_eq!(out, ip.to_string().as_bytes());
        }
        // The per-second cache gives each second its own text.
        let mut out = Vec::new();
        push_time(&mut out, time::macros::datetime!(2025-09-02 15:00:21 UTC));
        push_time(&mut out, time::macros::datetime!(2025-09-02 15:00:22 UTC));
        assert_eq!(out, b"02/Sep/2025:15:00:21 +000002/Sep/2025:15:00:22 +0000");
    }
}
