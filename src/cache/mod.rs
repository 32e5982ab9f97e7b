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
//! # Parts (each file opens with what it owns)
//! - `store.rs`: [`Store`]: open, claims (hit, join, lead, bypass) and the fill caps; `refs.rs`:
//!   which repositories an object was confirmed in;
//!   `index.rs`: the index under the store's lock (objects, fills, reservations, the tag map);
//!   `room.rs`: reservations within `cache.max_size` and LRU eviction; `scan.rs`: what opening
//!   finds on disk; `health.rs`: the pause after a write error.
//! - `fill.rs`: a fill's shared side and its readers; `writer.rs`: [`FillWriter`] (reserve, write,
//!   verify, commit, or relay past the room), which sees the store only as a `Sink`;
//!   `reader.rs`: [`Reader`] of stored objects (a `Shelf` to the store); `chunk.rs`: chunked reads.
//! - `tags.rs`: the store's tag API; `tag_map.rs`: keys, entries, the map indexed by digest;
//!   `tag_files.rs`: the thread that writes tag files.
//! - `maintenance.rs`: `regcache cache …` (list, purge, verify); `files.rs`: paths, private modes,
//!   atomic writes, `.meta` text; `digest.rs`: [`Digest`], [`Hasher`].
//!
//! Dependencies go one way: `store` and its `impl Store` parts (`room`, `refs`, `tags`,
//! `maintenance`) use the rest; `writer`, `reader`, `fill`, `index`, `tag_*`, `files` never name
//! `store`.
//!
//! # Layout of `dir`
//! - `objects/sha256/ab/abcd…` content; `abcd….meta`: line 1 media type, then `registry repo` lines
//! - `tags/<sha256 of key>`: `registry`, `repo`, `tag`, `accept`, `digest`, `media type`, one a line
//! - `tmp/`: fills in progress

mod chunk;
mod digest;
mod files;
mod fill;
mod health;
mod index;
mod maintenance;
mod reader;
mod refs;
mod room;
mod scan;
mod store;
mod tag_files;
mod tag_map;
mod tags;
mod writer;

pub use digest::{Digest, Hasher};
pub use files::parse_meta;
pub use fill::{Fill, FillState};
pub use maintenance::{ObjectInfo, VerifyReport};
pub use reader::Reader;
pub use store::{Claim, FillLimits, Store};
pub use tag_map::{parse_tag, TagEntry, TagKey, MAX_TAGS};
pub use writer::FillWriter;

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
    #[error(
        "{}: another regcache process (serve, or warm without --via) owns this cache; \
         stop it, or warm through it with --via",
        path.display()
    )]
    Owned { path: std::path::PathBuf },
}

#[cfg(test)]
mod tests;
