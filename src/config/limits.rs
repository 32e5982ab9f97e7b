//! The `[cache]` and `[limits]` tables: sizes, TTLs, timeouts and counts, each checked against
//! its bounds and defaulted when absent.

use toml::Spanned;

use super::raw::{RawCache, RawLimits};
use super::validate::Validator;
use super::values::{parse_duration, parse_size, parse_timeout};
use super::{CacheConfig, LimitsConfig};

impl Validator<'_> {
    pub(super) fn cache(&mut self, raw: RawCache, state_dir: &str) -> CacheConfig {
        let RawCache {
            dir,
            max_size,
            manifest_ttl,
            auth_ttl,
            offline,
            offline_auth_window,
            rule,
        } = raw;
        let dir = dir.unwrap_or_else(|| "{state_dir}/cache".into());
        CacheConfig {
            dir: dir.replace("{state_dir}", state_dir).into(),
            max_size: self.value("cache.max_size", max_size, "50GiB", parse_size),
            manifest_ttl: self.value("cache.manifest_ttl", manifest_ttl, "60s", parse_duration),
            auth_ttl: self.value("cache.auth_ttl", auth_ttl, "60s", parse_duration),
            offline: offline.unwrap_or(true),
            offline_auth_window: self.value(
                "cache.offline_auth_window",
                offline_auth_window,
                "24h",
                parse_duration,
            ),
            rules: self.rules(rule),
        }
    }

    pub(super) fn limits(&mut self, raw: RawLimits) -> LimitsConfig {
        let RawLimits {
            max_connections,
            first_byte_timeout,
            header_read_timeout,
            idle_timeout,
            h2_keepalive_interval,
            max_fills,
            max_fills_per_registry,
        } = raw;
        let d = LimitsConfig::default();
        let key = |k: &str| format!("limits.{k}");
        // Checked in the order of the fields, so that problems on one line (an inline table)
        // keep their order.
        let max_connections =
            self.count(&key("max_connections"), max_connections, d.max_connections);
        let mut timeout = |k: &str, item: Option<Spanned<String>>, default: &str| {
            self.value(&key(k), item, default, parse_timeout)
        };
        let first_byte_timeout = timeout("first_byte_timeout", first_byte_timeout, "10s");
        let header_read_timeout = timeout("header_read_timeout", header_read_timeout, "30s");
        let idle_timeout = timeout("idle_timeout", idle_timeout, "60s");
        let keepalive = self.value(
            &key("h2_keepalive_interval"),
            h2_keepalive_interval,
            "30s",
            parse_duration,
        );
        LimitsConfig {
            max_connections,
            first_byte_timeout,
            header_read_timeout,
            idle_timeout,
            h2_keepalive_interval: Some(keepalive).filter(|d| !d.is_zero()),
            max_fills: self.count(&key("max_fills"), max_fills, d.max_fills),
            max_fills_per_registry: self.count(
                &key("max_fills_per_registry"),
                max_fills_per_registry,
                d.max_fills_per_registry,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::super::tests::problems;
    use super::super::{parse, LimitsConfig, Source};

    #[test]
    fn cache_settings_parse_sizes_and_durations() {
        let c = parse(
            "state_dir = \"/srv/rc\"\n[cache]\nmax_size = \"2GiB\"\nmanifest_ttl = \"5m\"\noffline = false\n",
            Source::Embedded,
        )
        .unwrap();
        assert_eq!(c.cache.dir, PathBuf::from("/srv/rc/cache"));
        assert_eq!(c.cache.max_size, 2 << 30);
        assert_eq!(c.cache.manifest_ttl, Duration::from_secs(300));
        assert_eq!(c.cache.auth_ttl, Duration::from_secs(60));
        assert_eq!(c.cache.offline_auth_window, Duration::from_secs(86400));
        assert!(!c.cache.offline);
        let p = problems("[cache]\nmax_size = \"lots\"\nauth_ttl = \"60\"\n");
        assert_eq!(p.iter().map(|p| p.line).collect::<Vec<_>>(), [2, 3]);
        assert!(p[1].message.contains("unit"), "{}", p[1].message);
    }

    #[test]
    fn limits_have_defaults() {
        let c = parse("", Source::Embedded).unwrap();
        assert_eq!(c.limits, LimitsConfig::default());
        assert_eq!(c.limits.max_connections, 4096);
        assert_eq!(c.limits.first_byte_timeout, Duration::from_secs(10));
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(60));
        assert_eq!(
            c.limits.h2_keepalive_interval,
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            (c.limits.max_fills, c.limits.max_fills_per_registry),
            (64, 16)
        );
        let c = parse(
            "[limits]\nmax_connections = 2\nfirst_byte_timeout = \"300ms\"\n\
             idle_timeout = \"2m\"\nh2_keepalive_interval = \"0s\"\nmax_fills = 8\n\
             max_fills_per_registry = 2\nheader_read_timeout = \"5s\"\n",
            Source::Embedded,
        )
        .unwrap();
        let l = &c.limits;
        assert_eq!(l.max_connections, 2);
        assert_eq!(l.first_byte_timeout, Duration::from_millis(300));
        assert_eq!(l.idle_timeout, Duration::from_secs(120));
        assert_eq!(l.header_read_timeout, Duration::from_secs(5));
        assert_eq!(l.h2_keepalive_interval, None);
        assert_eq!((l.max_fills, l.max_fills_per_registry), (8, 2));
    }

    #[test]
    fn limits_name_bad_values_by_line() {
        let p = problems(
            "[limits]\nmax_connections = 0\nfirst_byte_timeout = \"10\"\n\
             idle_timeout = \"0s\"\nmax_fills = -3\nmax_fills_per_registry = \"x\"\n",
        );
        assert_eq!(p.len(), 1, "a type error stops parsing: {p:?}");
        assert_eq!(p[0].line, 6);
        let p = problems(
            "[limits]\nmax_connections = 0\nfirst_byte_timeout = \"10\"\n\
             idle_timeout = \"0s\"\nmax_fills = -3\n",
        );
        let lines: Vec<usize> = p.iter().map(|p| p.line).collect();
        assert_eq!(lines, [2, 3, 4, 5], "{p:?}");
        assert!(
            p[0].message.starts_with("limits.max_connections: 0"),
            "{}",
            p[0].message
        );
        assert!(p[1].message.contains("unit"), "{}", p[1].message);
        assert!(p[2].message.contains("more than zero"), "{}", p[2].message);
        assert!(
            p[3].message.contains("limits.max_fills"),
            "{}",
            p[3].message
        );
    }
}
