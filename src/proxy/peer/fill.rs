//! One object fetched from its owner into this appliance's fill, in its own task: the owner's
//! 200 starts the fill (this appliance's clients read it as it arrives; the digest is checked
//! at the end as for any fill); its 401, 403 and 404 (its upstream's word) are relayed; any
//! other answer, like no answer, sends the request to this appliance's own upstream. A body
//! that stops part-way is taken over: this appliance asks the upstream for the rest
//! (`Range: bytes=N-`) and goes on with the same fill; a 416 there (or N the known size) means
//! the owner had sent every byte, and the digest decides.

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{info, warn};

use super::Fleet;
use crate::cache::{Error as CacheError, FillState, FillWriter};
use crate::metrics::PeerResult;
use crate::proxy::auth::Credential;
use crate::proxy::download::{identity, start_fill, ABANDONED_AFTER, BODY_IDLE_TIMEOUT};
use crate::proxy::outcome::X_CACHE;
use crate::proxy::upstream::redact;
use crate::proxy::Proxy;

/// What the owner's answer means for the request that asked.
pub(super) enum Begun {
    /// The owner's 200: the fill is streaming.
    Streaming,
    /// The owner's answer for the client (its upstream's refusal, or an object too large for
    /// this cache, which goes to the client uncached).
    Relay(Response<Incoming>),
    /// No usable answer: the fill, untouched, for the upstream download.
    Upstream(FillWriter),
}

/// Why a copy stopped before the body's end.
enum Stop {
    /// The source failed (an error, a stall): another source may go on.
    Source(String),
    /// This side cannot go on (the store, every client gone).
    Local(String),
}

/// One object from the owner `owner`, for `registry`/`repo`.
pub(super) struct PeerFill {
    pub proxy: Arc<Proxy>,
    pub fleet: Arc<Fleet>,
    pub owner: String,
    /// The registry's name: SNI and Host for the owner.
    pub registry: String,
    pub repo: String,
    /// The request's path (and query) at the registry.
    pub path: String,
    /// What the owner is sent: the client's Authorization and Accept, `X-Regcache-Peer`.
    pub peer_headers: HeaderMap,
    /// The upstream URL and the client's headers, for a takeover.
    pub url: String,
    pub headers: HeaderMap,
    pub cred: Credential,
}

impl PeerFill {
    pub async fn run(self, writer: FillWriter, tx: oneshot::Sender<Begun>) {
        let Some((resp, mut writer)) = self.open(writer, tx).await else {
            return;
        };
        let mut at = 0;
        let timeout = self.fleet.timeout;
        // The owner stores what it served (and uploads it to the shared tier) unless its
        // answer says otherwise; then this appliance uploads it.
        let kept = owner_keeps(resp.headers());
        writer.set_from_peer(kept);
        match copy(resp.into_body(), &mut writer, 0, timeout, &mut at).await {
            Ok(()) => self.finish(writer, true, !kept),
            Err(Stop::Local(why)) => writer.fail(why),
            Err(Stop::Source(why)) => {
                warn!(owner = %self.owner, at, %why, digest = %writer.fill().digest, "the owner stopped: taking over from the upstream");
                self.failed(true);
                writer.set_from_peer(false);
                self.take_over(writer, at).await;
            }
        }
    }

    /// Asks the owner; the 200 and the started fill when the copy goes on.
    async fn open(
        &self,
        writer: FillWriter,
        tx: oneshot::Sender<Begun>,
    ) -> Option<(Response<Incoming>, FillWriter)> {
        let (owner, link) = (&self.owner, &self.fleet.link);
        let answer = link.get(owner, &self.registry, &self.path, self.peer_headers.clone());
        let (why, dead) = match answer.await {
            Ok(resp) if resp.status() == StatusCode::OK => return self.start(resp, writer, tx),
            Ok(resp) if is_refusal(resp.status()) => {
                let status = resp.status();
                info!(%owner, %status, path = %self.path, "the owner's answer, relayed");
                (self.proxy).forget_if_refused(&self.cred, &self.registry, &self.repo, status);
                self.proxy.metrics.peer_fetch(owner, PeerResult::Refused);
                writer.decline();
                let _ = tx.send(Begun::Relay(resp));
                return None;
            }
            // Its upstream's quota, its offline refusal, a config it does not share: the owner
            // is alive, but this appliance decides with its own upstream.
            Ok(resp) => (
                format!("answered {}", resp.status()),
                is_dead(resp.status()),
            ),
            Err(e) => (e.to_string(), true),
        };
        warn!(%owner, %why, "the owner's answer is not usable: fetching from the upstream");
        self.failed(dead);
        let _ = tx.send(Begun::Upstream(writer));
        None
    }

