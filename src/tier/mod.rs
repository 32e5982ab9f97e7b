//! The shared tier: the fleet's S3-compatible store (`[storage] backend = "s3"`), behind the
//! local cache directory (the hot tier, unchanged). Objects are keyed by digest,
//! `{prefix}/sha256/<hex>`, and are the same bytes whichever appliance put them there.
//!
//! # What goes in, what comes out
//! - In: only an object this appliance fetched from the upstream itself and verified against its
//!   digest (the fill committed it locally); the file is read again for the upload and hashed
//!   while it is read; a mismatch aborts the upload (`upload.rs`). A put of a whole object is
//!   atomic in S3 (the object appears whole or not at all), and so is the completion of a
//!   multipart upload (parts are invisible until `CompleteMultipartUpload`, and an aborted or
//!   abandoned one never becomes an object): nothing half-uploaded is ever read.
//! - Out: [`SharedTier::head`] and [`SharedTier::get`] hand the proxy a size and a byte stream;
//!   the proxy writes it into a local fill, which verifies the digest before the object is
//!   committed or its last byte served (`proxy/shared.rs`). The store is never trusted on its
//!   content, and never on who may read it: the proxy authorizes as for a local hit.
//!
//! # When the store fails
//! Every failed operation is counted (`regcache_tier_errors_total{tier="shared",op}`) and logged,
//! and marks the store down for a backoff (1 s doubling to 1 min, `health.rs`): while down, reads
//! skip it (straight to the upstream) and uploads wait in a bounded pending set; after the
//! backoff one operation is the trial (the others still skip the store), and once one succeeds
//! the pending uploads are sent (catching up). A HEAD slower than a second counts as a failure:
//! a slow store is skipped rather than slowing every miss. Uploads run in one background task fed by a bounded queue: a client never
//! waits for one.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::sync::mpsc;

use crate::cache::Digest;
use crate::metrics::{Metrics, Tier, TierOp};

#[doc(hidden)]
pub mod failing;
mod health;
mod s3;
mod upload;

#[cfg(test)]
mod tests;

pub use health::{Health, HealthView};
pub use s3::open_s3;

/// A HEAD that takes longer is a miss (the upstream is asked instead).
const HEAD_TIMEOUT: Duration = Duration::from_secs(3);
/// A HEAD that takes longer (yet answers) is a miss too, and marks the store down.
const SLOW_HEAD: Duration = Duration::from_secs(1);
/// A GET whose response head takes longer fails (the body has its own idle timeout); so does
/// a DELETE, or a page of a listing.
const GET_TIMEOUT: Duration = Duration::from_secs(10);
/// Objects larger than this are uploaded in parts of this size.
pub const MULTIPART_OVER: u64 = 16 << 20;
/// Objects queued for upload and not yet taken by the uploader.
const QUEUE: usize = 1024;
/// Objects waiting for the store to come back; more are dropped (and counted).
const MAX_PENDING: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("shared store: {op} {key}: {source}")]
    Store {
        op: &'static str,
        key: String,
        source: object_store::Error,
    },
    #[error("shared store: {op} {key}: no answer within {after:?}")]
    Timeout {
        op: &'static str,
        key: String,
        after: Duration,
    },
    #[error("shared store is marked down (retrying after a backoff)")]
    Down,
    /// The store answered and said no (a 4xx: a key without `PutObject`, say): the store is
    /// not down, and asking again will not help much.
    #[error("shared store refused: {op} {key}: {source}")]
    Refused {
        op: &'static str,
        key: String,
        source: object_store::Error,
    },
    #[error("{path}: {source}")]
    Local {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} does not hash to {digest}: not uploaded")]
    Mismatch { path: PathBuf, digest: Digest },
    #[error("cannot set up the shared store: {0}")]
    Setup(String),
}

/// One object in the store, as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub digest: Digest,
    pub size: u64,
}

/// An object waiting to be uploaded: its digest and its verified local file.
#[derive(Clone, Debug)]
struct Upload {
    digest: Digest,
    path: PathBuf,
    /// Attempts the store refused so far (dropped after [`upload::MAX_REFUSED`]).
    refused: u32,
}

