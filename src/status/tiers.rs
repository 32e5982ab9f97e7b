//! The storage tiers as the status page shows them: the local cache directory and, with
//! `[storage] backend = "s3"`, the fleet's shared store, each with its hits, bytes and errors,
//! and the shared store's health (up, or down with its backoff) and waiting uploads.

use serde::Serialize;

/// One row of the "Storage tiers" table.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct TierRow {
    /// "local" or "shared".
    pub tier: &'static str,
    /// The cache directory, or `s3://bucket/prefix at endpoint` (no secret).
    pub store: String,
    pub hits: u64,
    pub bytes: u64,
    pub errors: u64,
    /// Whether it takes writes (local) or answers (shared).
    pub up: bool,
    /// Consecutive failures of the shared store.
    pub failures: u64,
    /// Seconds left of the shared store's backoff.
    pub retry_in_s: Option<u64>,
    /// Objects waiting for the shared store.
    pub pending_uploads: u64,
}
