//! The `[[registry]]` list: each entry's host, aliases, upstream and credentials, no name listed
//! twice; and the embedded default list, used when the file has none.

use toml::Spanned;

use super::raw::{RawConfig, RawRegistry};
use super::validate::Validator;
use super::values::parse_upstream;
use super::{Problem, Registry, DEFAULT_TOML};
use crate::names::NamePattern;

impl Validator<'_> {
    pub(super) fn registries(&mut self, list: Vec<RawRegistry>) -> Vec<Registry> {
        let mut seen: Vec<NamePattern> = Vec::new();
        let out: Vec<Registry> = (list.into_iter())
            .filter_map(|raw| self.registry(raw, &mut seen))
            .collect();
        if out.is_empty() && self.problems.is_empty() {
            self.problems.push(Problem {
                line: 0,
                message: "the [[registry]] list is empty: name at least one registry, or remove \
                          the list to use the default one"
                    .into(),
            });
        }
        out
    }

    fn registry(&mut self, raw: RawRegistry, seen: &mut Vec<NamePattern>) -> Option<Registry> {
        let RawRegistry {
            host,
            aliases,
            upstream,
            username,
            password_file,
            credentials_file,
            mirrors,
            mirrors_first,
        } = raw;
        let host_name = self.registry_host(&host)?;
        let aliases = self.registry_aliases(&host_name, &host, &aliases, seen);
        let upstream = match upstream {
            None => format!("https://{host_name}")
                .parse()
                .expect("a valid host makes a valid URL"),
            Some(u) => match parse_upstream(u.get_ref()) {
                Ok(uri) => uri,
                Err(why) => {
                    self.problem(&u, format!("registry.upstream: {:?}: {why}", u.get_ref()));
                    return None;
                }
            },
        };
        let credentials =
            self.credentials(&host, &aliases, username, password_file, credentials_file);
        let mirrors = self.mirrors(&host, &upstream, &mirrors, mirrors_first);
        Some(Registry {
            host: host_name,
            aliases,
            upstream,
            credentials,
            mirrors,
        })
    }

    /// `registry.host`: an exact name (wildcards belong in the aliases).
    fn registry_host(&mut self, host: &Spanned<String>) -> Option<String> {
        match NamePattern::parse(host.get_ref()) {
            Ok(NamePattern::Exact(name)) => Some(name),
            Ok(NamePattern::Suffix(_)) => {
                let msg = "registry.host must be an exact name; put wildcards in aliases".into();
                self.problem(host, msg);
                None
            }
            Err(e) => {
                self.problem(host, format!("registry.host: {e}"));
                None
            }
        }
    }

    /// The valid aliases; each name (host included) is checked against those `seen` before.
    fn registry_aliases(
        &mut self,
        host_name: &str,
        host: &Spanned<String>,
        aliases: &[Spanned<String>],
        seen: &mut Vec<NamePattern>,
    ) -> Vec<NamePattern> {
        let mut names = vec![(NamePattern::Exact(host_name.to_owned()), host)];
        for alias in aliases {
            match NamePattern::parse(alias.get_ref()) {
                Ok(p) => names.push((p, alias)),
                Err(e) => self.problem(alias, format!("registry.aliases: {e}")),
            }
        }
        for (pattern, at) in &names {
            if seen.contains(pattern) {
                let msg = format!("{pattern} is listed twice among the registries");
                self.problem(*at, msg);
            }
            seen.push(pattern.clone());
        }
        names.into_iter().skip(1).map(|(p, _)| p).collect()
    }
}

/// The registries of the embedded default, for a file without a `[[registry]]` list.
pub(super) fn default_registries() -> Vec<Registry> {
    let raw: RawConfig = toml::from_str(DEFAULT_TOML).expect("embedded default config parses");
    let mut v = Validator::new(DEFAULT_TOML);
    let list = v.registries(raw.registry.expect("embedded default lists registries"));
    assert!(
        v.problems.is_empty(),
        "embedded default registries are valid"
    );
    list
}

#[cfg(test)]
mod tests {
    use super::super::{parse, Source, DEFAULT_TOML};

    #[test]
    fn embedded_default_is_valid_and_lists_the_registries() {
        let c = parse(DEFAULT_TOML, Source::Embedded).unwrap();
        let hosts: Vec<_> = c.registries.iter().map(|r| r.host.as_str()).collect();
        assert_eq!(
            hosts,
            [
                "registry-1.docker.io",
                "auth.docker.io",
                "nvcr.io",
                "ghcr.io",
                "gcr.io",
                "quay.io",
                "registry.k8s.io",
                "mcr.microsoft.com",
                "public.ecr.aws"
            ]
        );
        assert_eq!(c.registries[0].aliases.len(), 2);
        assert_eq!(c.registries[2].upstream, "https://nvcr.io/");
        assert_eq!(c.dns.listen, ["0.0.0.0:53".parse().unwrap()]);
        assert_eq!(c.admin.listen, "127.0.0.1:9090".parse().unwrap());
    }

    #[test]
    fn a_registry_list_replaces_the_default() {
        let c = parse("[[registry]]\nhost = \"example.com\"\n", Source::Embedded).unwrap();
        assert_eq!(c.registries.len(), 1);
        assert_eq!(c.registries[0].upstream, "https://example.com/");
    }
}
