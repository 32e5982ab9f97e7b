//! Raw file → [`Config`]: the [`Validator`] that checks every value, records each bad one as a
//! [`Problem`] on its line and carries on with the default, so that one run reports them all.
//!
//! This file holds the validator's tools and the listener, DNS and log tables; the `[cache]` and
//! `[limits]` tables are in `limits`, the registry list in `registry`, credentials in
//! `credentials`.

use std::fmt;
use std::ops::RangeInclusive;
use std::path::PathBuf;

use toml::Spanned;

use super::problem::line_of;
use super::proxy::from_env;
use super::raw::{RawConfig, RawDns, RawLog};
use super::registry::default_registries;
use super::values::{parse_cidr, parse_listen, parse_resolver, ValueError};
use super::{
    AccessFormat, AdminConfig, Config, DnsConfig, LogConfig, LogFormat, Problem, TlsConfig,
    UpstreamConfig,
};
use crate::access::AccessList;

/// Checks one config text; `problems` gathers what is wrong with it, each with its line.
pub(super) struct Validator<'a> {
    text: &'a str,
    pub(super) problems: Vec<Problem>,
    /// The environment `[storage]` reads its credentials from (tests pass their own).
    pub(super) env: super::storage::Env<'a>,
}

impl<'a> Validator<'a> {
    pub(super) fn new(text: &'a str) -> Self {
        Self {
            text,
            problems: Vec::new(),
            env: &super::storage::process_env,
        }
    }

    /// Records a problem on the line of `at`.
    pub(super) fn problem<T>(&mut self, at: &Spanned<T>, message: String) {
        let line = line_of(self.text, at.span().start);
        self.problems.push(Problem { line, message });
    }

    /// Parses each entry with `parse`, recording a problem per bad entry.
    pub(super) fn each<T, E: fmt::Display>(
        &mut self,
        key: &str,
        items: &[Spanned<String>],
        parse: impl Fn(&str) -> Result<T, E>,
    ) -> Vec<T> {
        let mut out = Vec::new();
        for item in items {
            match parse(item.get_ref()) {
                Ok(value) => out.push(value),
                Err(e) => self.problem(item, format!("{key}: {:?}: {e}", item.get_ref())),
            }
        }
        out
    }

    /// Parses an optional value with `parse`, falling back to `default` (recording a problem).
    pub(super) fn value<T>(
        &mut self,
        key: &str,
        item: Option<Spanned<String>>,
        default: &str,
        parse: fn(&str) -> Result<T, ValueError>,
    ) -> T {
        let fallback = || parse(default).expect("defaults parse");
        let Some(item) = item else {
            return fallback();
        };
        match parse(item.get_ref()) {
            Ok(v) => v,
            Err(why) => {
                self.problem(&item, format!("{key}: {:?}: {why}", item.get_ref()));
                fallback()
            }
        }
    }

    /// A whole number within `range`, else `default` (recording a problem that names the range,
    /// followed by `unit`).
    pub(super) fn number(
        &mut self,
        key: &str,
        item: Option<Spanned<i64>>,
        range: RangeInclusive<i64>,
        unit: &str,
        default: i64,
    ) -> i64 {
        let Some(item) = item else {
            return default;
        };
        let n = *item.get_ref();
        if range.contains(&n) {
            return n;
        }
        let (lo, hi) = range.into_inner();
        self.problem(
            &item,
            format!("{key}: {n} is not between {lo} and {hi}{unit}"),
        );
        default
    }

    /// A count of at least 1 (and at most 1,000,000), else `default` (recording a problem).
    pub(super) fn count(&mut self, key: &str, item: Option<Spanned<i64>>, default: usize) -> usize {
        let n = self.number(key, item, 1..=1_000_000, "", default as i64);
        usize::try_from(n).unwrap_or(default)
    }

    pub(super) fn config(&mut self, raw: RawConfig) -> Config {
        // Destructured whole so that a new key is a compile error until it is validated here.
        let RawConfig {
            state_dir,
            dns,
            tls,
            upstream,
            admin,
            http,
            access,
            cache,
            limits,
            log,
            registry,
            warm,
            fleet,
            storage,
        } = raw;
        let registries = match registry {
            Some(list) => self.registries(list),
            None => default_registries(),
        };
        let state_dir = state_dir.unwrap_or_else(|| ".".into());
        let (proxy, no_proxy) = self.proxy(upstream.proxy, upstream.no_proxy, from_env);
        Config {
            log: self.log(log),
            cache: self.cache(cache, &state_dir),
            limits: self.limits(limits),
            state_dir: PathBuf::from(state_dir),
            dns: self.dns(dns),
            tls: TlsConfig {
                listen: self.listen("tls.listen", tls.listen, "0.0.0.0:443"),
            },
            upstream: UpstreamConfig {
                extra_ca: upstream.extra_ca.into_iter().map(PathBuf::from).collect(),
                proxy,
                no_proxy,
            },
            admin: AdminConfig {
                listen: self.value("admin.listen", admin.listen, "127.0.0.1:9090", parse_listen),
            },
            http_listen: self.each("http.listen", &http.listen, parse_listen),
            access: AccessList::new(self.each("access.allow", &access.allow, parse_cidr)),
            registries,
            warm: self.warm_jobs(warm),
            fleet: self.fleet(fleet),
            storage: self.storage(storage),
        }
    }

