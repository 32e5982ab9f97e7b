//! A registry's verified fallback sources: `mirrors = ["https://mirror.gcr.io"]` and
//! `mirrors_first = true|false` in its `[[registry]]` entry. Each mirror is an `https://` base URL
//! like `upstream` (no path); the proxy asks them only for objects by digest (`proxy/fallback.rs`).

use http::Uri;
use toml::Spanned;

use super::validate::Validator;
use super::values::parse_upstream;

/// A registry's mirrors, in the order they are tried.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mirrors {
    /// `https://authority` of each mirror, no trailing slash; no duplicates, never the upstream.
    pub urls: Vec<String>,
    /// Ask the mirrors before the upstream (default: only when the upstream cannot answer).
    pub first: bool,
}

impl Validator<'_> {
    /// `registry.mirrors` and `registry.mirrors_first` of the registry `host`.
    pub(super) fn mirrors(
        &mut self,
        host: &Spanned<String>,
        upstream: &Uri,
        list: &[Spanned<String>],
        first: Option<Spanned<bool>>,
    ) -> Mirrors {
        let own = base(upstream);
        let mut urls: Vec<String> = Vec::new();
        for item in list {
            let url = match parse_upstream(item.get_ref()) {
                Ok(uri) => base(&uri),
                Err(why) => {
                    self.problem(
                        item,
                        format!("registry.mirrors: {:?}: {why}", item.get_ref()),
                    );
                    continue;
                }
            };
            let why = match () {
                _ if url == own => "is the registry's own upstream",
                _ if urls.contains(&url) => "is listed twice",
                _ => {
                    urls.push(url);
                    continue;
                }
            };
            self.problem(
                item,
                format!("registry.mirrors: {:?} {why}", item.get_ref()),
            );
        }
        let first = first.is_some_and(|f| {
            if *f.get_ref() && list.is_empty() {
                let msg = format!(
                    "registry.mirrors_first: {} lists no mirrors",
                    host.get_ref()
                );
                self.problem(&f, msg);
            }
            *f.get_ref()
        });
        Mirrors { urls, first }
    }
}

/// `https://authority` of a validated base URL, lower case, no trailing slash.
fn base(uri: &Uri) -> String {
    let authority = uri.authority().map_or("", |a| a.as_str());
    format!("https://{}", authority.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::super::{parse, Source};

    fn registry(keys: &str) -> String {
        format!("[[registry]]\nhost = \"registry-1.docker.io\"\n{keys}\n")
    }

    #[test]
    fn mirrors_are_https_bases_tried_in_order() {
        let text = registry("mirrors = [\"https://Mirror.gcr.io/\", \"https://m.example:8443\"]");
        let c = parse(&text, Source::Embedded).unwrap();
        let m = &c.registries[0].mirrors;
        assert_eq!(m.urls, ["https://mirror.gcr.io", "https://m.example:8443"]);
        assert!(!m.first, "mirrors_first defaults to false");
        let text = registry("mirrors = [\"https://mirror.gcr.io\"]\nmirrors_first = true");
        assert!(
            parse(&text, Source::Embedded).unwrap().registries[0]
                .mirrors
                .first
        );
        let none = parse(&registry(""), Source::Embedded).unwrap();
        assert!(none.registries[0].mirrors.urls.is_empty());
    }

    #[test]
    fn bad_mirrors_are_problems_on_their_line() {
        let cases = [
            ("mirrors = [\"http://mirror.gcr.io\"]", "https"),
            (
                "mirrors = [\"https://mirror.gcr.io/v2\"]",
                "registry.mirrors",
            ),
            (
                "mirrors = [\"https://registry-1.docker.io\"]",
                "own upstream",
            ),
            (
                "mirrors = [\"https://a.example\", \"https://A.example/\"]",
                "twice",
            ),
            ("mirrors_first = true", "lists no mirrors"),
        ];
        for (keys, want) in cases {
            let e = parse(&registry(keys), Source::Embedded)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want) && e.contains(":3:"), "{keys}: {e}");
        }
    }
}
