//! Redirects between the registry and where its content lives (CDNs, object stores, login
//! hosts): where a `Location` points, and which request headers may follow it to another host.

use http::header::{self, HeaderMap};
use http::{Response, Uri};

use crate::proxy::Error;

/// Where a GET/HEAD redirect points, resolved against `url`; `None` when it is not a redirect.
pub(crate) fn redirect_target<B>(resp: &Response<B>, url: &str) -> Result<Option<String>, Error> {
    let followed = [301, 302, 303, 307, 308];
    if !followed.contains(&resp.status().as_u16()) {
        return Ok(None);
    }
    let Some(location) = resp.headers().get(header::LOCATION) else {
        return Ok(None);
    };
    let bad = || Error::BadRedirect {
        url: redact(url),
        location: redact(&String::from_utf8_lossy(location.as_bytes())),
    };
    let location = location.to_str().map_err(|_| bad())?;
    resolve(url, location).map(Some).ok_or_else(bad)
}

/// Resolves a Location header against the URL it came from (absolute, `//host/…`, `/path`, `rel`).
fn resolve(base: &str, location: &str) -> Option<String> {
    if location.starts_with("https://") || location.starts_with("http://") {
        return location.parse::<Uri>().ok().map(|_| location.to_owned());
    }
    let base: Uri = base.parse().ok()?;
    let scheme = base.scheme_str()?;
    let authority = base.authority()?.as_str();
    let target = if let Some(rest) = location.strip_prefix("//") {
        format!("{scheme}://{rest}")
    } else if location.starts_with('/') {
        format!("{scheme}://{authority}{location}")
    } else {
        let dir = base.path().rsplit_once('/').map_or("", |(d, _)| d);
        format!("{scheme}://{authority}{dir}/{location}")
    };
    target.parse::<Uri>().ok().map(|_| target)
}

/// The `host[:port]` of a URL, lower case.
pub(crate) fn authority(url: &str) -> Option<String> {
    url.parse::<Uri>()
        .ok()?
        .authority()
        .map(|a| a.as_str().to_ascii_lowercase())
}

/// A URL without its query, for errors, logs and the status page: blob redirects carry signed
/// URLs whose query grants access to the object.
pub(crate) fn redact(url: &str) -> String {
    match url.split_once('?') {
        Some((head, _)) => format!("{head}?…"),
        None => url.to_owned(),
    }
}

/// Request headers that may go to another host on a redirect: nothing that identifies or
/// authenticates the client (Authorization, Cookie, X-… tokens).
pub(crate) fn cross_host(headers: &HeaderMap) -> HeaderMap {
    const KEPT: &[header::HeaderName] = &[
        header::ACCEPT,
        header::ACCEPT_ENCODING,
        header::ACCEPT_LANGUAGE,
        header::RANGE,
        header::IF_RANGE,
        header::USER_AGENT,
    ];
    let mut out = HeaderMap::new();
    for name in KEPT {
        for value in headers.get_all(name) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_every_location_form() {
        let base = "https://reg.example/v2/a/blobs/sha256:abc";
        assert_eq!(
            resolve(base, "https://cdn.example/x?sig=1").unwrap(),
            "https://cdn.example/x?sig=1"
        );
        assert_eq!(
            resolve(base, "//cdn.example/y").unwrap(),
            "https://cdn.example/y"
        );
        assert_eq!(
            resolve(base, "/other/path").unwrap(),
            "https://reg.example/other/path"
        );
        assert_eq!(
            resolve(base, "rel").unwrap(),
            "https://reg.example/v2/a/blobs/rel"
        );
        assert!(resolve(base, "https://bad host/").is_none());
    }

    #[test]
    fn credentials_stay_on_their_host() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer t"),
            ("cookie", "session=1"),
            ("x-registry-auth", "abc"),
            ("accept", "application/json"),
            ("range", "bytes=0-0"),
            ("user-agent", "docker/20"),
        ] {
            h.append(header::HeaderName::from_static(k), v.parse().unwrap());
        }
        let out = cross_host(&h);
        let mut names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["accept", "range", "user-agent"]);
    }
}
