//! Prometheus metrics: every name in one place, prefixed `regcache_`, each with HELP text. The
//! subsystems record into [`Metrics`]; the admin listener encodes it at `/metrics`.
//!
//! The parts: this file holds [`Metrics`] (the metric handles and the small recorders the
//! subsystems call); `labels` the label sets and their values; `register` every name and HELP
//! text; `tier` the storage tiers' metrics; `text` the conversion of the exposition to the classic Prometheus format.
//!
//! A leaf: it imports nothing else from the crate.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

mod labels;
mod register;
mod text;
mod tier;

pub use labels::{
    status_class, DnsLabels, DnsOutcome, Expired, ExpiredLabels, Handshake, HandshakeLabels,
    HttpLabels, Kind, KindLabels, Listener, ListenerLabels, MirrorLabels, MirrorResult, MirrorSkip,
    MirrorSkipLabels, Reason, RegistryLabels, Rejected, RejectedLabels, Revalidation,
    RevalidationLabels, Source, SourceLabels, TagAnswer, TagRuleLabels, UpstreamErrorLabels,
    WarmJobLabels, WarmLabels, WarmObjectLabels,
};
pub use labels::{PeerLabels, PeerResult};

pub use tier::{Tier, TierMetrics, TierOp, UploadResult};

/// The content type of the exposition: the classic Prometheus text format, which every scraper
/// and `promtool check metrics` read.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

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
    /// Tag requests by the freshness rule that decided them and how they were answered.
    pub cache_tag_rule_requests: Family<TagRuleLabels, Counter>,
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
    /// Fetches from registries' mirrors, by mirror and result.
    pub mirror_fetches: Family<MirrorLabels, Counter>,
    pub mirror_skips: Family<MirrorSkipLabels, Counter>,
    pub dns_queries: Family<DnsLabels, Counter>,
    pub dns_forward_duration: Histogram,
    pub tls_handshakes: Family<HandshakeLabels, Counter>,
    pub tls_leaves_issued: Counter<u64, AtomicU64>,
    pub ca_expiry: Gauge,
    pub connections_open: Family<ListenerLabels, Gauge>,
    pub connections_rejected: Family<RejectedLabels, Counter>,
    pub connections_expired: Family<ExpiredLabels, Counter>,
    /// `[[warm]]` runs by job and result, their objects and bytes.
    pub warm_runs: Family<WarmLabels, Counter>,
    pub warm_objects: Family<WarmObjectLabels, Counter>,
    pub warm_bytes: Family<WarmJobLabels, Counter>,
    /// Fetches from objects' owners in the fleet, by owner and result.
    pub peer_fetches: Family<PeerLabels, Counter>,
    /// The storage tiers (local, shared) and the shared store's health.
    pub tier: TierMetrics,
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
            cache_tag_rule_requests: Family::default(),
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
            mirror_fetches: Family::default(),
            mirror_skips: Family::default(),
            dns_queries: Family::default(),
            dns_forward_duration: latency_histogram(),
            tls_handshakes: Family::default(),
            tls_leaves_issued: Counter::default(),
            ca_expiry: Gauge::default(),
            connections_open: Family::default(),
            connections_rejected: Family::default(),
            connections_expired: Family::default(),
            warm_runs: Family::default(),
            warm_objects: Family::default(),
            warm_bytes: Family::default(),
            peer_fetches: Family::default(),
            tier: TierMetrics::default(),
        };
        let mut registry = std::mem::take(&mut m.registry);
        m.register(&mut registry);
        m.registry = registry;
        m.touch_known_labels();
        m
    }

    /// Label values known in advance start at zero, so their series exist from the start (rates
    /// and dashboards need a first sample).
    fn touch_known_labels(&self) {
        for source in [Source::Cache, Source::Upstream, Source::Local, Source::Peer] {
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

    /// The text exposition, in the classic Prometheus format (see [`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut open_metrics = String::new();
        prometheus_client::encoding::text::encode(&mut open_metrics, &self.registry)
            .expect("writing to a String cannot fail");
        text::to_prometheus_text(&open_metrics)
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

    pub fn mirror_fetch(&self, mirror: &str, result: MirrorResult) {
        let labels = MirrorLabels {
            mirror: mirror.to_owned(),
            result,
        };
        self.mirror_fetches.get_or_create(&labels).inc();
    }

    pub fn mirror_skip(&self, mirror: &str, reason: MirrorSkip) {
        let labels = MirrorSkipLabels {
            mirror: mirror.to_owned(),
            reason,
        };
        self.mirror_skips.get_or_create(&labels).inc();
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

    pub fn peer_fetch(&self, peer: &str, result: PeerResult) {
        let labels = PeerLabels {
            peer: peer.to_owned(),
            result,
        };
        self.peer_fetches.get_or_create(&labels).inc();
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
