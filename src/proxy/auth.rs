//! Who may read what from the cache: a cached object is served only when the upstream would
//! serve that repository to this client. Remembers positive answers per (credential, registry,
//! repository) and which repositories are public. Credentials are kept only as hashes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::response::empty;
use super::upstream::Client;
use crate::sync::Locked;

/// How long a token service may take to answer the anonymous probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// A client's credential, hashed; empty for anonymous clients.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Credential(String);

impl Credential {
    /// Everything in the request that may identify or authenticate the client: every value of
    /// every header outside a short list of ones that cannot (Accept, Range, User-Agent…).
    /// Authorization and Cookie, all their values, but also the X-… token headers some
    /// registries and their proxies use: a request carrying any of them is never anonymous,
    /// and two requests share a credential only when all of them agree.
    pub fn of(headers: &HeaderMap) -> Self {
        let mut parts: Vec<(&str, &[u8])> = (headers.iter())
            .filter(|(name, _)| !NOT_IDENTIFYING.contains(&name.as_str()))
            .map(|(name, value)| (name.as_str(), value.as_bytes()))
            .collect();
        if parts.is_empty() {
            return Self(String::new());
        }
        parts.sort();
        let mut hasher = crate::cache::Hasher::new();
        for (name, value) in parts {
            hasher.update(name.as_bytes());
            hasher.update(b":");
            hasher.update(value);
            hasher.update(b"\n");
        }
        Self(hasher.finish().hex().to_owned())
    }

    pub fn is_anonymous(&self) -> bool {
        self.0.is_empty()
    }
}

type RepoKey = (String, String);

/// Request headers that say nothing about who the client is (content negotiation, ranges,
/// caching, tracing, hop-by-hop); every other header counts towards its [`Credential`].
const NOT_IDENTIFYING: &[&str] = &[
    "accept",
    "accept-encoding",
    "accept-language",
    "cache-control",
    "connection",
    "content-length",
    "content-type",
    "docker-distribution-api-version",
    "expect",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "keep-alive",
    "pragma",
    "range",
    "te",
    "traceparent",
    "tracestate",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "via",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-request-id",
];

/// Each memory holds at most this many entries; past it the older half is forgotten (a client
/// that asks for many repositories cannot grow it without bound).
const MAX_ENTRIES: usize = 100_000;

/// When each positive answer was last seen. Grants are recorded only on evidence that the
/// upstream served content to that credential (see `confirm`), never on a redirect alone.
#[derive(Default)]
pub struct AuthMemory {
    /// std Mutex, never held across .await.
    granted: Mutex<HashMap<(Credential, RepoKey), Instant>>,
    /// Repositories the upstream serves to anyone. std Mutex, never held across .await.
    public: Mutex<HashMap<RepoKey, Instant>>,
    /// When each repository was last probed for being public. std Mutex, never held across .await.
    probed: Mutex<HashMap<RepoKey, Instant>>,
}

/// Inserts into a bounded memory: over [`MAX_ENTRIES`], the older half goes.
fn remember<K: std::hash::Hash + Eq>(map: &Mutex<HashMap<K, Instant>>, key: K) {
    let mut map = map.locked();
    map.insert(key, Instant::now());
    if map.len() > MAX_ENTRIES {
        let mut times: Vec<Instant> = map.values().copied().collect();
        let middle = times.len() / 2;
        let (_, cutoff, _) = times.select_nth_unstable(middle);
        let cutoff = *cutoff;
        map.retain(|_, t| *t > cutoff);
    }
}

fn seen_within<K: std::hash::Hash + Eq>(
    map: &Mutex<HashMap<K, Instant>>,
    key: &K,
    within: Duration,
) -> bool {
    let map = map.locked();
    map.get(key).is_some_and(|t| t.elapsed() <= within)
}

fn repo_key(registry: &str, repo: &str) -> RepoKey {
    (registry.to_owned(), repo.to_owned())
}

impl AuthMemory {
    /// The upstream served content of `repo` to `cred` just now.
    pub fn grant(&self, cred: &Credential, registry: &str, repo: &str) {
        remember(&self.granted, (cred.clone(), repo_key(registry, repo)));
        if cred.is_anonymous() {
            self.mark_public(registry, repo);
        }
    }

    /// The upstream refused `repo` to `cred` (401/403): whatever it granted before is gone,
    /// offline too.
    pub fn revoke(&self, cred: &Credential, registry: &str, repo: &str) {
        let key = (cred.clone(), repo_key(registry, repo));
        let mut granted = self.granted.locked();
        granted.remove(&key);
        drop(granted);
        if cred.is_anonymous() {
            let mut public = self.public.locked();
            public.remove(&repo_key(registry, repo));
        }
    }

