//! The cache settings the proxy applies ([`Policy`]) and the offline rule: who is served from the
//! cache while the upstream cannot answer, and how the appliance tells an outage from a request
//! that failed for reasons of the client's own making.

use std::time::Duration;

use http::header::HeaderMap;
use http::Method;
use tracing::{info, warn};

use super::confirm::Outage;
use super::request::Outbound;
use super::{Proxy, Route};
use crate::sync::Locked;

/// Cache settings the proxy applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Tags no rule covers.
    pub manifest_ttl: Duration,
    /// `[[cache.rule]]`, first match wins (see `freshness.rs`).
    pub rules: std::sync::Arc<Vec<crate::config::TagRule>>,
    pub auth_ttl: Duration,
    pub offline: bool,
    pub offline_auth_window: Duration,
}

/// A failed clean probe of an upstream is remembered this long.
const OUTAGE_REMEMBERED: Duration = Duration::from_secs(10);
/// The clean probe's deadline.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

impl Proxy {
    /// Who is served from the cache while the upstream cannot answer: with `cache.offline` on,
    /// repositories seen public within `offline_auth_window`, and clients whose credential the
    /// upstream served this repository within that window. A throttled upstream (429, or 503
    /// with Retry-After) is no outage: any client can exhaust the quota the site shares, so it
    /// extends no credential's grant past `auth_ttl` (public repositories stay served).
    ///
    /// A client's own request can fail for reasons of its own making (odd headers an upstream
    /// chokes on), so before a credential is served offline the appliance asks the upstream's
    /// `/v2/` itself, without any of the client's headers: only if that fails too is it an outage.
    pub(super) async fn offline_allowed(
        &self,
        out: &Outbound<'_>,
        repo: &str,
        outage: &Outage,
    ) -> bool {
        let policy = self.policy();
        let window = policy.offline_auth_window;
        let grants = match outage.throttled {
            true => policy.auth_ttl.min(window),
            false => window,
        };
        let registry = &out.route.host;
        if policy.offline && self.auth.public(registry, repo, window) {
            return true;
        }
        let granted = policy.offline && self.auth.granted(&out.cred, registry, repo, grants);
        if granted && self.upstream_down(out.route).await {
            return true;
        }
        info!(%registry, repo, why = %outage.why, "upstream unavailable and this client's access is not established");
        false
    }

    /// Whether the upstream of `route` fails the appliance's own clean request (`GET /v2/` with
    /// no client headers): unreachable, 5xx or 429. Remembered for a few seconds, so that an
    /// outage costs one such request per registry, not one per client request.
    async fn upstream_down(&self, route: &Route) -> bool {
        let key = &route.host;
        let known =
            (self.outages.locked().get(key)).is_some_and(|t| t.elapsed() < OUTAGE_REMEMBERED);
        if known {
            return true;
        }
        let url = format!("{}/v2/", route.upstream);
        let clean = HeaderMap::new();
        let sent = self.upstream.send(&Method::GET, &url, &clean);
        let down = match tokio::time::timeout(PROBE_TIMEOUT, sent).await {
            Ok(Ok(resp)) => Outage::of(&resp).is_some(),
            Ok(Err(_)) | Err(_) => true,
        };
        if down {
            (self.outages.locked()).insert(key.clone(), tokio::time::Instant::now());
        } else {
            warn!(registry = %key, "the upstream answers the appliance: not an outage, nothing served offline");
        }
        down
    }
}
