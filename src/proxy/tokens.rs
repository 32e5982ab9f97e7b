//! The appliance's own side of registry auth, for clients that send no Authorization (mirror-mode
//! clients, and every client of a registry configured with credentials): the Bearer token flow
//! (realm, service, scope from the upstream's challenge; Basic credentials at the token service
//! when configured), Basic auth where the upstream asks for it, tokens cached until they expire.
//! Also the one memory of each registry's `/v2/` challenge ([`Challenges`]), which the offline
//! `/v2/` answer reads too.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::auth::{bearer_challenge, is_basic, read_token};
use super::{Proxy, Route};
use crate::config::Credentials;
use crate::sync::Locked;

/// Tokens that do not say how long they last are kept this long (the spec's default).
const DEFAULT_TOKEN_LIFE: Duration = Duration::from_secs(60);

/// At most this many cached Authorization values.
const MAX_TOKENS: usize = 10_000;
/// The appliance asks a registry's `/v2/` for its challenge again after this long.
const CHALLENGE_LIFE: Duration = Duration::from_secs(300);

/// Cached Authorization values per (registry, scope).
#[derive(Default)]
pub struct Tokens {
    /// std Mutex, never held across .await.
    cache: Mutex<HashMap<(String, String), (HeaderValue, Instant)>>,
}

/// The last `WWW-Authenticate` of each registry's `/v2/`, from the appliance's own request or a
/// client's, and when it was seen. One entry per configured registry. std Mutex, never held
/// across .await.
#[derive(Default)]
pub struct Challenges(Mutex<HashMap<String, (HeaderValue, Option<Instant>)>>);

impl Challenges {
    pub fn remember(&self, registry: &str, challenge: HeaderValue) {
        (self.0.locked()).insert(registry.to_owned(), (challenge, Some(Instant::now())));
    }

    /// After a reload: the token flow asks each registry anew (its upstream may have changed);
    /// the offline answer keeps the last challenge it knows.
    pub fn expire(&self) {
        for (_, seen) in self.0.locked().values_mut() {
            *seen = None;
        }
    }

    /// The challenge, if seen within `within`.
    fn recent(&self, registry: &str, within: Duration) -> Option<HeaderValue> {
        let challenges = self.0.locked();
        let (challenge, seen) = challenges.get(registry)?;
        seen.filter(|seen| seen.elapsed() < within)?;
        Some(challenge.clone())
    }

    /// The last challenge, however old, when it asks for Basic credentials.
    pub fn basic(&self, registry: &str) -> Option<HeaderValue> {
        let challenges = self.0.locked();
        let (challenge, _) = challenges.get(registry)?;
        is_basic(challenge.to_str().ok()?).then(|| challenge.clone())
    }
}

impl Tokens {
    fn get(&self, key: &(String, String)) -> Option<HeaderValue> {
        let cache = self.cache.locked();
        let (value, until) = cache.get(key)?;
        (*until > Instant::now()).then(|| value.clone())
    }

    /// Forgets every token (a reload may have changed the credentials).
    pub fn clear(&self) {
        self.cache.locked().clear();
    }

    fn put(&self, key: (String, String), value: HeaderValue, life: Duration) {
        let mut cache = self.cache.locked();
        if cache.len() >= MAX_TOKENS {
            // Bounded whatever repository names clients send: expired ones first, then all.
            let now = Instant::now();
            cache.retain(|_, (_, until)| *until > now);
            if cache.len() >= MAX_TOKENS {
                cache.clear();
            }
        }
        cache.insert(key, (value, Instant::now() + life));
    }
}

impl Proxy {
    /// The Authorization the appliance sends for `repo` on `route` (pull scope), or `None` when
    /// the upstream asks for none. Errors are logged and yield `None` (the upstream's own answer
    /// then reaches the client).
    pub(super) async fn appliance_auth(
        &self,
        route: &Route,
        repo: Option<&str>,
    ) -> Option<HeaderValue> {
        let scope = repo.map_or(String::new(), |r| format!("repository:{r}:pull"));
        let key = (route.host.clone(), scope.clone());
        if let Some(value) = self.tokens.get(&key) {
            return Some(value);
        }
        let challenge = match self.challenges.recent(&route.host, CHALLENGE_LIFE) {
            Some(challenge) => challenge,
            None => {
                let url = format!("{}/v2/", route.upstream);
                let clean = HeaderMap::new();
                let resp = self.upstream.send(&Method::GET, &url, &clean).await.ok()?;
                if resp.status() != StatusCode::UNAUTHORIZED {
                    return None;
                }
                let challenge = resp.headers().get(WWW_AUTHENTICATE)?.clone();
                self.challenges.remember(&route.host, challenge.clone());
                challenge
            }
        };
        let challenge = challenge.to_str().ok()?;
        let (value, life) = match is_basic(challenge) {
            true => (
                basic(route.credentials.as_ref()?)?,
                Duration::from_secs(3600),
            ),
            false => self.bearer(route, challenge, &scope).await?,
        };
        debug!(registry = %route.host, %scope, ?life, "obtained upstream authorization");
        self.tokens.put(key, value.clone(), life);
        Some(value)
    }