    /// Whether `cred` was granted `repo` within `within`.
    pub fn granted(&self, cred: &Credential, registry: &str, repo: &str, within: Duration) -> bool {
        let key = (cred.clone(), repo_key(registry, repo));
        seen_within(&self.granted, &key, within)
    }

    pub fn mark_public(&self, registry: &str, repo: &str) {
        remember(&self.public, repo_key(registry, repo));
    }

    /// Whether `repo` was seen public within `within`.
    pub fn public(&self, registry: &str, repo: &str, within: Duration) -> bool {
        seen_within(&self.public, &repo_key(registry, repo), within)
    }

    /// True at most once per `every` for a repository: whether to probe it for being public.
    pub fn should_probe(&self, registry: &str, repo: &str, every: Duration) -> bool {
        let key = repo_key(registry, repo);
        if seen_within(&self.probed, &key, every) {
            return false;
        }
        remember(&self.probed, key);
        true
    }

    /// How many entries the memories hold (grants, public, probed).
    pub fn len(&self) -> (usize, usize, usize) {
        fn len<K>(m: &Mutex<HashMap<K, Instant>>) -> usize {
            m.locked().len()
        }
        (len(&self.granted), len(&self.public), len(&self.probed))
    }
}

/// An anonymous pull token for `repo` from the Bearer realm `challenge` names (as Docker Hub
/// hands out for public images).
pub(super) async fn anonymous_token(
    client: &Client,
    challenge: &Challenge,
    repo: &str,
) -> Option<String> {
    let url = challenge.token_url(&format!("repository:{repo}:pull"));
    if !url.starts_with("https://") {
        return None;
    }
    let req = Request::builder().uri(&url).body(empty()).ok()?;
    let resp = tokio::time::timeout(PROBE_TIMEOUT, client.request(req))
        .await
        .ok()?
        .ok()?;
    read_token(resp).await.map(|(token, _)| token)
}

/// The token and its lifetime in seconds (`expires_in`) from a token service's answer.
pub(super) async fn read_token(resp: Response<Incoming>) -> Option<(String, Option<u64>)> {
    if !resp.status().is_success() {
        return None;
    }
    let body = Limited::new(resp.into_body(), MAX_TOKEN_RESPONSE)
        .collect()
        .await
        .ok()?
        .to_bytes();
    parse_token_response(&body)
}

/// A token service's answer is read up to this size (Docker Hub's are about 5 KiB).
const MAX_TOKEN_RESPONSE: usize = 1 << 20;
/// Tokens longer than this are not kept (they go into every request's headers).
const MAX_TOKEN: usize = 64 << 10;

/// The token and its lifetime from a token service's JSON body (`token` or `access_token`,
/// `expires_in` of any size or type: a lifetime that is not a whole number of seconds is ignored).
pub fn parse_token_response(body: &[u8]) -> Option<(String, Option<u64>)> {
    let json: serde_json::Value = serde_json::from_slice(body).ok()?;
    let token = json
        .get("token")
        .or_else(|| json.get("access_token"))?
        .as_str()
        .filter(|t| !t.is_empty() && t.len() <= MAX_TOKEN)?;
    http::HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
    Some((
        token.to_owned(),
        json.get("expires_in").and_then(|v| v.as_u64()),
    ))
}

/// Percent-encodes everything but unreserved characters.
pub(super) fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The parameters of a `Bearer` challenge.
#[derive(Debug, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub service: Option<String>,
}

impl Challenge {
    /// The token request for `scope` (omitted when empty): the realm with service and scope.
    pub fn token_url(&self, scope: &str) -> String {
        let mut url = self.realm.clone();
        let mut sep = if url.contains('?') { '&' } else { '?' };
        let scope = Some(scope).filter(|s| !s.is_empty());
        for (key, value) in [("service", self.service.as_deref()), ("scope", scope)] {
            if let Some(value) = value {
                url.push_str(&format!("{sep}{key}={}", encode(value)));
                sep = '&';
            }
        }
        url
    }
}

/// Whether a `WWW-Authenticate` value asks for Basic credentials.
pub fn is_basic(challenge: &str) -> bool {
    let scheme = challenge.trim_start().get(..5).unwrap_or("");
    scheme.eq_ignore_ascii_case("basic")
}