    /// The owner failed: counted, and when `dead` the next requests go to the next in rank for
    /// a while.
    fn failed(&self, dead: bool) {
        if dead {
            self.fleet.owners.mark_dead(&self.owner);
        }
        (self.proxy.metrics).peer_fetch(&self.owner, PeerResult::TakenOver);
    }

    /// Starts the fill with the owner's 200 (or relays it when the cache has no room for it).
    fn start(
        &self,
        resp: Response<Incoming>,
        writer: FillWriter,
        tx: oneshot::Sender<Begun>,
    ) -> Option<(Response<Incoming>, FillWriter)> {
        let started = start_fill(&self.proxy, &resp, writer, &self.registry, &self.repo);
        let Some((writer, _)) = started else {
            let _ = tx.send(Begun::Relay(resp));
            return None;
        };
        let _ = tx.send(Begun::Streaming);
        Some((resp, writer))
    }

    /// Verifies and commits the fill; `served` when the owner sent it all (a takeover was
    /// counted when it began), `share` when this appliance uploads it to the shared tier (the
    /// upstream's bytes after a takeover, or an object the owner did not keep).
    fn finish(&self, writer: FillWriter, served: bool, share: bool) {
        let digest = writer.fill().digest.clone();
        let (owner, registry, repo) = (&self.owner, &self.registry, &self.repo);
        match writer.finish() {
            Ok(()) => {
                if served {
                    (self.proxy.metrics).peer_fetch(owner, PeerResult::Served);
                }
                info!(%digest, %owner, %registry, %repo, served, "cached, from the owner");
                if share {
                    self.proxy.share(&digest);
                }
            }
            Err(e) => {
                warn!(%digest, %owner, error = %e, "not cached");
                let wrong = matches!(
                    e,
                    CacheError::DigestMismatch { .. } | CacheError::SizeMismatch { .. }
                );
                if served && wrong {
                    // Not the object: that owner is not asked for a while.
                    self.fleet.owners.mark_dead(owner);
                }
            }
        }
    }

    /// The rest of the object from the upstream, from byte `at`, into the same fill.
    async fn take_over(&self, mut writer: FillWriter, at: u64) {
        let size = match writer.fill().state() {
            FillState::Writing { size, .. } => size,
            _ => None,
        };
        let rest = match size == Some(at) {
            true => Some(Rest::Nothing),
            false => self.rest(at).await,
        };
        let (resp, skip) = match rest {
            Some(Rest::Body(resp, skip)) => (resp, skip),
            // The owner sent every byte before its body ended: the digest says if it is whole.
            Some(Rest::Nothing) => return self.finish(writer, false, true),
            None => return writer.fail("the owner stopped and the upstream did not go on".into()),
        };
        let mut written = at;
        let copied = copy(
            resp.into_body(),
            &mut writer,
            skip,
            BODY_IDLE_TIMEOUT,
            &mut written,
        );
        match copied.await {
            Ok(()) => self.finish(writer, false, true),
            Err(Stop::Source(why) | Stop::Local(why)) => writer.fail(why),
        }
    }

    /// Asks the upstream for the object from byte `at` (`Range: bytes=N-`): a 206 from there
    /// goes on, a 200 is read from its start with its first `at` bytes skipped (the digest
    /// covers them), a 416 says no byte is left; `None` when it does not go on.
    async fn rest(&self, at: u64) -> Option<Rest> {
        let mut headers = identity(&self.headers);
        headers.remove(header::IF_RANGE);
        let range = HeaderValue::try_from(format!("bytes={at}-")).expect("ASCII");
        headers.insert(header::RANGE, range);
        let resp = self.proxy.upstream.follow(&Method::GET, &self.url, headers);
        match resp.await {
            Ok(resp) if resp.status() == StatusCode::PARTIAL_CONTENT => {
                let start = range_start(resp.headers());
                (start == Some(at)).then_some(Rest::Body(resp, 0))
            }
            Ok(resp) if resp.status() == StatusCode::OK => Some(Rest::Body(resp, at)),
            Ok(resp) if resp.status() == StatusCode::RANGE_NOT_SATISFIABLE => Some(Rest::Nothing),
            Ok(resp) => {
                let status = resp.status();
                (self.proxy).forget_if_refused(&self.cred, &self.registry, &self.repo, status);
                warn!(url = %redact(&self.url), %status, "the upstream refused the takeover");
                None
            }
            Err(e) => {
                warn!(url = %redact(&self.url), error = %e, "the upstream failed the takeover");
                None
            }
        }
    }
}

