//! The cache's core rule: a stored object is served only to a client the upstream would serve it
//! to, in that repository. Grants are remembered per (credential, registry, repository) from the
//! upstream's own evidence ([`super::confirm`]); refusals (401, 403) revoke them.

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use hyper::body::Incoming;
use tracing::{info, warn};

use super::auth::Credential;
use super::confirm::{Expect, Verdict};
use super::request::Outbound;
use super::response::{challenge_response, error_response, relay};
use super::{Body, Error, Proxy};
use crate::sync::ReadWrite;

impl Proxy {
    /// Whether the upstream would serve this object (`expect`) in `repo` to this client.
    /// Remembered answers count only when the upstream already confirmed that this repository
    /// has this digest (`confirmed`): objects are stored once by digest for every registry, and
    /// a repository the client may read must not unlock a digest it does not contain. Otherwise
    /// the upstream is asked ([`Proxy::check`]) with the client's own credentials; its refusals
    /// are relayed (401 with WWW-Authenticate). While the upstream is down, clients whose access
    /// was established are served (see [`Proxy::offline_allowed`]), except through a peer.
    pub(super) async fn authorize(
        self: &Arc<Self>,
        out: &Outbound<'_>,
        repo: &str,
        expect: &Expect,
        confirmed: bool,
    ) -> Result<(), Response<Body>> {
        let (registry, cred) = (&out.route.host, &out.cred);
        if confirmed && self.remembered(out, repo) {
            return Ok(());
        }
        let outage = match self.check(&out.url, &out.headers, expect).await {
            Verdict::Served => {
                self.record_grant(cred, &out.headers, registry, repo, &out.url, expect);
                if let Some(digest) = &expect.digest {
                    self.cache.add_ref(digest, registry, repo);
                }
                return Ok(());
            }
            Verdict::Denied { first, refused } => {
                if refused {
                    self.auth.revoke(cred, registry, repo);
                }
                return Err(self.pass_refusal(out, first).await);
            }
            Verdict::Unavailable(outage) => outage,
        };
        if out.from_peer {
            // Another appliance asks: it decides with its own upstream (and, if that is down
            // too, its own offline rule), never with this appliance's grants (peer/fill.rs).
            let message = Error::Unavailable(outage.why).to_string();
            return Err(error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                &message,
            ));
        }
        if confirmed && self.offline_allowed(out, repo, &outage).await {
            warn!(%registry, repo, why = %outage.why, "upstream unavailable: serving from the cache");
            return Ok(());
        }
        if cred.is_anonymous() {
            if let Some(challenge) = self.basic_challenge(registry) {
                return Err(challenge_response(challenge));
            }
        }
        let message = Error::Unavailable(outage.why).to_string();
        Err(match outage.throttled {
            true => error_response(StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS", &message),
            false => error_response(StatusCode::BAD_GATEWAY, "UNAVAILABLE", &message),
        })
    }

    /// Whether the upstream served `repo` to this client (or to anyone: public) within
    /// `auth_ttl`. Alone it proves nothing about a digest: see [`Proxy::authorize`].
    pub(super) fn remembered(&self, out: &Outbound<'_>, repo: &str) -> bool {
        let (registry, cred) = (&out.route.host, &out.cred);
        let ttl = self.policy.read_now().auth_ttl;
        self.auth.public(registry, repo, ttl) || self.auth.granted(cred, registry, repo, ttl)
    }

    /// The upstream did not serve the object: for a HEAD, its own first answer when there is one
    /// (a 401 with its challenge); otherwise the request is passed through again, so that the
    /// client gets the upstream's whole answer, whatever it is, and nothing from the cache.
    pub(super) async fn pass_refusal(
        &self,
        out: &Outbound<'_>,
        first: Option<Response<Incoming>>,
    ) -> Response<Body> {
        if let (true, Some(resp)) = (out.method == Method::HEAD, first) {
            return relay(resp, out.route, out.host);
        }
        match self.pass(out).await {
            Ok(resp) => resp,
            Err(e) => error_response(StatusCode::BAD_GATEWAY, "UNAVAILABLE", &e.to_string()),
        }
    }

    /// A 401 or 403 from the registry: this credential's remembered grant is void.
    pub(super) fn forget_if_refused(
        &self,
        cred: &Credential,
        registry: &str,
        repo: &str,
        status: StatusCode,
    ) {
        if matches!(status.as_u16(), 401 | 403) {
            self.auth.revoke(cred, registry, repo);
        }
    }

    /// Records a grant (the upstream served `expect` to `cred`); for a credentialed client,
    /// finds out once in a while whether the repository is public (so anonymous clients can be
    /// served while the upstream is down), by the same evidence.
    pub(super) fn record_grant(
        self: &Arc<Self>,
        cred: &Credential,
        headers: &HeaderMap,
        registry: &str,
        repo: &str,
        url: &str,
        expect: &Expect,
    ) {
        self.auth.grant(cred, registry, repo);
        let every = self.policy().offline_auth_window / 4;
        if cred.is_anonymous() || !self.auth.should_probe(registry, repo, every) {
            return;
        }
        let proxy = self.clone();
        let (registry, repo, url) = (registry.to_owned(), repo.to_owned(), url.to_owned());
        // With the client's Accept, every value of it (dockerd sends one header per media type):
        // registries answer 404 to a manifest HEAD whose Accept does not admit the manifest's
        // type, an OCI index say.
        let accept: Vec<HeaderValue> = headers.get_all(header::ACCEPT).iter().cloned().collect();
        let expect = expect.clone();
        tokio::spawn(async move {
            if proxy.probe_public(&url, &repo, &accept, &expect).await {
                info!(%registry, %repo, "repository is public");
                proxy.auth.mark_public(&registry, &repo);
            }
        });
    }
}
