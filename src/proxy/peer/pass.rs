//! A GET by digest that this appliance passes through uncached ([`Claim::Bypass`]: its fill
//! caps are reached, or caching is paused), asked of the object's owner rather than of the
//! upstream, so that a rollout past the caps still costs one upstream fetch for the fleet. The
//! owner's answer is relayed with no local fill; its bytes are checked against the digest as
//! they pass (the last piece is held until they match: a client never gets a whole wrong body).
//!
//! [`Claim::Bypass`]: crate::cache::Claim::Bypass

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::TryStreamExt;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tracing::warn;

use super::fill::{is_dead, is_refusal};
use super::{peer_headers, Fleet};
use crate::cache::{Digest, Hasher};
use crate::metrics::PeerResult;
use crate::proxy::request::Outbound;
use crate::proxy::response::relay;
use crate::proxy::{Body, BoxError, Proxy};

impl Proxy {
    /// The owner's answer for a GET of `digest` in `repo` that this appliance does not cache; `None`
    /// (the upstream, as before) with no fleet, when this appliance owns it, for a peer's
    /// request, or when the owner's answer is not usable.
    pub(in crate::proxy) async fn pass_via_owner(
        self: &Arc<Self>,
        out: &Outbound<'_>,
        repo: &str,
        digest: &Digest,
    ) -> Option<Response<Body>> {
        let fleet = self.fleet.clone().filter(|_| !out.from_peer)?;
        let owner = fleet.owners.owner(&digest.to_string()).to_owned();
        let path = out.url.strip_prefix(&out.route.upstream)?;
        if owner == fleet.owners.node {
            return None;
        }
        let headers = peer_headers(&out.headers, &fleet.owners.node);
        let resp = match fleet.link.get(&owner, &out.route.host, path, headers).await {
            Ok(resp) => resp,
            Err(e) => {
                warn!(%owner, error = %e, "the owner is unavailable: passed to the upstream");
                self.owner_failed(&fleet, &owner, true);
                return None;
            }
        };
        let result = match resp.status() {
            StatusCode::OK => PeerResult::Served,
            status if is_refusal(status) => {
                self.forget_if_refused(&out.cred, &out.route.host, repo, status);
                PeerResult::Refused
            }
            status => {
                warn!(%owner, %status, "the owner's answer is not usable: passed to the upstream");
                self.owner_failed(&fleet, &owner, is_dead(status));
                return None;
            }
        };
        self.metrics.peer_fetch(&owner, result);
        let resp = relay(resp, out.route, out.host);
        Some(resp.map(|body| checked(body, digest.clone(), fleet.timeout)))
    }

    /// The owner failed: counted, and when `dead` passed over for a while.
    fn owner_failed(&self, fleet: &Fleet, owner: &str, dead: bool) {
        if dead {
            fleet.owners.mark_dead(owner);
        }
        self.metrics.peer_fetch(owner, PeerResult::TakenOver);
    }
}

/// What [`checked`] reads and holds.
struct Check {
    body: Body,
    /// `None` once the body ended or failed.
    hasher: Option<Hasher>,
    held: Option<Bytes>,
    digest: Digest,
    idle: Duration,
}

/// `body`, each piece passed on once the next one came, the last once the whole hashes to
/// `digest`; an error instead when it does not, or when no byte comes for `idle`.
fn checked(body: Body, digest: Digest, idle: Duration) -> Body {
    let check = Check {
        body,
        hasher: Some(Hasher::new()),
        held: None,
        digest,
        idle,
    };
    let pieces = futures_util::stream::unfold(check, |mut c| async move {
        loop {
            let hasher = c.hasher.as_mut()?;
            let frame = match tokio::time::timeout(c.idle, c.body.frame()).await {
                Ok(Some(Ok(frame))) => frame,
                Ok(None) => {
                    let whole = c.hasher.take()?.finish() == c.digest;
                    return match whole {
                        true => c.held.take().map(|last| (Ok(last), c)),
                        false => Some((Err(BoxError::from("not the object's digest")), c)),
                    };
                }
                Ok(Some(Err(e))) => {
                    c.hasher = None;
                    return Some((Err(e), c));
                }
                Err(_) => {
                    c.hasher = None;
                    return Some((Err(BoxError::from("the owner stalled")), c));
                }
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            hasher.update(&data);
            if let Some(piece) = c.held.replace(data) {
                return Some((Ok(piece), c));
            }
        }
    });
    BodyExt::boxed_unsync(StreamBody::new(pieces.map_ok(Frame::data)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    fn body(data: &'static [u8]) -> Body {
        let full = Full::new(Bytes::from_static(data));
        full.map_err(|never| match never {}).boxed_unsync()
    }

    #[tokio::test]
    async fn the_bytes_pass_only_when_they_are_the_objects() {
        let idle = Duration::from_secs(5);
        let right = checked(body(b"object"), Digest::of(b"object"), idle);
        let got = right.collect().await.unwrap().to_bytes();
        assert_eq!(&got[..], b"object");
        let wrong = checked(body(b"forged"), Digest::of(b"object"), idle);
        assert!(wrong.collect().await.is_err(), "not the object: no end");
    }
}
