//! `upstream.proxy` and `upstream.no_proxy`: an HTTP proxy for every upstream request
//! ([`ProxyUrl`], whose password never prints), defaulting to the `HTTPS_PROXY` / `https_proxy`
//! and `NO_PROXY` / `no_proxy` environment variables when the keys are absent.

use std::fmt;

use toml::Spanned;

use super::validate::Validator;
use super::{Problem, Secret};

/// A validated `http://[user:pass@]host:port` proxy. `Display` and `Debug` mask the password:
/// `http://user:***@host:port`.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    /// `host:port` as written (an IPv6 host in brackets), without the user part.
    authority: String,
    user: Option<String>,
    password: Option<Secret>,
}

impl ProxyUrl {
    /// `host:port`, to connect to.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The user and password (percent-decoded) for `Proxy-Authorization: Basic`, if given.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        let user = self.user.as_deref()?;
        Some((user, self.password.as_ref().map_or("", Secret::expose)))
    }
}

impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.user, &self.password) {
            (Some(user), Some(_)) => write!(f, "http://{user}:***@{}", self.authority),
            (Some(user), None) => write!(f, "http://{user}@{}", self.authority),
            _ => write!(f, "http://{}", self.authority),
        }
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a proxy URL or a `no_proxy` entry was refused. The texts are part of `config check`'s
/// output; none of them contains the password.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyError {
    #[error("not a URL: write http://[user:pass@]host:port")]
    Url,
    #[error(
        "https:// proxies are not supported (regcache reaches the proxy in clear and tunnels \
         TLS through it with CONNECT): write http://[user:pass@]host:port"
    )]
    Https,
    #[error("unsupported proxy scheme {0:?}: write http://[user:pass@]host:port")]
    Scheme(String),
    #[error("give the port: http://host:3128")]
    NoPort,
    #[error("give only http://[user:pass@]host:port, no path or query")]
    HasPath,
    #[error("the user or password has a bad %-escape")]
    Escape,
    #[error("write a host name, a domain (.example.com), an IP address or a CIDR")]
    NoProxyEntry,
}

/// Parses `http://[user:pass@]host:port`; user and password may be %-escaped.
pub fn parse_proxy(s: &str) -> Result<ProxyUrl, ProxyError> {
    let (scheme, rest) = s.split_once("://").ok_or(ProxyError::Url)?;
    match scheme.to_ascii_lowercase().as_str() {
        "http" => {}
        "https" => return Err(ProxyError::Https),
        other => return Err(ProxyError::Scheme(other.to_owned())),
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#']) {
        return Err(ProxyError::HasPath);
    }
    let (userinfo, authority) = match rest.rsplit_once('@') {
        Some((u, a)) => (Some(u), a),
        None => (None, rest),
    };
    let uri: http::Uri = format!("http://{authority}/")
        .parse()
        .map_err(|_| ProxyError::Url)?;
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or(ProxyError::Url)?;
    if host.contains('@') {
        return Err(ProxyError::Url);
    }
    let port = uri.port_u16().ok_or(ProxyError::NoPort)?;
    let (user, password) = match userinfo.map(|u| u.split_once(':').unwrap_or((u, ""))) {
        None => (None, None),
        Some((user, pass)) => (
            Some(decode(user)?),
            (!pass.is_empty())
                .then(|| decode(pass).map(Secret::new))
                .transpose()?,
        ),
    };
    Ok(ProxyUrl {
        authority: format!("{host}:{port}"),
        user,
        password,
    })
}

fn decode(s: &str) -> Result<String, ProxyError> {
    let bytes: Vec<u8> = percent_encoding::percent_decode_str(s).collect();
    let bad_escape = s
        .split('%')
        .skip(1)
        .any(|h| h.len() < 2 || !h.as_bytes()[..2].iter().all(u8::is_ascii_hexdigit));
    if bad_escape {
        return Err(ProxyError::Escape);
    }
    String::from_utf8(bytes).map_err(|_| ProxyError::Escape)
}

/// One `no_proxy` entry: a name, `.domain`, `*`, an IP address or a CIDR (curl's rules).
fn parse_no_proxy(s: &str) -> Result<String, ProxyError> {
    let ok = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_*:/[]".contains(c));
    ok.then(|| s.to_owned()).ok_or(ProxyError::NoProxyEntry)
}

