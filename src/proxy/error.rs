//! Why the proxy could not answer a request itself; every variant becomes an OCI error response.

use crate::proxy::upstream::MAX_REDIRECTS;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} does not name a registry of this appliance")]
    UnknownHost(String),
    #[error("cannot reach {url}: {}", chain(.source))]
    Upstream {
        url: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("no response from {url} within {secs}s")]
    Timeout { url: String, secs: u64 },
    #[error("more than {MAX_REDIRECTS} redirects from {url}")]
    TooManyRedirects { url: String },
    #[error("bad redirect Location {location:?} from {url}")]
    BadRedirect { url: String, location: String },
    #[error("upstream unavailable: {0}")]
    Unavailable(String),
    #[error("cannot build the upstream request: {0}")]
    Build(#[from] http::Error),
}

/// An error and its sources, joined: "client error (Connect): dns error: no record found".
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    text
}
