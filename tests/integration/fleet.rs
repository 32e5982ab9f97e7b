//! `[fleet]`: appliances on loopback that share one CA and one fake upstream, each behind a TCP
//! relay that stands for its address in `fleet.peers` (cut to kill it as the others see it).
//! One upstream fetch across them, takeover with Range, refusals relayed, no forwarding loops.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use object_store::memory::InMemory;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt};
use regcache::cache::Digest;
use regcache::proxy::owner_of;

use crate::support::registry::{self, big, blob2, digest_of, lingering_blob, secret, TOKEN};
use crate::support::relay::Relay;
use crate::support::{
    admin_get, build, dns, dns_keys, hub_toml, sha256_hex, upstream_pki, Appliance, Pki,
};

const HUB: &str = "registry-1.docker.io";

/// Two or three appliances of one fleet in front of one fake upstream, each through a relay of
/// its own (`upstreams`, to cut or point elsewhere one appliance's upstream).
struct Fleet {
    apps: Vec<Arc<Appliance>>,
    relays: Vec<Relay>,
    upstreams: Vec<Relay>,
    peers: Vec<String>,
    registry: registry::Registry,
    pki: Pki,
    _resolver: dns::Upstream,
    _ca_file: tempfile::NamedTempFile,
}

/// More configuration for the appliance `node` of `peers` (`[cache]` and the like).
type Toml = Box<dyn Fn(&str, &[String]) -> String>;

/// What the appliances of a test fleet are started with, besides `[fleet]`.
#[derive(Default)]
struct Setup {
    toml: Option<Toml>,
    /// One shared tier for all.
    store: Option<Arc<dyn object_store::ObjectStore>>,
}

impl Fleet {
    /// `n` appliances with `fleet.peer_timeout` = `timeout` seconds (long where a test must not
    /// depend on the machine's load: a timeout would send a request upstream).
    async fn start(n: usize, timeout: u64) -> Self {
        Self::start_with(n, timeout, Setup::default()).await
    }

    async fn start_with(n: usize, timeout: u64, setup: Setup) -> Self {
        let (pki, ca_file) = upstream_pki();
        let registry = registry::Registry::start(&pki).await;
        let resolver = dns::Upstream::start().await;
        let (mut relays, mut upstreams) = (Vec::new(), Vec::new());
        for _ in 0..n {
            relays.push(Relay::bind().await);
            let upstream = Relay::bind().await;
            upstream.point_to(registry.addr);
            upstreams.push(upstream);
        }
        let peers: Vec<String> = relays.iter().map(|r| r.addr.to_string()).collect();
        let list: Vec<String> = peers.iter().map(|p| format!("{p:?}")).collect();
        let mut apps: Vec<Arc<Appliance>> = Vec::new();
        for (i, (relay, node)) in relays.iter().zip(&peers).enumerate() {
            let extra = (setup.toml.as_ref()).map_or(String::new(), |toml| toml(node, &peers));
            let fleet = format!(
                "[fleet]\npeers = [{}]\nnode = {node:?}\npeer_timeout = \"{timeout}s\"\n{extra}\n",
                list.join(", ")
            );
            let state = tempfile::tempdir().unwrap();
            if let Some(first) = apps.first() {
                share_ca(&first.state_dir(), state.path());
            }
            let toml = hub_toml(&ca_file, upstreams[i].addr.port(), &fleet, "");
            let keys = dns_keys(&resolver);
            let app = match setup.store.clone() {
                Some(store) => Appliance::start_in_with(state, &keys, &toml, Some(store)).await,
                None => Appliance::start_in(state, &keys, &toml).await,
            };
            relay.point_to(app.https);
            apps.push(Arc::new(app));
        }
        Self {
            apps,
            relays,
            upstreams,
            peers,
            registry,
            pki,
            _resolver: resolver,
            _ca_file: ca_file,
        }
    }

    /// The index of the appliance that owns `digest`.
    fn owner(&self, digest: &str) -> usize {
        let owner = regcache::proxy::owner_of(&self.peers, digest).unwrap();
        self.peers.iter().position(|p| p == owner).unwrap()
    }

