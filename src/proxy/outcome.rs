//! What the cache did for a response. Set once, where the response is made, both as the
//! `X-Cache` header clients see and as a typed response extension that the access log, the
//! metrics and the status page read (nothing re-parses the header).

use http::header::HeaderValue;
use http::Response;

use crate::metrics::Source;

/// The header clients see: `X-Cache: HIT` and so on.
pub const X_CACHE: &str = "x-cache";

/// The cache's part in one response. A response without one came from the upstream as it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Served from the store.
    Hit,
    /// Fetched upstream while being stored.
    Miss,
    /// Joined a download another request started.
    Join,
    /// A stored manifest the upstream confirmed unchanged.
    Revalidated,
    /// Served from the store while the upstream is unavailable.
    Stale,
    /// Read from the fleet's shared tier (verified) while being stored locally.
    Shared,
    /// The upstream's answer, neither stored nor vouched for (not a manifest, a digest mismatch).
    Bypass,
    /// Answered by the appliance itself (`/v2/` for clients it authenticates upstream).
    Local,
    /// Fetched from the object's owner in the fleet while being stored (`[fleet]`).
    Peer,
}

impl CacheOutcome {
    /// The `X-Cache` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "HIT",
            Self::Miss => "MISS",
            Self::Join => "JOIN",
            Self::Revalidated => "REVALIDATED",
            Self::Stale => "STALE",
            Self::Shared => "SHARED",
            Self::Bypass => "BYPASS",
            Self::Local => "LOCAL",
            Self::Peer => "PEER",
        }
    }

    /// Where the response's bytes come from.
    pub fn source(outcome: Option<Self>) -> Source {
        match outcome {
            Some(Self::Hit | Self::Join | Self::Revalidated | Self::Stale | Self::Shared) => {
                Source::Cache
            }
            Some(Self::Local) => Source::Local,
            Some(Self::Peer) => Source::Peer,
            Some(Self::Miss | Self::Bypass) | None => Source::Upstream,
        }
    }

    /// Puts this outcome on a response: the header and the extension.
    pub fn mark<B>(self, resp: &mut Response<B>) {
        let value = HeaderValue::from_static(self.as_str());
        resp.headers_mut().insert(X_CACHE, value);
        resp.extensions_mut().insert(self);
    }

    /// The outcome a response carries.
    pub fn of<B>(resp: &Response<B>) -> Option<Self> {
        resp.extensions().get::<Self>().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_and_the_extension_agree() {
        for outcome in [
            CacheOutcome::Hit,
            CacheOutcome::Miss,
            CacheOutcome::Join,
            CacheOutcome::Revalidated,
            CacheOutcome::Stale,
            CacheOutcome::Shared,
            CacheOutcome::Bypass,
            CacheOutcome::Local,
            CacheOutcome::Peer,
        ] {
            let mut resp = Response::new(());
            outcome.mark(&mut resp);
            assert_eq!(CacheOutcome::of(&resp), Some(outcome));
            assert_eq!(resp.headers()[X_CACHE], outcome.as_str());
        }
        assert_eq!(CacheOutcome::of(&Response::new(())), None);
        assert_eq!(CacheOutcome::source(None), Source::Upstream);
    }
}