    /// Listening addresses; `default` when the key is absent (an empty list stays empty).
    fn listen(
        &mut self,
        key: &str,
        items: Option<Vec<Spanned<String>>>,
        default: &str,
    ) -> Vec<std::net::SocketAddr> {
        match items {
            None => vec![default.parse().expect("default listen address")],
            Some(items) => self.each(key, &items, parse_listen),
        }
    }

    fn log(&mut self, raw: RawLog) -> LogConfig {
        let RawLog {
            level,
            format,
            access_format,
            access_file,
        } = raw;
        let level = match level {
            None => "info".to_owned(),
            Some(l) => match tracing_subscriber::EnvFilter::try_new(l.get_ref()) {
                Ok(_) => l.into_inner(),
                Err(e) => {
                    self.problem(&l, format!("log.level: {:?}: {e}", l.get_ref()));
                    "info".to_owned()
                }
            },
        };
        LogConfig {
            level,
            format: self.value("log.format", format, "text", |s| match s {
                "text" => Ok(LogFormat::Text),
                "json" => Ok(LogFormat::Json),
                _ => Err(ValueError::NotOneOf("text", "json")),
            }),
            access_format: self.value("log.access_format", access_format, "main", |s| match s {
                "main" => Ok(AccessFormat::Main),
                "json" => Ok(AccessFormat::Json),
                _ => Err(ValueError::NotOneOf("main", "json")),
            }),
            access_file: access_file.filter(|f| !f.is_empty()).map(PathBuf::from),
        }
    }

    fn dns(&mut self, raw: RawDns) -> DnsConfig {
        let RawDns {
            listen,
            answer_ipv4,
            answer_ipv6,
            upstream,
            ttl,
        } = raw;
        let ttl = self.number("dns.ttl", ttl, 0..=604_800, " seconds", 60);
        DnsConfig {
            listen: self.listen("dns.listen", listen, "0.0.0.0:53"),
            answer_ipv4: self.each("dns.answer_ipv4", &answer_ipv4, |s| {
                s.parse().map_err(|_| ValueError::NotIpv4)
            }),
            answer_ipv6: self.each("dns.answer_ipv6", &answer_ipv6, |s| {
                s.parse().map_err(|_| ValueError::NotIpv6)
            }),
            upstream: self.each("dns.upstream", &upstream, parse_resolver),
            ttl: u32::try_from(ttl).unwrap_or(60),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::problems;
    use super::super::{parse, Source};

    #[test]
    fn unknown_keys_name_their_line() {
        let p = problems("state_dir = \"x\"\n[dns]\nlisten = []\nbogus = 1\n");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].line, 4);
        assert!(p[0].message.contains("bogus"), "{}", p[0].message);
    }

    #[test]
    fn every_bad_value_is_reported_with_its_line() {
        let text = "[dns]\nlisten = [\"0.0.0.0:53\", \"nonsense\"]\nttl = -1\n\
                    [access]\nallow = [\"10.0.0.0/33\"]\n\
                    [[registry]]\nhost = \"ok.io\"\nupstream = \"http://ok.io\"\n\
                    [[registry]]\nhost = \"ok.io\"\naliases = [\"bad name\"]\n";
        let p = problems(text);
        let lines: Vec<usize> = p.iter().map(|p| p.line).collect();
        assert_eq!(lines, [2, 3, 5, 8, 10, 11], "{p:?}");
        assert!(p[0].message.contains("dns.listen") && p[0].message.contains("nonsense"));
        assert!(p[3].message.contains("https"));
        assert!(p[4].message.contains("listed twice"), "{}", p[4].message);
        assert!(p[5].message.contains("bad name"), "{}", p[5].message);
    }

    #[test]
    fn log_settings() {
        use super::super::{AccessFormat, LogFormat};
        use std::path::PathBuf;
        let c = parse("", Source::Embedded).unwrap();
        assert_eq!(
            (c.log.level.as_str(), c.log.format, c.log.access_format),
            ("info", LogFormat::Text, AccessFormat::Main)
        );
        let c = parse("[log]\nformat = \"json\"\naccess_format = \"json\"\naccess_file = \"/var/log/rc.log\"\nlevel = \"regcache=debug\"\n", Source::Embedded).unwrap();
        assert_eq!(
            (c.log.format, c.log.access_format),
            (LogFormat::Json, AccessFormat::Json)
        );
        assert_eq!(c.log.access_file, Some(PathBuf::from("/var/log/rc.log")));
        let p = problems("[log]\naccess_format = \"combined\"\nlevel = \"a=b=c\"\n");
        assert_eq!(
            p.iter().map(|p| p.line).collect::<Vec<_>>(),
            [2, 3],
            "{p:?}"
        );
    }

    #[test]
    fn the_mirror_listener_is_off_unless_configured() {
        assert!(parse("", Source::Embedded).unwrap().http_listen.is_empty());
        let c = parse("[http]\nlisten = [\"0.0.0.0:80\"]\n", Source::Embedded).unwrap();
        assert_eq!(c.http_listen, ["0.0.0.0:80".parse().unwrap()]);
    }
}