    /// The path of a blob the upstream does not have, owned by appliance `owner`.
    fn missing_owned_by(&self, owner: usize) -> String {
        let owned = (0u32..)
            .map(|i| format!("sha256:{i:064x}"))
            .find(|d| self.owner(d) == owner)
            .unwrap();
        format!("/v2/library/small/blobs/{owned}")
    }

    /// Upstream GETs of `path` for the whole object (no Range).
    fn whole_gets(&self, path: &str) -> usize {
        let seen = self.registry.seen(path).into_iter();
        seen.filter(|s| s.method == "GET" && !s.headers.contains_key("range"))
            .count()
    }

    /// `regcache_peer_fetches_total` of appliance `i` for its fetches from `owner`.
    async fn peer_fetches(&self, i: usize, owner: usize, result: &str) -> usize {
        let text = admin_get(self.apps[i].admin, "/metrics").await;
        let series = format!(
            "regcache_peer_fetches_total{{peer=\"{}\",result=\"{result}\"}} ",
            self.peers[owner]
        );
        let line = text.lines().find(|l| l.starts_with(&series));
        line.map_or(0, |l| l[series.len()..].trim().parse().unwrap())
    }
}

/// Appliances that fill one object at a time (`limits.max_fills_per_registry = 1`).
fn one_fill_each() -> Setup {
    Setup {
        toml: Some(Box::new(|_, _| {
            "[limits]\nmax_fills_per_registry = 1".into()
        })),
        ..Setup::default()
    }
}

/// Copies `from`'s CA (`certs/`, the key's permissions kept) into the state dir `to`, as a
/// fleet shares one CA.
fn share_ca(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to.join("certs")).unwrap();
    for file in ["ca.crt", "ca.key"] {
        std::fs::copy(from.join("certs").join(file), to.join("certs").join(file)).unwrap();
    }
}

fn x_cache(resp: &http::Response<bytes::Bytes>) -> &str {
    resp.headers()
        .get("x-cache")
        .map_or("", |v| v.to_str().unwrap())
}

/// Waits (bounded) until `check` holds.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..100 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("not within 5 s: {what}");
}

#[tokio::test]
async fn concurrent_cold_gets_through_three_appliances_cause_one_upstream_fetch() {
    let f = Fleet::start(3, 30).await;
    let digest = digest_of(&big());
    let path = format!("/v2/library/big/blobs/{digest}");
    let owner = f.owner(&digest);
    // Three clients on each appliance, all at once.
    let gets: Vec<_> = (0..9)
        .map(|n| {
            let i = n % 3;
            let (app, path) = (f.apps[i].clone(), path.clone());
            tokio::spawn(async move { (i, app.get(HUB, &path, &[]).await) })
        })
        .collect();
    let mut kinds = Vec::new();
    for get in gets {
        let (i, resp) = get.await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(sha256_hex(resp.body()), sha256_hex(&big()));
        kinds.push((i, x_cache(&resp).to_owned()));
    }
    assert_eq!(f.whole_gets(&path), 1, "one upstream fetch: {kinds:?}");
    let d = regcache::cache::Digest::parse(&digest).unwrap();
    eventually("every appliance stores it", async || {
        f.apps.iter().all(|a| a.cache.contains(&d))
    })
    .await;
    for other in (0..3).filter(|i| *i != owner) {
        let peer = (other, "PEER".to_owned());
        assert!(
            kinds.contains(&peer),
            "{other} read the owner's fill: {kinds:?}"
        );
        assert_eq!(f.peer_fetches(other, owner, "served").await, 1, "one each");
    }
}

