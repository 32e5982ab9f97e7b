//! A store for tests that fails on demand: `object_store`'s `InMemory` behind a switch. Used by
//! the tier's unit tests and the integration tests of the proxy (a store that goes down and
//! comes back); not part of the appliance's behaviour.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::path::Path as Key;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, UploadPart,
};

/// An `InMemory` store that fails every put and get while `down` is set, and never answers
/// them while `stalled` is, counting them.
#[derive(Debug, Default)]
pub struct Flaky {
    /// What it holds.
    pub inner: InMemory,
    /// While set, puts and gets fail.
    pub down: AtomicBool,
    /// While set, puts and gets never answer.
    pub stalled: AtomicBool,
    /// Puts and gets asked.
    pub calls: AtomicUsize,
    /// HEADs asked.
    pub heads: AtomicUsize,
    /// While set, puts are refused as a key without `PutObject` is (a 403); reads work.
    pub rejecting: AtomicBool,
    /// While set, the parts of a multipart upload never finish.
    pub parts_stalled: Arc<AtomicBool>,
    /// While set, puts and gets answer after 2 s.
    pub slow: AtomicBool,
    /// Multipart uploads aborted.
    pub aborts: Arc<AtomicUsize>,
}

/// A multipart upload of [`Flaky`]'s: its parts stall on demand, its aborts are counted.
#[derive(Debug)]
struct FlakyUpload {
    inner: Box<dyn MultipartUpload>,
    stalled: Arc<AtomicBool>,
    aborts: Arc<AtomicUsize>,
}

#[async_trait]
impl MultipartUpload for FlakyUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        match self.stalled.load(Ordering::SeqCst) {
            true => Box::pin(std::future::pending()),
            false => self.inner.put_part(data),
        }
    }
    async fn complete(&mut self) -> object_store::Result<PutResult> {
        self.inner.complete().await
    }
    async fn abort(&mut self) -> object_store::Result<()> {
        self.aborts.fetch_add(1, Ordering::SeqCst);
        self.inner.abort().await
    }
}

impl fmt::Display for Flaky {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Flaky")
    }
}

impl Flaky {
    fn check_put(&self, k: &Key) -> object_store::Result<()> {
        match self.rejecting.load(Ordering::SeqCst) {
            true => Err(object_store::Error::PermissionDenied {
                path: k.to_string(),
                source: "403 Forbidden".into(),
            }),
            false => Ok(()),
        }
    }

    async fn check(&self) -> object_store::Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.stalled.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if self.slow.load(Ordering::SeqCst) {
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        }
        match self.down.load(Ordering::SeqCst) {
            true => Err(object_store::Error::Generic {
                store: "Flaky",
                source: "the store is down".into(),
            }),
            false => Ok(()),
        }
    }
}

#[async_trait]
impl ObjectStore for Flaky {
    async fn put_opts(
        &self,
        k: &Key,
        p: PutPayload,
        o: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.check().await?;
        self.check_put(k)?;
        self.inner.put_opts(k, p, o).await
    }
    async fn put_multipart_opts(
        &self,
        k: &Key,
        o: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.check().await?;
        self.check_put(k)?;
        let inner = self.inner.put_multipart_opts(k, o).await?;
        Ok(Box::new(FlakyUpload {
            inner,
            stalled: self.parts_stalled.clone(),
            aborts: self.aborts.clone(),
        }))
    }
    async fn get_opts(&self, k: &Key, o: GetOptions) -> object_store::Result<GetResult> {
        self.heads.fetch_add(o.head as usize, Ordering::SeqCst);
        self.check().await?;
        self.inner.get_opts(k, o).await
    }
    fn delete_stream(
        &self,
        keys: BoxStream<'static, object_store::Result<Key>>,
    ) -> BoxStream<'static, object_store::Result<Key>> {
        self.inner.delete_stream(keys)
    }
    fn list(&self, prefix: Option<&Key>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }
    async fn list_with_delimiter(&self, prefix: Option<&Key>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy_opts(&self, from: &Key, to: &Key, o: CopyOptions) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, o).await
    }
}