    async fn bearer(
        &self,
        route: &Route,
        challenge: &str,
        scope: &str,
    ) -> Option<(HeaderValue, Duration)> {
        let c = bearer_challenge(challenge)?;
        let url = c.token_url(scope);
        let mut headers = HeaderMap::new();
        if let Some(value) = route.credentials.as_ref().and_then(basic) {
            headers.insert(AUTHORIZATION, value);
        }
        let resp = match self.upstream.send(&Method::GET, &url, &headers).await {
            Ok(resp) => resp,
            Err(e) => {
                warn!(registry = %route.host, error = %e, "token service unreachable");
                return None;
            }
        };
        let status = resp.status();
        let Some((token, expires_in)) = read_token(resp).await else {
            warn!(registry = %route.host, %status, realm = %c.realm, "token service refused the appliance");
            return None;
        };
        let life = token_life(expires_in);
        Some((HeaderValue::try_from(format!("Bearer {token}")).ok()?, life))
    }
}

/// A token is kept at most this long, whatever `expires_in` says (any number must not overflow).
const MAX_TOKEN_LIFE: Duration = Duration::from_secs(24 * 3600);

/// How long to use a token the service says lives `expires_in` seconds: 10 s less, at least 5 s,
/// at most [`MAX_TOKEN_LIFE`].
fn token_life(expires_in: Option<u64>) -> Duration {
    expires_in
        .map_or(DEFAULT_TOKEN_LIFE, Duration::from_secs)
        .saturating_sub(Duration::from_secs(10))
        .max(Duration::from_secs(5))
        .min(MAX_TOKEN_LIFE)
}

fn basic(c: &Credentials) -> Option<HeaderValue> {
    let raw = format!("{}:{}", c.username, c.password.expose());
    let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
    let mut value = HeaderValue::try_from(format!("Basic {encoded}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_expires_in_gives_a_usable_life() {
        assert_eq!(token_life(Some(300)), Duration::from_secs(290));
        assert_eq!(token_life(Some(0)), Duration::from_secs(5));
        assert_eq!(token_life(Some(u64::MAX)), MAX_TOKEN_LIFE);
        let deadline = tokio::time::Instant::now() + token_life(Some(u64::MAX));
        assert!(deadline > tokio::time::Instant::now());
        let parsed =
            super::super::auth::parse_token_response(br#"{"token":"t","expires_in":1e300}"#);
        assert_eq!(parsed, Some(("t".to_owned(), None)));
        let huge = format!(r#"{{"token":"{}"}}"#, "x".repeat(70_000));
        assert_eq!(
            super::super::auth::parse_token_response(huge.as_bytes()),
            None
        );
        let newline = br#"{"token":"a\nb","expires_in":18446744073709551615}"#;
        assert_eq!(super::super::auth::parse_token_response(newline), None);
    }

    #[tokio::test]
    async fn the_token_cache_stays_bounded() {
        let tokens = Tokens::default();
        let value = HeaderValue::from_static("Bearer t");
        for i in 0..MAX_TOKENS + 5 {
            tokens.put(
                ("r".into(), format!("repository:x{i}:pull")),
                value.clone(),
                Duration::from_secs(60),
            );
        }
        assert!(tokens.cache.lock().unwrap().len() <= MAX_TOKENS);
        assert_eq!(
            tokens.get(&("r".into(), format!("repository:x{}:pull", MAX_TOKENS + 4))),
            Some(value)
        );
        tokens.clear();
        assert!(tokens
            .get(&("r".into(), "repository:x1:pull".into()))
            .is_none());
    }

    #[test]
    fn one_challenge_memory_serves_the_token_flow_and_the_offline_answer() {
        let challenges = Challenges::default();
        challenges.remember("r", HeaderValue::from_static("Bearer realm=x"));
        let recent = challenges.recent("r", CHALLENGE_LIFE);
        assert_eq!(recent.unwrap(), "Bearer realm=x");
        assert!(challenges.recent("r", Duration::ZERO).is_none());
        assert!(challenges.basic("r").is_none());
        challenges.remember("r", HeaderValue::from_static("Basic realm=\"x\""));
        assert!(challenges.basic("r").is_some());
        assert!(challenges.basic("other").is_none());
        challenges.expire();
        assert!(challenges.recent("r", CHALLENGE_LIFE).is_none());
        assert!(challenges.basic("r").is_some());
    }
}