#[tokio::test]
async fn an_owner_killed_mid_body_is_taken_over_from_the_upstream_with_range() {
    let f = Fleet::start(2, 30).await;
    let digest = digest_of(&big());
    let path = format!("/v2/library/big/blobs/{digest}");
    let (owner, other) = (f.owner(&digest), 1 - f.owner(&digest));
    let app = f.apps[other].clone();
    let get = tokio::spawn({
        let path = path.clone();
        async move { app.get(HUB, &path, &[]).await }
    });
    // The big blob comes in 16 pieces, 40 ms apart: cut the owner off part-way.
    eventually("the owner fetches", async || f.whole_gets(&path) == 1).await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    f.relays[owner].cut();
    let resp = tokio::time::timeout(Duration::from_secs(20), get)
        .await
        .expect("the client is served within the bound")
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(x_cache(&resp), "PEER");
    assert_eq!(sha256_hex(resp.body()), sha256_hex(&big()));
    let ranges: Vec<String> = (f.registry.seen(&path).iter())
        .filter_map(|s| Some(s.headers.get("range")?.to_str().ok()?.to_owned()))
        .collect();
    assert_eq!(ranges.len(), 1, "{ranges:?}");
    let from: usize = ranges[0]
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .unwrap()
        .parse()
        .unwrap();
    assert!(from > 0 && from < big().len(), "resumed from {from}");
    assert_eq!(f.whole_gets(&path), 1, "only the owner's");
    assert_eq!(f.peer_fetches(other, owner, "taken_over").await, 1);
    let d = regcache::cache::Digest::parse(&digest).unwrap();
    eventually("the non-owner stores it", async || {
        f.apps[other].cache.contains(&d)
    })
    .await;
}

#[tokio::test]
async fn a_refused_client_gets_the_refusal_through_a_peer_and_no_more() {
    let f = Fleet::start(2, 30).await;
    let digest = digest_of(&secret());
    let path = format!("/v2/private/app/blobs/{digest}");
    let (owner, other) = (f.owner(&digest), 1 - f.owner(&digest));
    let refused = f.apps[other].get(HUB, &path, &[]).await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert!(refused.headers().contains_key("www-authenticate"));
    assert_eq!(f.peer_fetches(other, owner, "refused").await, 1);
    let d = regcache::cache::Digest::parse(&digest).unwrap();
    assert!(!f.apps[other].cache.contains(&d));

    // Alice's token reads it, through the owner, verified.
    let alice = [("authorization", TOKEN)];
    let served = f.apps[other].get(HUB, &path, &alice).await;
    assert_eq!(served.status(), StatusCode::OK);
    assert_eq!((x_cache(&served), served.body()), ("PEER", &secret()));
    eventually("stored", async || f.apps[other].cache.contains(&d)).await;
    // Stored here now, but a client without the token is still refused: this appliance asks
    // its own upstream, and the peer's answer to alice unlocks nothing.
    let again = f.apps[other].get(HUB, &path, &[]).await;
    assert_eq!(again.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_request_from_a_peer_is_never_forwarded_again() {
    let f = Fleet::start(2, 30).await;
    let digest = digest_of(&blob2());
    let path = format!("/v2/library/small/blobs/{digest}");
    let (owner, other) = (f.owner(&digest), 1 - f.owner(&digest));
    let from_peer = [("x-regcache-peer", f.peers[owner].as_str())];
    let resp = f.apps[other].get(HUB, &path, &from_peer).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.body(), &blob2());
    assert_eq!(x_cache(&resp), "MISS", "fetched upstream here");
    let d = regcache::cache::Digest::parse(&digest).unwrap();
    assert!(!f.apps[owner].cache.contains(&d), "the owner was not asked");
    assert_eq!(f.peer_fetches(other, owner, "served").await, 0);
    // The header marks a hop between appliances: it never reaches the upstream.
    let seen = f.registry.seen(&path);
    assert_eq!(seen.len(), 1);
    assert!(!seen[0].headers.contains_key("x-regcache-peer"));
}

#[tokio::test]
async fn an_unreachable_owner_is_taken_over_from_the_upstream() {
    let f = Fleet::start(3, 30).await;
    let digest = digest_of(&blob2());
    let path = format!("/v2/library/small/blobs/{digest}");
    let owner = f.owner(&digest);
    let other = (owner + 1) % 3;
    f.relays[owner].cut();
    let resp = f.apps[other].get(HUB, &path, &[]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.body(), &blob2());
    assert_eq!(f.peer_fetches(other, owner, "taken_over").await, 1);
}

#[tokio::test]
async fn a_silent_owner_is_given_up_after_peer_timeout() {
    let f = Fleet::start(2, 1).await;
    let digest = digest_of(&blob2());
    let path = format!("/v2/library/small/blobs/{digest}");
    let (owner, other) = (f.owner(&digest), 1 - f.owner(&digest));
    f.relays[owner].stall();
    let started = std::time::Instant::now();
    let resp = f.apps[other].get(HUB, &path, &[]).await;
    assert_eq!((resp.status(), resp.body()), (StatusCode::OK, &blob2()));
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(1), "{took:?}");
    assert!(took < Duration::from_secs(15), "bounded: {took:?}");
    assert_eq!(f.peer_fetches(other, owner, "taken_over").await, 1);
    // Passed over now: another object it owns is asked of the upstream here, not of it.
    let path = f.missing_owned_by(owner);
    let missing = f.apps[other].get(HUB, &path, &[]).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        f.relays[owner].accepted(),
        1,
        "the silent owner was asked once"
    );
    assert_eq!(f.peer_fetches(other, owner, "taken_over").await, 1);
}

