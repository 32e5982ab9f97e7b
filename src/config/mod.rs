//! Configuration: raw TOML → validated [`Config`], and the embedded default (`default.toml`).
//!
//! Nothing here touches the network or the CA. The parts, one job each:
//! - `raw`: the file as written (serde, `deny_unknown_fields`, values [`toml::Spanned`]);
//! - `types`: the validated [`Config`] and its per-subsystem types;
//! - `validate`: raw → validated, every problem recorded with its line (listeners, DNS, log);
//! - `limits`: the `[cache]` and `[limits]` tables; `rules`: `[[cache.rule]]` (freshness per
//!   reference) with its own matchers, `glob` and `tag_regex` (`tags = "/…/"`); `registry`: the `[[registry]]` list and the
//!   embedded default one; `mirrors`: a registry's verified fallback sources; `credentials`:
//!   password files, Docker `config.json`, [`Secret`];
//! - `fleet`: `[fleet]` (peers, node, peer_timeout), [`FleetConfig`];
//! - `storage`: `[storage]`, the shared tier's store and its credentials;
//! - `proxy`: `upstream.proxy` / `upstream.no_proxy` (or `HTTPS_PROXY` / `NO_PROXY`), [`ProxyUrl`];
//! - `values`: single-value parsers (sizes, durations, addresses, URLs) and [`ValueError`];
//! - `problem`: [`Problem`], and the [`Error`] printed as `file:line: why` by `config check`.

use std::path::{Path, PathBuf};

mod credentials;
mod fleet;
mod glob;
mod limits;
mod mirrors;
mod problem;
mod proxy;
mod raw;
mod registry;
mod rules;
mod storage;
mod tag_regex;
mod types;
mod validate;
mod values;
mod warm;

pub use credentials::{CredentialError, Credentials, Secret};
pub use fleet::FleetConfig;
pub use glob::{Glob, GlobError};
pub use mirrors::Mirrors;
pub use problem::{Error, Located, Problem, Source};
pub use proxy::{mask as mask_proxy_url, ProxyError, ProxyUrl};
pub use rules::{rule_for, ManifestTtl, TagPattern, TagRule, FOREVER};
pub use storage::{S3Config, S3Credentials, StorageConfig};
pub use tag_regex::{RegexError, TagRegex};
pub use types::{
    AccessFormat, AdminConfig, CacheConfig, Config, DnsConfig, LimitsConfig, LogConfig, LogFormat,
    Registry, TlsConfig, UpstreamConfig,
};
pub use values::ValueError;
pub use warm::WarmJob;

use problem::line_of;
use raw::RawConfig;
use validate::Validator;

/// The embedded default configuration, printed by `regcache config default`.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

/// Picks the config file: `explicit` (`--config`, which clap also fills from
/// `$REGCACHE_CONFIG`), else `./regcache.toml` if present, else `/etc/regcache/regcache.toml` if
/// present, else none (the embedded default).
pub fn locate(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = explicit {
        return Some(path.to_owned());
    }
    ["regcache.toml", "/etc/regcache/regcache.toml"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// Loads and validates the file `path`, or the embedded default when `path` is `None`.
pub fn load(path: Option<&Path>) -> Result<Config, Error> {
    match path {
        None => parse(DEFAULT_TOML, Source::Embedded),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
                path: path.to_owned(),
                source,
            })?;
            parse(&text, Source::File(path.to_owned()))
        }
    }
}

/// Parses and validates config text. All validation problems are reported together.
pub fn parse(text: &str, source: Source) -> Result<Config, Error> {
    parse_env(text, source, &storage::process_env)
}

/// [`parse`], reading the environment through `env` (`[storage]`'s AWS variables).
pub(crate) fn parse_env(
    text: &str,
    source: Source,
    env: storage::Env<'_>,
) -> Result<Config, Error> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| Error::Invalid {
        problems: vec![Problem {
            line: e.span().map_or(0, |s| line_of(text, s.start)),
            message: e.message().trim().to_owned(),
        }],
        origin: source.clone(),
    })?;
    let mut v = Validator::new(text);
    v.env = env;
    let config = v.config(raw);
    v.problems.sort_by_key(|p| p.line);
    if v.problems.is_empty() {
        Ok(config)
    } else {
        Err(Error::Invalid {
            origin: source,
            problems: v.problems,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The problems of `text`, which must be invalid.
    pub(crate) fn problems(text: &str) -> Vec<Problem> {
        match parse(text, Source::Embedded) {
            Err(Error::Invalid { problems, .. }) => problems,
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn empty_file_means_all_defaults() {
        let c = parse("", Source::Embedded).unwrap();
        assert_eq!(c.registries.len(), 9);
        assert_eq!(c.dns.ttl, 60);
        assert_eq!(c.tls.listen, ["0.0.0.0:443".parse().unwrap()]);
    }

    #[test]
    fn rendered_errors_say_file_and_line() {
        let err = parse(
            "[tls]\nlisten = [\"x\"]\n",
            Source::File("site.toml".into()),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("site.toml:2: tls.listen: \"x\""), "{text}");
    }

    #[test]
    fn syntax_errors_name_their_line() {
        let p = problems("[dns]\nttl = = 3\n");
        assert_eq!(p[0].line, 2);
    }
}