/// Parses `Bearer realm="…",service="…",scope="…"`.
pub fn bearer_challenge(value: &str) -> Option<Challenge> {
    let rest = value
        .trim()
        .strip_prefix("Bearer ")
        .or_else(|| value.trim().strip_prefix("bearer "))?;
    let mut realm = None;
    let mut service = None;
    for part in split_params(rest) {
        let (k, v) = part.split_once('=')?;
        let v = v.trim().trim_matches('"').to_owned();
        match k.trim().to_ascii_lowercase().as_str() {
            "realm" => realm = Some(v),
            "service" => service = Some(v),
            _ => {}
        }
    }
    Some(Challenge {
        realm: realm?,
        service,
    })
}

/// Splits on commas outside quotes.
fn split_params(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts.into_iter().filter(|p| !p.trim().is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cookie_is_a_credential_too() {
        let mut h = HeaderMap::new();
        assert!(Credential::of(&h).is_anonymous());
        h.insert(http::header::COOKIE, "session=abc".parse().unwrap());
        assert!(!Credential::of(&h).is_anonymous());
    }

    #[test]
    fn every_identifying_header_and_value_counts() {
        let of = |pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                let name = http::header::HeaderName::from_bytes(k.as_bytes()).unwrap();
                h.append(name, v.parse().unwrap());
            }
            Credential::of(&h)
        };
        let plain = [("accept", "application/json"), ("user-agent", "docker/24")];
        assert!(of(&plain).is_anonymous(), "negotiation is not identity");
        assert!(!of(&[("x-jfrog-art-api", "k")]).is_anonymous());
        assert!(!of(&[("cf-access-client-secret", "s")]).is_anonymous());
        // Split cookies: the second crumb counts too.
        let a = of(&[("cookie", "lang=en"), ("cookie", "session=a")]);
        let b = of(&[("cookie", "lang=en"), ("cookie", "session=b")]);
        assert_ne!(a, b);
        // Authorization does not hide a cookie.
        let c = of(&[("authorization", "Bearer t"), ("cookie", "s=1")]);
        let d = of(&[("authorization", "Bearer t"), ("cookie", "s=2")]);
        assert_ne!(c, d);
        // The same credential, whatever the negotiation headers.
        let e = of(&[("authorization", "Bearer t"), ("accept", "x")]);
        let f = of(&[("authorization", "Bearer t"), ("accept", "y")]);
        assert_eq!(e, f);
    }

    #[test]
    fn scopes_are_percent_encoded() {
        assert_eq!(
            encode("repository:library/small:pull"),
            "repository%3Alibrary%2Fsmall%3Apull"
        );
    }

    #[test]
    fn parses_docker_hub_challenges() {
        let c = bearer_challenge(
            "Bearer realm=\"https://auth.docker.io/token\",service=\"registry.docker.io\",scope=\"repository:a/b:pull,push\"",
        )
        .unwrap();
        assert_eq!(c.realm, "https://auth.docker.io/token");
        assert_eq!(c.service.as_deref(), Some("registry.docker.io"));
        assert!(bearer_challenge("Basic realm=\"x\"").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn grants_expire() {
        let m = AuthMemory::default();
        let cred = Credential("abc".into());
        m.grant(&cred, "r", "a/b");
        assert!(m.granted(&cred, "r", "a/b", Duration::from_secs(60)));
        assert!(!m.granted(
            &Credential(String::new()),
            "r",
            "a/b",
            Duration::from_secs(60)
        ));
        assert!(!m.public("r", "a/b", Duration::from_secs(60)));
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(!m.granted(&cred, "r", "a/b", Duration::from_secs(60)));
        assert!(m.granted(&cred, "r", "a/b", Duration::from_secs(3600)));
        m.grant(&Credential(String::new()), "r", "pub");
        assert!(m.public("r", "pub", Duration::from_secs(1)));
        m.revoke(&cred, "r", "a/b");
        assert!(!m.granted(&cred, "r", "a/b", Duration::from_secs(3600)));
        m.revoke(&Credential(String::new()), "r", "pub");
        assert!(!m.public("r", "pub", Duration::from_secs(1)));
    }

    #[test]
    fn memories_stay_bounded() {
        let m = AuthMemory::default();
        for i in 0..(MAX_ENTRIES + 10) {
            let cred = Credential(format!("c{i}"));
            m.grant(&cred, "r", &format!("repo{i}"));
            m.should_probe("r", &format!("repo{i}"), Duration::from_secs(60));
            m.mark_public("r", &format!("repo{i}"));
        }
        let (granted, public, probed) = m.len();
        assert!(granted <= MAX_ENTRIES && public <= MAX_ENTRIES && probed <= MAX_ENTRIES);
        assert!(granted > 0 && public > 0 && probed > 0);
    }
}