#[tokio::test]
async fn an_owner_whose_upstream_is_down_vouches_for_no_peers_client() {
    let setup = Setup {
        toml: Some(Box::new(|_, _| "[cache]\nauth_ttl = \"1s\"".into())),
        ..Setup::default()
    };
    let f = Fleet::start_with(2, 30, setup).await;
    let digest = digest_of(&secret());
    let path = format!("/v2/private/app/blobs/{digest}");
    let (owner, other) = (f.owner(&digest), 1 - f.owner(&digest));
    let alice = [("authorization", TOKEN)];
    // Alice read it on the owner: stored there, her grant recorded (and past auth_ttl).
    let first = f.apps[owner].get(HUB, &path, &alice).await;
    assert_eq!((first.status(), first.body()), (StatusCode::OK, &secret()));
    let d = Digest::parse(&digest).unwrap();
    eventually("stored", async || f.apps[owner].cache.contains(&d)).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Her token is revoked; the owner's upstream is down, the other's answers.
    f.registry.revoked.store(true, Ordering::SeqCst);
    f.upstreams[owner].cut();
    let resp = f.apps[other].get(HUB, &path, &alice).await;
    assert_eq!(
        resp.status(),
        StatusCode::UNAUTHORIZED,
        "the other's upstream"
    );
    assert!(resp.body() != &secret(), "not the owner's offline grant");
    assert!(!f.apps[other].cache.contains(&d));
    assert_eq!(f.peer_fetches(other, owner, "taken_over").await, 1);
}

#[tokio::test]
async fn an_owner_over_its_upstream_quota_is_taken_over_and_asked_again() {
    let f = Fleet::start(2, 30).await;
    let quota = registry::Registry::start(&f.pki).await;
    quota.throttled.store(true, Ordering::SeqCst);
    let digest = digest_of(&blob2());
    let path = format!("/v2/library/small/blobs/{digest}");
    let (owner, other) = (f.owner(&digest), 1 - f.owner(&digest));
    f.upstreams[owner].point_to(quota.addr);
    let resp = f.apps[other].get(HUB, &path, &[]).await;
    assert_eq!((resp.status(), resp.body()), (StatusCode::OK, &blob2()));
    assert_eq!(x_cache(&resp), "MISS", "from this appliance's upstream");
    assert_eq!(f.peer_fetches(other, owner, "taken_over").await, 1);
    // A quota passes: the owner is not passed over, the next object it owns is asked of it.
    let missing = f.missing_owned_by(owner);
    let resp = f.apps[other].get(HUB, &missing, &[]).await;
    assert_eq!(
        resp.status(),
        StatusCode::NOT_FOUND,
        "this upstream's answer"
    );
    assert_eq!(f.peer_fetches(other, owner, "taken_over").await, 2);
}

#[tokio::test]
async fn what_the_owner_served_uncached_the_other_uploads() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let digest = digest_of(&blob2());
    // The owner's cache is smaller than the object: it relays it, keeping nothing.
    let d = digest.clone();
    let small = move |node: &str, peers: &[String]| match owner_of(peers, &d) == Some(node) {
        true => "[cache]\nmax_size = \"100KB\"".to_owned(),
        false => String::new(),
    };
    let setup = Setup {
        toml: Some(Box::new(small)),
        store: Some(store.clone()),
    };
    let f = Fleet::start_with(2, 30, setup).await;
    let path = format!("/v2/library/small/blobs/{digest}");
    let (owner, other) = (f.owner(&digest), 1 - f.owner(&digest));
    let resp = f.apps[other].get(HUB, &path, &[]).await;
    assert_eq!((resp.status(), resp.body()), (StatusCode::OK, &blob2()));
    assert_eq!(x_cache(&resp), "PEER");
    let key = Key::from(format!("fleet/sha256/{}", sha256_hex(&blob2())));
    eventually("this appliance uploads it", async || {
        store.head(&key).await.is_ok()
    })
    .await;
    let d = Digest::parse(&digest).unwrap();
    assert!(!f.apps[owner].cache.contains(&d), "the owner kept nothing");
    assert_eq!(f.whole_gets(&path), 1);
}