/// What the upstream has for the rest of an object after byte N.
enum Rest {
    /// A body to copy, its first `skip` bytes left out.
    Body(Response<Incoming>, u64),
    /// Nothing: the object ends at N.
    Nothing,
}

/// Whether the owner's answer says that it stores the object (and so uploads it to the shared
/// tier, or read it from there): its `X-Cache` for a hit, a fill it leads or joins, or one from
/// the shared tier. A relayed answer (a pass-through, an object too large for its cache) has
/// none: the owner keeps nothing.
fn owner_keeps(headers: &HeaderMap) -> bool {
    let outcome = headers.get(X_CACHE).and_then(|v| v.to_str().ok());
    matches!(outcome, Some("HIT" | "MISS" | "JOIN" | "SHARED" | "STALE"))
}

/// The owner's answers that are its upstream's word on this client and object, relayed as the
/// answer: its refusals (401, 403) and the object's absence (404). Anything else (a 429 of its
/// quota, a 5xx, a 421 of a config that drifted) is the owner's own trouble.
pub(super) fn is_refusal(status: StatusCode) -> bool {
    matches!(status.as_u16(), 401 | 403 | 404)
}

/// Whether an unusable answer means the owner should not be asked for a while: its 5xx (a
/// 429 is a quota that passes, another 4xx a disagreement about this one request).
pub(super) fn is_dead(status: StatusCode) -> bool {
    status.is_server_error()
}

/// Where a 206's `Content-Range: bytes START-END/TOTAL` starts.
fn range_start(headers: &HeaderMap) -> Option<u64> {
    let value = headers.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let range = value.trim().strip_prefix("bytes ")?;
    range.split('-').next()?.trim().parse().ok()
}

/// Writes `body` into the fill, its first `skip` bytes left out; `at` counts what was written.
async fn copy(
    mut body: Incoming,
    writer: &mut FillWriter,
    mut skip: u64,
    idle: Duration,
    at: &mut u64,
) -> Result<(), Stop> {
    let mut alone_since: Option<Instant> = None;
    loop {
        // Every client left and none came back: no more bytes for nobody.
        match (writer.fill().readers(), alone_since) {
            (0, None) => alone_since = Some(Instant::now()),
            (0, Some(t)) if t.elapsed() > ABANDONED_AFTER => {
                return Err(Stop::Local("every client left".into()));
            }
            (0, Some(_)) => {}
            _ => alone_since = None,
        }
        let mut data = match tokio::time::timeout(idle, body.frame()).await {
            Ok(None) => return Ok(()),
            Ok(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
            Ok(Some(Err(e))) => return Err(Stop::Source(format!("body: {e}"))),
            Err(_) => return Err(Stop::Source(format!("no data for {idle:?}"))),
        };
        let skipped = skip.min(data.len() as u64);
        (skip, data) = (skip - skipped, data.split_off(skipped as usize));
        if data.is_empty() {
            continue;
        }
        let len = data.len() as u64;
        if let Err(e) = writer.write_or_relay(data).await {
            return Err(Stop::Local(e.to_string()));
        }
        *at += len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_upstreams_word_is_relayed_and_only_a_5xx_passes_the_owner_over() {
        for (code, relayed, dead) in [
            (401, true, false),
            (403, true, false),
            (404, true, false),
            (408, false, false),
            (421, false, false),
            (429, false, false),
            (502, false, true),
            (503, false, true),
        ] {
            let status = StatusCode::from_u16(code).unwrap();
            assert_eq!(
                (is_refusal(status), is_dead(status)),
                (relayed, dead),
                "{code}"
            );
        }
    }

    #[test]
    fn the_owner_keeps_what_it_stores_not_what_it_passes_through() {
        let mut headers = HeaderMap::new();
        assert!(!owner_keeps(&headers), "a relayed answer");
        for (outcome, kept) in [
            ("MISS", true),
            ("HIT", true),
            ("JOIN", true),
            ("BYPASS", false),
        ] {
            headers.insert(X_CACHE, HeaderValue::from_static(outcome));
            assert_eq!(owner_keeps(&headers), kept, "{outcome}");
        }
    }
}
