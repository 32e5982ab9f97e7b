//! The shared tier at start: opened from `[storage]` (an S3-compatible store) and put behind the
//! proxy's cache, or, in tests, over a store they hand in (an in-memory one).

use std::sync::Arc;

use anyhow::Context as _;
use object_store::ObjectStore;
use tracing::info;

use super::Bound;
use crate::admin::Admin;
use crate::config::{Config, StorageConfig};
use crate::proxy::Proxy;
use crate::tier::{open_s3, SharedTier};

/// Puts the shared tier `[storage]` names, if any, behind `proxy`'s cache.
pub(super) fn open_shared(config: &Config, proxy: &Proxy, admin: &Admin) -> anyhow::Result<()> {
    let StorageConfig::S3(s3) = &config.storage else {
        return Ok(());
    };
    let tier = open_s3(s3, admin.metrics.clone()).context("[storage]")?;
    let credentials = &s3.credentials.source;
    info!(store = %tier.label(), %credentials, "shared tier");
    proxy.set_shared_tier(tier.clone());
    let _ = admin.shared.set(tier);
    Ok(())
}

impl Bound {
    /// The shared tier, when there is one.
    pub fn shared_tier(&self) -> Option<Arc<SharedTier>> {
        self.proxy.shared_tier().cloned()
    }

    /// Puts a shared tier over `store` behind the cache (tests: an in-memory store shared by
    /// several appliances).
    pub fn set_shared_store(&self, store: Arc<dyn ObjectStore>, prefix: &str) -> Arc<SharedTier> {
        let tier = SharedTier::new(store, prefix, "in-memory", self.admin.metrics.clone());
        self.proxy.set_shared_tier(tier.clone());
        let _ = self.admin.shared.set(tier.clone());
        tier
    }
}