/// The fleet's store, as this appliance uses it.
pub struct SharedTier {
    store: Arc<dyn ObjectStore>,
    /// Without leading or trailing `/`; may be empty.
    prefix: String,
    /// Where the store is, for logs and the status page (no secret in it).
    label: String,
    health: Health,
    metrics: Arc<Metrics>,
    queue: mpsc::Sender<Upload>,
    /// Taken by [`SharedTier::start_uploads`]; std Mutex, never held across .await.
    receiver: Mutex<Option<mpsc::Receiver<Upload>>>,
    /// Uploads that wait for the store; std Mutex, never held across .await.
    pending: Mutex<std::collections::BTreeMap<String, Upload>>,
}

impl std::fmt::Debug for SharedTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedTier")
            .field("label", &self.label)
            .finish()
    }
}

impl SharedTier {
    /// A tier over `store` (S3 in production, `InMemory` in tests), keys under `prefix`.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        label: &str,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let (queue, receiver) = mpsc::channel(QUEUE);
        metrics.tier.set_store_up(true);
        Arc::new(Self {
            store,
            prefix: prefix.trim_matches('/').to_owned(),
            label: label.to_owned(),
            health: Health::new(),
            metrics,
            queue,
            receiver: Mutex::new(Some(receiver)),
            pending: Mutex::default(),
        })
    }

    /// Where the store is (`s3://bucket/prefix at endpoint`).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Whether the store answers, or is down within a backoff.
    pub fn health(&self) -> HealthView {
        self.health.view()
    }

    /// The object's key: `{prefix}/sha256/<hex>`.
    pub fn key(&self, digest: &Digest) -> Key {
        match self.prefix.is_empty() {
            true => Key::from(format!("sha256/{}", digest.hex())),
            false => Key::from(format!("{}/sha256/{}", self.prefix, digest.hex())),
        }
    }

    fn dir(&self) -> Key {
        match self.prefix.is_empty() {
            true => Key::from("sha256"),
            false => Key::from(format!("{}/sha256", self.prefix)),
        }
    }

    /// The object's size when the store has it; `None` when it does not, is down, or does not
    /// answer within a few seconds (the failure counted, the store marked down).
    pub async fn head(&self, digest: &Digest) -> Option<u64> {
        if !self.health.may_ask() {
            return None;
        }
        let key = self.key(digest);
        let began = tokio::time::Instant::now();
        let head = tokio::time::timeout(HEAD_TIMEOUT, self.store.head(&key)).await;
        match head {
            // A store this slow costs every miss more than it saves: marked down.
            Ok(_) if began.elapsed() > SLOW_HEAD => {
                self.failed(TierOp::Head, timeout_err("HEAD", &key, SLOW_HEAD))
            }
            Ok(Ok(meta)) => {
                self.ok();
                Some(meta.size)
            }
            Ok(Err(object_store::Error::NotFound { .. })) => {
                self.ok();
                None
            }
            Ok(Err(source)) => self.failed(TierOp::Head, store_err("HEAD", &key, source)),
            Err(_) => self.failed(TierOp::Head, timeout_err("HEAD", &key, HEAD_TIMEOUT)),
        }
    }

    /// The object's size and its bytes, as the store sends them (unverified: the reader
    /// verifies).
    pub async fn get(
        &self,
        digest: &Digest,
    ) -> Result<(u64, BoxStream<'static, Result<Bytes, Error>>), Error> {
        if !self.health.may_ask() {
            return Err(Error::Down);
        }
        let key = self.key(digest);
        let got = match tokio::time::timeout(GET_TIMEOUT, self.store.get(&key)).await {
            Ok(Ok(got)) => got,
            // Gone since the HEAD (purged): not the store's failure.
            Ok(Err(source @ object_store::Error::NotFound { .. })) => {
                self.ok();
                return Err(store_err("GET", &key, source));
            }
            Ok(Err(source)) => {
                let e = store_err("GET", &key, source);
                return Err(self.failed_err(TierOp::Get, e));
            }
            Err(_) => {
                let e = timeout_err("GET", &key, GET_TIMEOUT);
                return Err(self.failed_err(TierOp::Get, e));
            }
        };
        self.ok();
        let size = got.meta.size;
        let name = key.to_string();
        let body = (got.into_stream()).map_err(move |source| Error::Store {
            op: "GET",
            key: name.clone(),
            source,
        });
        Ok((size, body.boxed()))
    }

    /// Removes the object (absent is fine).
    pub async fn delete(&self, digest: &Digest) -> Result<(), Error> {
        let key = self.key(digest);
        match tokio::time::timeout(GET_TIMEOUT, self.store.delete(&key)).await {
            Ok(Ok(()) | Err(object_store::Error::NotFound { .. })) => Ok(()),
            Ok(Err(source)) => {
                let e = store_err("DELETE", &key, source);
                Err(self.failed_err(TierOp::Delete, e))
            }
            Err(_) => {
                let e = timeout_err("DELETE", &key, GET_TIMEOUT);
                Err(self.failed_err(TierOp::Delete, e))
            }
        }
    }

    /// Every object under the prefix (keys that are not digests are skipped).
    pub async fn list(&self) -> Result<Vec<Listed>, Error> {
        let dir = self.dir();
        let mut listing = self.store.list(Some(&dir));
        let mut out = Vec::new();
        loop {
            let next = tokio::time::timeout(GET_TIMEOUT, listing.next()).await;
            let meta = match next {
                Ok(None) => break,
                Ok(Some(Ok(meta))) => meta,
                Ok(Some(Err(source))) => {
                    return Err(self.failed_err(TierOp::List, store_err("LIST", &dir, source)))
                }
                Err(_) => {
                    let e = timeout_err("LIST", &dir, GET_TIMEOUT);
                    return Err(self.failed_err(TierOp::List, e));
                }
            };
            let name = meta.location.filename().unwrap_or_default();
            if let Some(digest) = Digest::parse(&format!("sha256:{name}")) {
                out.push(Listed {
                    digest,
                    size: meta.size,
                });
            }
        }
        self.ok();
        out.sort_by(|a, b| a.digest.hex().cmp(b.digest.hex()));
        Ok(out)
    }

    /// Counts an object from the store that did not verify.
    pub fn refused(&self, digest: &Digest, why: &str) {
        self.metrics.tier.error(Tier::Shared, TierOp::Verify);
        tracing::warn!(%digest, store = %self.label, why, "shared store's object refused: not stored, not served");
    }

    fn ok(&self) {
        if self.health.succeeded() {
            self.metrics.tier.set_store_up(true);
            tracing::info!(store = %self.label, "shared store answers again");
        }
    }

    fn failed<T>(&self, op: TierOp, e: Error) -> Option<T> {
        self.failed_err(op, e);
        None
    }

    /// A store call that failed: a refusal (a 4xx) is counted and returned, anything else also
    /// marks the store down.
    fn failed_call(
        &self,
        op: TierOp,
        what: &'static str,
        key: &Key,
        e: object_store::Error,
    ) -> Error {
        if !refusal(&e) {
            return self.failed_err(op, store_err(what, key, e));
        }
        self.metrics.tier.error(Tier::Shared, op);
        let key = key.to_string();
        let e = Error::Refused {
            op: what,
            key,
            source: e,
        };
        tracing::warn!(store = %self.label, error = %e, "shared store refused (not marked down)");
        e
    }

    fn failed_err(&self, op: TierOp, e: Error) -> Error {
        self.metrics.tier.error(Tier::Shared, op);
        let backoff = self.health.failed();
        self.metrics.tier.set_store_up(false);
        tracing::warn!(store = %self.label, error = %e, ?backoff, "shared store failed: marked down");
        e
    }
}

/// An answer that says no (a 4xx) rather than that the store is failing.
fn refusal(e: &object_store::Error) -> bool {
    use object_store::Error as E;
    matches!(
        e,
        E::PermissionDenied { .. }
            | E::Unauthenticated { .. }
            | E::AlreadyExists { .. }
            | E::Precondition { .. }
            | E::InvalidPath { .. }
            | E::NotSupported { .. }
            | E::NotImplemented { .. }
    )
}

fn store_err(op: &'static str, key: &Key, source: object_store::Error) -> Error {
    let key = key.to_string();
    Error::Store { op, key, source }
}

fn timeout_err(op: &'static str, key: &Key, after: Duration) -> Error {
    let key = key.to_string();
    Error::Timeout { op, key, after }
}
