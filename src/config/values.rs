//! Parsers for single config values: sizes, durations, timeouts, addresses, CIDRs, upstream URLs.
//!
//! Each returns a [`ValueError`] whose text completes a problem line
//! (`cache.max_size: "lots": write a size such as …`); the key and the value are added by the
//! validator. No I/O.

use std::net::{AddrParseError, IpAddr, SocketAddr};
use std::time::Duration;

use http::Uri;
use ipnet::IpNet;

/// Why one value was refused. The texts are part of `config check`'s output: keep them.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    #[error("write a size such as \"50GiB\" or \"500MB\"")]
    SizeNumber,
    #[error("unknown unit {0:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)")]
    SizeUnit(String),
    #[error("too large")]
    TooLarge,
    #[error("write a duration such as \"60s\", \"5m\" or \"24h\"")]
    DurationNumber,
    #[error("add a unit: ms, s, m, h or d")]
    NoDurationUnit,
    #[error("unknown unit {0:?} (use ms, s, m, h or d)")]
    DurationUnit(String),
    #[error("must be more than zero")]
    Zero,
    #[error("{0} (write IP:port, e.g. \"0.0.0.0:443\" or \"[::]:443\")")]
    Listen(AddrParseError),
    #[error("not an IPv4 address")]
    NotIpv4,
    #[error("not an IPv6 address")]
    NotIpv6,
    #[error("not a CIDR such as \"10.0.0.0/8\" or an IP address")]
    Cidr,
    #[error("not \"IP:port\" or an IP address")]
    Resolver,
    #[error("not a URL ({0})")]
    Url(http::uri::InvalidUri),
    #[error("the upstream must be an https:// URL")]
    NotHttps,
    #[error("the URL has no host")]
    NoHost,
    #[error("give only scheme and host (and port), no path")]
    HasPath,
    #[error("longer than 100 years (for a tag that never changes, write \"forever\")")]
    TooLong,
    /// A word outside a fixed choice of two (`log.format`).
    #[error("use {0:?} or {1:?}")]
    NotOneOf(&'static str, &'static str),
}

/// "50GiB", "512MiB", "10GB", "1024" (bytes).
pub fn parse_size(s: &str) -> Result<u64, ValueError> {
    let (n, unit) = number_and_unit(s).ok_or(ValueError::SizeNumber)?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1000 * 1000,
        "mib" => 1 << 20,
        "g" | "gb" => 1000 * 1000 * 1000,
        "gib" => 1 << 30,
        "t" | "tb" => 1000 * 1000 * 1000 * 1000,
        "tib" => 1 << 40,
        other => return Err(ValueError::SizeUnit(other.to_owned())),
    };
    n.checked_mul(mult).ok_or(ValueError::TooLarge)
}

/// The longest duration any key takes: every one is added to a clock somewhere.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

/// "60s", "5m", "24h", "7d", "250ms"; at most [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, ValueError> {
    let (n, unit) = number_and_unit(s).ok_or(ValueError::DurationNumber)?;
    let secs = |m: u64| Duration::from_secs(n.saturating_mul(m));
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86400),
        "" => return Err(ValueError::NoDurationUnit),
        other => return Err(ValueError::DurationUnit(other.to_owned())),
    };
    match d > MAX_DURATION {
        true => Err(ValueError::TooLong),
        false => Ok(d),
    }
}

/// The leading digits of `s` (trimmed) as a number, and the rest; `None` if there are none.
fn number_and_unit(s: &str) -> Option<(u64, &str)> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    Some((number.parse().ok()?, unit))
}

/// A duration that is not zero (a zero timeout would close every connection at once).
pub fn parse_timeout(s: &str) -> Result<Duration, ValueError> {
    match parse_duration(s)? {
        d if d.is_zero() => Err(ValueError::Zero),
        d => Ok(d),
    }
}

/// A listening address, `IP:port`.
pub fn parse_listen(s: &str) -> Result<SocketAddr, ValueError> {
    s.parse().map_err(ValueError::Listen)
}