/// `s` with the password of a URL-looking value replaced by `***` (for problem messages).
pub fn mask(s: &str) -> String {
    let Some((scheme, rest)) = s.split_once("://") else {
        return s.to_owned();
    };
    // The last '@' anywhere, as parsing takes it: a password may hold an unescaped '/', '?' or
    // '#' (such a URL is refused, and its problem message must not show the password either).
    let Some(at) = rest.rfind('@') else {
        return s.to_owned();
    };
    match rest[..at].split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***{}", &rest[at..]),
        None => s.to_owned(),
    }
}

/// The environment variables the keys default to.
pub(super) fn from_env(name: &str) -> Option<String> {
    let lower = name.to_ascii_lowercase();
    (std::env::var(name).ok()).or_else(|| std::env::var(lower).ok())
}

impl Validator<'_> {
    /// `upstream.proxy` and `upstream.no_proxy`; absent keys are read from the environment
    /// through `env` (`HTTPS_PROXY`, `NO_PROXY`; their lowercase forms are `env`'s business).
    pub(super) fn proxy(
        &mut self,
        proxy: Option<Spanned<String>>,
        no_proxy: Option<Vec<Spanned<String>>>,
        env: impl Fn(&str) -> Option<String>,
    ) -> (Option<ProxyUrl>, Vec<String>) {
        let url = match proxy {
            Some(p) if p.get_ref().is_empty() => None,
            Some(p) => parse_proxy(p.get_ref())
                .map_err(|why| {
                    let shown = mask(p.get_ref());
                    self.problem(&p, format!("upstream.proxy: {shown:?}: {why}"));
                })
                .ok(),
            None => self.env_value("HTTPS_PROXY", &env, parse_proxy),
        };
        let no_proxy = match no_proxy {
            Some(list) => self.each("upstream.no_proxy", &list, parse_no_proxy),
            None => (self.env_value("NO_PROXY", &env, |s| {
                (s.split(',').map(str::trim).filter(|e| !e.is_empty()))
                    .map(parse_no_proxy)
                    .collect::<Result<Vec<_>, _>>()
            }))
            .unwrap_or_default(),
        };
        (url, no_proxy)
    }

    /// An environment variable's value, parsed; a bad one is a problem without a line.
    fn env_value<T>(
        &mut self,
        name: &str,
        env: &impl Fn(&str) -> Option<String>,
        parse: impl Fn(&str) -> Result<T, ProxyError>,
    ) -> Option<T> {
        let value = env(name).filter(|v| !v.trim().is_empty())?;
        match parse(value.trim()) {
            Ok(v) => Some(v),
            Err(why) => {
                let message = format!(
                    "{name} (environment, used as upstream.{}): {:?}: {why}",
                    name.to_ascii_lowercase(),
                    mask(&value)
                );
                self.problems.push(Problem { line: 0, message });
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::problems;
    use super::super::{parse, Source};
    use super::*;

    #[test]
    fn proxy_urls_parse_and_print_masked() {
        let p = parse_proxy("http://alice:s%40cret@proxy.corp:3128").unwrap();
        assert_eq!(p.authority(), "proxy.corp:3128");
        assert_eq!(p.credentials(), Some(("alice", "s@cret")));
        assert_eq!(p.to_string(), "http://alice:***@proxy.corp:3128");
        assert_eq!(format!("{p:?}"), "http://alice:***@proxy.corp:3128");
        let p = parse_proxy("http://[::1]:8080/").unwrap();
        assert_eq!((p.authority(), p.credentials()), ("[::1]:8080", None));
        assert_eq!(p.to_string(), "http://[::1]:8080");
        let p = parse_proxy("HTTP://bob@10.0.0.1:3128").unwrap();
        assert_eq!(p.credentials(), Some(("bob", "")));
        assert_eq!(p.to_string(), "http://bob@10.0.0.1:3128");
    }

    #[test]
    fn bad_proxy_urls_say_why() {
        let cases = [
            ("proxy.corp:3128", ProxyError::Url),
            ("https://proxy.corp:3128", ProxyError::Https),
            (
                "socks5://proxy.corp:1080",
                ProxyError::Scheme("socks5".into()),
            ),
            ("http://proxy.corp", ProxyError::NoPort),
            ("http://proxy.corp:3128/x", ProxyError::HasPath),
            ("http://a:%zz@proxy.corp:3128", ProxyError::Escape),
            ("http://:3128", ProxyError::Url),
        ];
        for (text, want) in cases {
            assert_eq!(parse_proxy(text).unwrap_err(), want, "{text}");
        }
    }

    #[test]
    fn masking_hides_only_the_password() {
        assert_eq!(mask("http://u:pw@h:1/x"), "http://u:***@h:1/x");
        assert_eq!(mask("http://u@h:1"), "http://u@h:1");
        // Over-masking a path with an '@' is harmless; a password with a '/' must never show.
        assert_eq!(mask("http://h:1/a@b"), "http://h:***@b");
        assert_eq!(
            mask("http://alice:pa/ss@proxy:3128"),
            "http://alice:***@proxy:3128"
        );
        assert_eq!(
            mask("http://alice:pa?s#s@proxy:3128"),
            "http://alice:***@proxy:3128"
        );
        assert_eq!(mask("nonsense"), "nonsense");
    }

    #[test]
    fn config_problems_name_the_line_and_never_the_password() {
        let text =
            "[upstream]\nproxy = \"https://u:hunter2@p:3128\"\nno_proxy = [\"ok.io\", \"a b\"]\n";
        let p = problems(text);
        assert_eq!(p.iter().map(|p| p.line).collect::<Vec<_>>(), [2, 3]);
        assert!(p[0].message.contains("not supported"), "{}", p[0].message);
        assert!(p[0].message.contains("u:***@p:3128"), "{}", p[0].message);
        assert!(p.iter().all(|p| !p.message.contains("hunter2")));
        let c = parse(
            "[upstream]\nproxy = \"http://u:pw@p:3128\"\nno_proxy = [\".corp\", \"10.0.0.0/8\"]\n",
            Source::Embedded,
        )
        .unwrap();
        assert!(
            !format!("{c:?}").contains("pw"),
            "Debug of the whole config masks it"
        );
        assert_eq!(c.upstream.proxy.unwrap().to_string(), "http://u:***@p:3128");
        assert_eq!(c.upstream.no_proxy, [".corp", "10.0.0.0/8"]);
    }

    fn resolve(
        toml_proxy: Option<&str>,
        env: &[(&str, &str)],
    ) -> (Option<ProxyUrl>, Vec<String>, Vec<Problem>) {
        let mut v = Validator::new("");
        let raw = toml_proxy.map(|s| Spanned::new(0..0, s.to_owned()));
        let env = |name: &str| (env.iter().find(|(k, _)| *k == name)).map(|(_, v)| v.to_string());
        let (url, no) = v.proxy(raw, None, env);
        (url, no, v.problems)
    }

    #[test]
    fn absent_keys_come_from_the_environment() {
        let env = [
            ("HTTPS_PROXY", "http://e:pw@envproxy:3128"),
            ("NO_PROXY", " a.io, .b.io ,"),
        ];
        let (url, no, problems) = resolve(None, &env);
        assert_eq!(url.unwrap().to_string(), "http://e:***@envproxy:3128");
        assert_eq!(no, ["a.io", ".b.io"]);
        assert!(problems.is_empty());
        // A key in the file wins; an empty one turns the proxy off.
        let (url, _, _) = resolve(Some("http://file:3128"), &env);
        assert_eq!(url.unwrap().authority(), "file:3128");
        assert!(resolve(Some(""), &env).0.is_none());
        assert!(resolve(None, &[]).0.is_none());
        let (url, _, problems) = resolve(None, &[("HTTPS_PROXY", "ftp://x:pw@h:1")]);
        assert!(url.is_none());
        assert_eq!(problems[0].line, 0);
        assert!(problems[0].message.starts_with("HTTPS_PROXY (environment"));
        assert!(
            !problems[0].message.contains(":pw@"),
            "{}",
            problems[0].message
        );
    }
}
