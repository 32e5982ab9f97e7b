//! The upstream download behind a cache fill: it runs in its own task, independent of the client
//! that started it, writes into the store while every joined client reads the growing file, and
//! grants the client's credential only once the bytes are verified against the digest.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::oneshot;
use tokio::time::error::Elapsed;
use tokio::time::Instant;
use tracing::{info, warn};

use super::auth::Credential;
use super::confirm::{random_offset, Expect, Outage};
use super::upstream::redact;
use super::{Error, Proxy};
use crate::cache::FillWriter;

/// A download that no client has read for this long is stopped (clients that retry a pull come
/// back within seconds and join it again).
pub(super) const ABANDONED_AFTER: Duration = Duration::from_secs(30);
/// A download that yields no data for this long is abandoned.
pub(super) const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The upstream's bytes go into the fill in batches of up to this many (see [`Download::copy`]).
const BATCH: usize = 256 << 10;

/// What the download tells the client that started it, once the upstream has answered.
pub(super) enum Started {
    /// 200: the fill is streaming.
    Streaming,
    /// Anything else, or an object too large for the cache: relay it (a 401 with its challenge…).
    Relay(Response<Incoming>),
    Failed(Error),
    /// The upstream cannot answer (429, 5xx, unreachable) and the registry has mirrors: the
    /// fill, still waiting, goes back to the request to be tried there ([`super::fallback`]),
    /// with the upstream's answer to relay if no mirror serves.
    Fallback(Box<Fallback>),
}

/// The fill and the upstream's answer (or why there was none), for the mirrors.
pub(super) struct Fallback {
    pub writer: FillWriter,
    pub primary: Result<Response<Incoming>, Error>,
}

/// One object's download from the upstream into the store.
pub(super) struct Download {
    pub proxy: Arc<Proxy>,
    pub url: String,
    pub headers: HeaderMap,
    pub registry: String,
    pub repo: String,
    pub cred: Credential,
    /// The registry has mirrors to try when the upstream cannot answer.
    pub fallback: bool,
}

/// What the bytes showed as they went by: the evidence for the grant.
struct Seen {
    first: Option<u8>,
    written: u64,
    /// A byte at an offset the upstream cannot guess, for the public probe's evidence.
    at: Option<u64>,
    sample: Option<(u64, u8)>,
}

impl Started {
    fn fallback(writer: FillWriter, primary: Result<Response<Incoming>, Error>) -> Self {
        Self::Fallback(Box::new(Fallback { writer, primary }))
    }
}

impl Download {
    pub async fn run(self, writer: FillWriter, tx: oneshot::Sender<Started>) {
        let Some((resp, size, writer)) = self.open(writer, tx).await else {
            return;
        };
        let mut seen = Seen {
            first: None,
            written: 0,
            at: size.map(random_offset),
            sample: None,
        };
        let Some(writer) = self.copy(resp, writer, &mut seen).await else {
            return;
        };
        let digest = writer.fill().digest.clone();
        // The readers get the last bytes once the digest matched, before the commit's fsync.
        match writer.finish() {
            Ok(()) => {
                info!(%digest, registry = %self.registry, repo = %self.repo, "cached");
                self.proxy.share(&digest);
            }
            Err(e) => {
                warn!(%digest, url = %redact(&self.url), error = %e, "not cached");
                return;
            }
        }
        // Only now, with the bytes verified against the digest, is this a grant.
        let expect = Expect {
            digest: Some(digest),
            size: Some(seen.written),
            first: seen.first,
            sample: seen.sample,
        };
        let (cred, headers) = (&self.cred, &self.headers);
        (self.proxy).record_grant(
            cred,
            headers,
            &self.registry,
            &self.repo,
            &self.url,
            &expect,
        );
    }

    /// Sends the GET and tells the client what came back; the 200 and its length, when the
    /// download goes on into the store.
    async fn open(
        &self,
        writer: FillWriter,
        tx: oneshot::Sender<Started>,
    ) -> Option<(Response<Incoming>, Option<u64>, FillWriter)> {
        let fetched =
            (self.proxy.upstream).follow(&Method::GET, &self.url, identity(&self.headers));
        let resp = match fetched.await {
            Ok(resp) if self.fallback && Outage::of(&resp).is_some() => {
                let _ = tx.send(Started::fallback(writer, Ok(resp)));
                return None;
            }
            Ok(resp) => resp,
            Err(e) if self.fallback => {
                let _ = tx.send(Started::fallback(writer, Err(e)));
                return None;
            }
            Err(e) => {
                writer.fail(e.to_string());
                let _ = tx.send(Started::Failed(e));
                return None;
            }
        };
        if resp.status() != StatusCode::OK {
            let status = resp.status();
            (self.proxy).forget_if_refused(&self.cred, &self.registry, &self.repo, status);
            writer.decline();
            let _ = tx.send(Started::Relay(resp));
            return None;
        }
        let started = start_fill(&self.proxy, &resp, writer, &self.registry, &self.repo);
        let Some((writer, size)) = started else {
            let _ = tx.send(Started::Relay(resp));
            return None;
        };
        let _ = tx.send(Started::Streaming);
        Some((resp, size, writer))
    }

