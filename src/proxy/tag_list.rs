//! `/v2/<repo>/tags/list`: relayed while the upstream answers; while it is down, the tags this
//! cache holds a manifest for, to clients whose access was established, marked stale.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Response};
use tracing::warn;

use super::confirm::Outage;
use super::outcome::CacheOutcome;
use super::request::Outbound;
use super::response::{empty, full, relay, stale_warning};
use super::{Body, Error, Proxy};

impl Proxy {
    /// `/tags/list` (`skopeo inspect` lists tags); a repository with none of its tags cached
    /// stays an error while the upstream is down.
    pub(super) async fn tag_list(
        &self,
        out: &Outbound<'_>,
        repo: &str,
    ) -> Result<Response<Body>, Error> {
        let asked = self
            .upstream
            .follow(&out.method, &out.url, out.headers.clone());
        let (outage, answer) = match asked.await {
            Ok(resp) => match Outage::of(&resp) {
                // A rate-limited client gets the 429: a partial list passed off as the list would
                // mislead tools that watch tags; only an outage makes it the best answer there is.
                Some(outage) if !outage.throttled => (outage, Ok(resp)),
                _ => return Ok(relay(resp, out.route, out.host)),
            },
            Err(e) => (Outage::unreachable(e.to_string()), Err(e)),
        };
        let tags = self.cache.tags_of(&out.route.host, repo);
        if tags.is_empty() || !self.offline_allowed(out, repo, &outage).await {
            return answer.map(|resp| relay(resp, out.route, out.host));
        }
        warn!(registry = %out.route.host, repo, why = %outage.why, "serving a stale tag list");
        let query = out.url.split_once('?').map_or("", |(_, q)| q);
        let (tags, more) = page(tags, query);
        Ok(stale_list(out, repo, &tags, more))
    }
}

/// The tag list as the distribution spec's JSON, marked stale, with a `Link` to the next page.
fn stale_list(out: &Outbound<'_>, repo: &str, tags: &[String], more: bool) -> Response<Body> {
    let body = Bytes::from(serde_json::json!({ "name": repo, "tags": tags }).to_string());
    let length = body.len();
    let mut resp = Response::new(match out.method == Method::HEAD {
        true => empty(),
        false => full(body),
    });
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    if let (true, Some(last)) = (more, tags.last()) {
        // The distribution spec's pagination: where the next page starts.
        let n = tags.len();
        let next = format!("</v2/{repo}/tags/list?n={n}&last={last}>; rel=\"next\"");
        if let Ok(next) = HeaderValue::from_str(&next) {
            h.insert(header::LINK, next);
        }
    }
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::WARNING, stale_warning());
    CacheOutcome::Stale.mark(&mut resp);
    resp
}

/// One page of a sorted tag list, as `?n=<count>&last=<tag>` asks (the distribution spec's
/// pagination; the whole list without them), and whether more tags follow it.
fn page(tags: Vec<String>, query: &str) -> (Vec<String>, bool) {
    let param = |name: &str| {
        (query.split('&'))
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_owned())
    };
    let last = param("last");
    let n = param("n").and_then(|n| n.parse::<usize>().ok());
    let mut after: Vec<String> = (tags.into_iter())
        .filter(|t| last.as_ref().is_none_or(|last| t.as_str() > last.as_str()))
        .collect();
    let n = n.unwrap_or(usize::MAX);
    let more = after.len() > n;
    after.truncate(n);
    (after, more)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_lists_page_like_the_distribution_spec() {
        let tags = || vec!["1".to_owned(), "2".to_owned(), "latest".to_owned()];
        let strs = |(p, more): (Vec<String>, bool)| (p.join(" "), more);
        assert_eq!(strs(page(tags(), "")), ("1 2 latest".into(), false));
        assert_eq!(strs(page(tags(), "n=2")), ("1 2".into(), true));
        assert_eq!(strs(page(tags(), "n=3")), ("1 2 latest".into(), false));
        assert_eq!(strs(page(tags(), "n=2&last=2")), ("latest".into(), false));
        assert_eq!(strs(page(tags(), "last=latest")), ("".into(), false));
        assert_eq!(strs(page(tags(), "n=x")), ("1 2 latest".into(), false));
    }
}
