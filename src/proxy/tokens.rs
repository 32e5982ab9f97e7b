//! The appliance's own side of registry auth, for clients that send no Authorization (mirror-mode
//! clients, and every client of a registry configured with credentials): the Bearer token flow
//! (realm, service, scope from the upstream's challenge; Basic credentials at the token service
//! when configured), Basic auth where the upstream asks for it, tokens cached until they expire.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::auth::{bearer_challenge, read_token};
use super::{Proxy, Route};
use crate::config::Credentials;

/// Tokens that do not say how long they last are kept this long (the spec's default).
const DEFAULT_TOKEN_LIFE: Duration = Duration::from_secs(60);

/// At most this many cached Authorization values.
const MAX_TOKENS: usize = 10_000;
/// A registry's `/v2/` challenge is asked for again after this long.
const CHALLENGE_LIFE: Duration = Duration::from_secs(300);

/// Cached Authorization values per (registry, scope), and each registry's challenge.
#[derive(Default)]
pub struct Tokens {
    /// std Mutex, never held across .await.
    cache: Mutex<HashMap<(String, String), (HeaderValue, Instant)>>,
    /// The `WWW-Authenticate` of each registry's `/v2/` (one request per registry, not per
    /// repository); std Mutex, never held across .await.
    challenges: Mutex<HashMap<String, (String, Instant)>>,
}

impl Tokens {
    fn get(&self, key: &(String, String)) -> Option<HeaderValue> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let (value, until) = cache.get(key)?;
        (*until > Instant::now()).then(|| value.clone())
    }

    /// Forgets every token (a reload may have changed the credentials).
    pub fn clear(&self) {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.challenges
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    fn put(&self, key: (String, String), value: HeaderValue, life: Duration) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
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

    fn challenge(&self, registry: &str) -> Option<String> {
        let challenges = self.challenges.lock().unwrap_or_else(|e| e.into_inner());
        let (challenge, until) = challenges.get(registry)?;
        (*until > Instant::now()).then(|| challenge.clone())
    }

    fn put_challenge(&self, registry: &str, challenge: String) {
        let mut challenges = self.challenges.lock().unwrap_or_else(|e| e.into_inner());
        challenges.insert(
            registry.to_owned(),
            (challenge, Instant::now() + CHALLENGE_LIFE),
        );
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
        let challenge = match self.tokens.challenge(&route.host) {
            Some(challenge) => challenge,
            None => {
                let url = format!("{}/v2/", route.upstream);
                let resp = self
                    .send_timed(&Method::GET, &url, &HeaderMap::new())
                    .await
                    .ok()?;
                if resp.status() != StatusCode::UNAUTHORIZED {
                    return None;
                }
                let challenge = resp
                    .headers()
                    .get(WWW_AUTHENTICATE)?
                    .to_str()
                    .ok()?
                    .to_owned();
                self.tokens.put_challenge(&route.host, challenge.clone());
                challenge
            }
        };
        let (value, life) = if challenge
            .trim_start()
            .to_ascii_lowercase()
            .starts_with("basic")
        {
            (
                basic(route.credentials.as_ref()?)?,
                Duration::from_secs(3600),
            )
        } else {
            self.bearer(route, &challenge, &scope).await?
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
        let resp = match self.send_timed(&Method::GET, &url, &headers).await {
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
        tokens.put_challenge("r", "Bearer realm=x".into());
        assert_eq!(tokens.challenge("r").as_deref(), Some("Bearer realm=x"));
        tokens.clear();
        assert!(tokens.challenge("r").is_none());
    }
}