pub fn parse_cidr(s: &str) -> Result<IpNet, ValueError> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net);
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| ValueError::Cidr)
}

/// A DNS resolver: `IP:port`, or an IP address (port 53).
pub fn parse_resolver(s: &str) -> Result<SocketAddr, ValueError> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    s.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| ValueError::Resolver)
}

/// An upstream base URL: https, a host, no path or query.
pub fn parse_upstream(s: &str) -> Result<Uri, ValueError> {
    let uri: Uri = s.parse().map_err(ValueError::Url)?;
    if uri.scheme_str() != Some("https") {
        return Err(ValueError::NotHttps);
    }
    if uri.host().is_none() {
        return Err(ValueError::NoHost);
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(ValueError::HasPath);
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_take_units() {
        assert_eq!(parse_size("500MB").unwrap(), 500_000_000);
        assert_eq!(parse_size(" 10 kib ").unwrap(), 10 << 10);
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86400)
        );
        assert!(matches!(
            parse_size("99999999999TiB"),
            Err(ValueError::TooLarge)
        ));
        assert!(matches!(parse_size("-1"), Err(ValueError::SizeNumber)));
        assert!(matches!(parse_timeout("0s"), Err(ValueError::Zero)));
    }

    #[test]
    fn refusals_say_what_to_write() {
        let text = |r: Result<Duration, ValueError>| r.unwrap_err().to_string();
        assert_eq!(text(parse_duration("60")), "add a unit: ms, s, m, h or d");
        assert_eq!(
            text(parse_duration("5x")),
            "unknown unit \"x\" (use ms, s, m, h or d)"
        );
        assert_eq!(
            parse_size("5PB").unwrap_err().to_string(),
            "unknown unit \"pb\" (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
        );
        assert_eq!(
            ValueError::NotOneOf("text", "json").to_string(),
            "use \"text\" or \"json\""
        );
    }

    #[test]
    fn addresses_and_urls() {
        assert_eq!(
            parse_resolver("1.1.1.1").unwrap(),
            "1.1.1.1:53".parse().unwrap()
        );
        assert_eq!(parse_cidr("::1").unwrap(), "::1/128".parse().unwrap());
        assert!(matches!(parse_cidr("10.0.0.0/33"), Err(ValueError::Cidr)));
        assert!(parse_listen("x")
            .unwrap_err()
            .to_string()
            .ends_with("(write IP:port, e.g. \"0.0.0.0:443\" or \"[::]:443\")"));
        assert!(matches!(
            parse_upstream("http://a.io"),
            Err(ValueError::NotHttps)
        ));
        assert!(matches!(
            parse_upstream("https://a.io/x"),
            Err(ValueError::HasPath)
        ));
        assert!(matches!(
            parse_upstream("https://a.io?q"),
            Err(ValueError::HasPath)
        ));
        assert_eq!(
            parse_upstream("https://a.io:444").unwrap(),
            "https://a.io:444/"
        );
    }
}

#[cfg(test)]
mod bound_tests {
    use super::*;

    #[test]
    fn durations_past_a_century_are_refused_before_they_reach_a_clock() {
        assert_eq!(parse_duration("36500d").unwrap(), MAX_DURATION);
        for long in [
            "36501d",
            "200000000000000d",
            "18446744073709551615s",
            "18446744073709551615ms",
        ] {
            assert!(
                matches!(parse_duration(long), Err(ValueError::TooLong)),
                "{long}"
            );
        }
        let config = "[cache]\nmanifest_ttl = \"9999999999999999999s\"\n\
                      [[cache.rule]]\nmatch = \"x/*\"\nmanifest_ttl = \"200000000000000d\"\n";
        let text = crate::config::parse(config, crate::config::Source::Embedded)
            .unwrap_err()
            .to_string();
        assert!(
            text.contains(":2:") && text.contains(":5:") && text.contains("100 years"),
            "{text}"
        );
    }
}