    /// Copies the body into the store; `None` (and the fill failed) when it cannot be completed.
    /// The upstream's frames (often 16 KiB) are gathered while more are ready, up to [`BATCH`]:
    /// one write, one hash update and one wake-up of the readers per batch, not per frame; a
    /// batch goes out as soon as the upstream makes the download wait.
    async fn copy(
        &self,
        resp: Response<Incoming>,
        mut writer: FillWriter,
        seen: &mut Seen,
    ) -> Option<FillWriter> {
        let mut body = resp.into_body();
        let mut batch = BytesMut::new();
        let mut alone_since: Option<Instant> = None;
        loop {
            if self.abandoned(&writer, &mut alone_since) {
                writer.fail("every client left".into());
                return None;
            }
            let ready = match batch.len() {
                0 | BATCH.. => None,
                _ => body.frame().now_or_never(),
            };
            let frame = match ready {
                Some(frame) => Ok(frame),
                None => {
                    if let Err(e) = put(&mut writer, &mut batch, seen).await {
                        writer.fail(e.to_string());
                        return None;
                    }
                    tokio::time::timeout(BODY_IDLE_TIMEOUT, body.frame()).await
                }
            };
            match self.data(frame) {
                Ok(Some(data)) => batch.extend_from_slice(&data),
                Ok(None) => break,
                Err(why) => {
                    writer.fail(why);
                    return None;
                }
            }
        }
        match put(&mut writer, &mut batch, seen).await {
            Ok(()) => Some(writer),
            Err(e) => {
                writer.fail(e.to_string());
                None
            }
        }
    }

    /// Whether every client left and none came back for [`ABANDONED_AFTER`]: the uplink is
    /// not spent for nobody.
    fn abandoned(&self, writer: &FillWriter, alone_since: &mut Option<Instant>) -> bool {
        match (writer.fill().readers(), *alone_since) {
            (0, None) => *alone_since = Some(Instant::now()),
            (0, Some(t)) if t.elapsed() > ABANDONED_AFTER => {
                info!(digest = %writer.fill().digest, "every client left the download: not cached");
                return true;
            }
            (0, Some(_)) => {}
            _ => *alone_since = None,
        }
        false
    }

    /// The data of the body's next frame (empty for a frame without data), `None` at its end;
    /// why the download cannot go on: a stalled upstream must not hold the fill (and every
    /// reader joined to it) forever.
    fn data(&self, frame: Result<Option<FrameResult>, Elapsed>) -> Result<Option<Bytes>, String> {
        match frame {
            Ok(Some(Ok(frame))) => Ok(Some(frame.into_data().unwrap_or_default())),
            Ok(None) => Ok(None),
            Ok(Some(Err(e))) => {
                warn!(url = %redact(&self.url), error = %e, "upstream body ended early: not cached");
                Err(format!("upstream body: {e}"))
            }
            Err(_) => {
                warn!(url = %redact(&self.url), "upstream body stalled: not cached");
                Err(format!(
                    "no data from the upstream for {BODY_IDLE_TIMEOUT:?}"
                ))
            }
        }
    }
}

type FrameResult = Result<hyper::body::Frame<Bytes>, hyper::Error>;

/// Writes the batch gathered so far into the fill (nothing for an empty one) and starts the next.
async fn put(
    writer: &mut FillWriter,
    batch: &mut BytesMut,
    seen: &mut Seen,
) -> Result<(), crate::cache::Error> {
    if batch.is_empty() {
        return Ok(());
    }
    // The fill keeps its newest bytes in memory a while, and a slice pins its whole buffer: a
    // batch under three quarters full (a slow upstream) gets a buffer of its own size, and the
    // large one is reused; a fuller batch is handed over whole.
    let data = match batch.len() < BATCH * 3 / 4 {
        true => {
            let data = Bytes::copy_from_slice(batch);
            batch.clear();
            data
        }
        // Room for the frame that takes it past BATCH, so that the next never grows by copying.
        false => std::mem::replace(batch, BytesMut::with_capacity(BATCH + (64 << 10))).freeze(),
    };
    seen.note(&data);
    writer.write_or_relay(data).await
}

impl Seen {
    fn note(&mut self, data: &[u8]) {
        self.first = self.first.or(data.first().copied());
        let span = self.written..self.written + data.len() as u64;
        if let Some(at) = self.at.filter(|at| span.contains(at)) {
            self.sample = Some((at, data[(at - self.written) as usize]));
        }
        self.written += data.len() as u64;
    }
}

/// Starts `writer` with the object's 200 `resp` (its length and type): the fill and the length;
/// `None` (the fill declined) when the object is larger than the cache can hold now, and the
/// client gets `resp` straight, uncached.
pub(super) fn start_fill(
    proxy: &Proxy,
    resp: &Response<Incoming>,
    mut writer: FillWriter,
    registry: &str,
    repo: &str,
) -> Option<(FillWriter, Option<u64>)> {
    let h = resp.headers();
    let size = (h.get(header::CONTENT_LENGTH)).and_then(|v| v.to_str().ok()?.parse().ok());
    let media_type = (h.get(header::CONTENT_TYPE))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    if size.is_some_and(|size| !writer.reserve(size)) {
        proxy.metrics.cache_fills_capped.inc();
        warn!(digest = %writer.fill().digest, ?size, "no room within cache.max_size: not cached");
        writer.decline();
        return None;
    }
    writer.start(size, &media_type, registry, repo);
    Some((writer, size))
}

/// The headers for a fetch that fills the cache: the bytes must be the object's own, not a
/// compressed transfer of them.
pub(super) fn identity(headers: &HeaderMap) -> HeaderMap {
    let mut headers = headers.clone();
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    headers
}