#[tokio::test]
async fn an_owner_that_stops_after_the_last_byte_leaves_nothing_to_take_over() {
    // One fill at a time: the owner passes a second object through as its upstream sends it.
    let f = Fleet::start_with(2, 3, one_fill_each()).await;
    let digests: Vec<String> = (0..16).map(|n| digest_of(&lingering_blob(n))).collect();
    let owner = f.owner(&digests[0]);
    let b = (1..16).find(|n| f.owner(&digests[*n]) == owner).unwrap();
    let path = |n: usize| format!("/v2/library/lingers/blobs/{}", digests[n]);
    // A client of the owner holds its one fill (every byte, then a body that ends 10 s later)...
    let (app, held) = (f.apps[owner].clone(), path(0));
    let held = tokio::spawn(async move { app.get(HUB, &held, &[]).await });
    eventually("the owner's fill", async || f.whole_gets(&path(0)) == 1).await;
    // ...so the other's request for `b` gets the upstream's body through the owner, every
    // byte, without a length, and no end: the other asks the upstream for the rest.
    let other = 1 - owner;
    let get = build("GET", HUB, &path(b), &[], Bytes::new());
    let resp = f.apps[other].try_request(HUB, get).await;
    let resp = resp.expect("the whole body, and its end");
    let data = lingering_blob(b as u8);
    assert_eq!((resp.status(), resp.body()), (StatusCode::OK, &data));
    assert_eq!(x_cache(&resp), "PEER");
    let ranges: Vec<_> = (f.registry.seen(&path(b)).into_iter())
        .filter_map(|s| s.headers.get("range").cloned())
        .collect();
    let rest = format!("bytes={}-", data.len());
    assert_eq!(ranges, [rest.as_str()], "asked once for the rest: none");
    assert_eq!(f.peer_fetches(other, owner, "taken_over").await, 1);
    let d = Digest::parse(&digests[b]).unwrap();
    assert!(f.apps[other].cache.contains(&d), "verified and stored");
    held.abort();
}

#[tokio::test]
async fn past_its_fill_caps_a_non_owner_relays_the_owners_copy() {
    let f = Fleet::start_with(2, 30, one_fill_each()).await;
    let digest = digest_of(&blob2());
    let path = format!("/v2/library/small/blobs/{digest}");
    let (owner, other) = (f.owner(&digest), 1 - f.owner(&digest));
    // A client of the other holds its one fill (an object it owns, whose body ends 10 s late).
    let n = (0..16)
        .find(|n| f.owner(&digest_of(&lingering_blob(*n))) == other)
        .unwrap();
    let held = format!(
        "/v2/library/lingers/blobs/{}",
        digest_of(&lingering_blob(n))
    );
    let app = f.apps[other].clone();
    let held = tokio::spawn({
        let held = held.clone();
        async move { app.get(HUB, &held, &[]).await }
    });
    eventually("the other's fill", async || {
        f.registry.seen("/v2/library/lingers/").len() == 1
    })
    .await;
    // Past its cap, the other passes the request through: to the owner, which fetches it once.
    for _ in 0..2 {
        let resp = f.apps[other].get(HUB, &path, &[]).await;
        assert_eq!((resp.status(), resp.body()), (StatusCode::OK, &blob2()));
    }
    assert_eq!(f.whole_gets(&path), 1, "the owner's fetch, for both");
    let d = Digest::parse(&digest).unwrap();
    assert!(f.apps[owner].cache.contains(&d), "the owner stored it");
    assert!(!f.apps[other].cache.contains(&d), "passed through here");
    assert_eq!(f.peer_fetches(other, owner, "served").await, 2);
    held.abort();
}
