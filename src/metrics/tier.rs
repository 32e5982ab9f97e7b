//! The storage tiers' metrics: hits, bytes and errors per tier (`local`, the cache directory;
//! `shared`, the fleet's S3-compatible store), the shared store's health and its uploads.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

/// A storage tier.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Tier {
    Local,
    Shared,
}

/// An operation on the shared store.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum TierOp {
    Head,
    Get,
    Put,
    Delete,
    List,
    /// The local tier could not write (caching paused).
    Write,
    /// An object read from the shared store did not match its digest.
    Verify,
}

/// What became of an object queued for the shared store.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum UploadResult {
    Uploaded,
    /// Another appliance had uploaded it already.
    Present,
    /// The local file changed or went before it was read whole: not uploaded.
    Mismatch,
    /// The store failed; the object waits in the pending set.
    Failed,
    /// The queue and the pending set were full: not uploaded.
    Dropped,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TierLabels {
    pub tier: Tier,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TierErrorLabels {
    pub tier: Tier,
    pub op: TierOp,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UploadLabels {
    pub result: UploadResult,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Shared => "shared",
        }
    }
}

impl TierOp {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Head => "head",
            Self::Get => "get",
            Self::Put => "put",
            Self::Delete => "delete",
            Self::List => "list",
            Self::Write => "write",
            Self::Verify => "verify",
        }
    }
}

impl UploadResult {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Uploaded => "uploaded",
            Self::Present => "present",
            Self::Mismatch => "mismatch",
            Self::Failed => "failed",
            Self::Dropped => "dropped",
        }
    }
}

macro_rules! as_label_value {
    ($($ty:ty),+) => {$(
        impl EncodeLabelValue for $ty {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                std::fmt::Write::write_str(encoder, self.as_str())
            }
        }
    )+};
}
as_label_value!(Tier, TierOp, UploadResult);

/// The tiers' metric handles.
#[derive(Default)]
pub struct TierMetrics {
    pub hits: Family<TierLabels, Counter>,
    pub bytes: Family<TierLabels, Counter>,
    pub errors: Family<TierErrorLabels, Counter>,
    pub uploads: Family<UploadLabels, Counter>,
    /// `{tier="shared"}`: 1 while the shared store answers, 0 while it is marked down; absent
    /// without one.
    pub store_up: Family<TierLabels, Gauge>,
    pub pending_uploads: Gauge,
}

impl TierMetrics {
    pub(super) fn register(&self, r: &mut Registry) {
        let hits = "Objects served from a storage tier (local: the cache directory, shared: the fleet's store)";
        r.register("tier_hits", hits, self.hits.clone());
        let bytes = "Object bytes served from a storage tier";
        r.register_with_unit("tier", bytes, Unit::Bytes, self.bytes.clone());
        let errors = "Failed operations on a storage tier, by operation";
        r.register("tier_errors", errors, self.errors.clone());
        let uploads = "Objects queued for the shared store, by what became of them";
        r.register("tier_uploads", uploads, self.uploads.clone());
        let up = "1 while the shared store answers, 0 while it is marked down";
        r.register("tier_store_up", up, self.store_up.clone());
        let pending = "Objects waiting for the shared store to come back";
        let gauge = self.pending_uploads.clone();
        r.register("tier_pending_uploads", pending, gauge);
        for tier in [Tier::Local, Tier::Shared] {
            let _ = self.hits.get_or_create(&TierLabels { tier });
            let _ = self.bytes.get_or_create(&TierLabels { tier });
        }
        // The local tier's write errors exist on every appliance; the shared store's appear
        // with their first.
        let local_writes = TierErrorLabels {
            tier: Tier::Local,
            op: TierOp::Write,
        };
        let _ = self.errors.get_or_create(&local_writes);
    }

    /// One object served from `tier`.
    pub fn hit(&self, tier: Tier) {
        self.hits.get_or_create(&TierLabels { tier }).inc();
    }

    pub fn served(&self, tier: Tier, bytes: u64) {
        self.bytes.get_or_create(&TierLabels { tier }).inc_by(bytes);
    }

    pub fn error(&self, tier: Tier, op: TierOp) {
        let labels = TierErrorLabels { tier, op };
        self.errors.get_or_create(&labels).inc();
    }

    /// Whether the shared store answers.
    pub fn set_store_up(&self, up: bool) {
        let gauge = self
            .store_up
            .get_or_create(&TierLabels { tier: Tier::Shared });
        gauge.set(i64::from(up));
    }

    pub fn upload(&self, result: UploadResult) {
        self.uploads.get_or_create(&UploadLabels { result }).inc();
    }

    /// The counters as the status page shows them: (hits, bytes, errors) of `tier`.
    pub fn totals(&self, tier: Tier) -> (u64, u64, u64) {
        let hits = self.hits.get_or_create(&TierLabels { tier }).get();
        let bytes = self.bytes.get_or_create(&TierLabels { tier }).get();
        let ops = [
            TierOp::Head,
            TierOp::Get,
            TierOp::Put,
            TierOp::Delete,
            TierOp::List,
            TierOp::Write,
            TierOp::Verify,
        ];
        let errors = (ops.iter())
            .map(|&op| {
                self.errors
                    .get_or_create(&TierErrorLabels { tier, op })
                    .get()
            })
            .sum();
        (hits, bytes, errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn tier_series_are_exposed_with_their_labels() {
        let m = Metrics::new();
        m.tier.hit(Tier::Shared);
        m.tier.served(Tier::Shared, 42);
        m.tier.error(Tier::Shared, TierOp::Put);
        m.tier.upload(UploadResult::Uploaded);
        m.tier.set_store_up(true);
        let text = m.encode();
        for want in [
            "regcache_tier_hits_total{tier=\"shared\"} 1",
            "regcache_tier_hits_total{tier=\"local\"} 0",
            "regcache_tier_bytes_total{tier=\"shared\"} 42",
            "regcache_tier_errors_total{tier=\"shared\",op=\"put\"} 1",
            "regcache_tier_uploads_total{result=\"uploaded\"} 1",
            "regcache_tier_store_up{tier=\"shared\"} 1",
        ] {
            assert!(text.contains(want), "{want}: {text}");
        }
        assert_eq!(m.tier.totals(Tier::Shared), (1, 42, 1));
    }
}
