//! The content cache: blobs and manifests stored once by digest, verified while written, committed
//! by atomic rename, evicted least-recently-used; tag → digest mappings; in-flight fills that
//! concurrent readers share. No hyper types in this API, no networking.
//!
//! # Why plain files
//! Content-addressed objects are files named by their digest, so the file system is the index: a
//! restart rebuilds the in-memory index by listing `objects/` (sizes from metadata, recency from
//! mtimes), a crash can only leave files in `tmp/` (removed at start) because nothing reaches
//! `objects/` except by `rename` after the digest matched, and operators can inspect it with `ls`.
//! The little metadata there is (media type, which repositories referenced an object, tag
//! mappings) sits in small text files beside it. An embedded database would add a second source of
//! truth to keep consistent with the files, and compile time, for no gain at this size.
//!
//! # Layout of `dir`
//! - `objects/sha256/ab/abcd…` content; `abcd….meta`: line 1 media type, then `registry repo` lines
//! - `tags/<sha256 of key>`: `registry`, `repo`, `tag`, `accept`, `digest`, `media type`, one a line
//! - `tmp/`: fills in progress

mod chunk;
mod fill;
mod store;
mod tags;

use std::fmt;

pub use fill::{Fill, FillState, FillWriter};
pub use store::{parse_meta, Claim, FillLimits, ObjectInfo, Reader, Store, VerifyReport};
pub use tags::{parse_tag, TagEntry, TagKey, MAX_TAGS};

/// How much a reader asks the disk for at once (large TLS records, few syscalls).
pub const CHUNK: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("size mismatch for {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("the upstream fetch failed: {0}")]
    Upstream(String),
    #[error("caching is paused after a write error; serving without the cache")]
    WritesPaused,
    #[error("no room for {digest} ({size} bytes) within cache.max_size")]
    NoRoom { digest: Digest, size: u64 },
}

/// A sha256 content digest (`sha256:` and 64 lower-case hex digits). Other algorithms are not
/// cached: requests for them pass through.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    pub fn parse(s: &str) -> Option<Self> {
        let hex = s.strip_prefix("sha256:")?;
        let ok = hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        ok.then(|| Self(hex.to_owned()))
    }

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        let mut h = Hasher::new();
        h.update(data);
        h.finish()
    }

    pub fn hex(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Incremental sha256.
pub struct Hasher(sha2::Sha256);

impl Hasher {
    pub fn new() -> Self {
        use sha2::Digest as _;
        Self(sha2::Sha256::new())
    }

    pub fn update(&mut self, data: &[u8]) {
        use sha2::Digest as _;
        self.0.update(data);
    }

    pub fn finish(self) -> Digest {
        use sha2::Digest as _;
        let out = self.0.finalize();
        Digest(out.iter().map(|b| format!("{b:02x}")).collect())
    }
}

impl Default for Hasher {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests;
