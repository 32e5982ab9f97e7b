//! `/v2/`: relayed while the upstream answers (its challenge remembered), answered by the
//! appliance while it is down.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use hyper::body::Incoming;
use tracing::warn;

use super::confirm::unavailable;
use super::outcome::CacheOutcome;
use super::request::Outbound;
use super::response::{challenge_response, local_root, relay};
use super::{Body, Error, Proxy};

impl Proxy {
    /// `/v2/`: relayed while the upstream answers; answered locally when it is down.
    pub(super) async fn root(&self, out: &Outbound<'_>) -> Result<Response<Body>, Error> {
        let asked = self
            .upstream
            .follow(&out.method, &out.url, out.headers.clone());
        let why = match asked.await {
            Ok(resp) if !unavailable(resp.status()) => {
                self.remember_challenge(&out.route.host, &resp);
                return Ok(relay(resp, out.route, out.host));
            }
            Ok(resp) => format!("upstream answered {}", resp.status()),
            Err(e) => e.to_string(),
        };
        if !self.policy().offline {
            return Err(Error::Unavailable(why));
        }
        warn!(registry = %out.route.host, %why, "upstream unavailable: answering /v2/ locally");
        // A Basic-auth registry keeps asking for credentials, or clients would never send them.
        // (A Bearer challenge would send clients to a token service that may be down too.)
        let anonymous = !out.headers.contains_key(header::AUTHORIZATION);
        match self.basic_challenge(&out.route.host).filter(|_| anonymous) {
            Some(challenge) => Ok(challenge_response(challenge)),
            None => Ok(local_root(CacheOutcome::Stale)),
        }
    }

    /// Remembers the upstream's `/v2/` challenge for the offline answers.
    fn remember_challenge(&self, registry: &str, resp: &Response<Incoming>) {
        if resp.status() != StatusCode::UNAUTHORIZED {
            return;
        }
        if let Some(value) = resp.headers().get(header::WWW_AUTHENTICATE) {
            self.challenges.remember(registry, value.clone());
        }
    }

    /// The registry's remembered challenge, when it is Basic.
    pub(super) fn basic_challenge(&self, registry: &str) -> Option<HeaderValue> {
        self.challenges.basic(registry)
    }
}
