//! Every metric's name and HELP text, registered in one place (names get the `regcache_` prefix
//! from the registry; counters get `_total` from the encoder).
//!
//! Registration order is the order of the exposition at `/metrics`.

use prometheus_client::registry::{Registry, Unit};

use super::Metrics;

impl Metrics {
    /// Registers every metric of `self` in `r`.
    pub(super) fn register(&self, r: &mut Registry) {
        self.register_http(r);
        self.register_cache_traffic(r);
        self.register_cache_store(r);
        self.register_upstream(r);
        self.register_dns_tls(r);
        self.register_connections(r);
        self.register_warm(r);
        self.register_fleet(r);
        self.tier.register(r);
    }

    /// Client requests: `http_*`.
    fn register_http(&self, r: &mut Registry) {
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
    }

    /// What the cache did for requests: hits, misses, coalesced, revalidations, stale.
    fn register_cache_traffic(&self, r: &mut Registry) {
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
            "cache_tag_rule_requests",
            "Tag requests by the [[cache.rule]] that decided them (its number, or default) and how they were answered",
            self.cache_tag_rule_requests.clone(),
        );
    }

    /// The store: evictions, mismatches, write errors, capped fills, size.
    fn register_cache_store(&self, r: &mut Registry) {
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
    }

    /// Upstream requests: `upstream_*`.
    fn register_upstream(&self, r: &mut Registry) {
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
            "mirror_fetches",
            "Objects fetched from registries' mirrors, by mirror and result (verified, mismatch, failed)",
            self.mirror_fetches.clone(),
        );
        r.register(
            "mirror_skips",
            "Mirrors not asked for an object, by mirror and reason (mismatch: its bytes for that \
             digest did not match recently; backoff: it failed repeatedly)",
            self.mirror_skips.clone(),
        );
    }

    /// DNS queries and TLS handshakes.
    fn register_dns_tls(&self, r: &mut Registry) {
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
    }

    /// Connections by listener, and the CA's expiry.
    fn register_connections(&self, r: &mut Registry) {
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

    /// `[[warm]]` jobs: `warm_*`.
    fn register_warm(&self, r: &mut Registry) {
        r.register(
            "warm_runs",
            "Runs of each [[warm]] job (numbered from 1 in the config), by result (ok, failed)",
            self.warm_runs.clone(),
        );
        r.register(
            "warm_objects",
            "Objects a [[warm]] job went through, by how (fetched from the upstream, or cached)",
            self.warm_objects.clone(),
        );
        r.register_with_unit(
            "warm",
            "Bytes a [[warm]] job received",
            Unit::Bytes,
            self.warm_bytes.clone(),
        );
    }

    /// The fleet: `peer_*`.
    fn register_fleet(&self, r: &mut Registry) {
        r.register(
            "peer_fetches",
            "Cold objects fetched from their owner in the fleet, by owner and result (served, taken_over, refused)",
            self.peer_fetches.clone(),
        );
    }
}
