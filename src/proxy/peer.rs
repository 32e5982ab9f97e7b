//! The fleet: several appliances that act as one cache, so that concurrent cold requests for
//! one object, arriving at different appliances, cause one upstream fetch (`[fleet]`).
//!
//! # The design, and why
//! Each object by digest has an **owner**: the rendezvous (highest-random-weight) hash of
//! (peer, digest) over `fleet.peers` (`peer/rank.rs`). Every appliance computes the same owner
//! from the same list, with no messages and no consensus. An appliance that is not the owner
//! forwards a cold GET by digest (a [`Claim::Lead`](crate::cache::Claim), after a shared-tier
//! miss) to the owner over TLS (`peer/link.rs`), as the client sent it (same path, its
//! Authorization and Accept) plus `X-Regcache-Peer: <node>`. The owner serves it as any
//! client's request: its own authorization, its coalescing of concurrent requests into one
//! upstream fetch, its growing fill streamed as it arrives. Its 200 streams into this
//! appliance's own fill (`peer/fill.rs`), so that this appliance's clients read the bytes as
//! they arrive and its local cache fills; the digest is checked at the end as for any fill.
//!
//! The alternative the storage offers, a lease created with a conditional PUT (`If-None-Match:
//! *`), does not hold on every store sites run: Garage 2.5 ignores that header, so two
//! appliances could both "win" the lease. A deterministic owner needs nothing from the store,
//! and it lets the others stream the owner's fill while it grows instead of waiting for an
//! upload to complete.
//!
//! # Failure
//! The owner unreachable, silent for `fleet.peer_timeout`, or answering 5xx: this appliance
//! marks it dead for a short while ([`rank::DEAD_FOR`]; the next requests go to the next in
//! rank) and fetches from the upstream itself. Any other answer but a 200, 401, 403 or 404 (a
//! 429 of the owner's upstream quota, a 421 of a config that drifted) sends this one request
//! to the upstream too, without passing the owner over. An owner whose upstream cannot answer
//! never serves a peer's client on its offline rule (it answers 503): this appliance asks its
//! own upstream, and its own offline rule applies if that is down too. A body that stops
//! part-way is taken over from the upstream with `Range: bytes=N-` from the N bytes already
//! received (a 206 goes on; a 200 is read again from its start, the first N bytes skipped; a
//! 416 means every byte had come), in the same fill, so that the clients already reading
//! never notice.
//!
//! # Past the fill caps
//! A GET by digest this appliance does not cache (`limits.max_fills_per_registry` reached,
//! caching paused) is asked of the owner too, and its answer relayed with no local fill
//! (`peer/pass.rs`), so that a rollout past the caps still costs one upstream fetch.
//!
//! # What the link never does
//! - Widen who is served: the owner decides with the client's own credentials (its upstream's
//!   401/403/404 is relayed to the client as the answer), this appliance serves a peer's bytes
//!   only checked against the digest (through a fill, or a relay that holds the last piece
//!   until they match), and records no grant from them
//!   (its own later requests are checked with the upstream as always).
//! - Loop: the owner never forwards a request that carries `X-Regcache-Peer`, and that header
//!   never goes to an upstream.
//! - Pass an appliance's access rules: each peer connects to the owner's HTTPS listener like a
//!   client, so every appliance's `access.allow` must admit the other appliances' addresses.
//!
//! A fill that came from a peer is marked ([`FillWriter::set_from_peer`]): the owner uploads the
//! object to the shared tier, not every appliance that streamed it. When the owner's `X-Cache`
//! says it kept nothing (it passed the object through, or it was too large for its cache),
//! this appliance uploads it.

mod fill;
mod link;
mod pass;
mod rank;

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::Response;
use rustls::crypto::CryptoProvider;
use tokio::sync::oneshot;

use super::outcome::CacheOutcome;
use super::request::Outbound;
use super::response::{relay, serve_fill};
use super::{Body, Error, Proxy};
use crate::cache::FillWriter;
use crate::config::FleetConfig;
use fill::{Begun, PeerFill};
use link::Link;
use rank::Owners;

pub use link::LinkError;

/// The header that marks a request from another appliance of the fleet (its `fleet.node`).
pub const PEER_HEADER: &str = "x-regcache-peer";

/// The client's headers the owner is sent (besides Host and `X-Regcache-Peer`).
const SENT: &[header::HeaderName] = &[header::AUTHORIZATION, header::ACCEPT, header::USER_AGENT];

/// The other appliances, and how to reach them.
pub struct Fleet {
    owners: Owners,
    link: Link,
    timeout: Duration,
}

impl Fleet {
    /// The fleet of `config` (`None` when it has no peers), its links trusting only `ca_pem`.
    pub fn new(
        config: &FleetConfig,
        ca_pem: &str,
        provider: Arc<CryptoProvider>,
    ) -> Result<Option<Self>, LinkError> {
        if !config.enabled() {
            return Ok(None);
        }
        Ok(Some(Self {
            owners: Owners::new(config.peers.clone(), config.node.clone()),
            link: Link::new(ca_pem, provider, config.peer_timeout)?,
            timeout: config.peer_timeout,
        }))
    }
}

