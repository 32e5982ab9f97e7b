//! The access log: one line per request in nginx's `main` format with the registry host last,
//! written when the response body ends (or is abandoned), so `$body_bytes_sent` is what was sent.

use std::io::Write;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{AUTHORIZATION, REFERER, USER_AGENT};
use http::{HeaderMap, Method, StatusCode, Uri, Version};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use time::OffsetDateTime;

use super::{Body, BoxError};

/// Where access-log lines go. Cloning shares the sink.
#[derive(Clone)]
pub struct AccessLog {
    /// std Mutex, never held across .await: one whole line is written under the lock.
    sink: Arc<Mutex<Box<dyn Write + Send>>>,
}

impl AccessLog {
    pub fn stdout() -> Self {
        Self::to_writer(Box::new(std::io::stdout()))
    }

    pub fn to_writer(writer: Box<dyn Write + Send>) -> Self {
        Self {
            sink: Arc::new(Mutex::new(writer)),
        }
    }

    fn write(&self, line: &str) {
        let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = writeln!(sink, "{line}").and_then(|()| sink.flush()) {
            tracing::warn!(error = %e, "cannot write the access log");
        }
    }
}

/// The request half of a log line, captured before the request is forwarded.
pub struct Entry {
    remote: IpAddr,
    user: String,
    time: OffsetDateTime,
    request: String,
    referer: String,
    user_agent: String,
    host: String,
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
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let header = |name| {
            headers
                .get(name)
                .map(|v: &http::HeaderValue| escape(&String::from_utf8_lossy(v.as_bytes())))
                .unwrap_or_else(|| "-".into())
        };
        Self {
            remote: remote.to_canonical(),
            user: basic_user(headers).map_or_else(|| "-".into(), |u| escape(&u)),
            time: OffsetDateTime::now_utc(),
            request: escape(&format!("{method} {path} {version:?}")),
            referer: header(REFERER),
            user_agent: header(USER_AGENT),
            host: escape(host),
        }
    }

    /// The full `main`-format line.
    pub fn line(&self, status: StatusCode, bytes: u64) -> String {
        const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
            "[day]/[month repr:short]/[year]:[hour]:[minute]:[second] +0000"
        );
        let time = self.time.format(FORMAT).unwrap_or_default();
        format!(
            "{} - {} [{time}] \"{}\" {} {bytes} \"{}\" \"{}\" \"{}\"",
            self.remote,
            self.user,
            self.request,
            status.as_u16(),
            self.referer,
            self.user_agent,
            self.host
        )
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
            self.log.write(&entry.line(self.status, self.bytes));
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

/// nginx-style escaping: `"`, `\`, control and non-ASCII bytes become `\xHH`.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            out.push_str(&format!("\\x{b:02X}"));
        } else {
            out.push(b as char);
        }
    }
    out
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
        assert!(line.starts_with("10.0.0.2 - alice ["), "{line}");
        assert!(line.contains("\"HEAD /v2/ HTTP/2.0\" 401 0"), "{line}");
        assert!(line.contains("evil\\x22agent"), "{line}");
        assert!(!line.contains("secret"));
    }
}
