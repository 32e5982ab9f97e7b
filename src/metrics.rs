//! Prometheus metrics: every name in one place, prefixed `regcache_`, each with HELP text. The
//! subsystems record into [`Metrics`]; the admin listener encodes it at `/metrics`.
//!
//! A leaf: it imports nothing else from the crate.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// The content type of the exposition: the classic Prometheus text format, which every scraper
/// and `promtool check metrics` read.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a registry request was for.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Kind {
    Manifest,
    Blob,
    Token,
    Other,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub registry: String,
    pub method: String,
    pub kind: Kind,
    /// "2xx", "3xx", "4xx", "5xx".
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub registry: String,
    pub kind: Kind,
}

/// Where response bytes came from.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Source {
    Cache,
    Upstream,
    Local,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: Source,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegistryLabels {
    pub registry: String,
}

/// Why an upstream request failed.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Reason {
    Connect,
    Tls,
    Timeout,
    ServerError,
    RateLimited,
    Other,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    pub registry: String,
    pub reason: Reason,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Revalidation {
    Unchanged,
    Changed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RevalidationLabels {
    pub result: Revalidation,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum DnsOutcome {
    Intercepted,
    Forwarded,
    Nxdomain,
    Refused,
    /// Refused because the client is outside `access.allow` (those hickory refuses first are
    /// not counted).
    Denied,
    Error,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DnsLabels {
    /// The query type ("A", "AAAA", …).
    pub qtype: String,
    pub outcome: DnsOutcome,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Handshake {
    Ok,
    /// No certificate for the name asked (not ours, or no SNI).
    Refused,
    Failed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    pub outcome: Handshake,
}

/// A TCP listener, for the connection metrics.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Listener {
    Https,
    Mirror,
    Admin,
}

/// Why a connection was closed right after accept.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Rejected {
    /// The client is outside `access.allow`.
    Access,
    /// `limits.max_connections` (or the admin cap) was reached.
    Limit,
}

/// Which timeout closed a connection.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Expired {
    /// Nothing arrived within `limits.first_byte_timeout`.
    FirstByte,
    /// No request in flight for `limits.idle_timeout`.
    Idle,
    /// Idle when a new connection needed its slot at `limits.max_connections`.
    Evicted,
    /// A request in flight, but no byte moved for five minutes.
    Stalled,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: Listener,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectedLabels {
    pub listener: Listener,
    pub reason: Rejected,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExpiredLabels {
    pub listener: Listener,
    pub timeout: Expired,
}

/// Label values in lower case (`intercepted`, `server_error`), as Prometheus convention has them.
macro_rules! label_values {
    ($($ty:ident { $($variant:ident => $text:literal),+ $(,)? })+) => {$(
        impl EncodeLabelValue for $ty {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                use std::fmt::Write as _;
                encoder.write_str(match self { $(Self::$variant => $text),+ })
            }
        }
    )+};
}

label_values! {
    Kind { Manifest => "manifest", Blob => "blob", Token => "token", Other => "other" }
    Source { Cache => "cache", Upstream => "upstream", Local => "local" }
    Reason {
        Connect => "connect", Tls => "tls", Timeout => "timeout",
        ServerError => "5xx", RateLimited => "429", Other => "other",
    }
    Revalidation { Unchanged => "unchanged", Changed => "changed" }
    DnsOutcome {
        Intercepted => "intercepted", Forwarded => "forwarded", Nxdomain => "nxdomain",
        Refused => "refused", Denied => "denied", Error => "error",
    }
    Handshake { Ok => "ok", Refused => "refused", Failed => "failed" }
    Listener { Https => "https", Mirror => "mirror", Admin => "admin" }
    Rejected { Access => "access", Limit => "limit" }
    Expired { FirstByte => "first_byte", Idle => "idle", Evicted => "evicted", Stalled => "stalled" }
}

fn latency_histogram() -> Histogram {
    // 1 ms … ~65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_response_bytes: Family<SourceLabels, Counter>,
    pub http_duration: Family<KindLabels, Histogram, fn() -> Histogram>,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub cache_coalesced: Counter,
    pub cache_revalidations: Family<RevalidationLabels, Counter>,
    pub cache_stale: Counter,
    pub cache_evictions: Counter,
    pub cache_digest_mismatches: Counter,
    pub cache_write_errors: Counter,
    /// Cold requests passed through uncached because the fill caps were reached.
    pub cache_fills_capped: Counter,
    pub cache_stored_bytes: Gauge,
    pub cache_stored_objects: Gauge,
    pub cache_max_bytes: Gauge,
    pub upstream_requests: Family<RegistryLabels, Counter>,
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
    pub upstream_duration: Family<RegistryLabels, Histogram, fn() -> Histogram>,
    pub upstream_ratelimit_remaining: Family<RegistryLabels, Gauge>,
    pub dns_queries: Family<DnsLabels, Counter>,
    pub dns_forward_duration: Histogram,
    pub tls_handshakes: Family<HandshakeLabels, Counter>,
    pub tls_leaves_issued: Counter<u64, AtomicU64>,
    pub ca_expiry: Gauge,
    pub connections_open: Family<ListenerLabels, Gauge>,
    pub connections_rejected: Family<RejectedLabels, Counter>,
    pub connections_expired: Family<ExpiredLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Self {
            registry: Registry::with_prefix("regcache"),
            http_requests: Family::default(),
            http_response_bytes: Family::default(),
            http_duration: Family::new_with_constructor(latency_histogram),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            cache_coalesced: Counter::default(),
            cache_revalidations: Family::default(),
            cache_stale: Counter::default(),
            cache_evictions: Counter::default(),
            cache_digest_mismatches: Counter::default(),
            cache_write_errors: Counter::default(),
            cache_fills_capped: Counter::default(),
            cache_stored_bytes: Gauge::default(),
            cache_stored_objects: Gauge::default(),
            cache_max_bytes: Gauge::default(),
            upstream_requests: Family::default(),
            upstream_errors: Family::default(),
            upstream_duration: Family::new_with_constructor(latency_histogram),
            upstream_ratelimit_remaining: Family::default(),
            dns_queries: Family::default(),
            dns_forward_duration: latency_histogram(),
            tls_handshakes: Family::default(),
            tls_leaves_issued: Counter::default(),
            ca_expiry: Gauge::default(),
            connections_open: Family::default(),
            connections_rejected: Family::default(),
            connections_expired: Family::default(),
        };
        m.register();
        m.touch_known_labels();
        m
    }

    /// Label values known in advance start at zero, so their series exist from the start (rates
    /// and dashboards need a first sample).
    fn touch_known_labels(&self) {
        for source in [Source::Cache, Source::Upstream, Source::Local] {
            let _ = self
                .http_response_bytes
                .get_or_create(&SourceLabels { source });
        }
        for result in [Revalidation::Unchanged, Revalidation::Changed] {
            let _ = self
                .cache_revalidations
                .get_or_create(&RevalidationLabels { result });
        }
        for outcome in [Handshake::Ok, Handshake::Refused, Handshake::Failed] {
            let _ = self
                .tls_handshakes
                .get_or_create(&HandshakeLabels { outcome });
        }
        for listener in [Listener::Https, Listener::Mirror, Listener::Admin] {
            let _ = self
                .connections_open
                .get_or_create(&ListenerLabels { listener });
            for reason in [Rejected::Access, Rejected::Limit] {
                let labels = RejectedLabels { listener, reason };
                let _ = self.connections_rejected.get_or_create(&labels);
            }
        }
    }

    fn register(&mut self) {
        let r = &mut self.registry;
        r.register(
            "http_requests",
            "Client requests by registry, method, kind and status class",
            self.http_requests.clone(),
        );
        r.register_with_unit(
            "http_response",
            "Response body bytes sent to clients, by where they came from",
            Unit::Bytes,
            self.http_response_bytes.clone(),
        );
        r.register_with_unit(
            "http_request_duration",
            "Time from request to the last response byte",
            Unit::Seconds,
            self.http_duration.clone(),
        );
        r.register(
            "cache_hits",
            "Requests served from the cache (including revalidated tags)",
            self.cache_hits.clone(),
        );
        r.register(
            "cache_misses",
            "Requests for cacheable content fetched from the upstream",
            self.cache_misses.clone(),
        );
        r.register(
            "cache_coalesced",
            "Requests that read along an upstream fetch started by another request",
            self.cache_coalesced.clone(),
        );
        r.register(
            "cache_revalidations",
            "Stale tags checked with the upstream, by result",
            self.cache_revalidations.clone(),
        );
        r.register(
            "cache_stale",
            "Stale tags served because the upstream was unavailable",
            self.cache_stale.clone(),
        );
        r.register(
            "cache_evictions",
            "Objects evicted to stay under cache.max_size",
            self.cache_evictions.clone(),
        );
        r.register(
            "cache_digest_mismatches",
            "Downloads or stored objects whose content did not match their digest",
            self.cache_digest_mismatches.clone(),
        );
        r.register(
            "cache_write_errors",
            "Cache writes that failed (caching pauses after one)",
            self.cache_write_errors.clone(),
        );
        r.register(
            "cache_fills_capped",
            "Cold requests passed through uncached: limits.max_fills or max_fills_per_registry reached, or no room within cache.max_size",
            self.cache_fills_capped.clone(),
        );
        r.register_with_unit(
            "cache_stored",
            "Bytes stored in the cache",
            Unit::Bytes,
            self.cache_stored_bytes.clone(),
        );
        r.register(
            "cache_stored_objects",
            "Objects stored in the cache",
            self.cache_stored_objects.clone(),
        );
        r.register_with_unit(
            "cache_max",
            "The cache size cap (cache.max_size)",
            Unit::Bytes,
            self.cache_max_bytes.clone(),
        );
        r.register(
            "upstream_requests",
            "Requests sent to upstream registries and CDNs, by registry",
            self.upstream_requests.clone(),
        );
        r.register(
            "upstream_errors",
            "Failed upstream requests by registry and reason",
            self.upstream_errors.clone(),
        );
        r.register_with_unit(
            "upstream_duration",
            "Time until an upstream's response head",
            Unit::Seconds,
            self.upstream_duration.clone(),
        );
        r.register(
            "upstream_ratelimit_remaining",
            "The last ratelimit-remaining an upstream reported (Docker Hub)",
            self.upstream_ratelimit_remaining.clone(),
        );
        r.register(
            "dns_queries",
            "DNS queries by type and outcome",
            self.dns_queries.clone(),
        );
        r.register_with_unit(
            "dns_forward_duration",
            "Time to answer a forwarded DNS query",
            Unit::Seconds,
            self.dns_forward_duration.clone(),
        );
        r.register(
            "tls_handshakes",
            "TLS handshakes by outcome",
            self.tls_handshakes.clone(),
        );
        r.register(
            "tls_leaf_certificates_issued",
            "Leaf certificates issued by the local CA",
            self.tls_leaves_issued.clone(),
        );
        r.register(
            "connections_open",
            "Client connections open, by listener",
            self.connections_open.clone(),
        );
        r.register(
            "connections_rejected",
            "Connections closed right after accept, by listener and reason (access, limit)",
            self.connections_rejected.clone(),
        );
        r.register(
            "connections_expired",
            "Connections closed by a timeout (first_byte, idle), by listener",
            self.connections_expired.clone(),
        );
        r.register_with_unit(
            "ca_expiry_timestamp",
            "When the local CA expires (Unix time)",
            Unit::Seconds,
            self.ca_expiry.clone(),
        );
    }

    /// The text exposition, in the classic Prometheus format (see [`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut open_metrics = String::new();
        prometheus_client::encoding::text::encode(&mut open_metrics, &self.registry)
            .expect("writing to a String cannot fail");
        to_prometheus_text(&open_metrics)
    }

    pub fn upstream_error(&self, registry: &str, reason: Reason) {
        let labels = UpstreamErrorLabels {
            registry: registry.to_owned(),
            reason,
        };
        self.upstream_errors.get_or_create(&labels).inc();
    }

    pub fn upstream_latency(&self, registry: &str, took: Duration) {
        let labels = RegistryLabels {
            registry: registry.to_owned(),
        };
        self.upstream_requests.get_or_create(&labels).inc();
        self.upstream_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    pub fn dns(&self, qtype: &str, outcome: DnsOutcome) {
        let labels = DnsLabels {
            qtype: qtype.to_owned(),
            outcome,
        };
        self.dns_queries.get_or_create(&labels).inc();
    }

    pub fn rejected(&self, listener: Listener, reason: Rejected) {
        let labels = RejectedLabels { listener, reason };
        self.connections_rejected.get_or_create(&labels).inc();
    }

    pub fn expired(&self, listener: Listener, timeout: Expired) {
        let labels = ExpiredLabels { listener, timeout };
        self.connections_expired.get_or_create(&labels).inc();
    }

    /// Counts a connection as open until the guard is dropped.
    pub fn open(&self, listener: Listener) -> OpenGuard {
        let gauge = self
            .connections_open
            .get_or_create(&ListenerLabels { listener })
            .clone();
        gauge.inc();
        OpenGuard(gauge)
    }

    pub fn handshake(&self, outcome: Handshake) {
        self.tls_handshakes
            .get_or_create(&HandshakeLabels { outcome })
            .inc();
    }
}

/// One open connection in `regcache_connections_open`; decrements it when dropped.
pub struct OpenGuard(Gauge);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// OpenMetrics → Prometheus text 0.0.4: counter families are named with their `_total` suffix in
/// HELP and TYPE, and the `# UNIT` and `# EOF` lines go.
fn to_prometheus_text(open_metrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = (open_metrics.lines())
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find(|p| line.starts_with(p));
        if let Some(prefix) = meta {
            let rest = &line[prefix.len()..];
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            if counters.contains(name) {
                out.push_str(&format!("{prefix}{name}_total {tail}\n"));
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_has_the_prefix_and_help() {
        let m = Metrics::new();
        m.dns("A", DnsOutcome::Intercepted);
        m.upstream_latency("ghcr.io", Duration::from_millis(20));
        m.cache_hits.inc();
        let text = m.encode();
        assert!(
            text.contains("regcache_dns_queries_total{qtype=\"A\",outcome=\"intercepted\"} 1"),
            "{text}"
        );
        assert!(text.contains("regcache_cache_hits_total 1"), "{text}");
        assert!(
            text.contains("# TYPE regcache_cache_hits_total counter\n"),
            "{text}"
        );
        assert!(!text.contains("# EOF"));
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let name = line.split_whitespace().nth(2).unwrap();
            assert!(name.starts_with("regcache_"), "{line}");
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "no HELP for {name}"
            );
        }
    }
}