/// The owner of `digest` among `peers` when none is dead: the first in rendezvous rank.
pub fn owner_of<'a>(peers: &'a [String], digest: &str) -> Option<&'a str> {
    rank::rank(peers, digest).first().copied()
}

/// What the owner peer made of a cold request.
pub(super) enum Owner {
    /// The answer for the client (the owner's stream, or its refusal).
    Answered(Result<Response<Body>, Error>),
    /// No fleet, this appliance owns the object, or the owner failed: the upstream download.
    Upstream(FillWriter),
}

impl Proxy {
    /// Forwards a cold GET by digest to the object's owner when that is another appliance.
    pub(super) async fn via_owner(
        self: &Arc<Self>,
        out: &Outbound<'_>,
        repo: &str,
        writer: FillWriter,
    ) -> Owner {
        let fleet = self.fleet.clone();
        // A request from a peer is never forwarded again.
        let (Some(fleet), false) = (fleet, out.from_peer) else {
            return Owner::Upstream(writer);
        };
        let owner = fleet
            .owners
            .owner(&writer.fill().digest.to_string())
            .to_owned();
        let path = out.url.strip_prefix(&out.route.upstream).map(str::to_owned);
        let (Some(path), false) = (path, owner == fleet.owners.node) else {
            return Owner::Upstream(writer);
        };
        let fill = writer.fill().clone();
        // Started before the fill: a body that outgrows the cache is relayed to it.
        let body = fill.clone().stream();
        let peer_headers = peer_headers(&out.headers, &fleet.owners.node);
        let task = PeerFill {
            proxy: self.clone(),
            fleet,
            owner,
            registry: out.route.host.clone(),
            repo: repo.to_owned(),
            path,
            peer_headers,
            url: out.url.clone(),
            headers: out.headers.clone(),
            cred: out.cred.clone(),
        };
        let (tx, rx) = oneshot::channel();
        tokio::spawn(task.run(writer, tx));
        Owner::Answered(match rx.await {
            Ok(Begun::Streaming) => Ok(serve_fill(fill, body, CacheOutcome::Peer)),
            Ok(Begun::Relay(resp)) => Ok(relay(resp, out.route, out.host)),
            Ok(Begun::Upstream(writer)) => return Owner::Upstream(writer),
            Err(_) => Err(Error::Unavailable("the peer fetch ended early".into())),
        })
    }
}

/// The headers for the owner: the client's that decide what it may read and in which form,
/// the identity encoding (the bytes must be the object's own), and who asks.
fn peer_headers(client: &HeaderMap, node: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for name in SENT {
        for value in client.get_all(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    let identity = HeaderValue::from_static("identity");
    headers.insert(header::ACCEPT_ENCODING, identity);
    if let Ok(node) = HeaderValue::try_from(node) {
        headers.insert(PEER_HEADER, node);
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fleet_needs_peers_and_a_ca_to_trust() {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let none = Fleet::new(&FleetConfig::default(), "", provider.clone());
        assert!(none.unwrap().is_none(), "no peers: no fleet");
        let config = FleetConfig {
            peers: vec!["10.0.0.1:443".into(), "10.0.0.2:443".into()],
            node: "10.0.0.1:443".into(),
            ..FleetConfig::default()
        };
        let no_ca = Fleet::new(&config, "not a certificate", provider.clone());
        assert!(matches!(no_ca, Err(LinkError::Ca(_))));
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        let pem = ca.self_signed(&key).unwrap().pem();
        let fleet = Fleet::new(&config, &pem, provider).unwrap().unwrap();
        assert_eq!(fleet.owners.node, "10.0.0.1:443");
        assert_eq!(fleet.timeout, config.peer_timeout);
    }

    #[test]
    fn the_owner_gets_the_clients_credentials_and_who_asks_nothing_else() {
        let mut client = HeaderMap::new();
        client.insert(header::AUTHORIZATION, "Bearer t".parse().unwrap());
        client.append(header::ACCEPT, "a/b".parse().unwrap());
        client.append(header::ACCEPT, "c/d".parse().unwrap());
        client.insert(header::COOKIE, "x=1".parse().unwrap());
        client.insert(header::RANGE, "bytes=0-1".parse().unwrap());
        let h = peer_headers(&client, "10.0.0.1:443");
        assert_eq!(h[header::AUTHORIZATION], "Bearer t");
        assert_eq!(h.get_all(header::ACCEPT).iter().count(), 2);
        assert_eq!(h[PEER_HEADER], "10.0.0.1:443");
        assert_eq!(h[header::ACCEPT_ENCODING], "identity");
        assert!(!h.contains_key(header::COOKIE) && !h.contains_key(header::RANGE));
    }
}
