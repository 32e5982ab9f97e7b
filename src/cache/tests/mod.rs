//! The store's unit tests, by part: fills (writer, readers, relay, room), the store (index,
//! eviction, restart, faults, maintenance) and tag mappings. Shared helpers here.

use std::sync::Arc;

use futures_util::TryStreamExt;

use super::*;

mod fills;
mod refs;
mod store;
mod tags;

pub(super) fn data(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

pub(super) fn lead(store: &Arc<Store>, d: &Digest) -> FillWriter {
    match store.claim(d).unwrap() {
        Claim::Lead(w) => w,
        _ => panic!("expected to lead the fill of {d}"),
    }
}

pub(super) async fn fill(store: &Arc<Store>, content: &[u8]) -> Digest {
    let d = Digest::of(content);
    let mut w = lead(store, &d);
    w.start(
        Some(content.len() as u64),
        "application/octet-stream",
        "reg",
        "lib/a",
    );
    for chunk in content.chunks(1000) {
        w.write(chunk).unwrap();
    }
    w.finish().unwrap();
    d
}

pub(super) async fn read(store: &Arc<Store>, d: &Digest) -> Result<Vec<u8>, Error> {
    let Claim::Hit(reader) = store.claim(d).unwrap() else {
        panic!("expected a hit for {d}")
    };
    let chunks: Vec<bytes::Bytes> = reader.stream(None).try_collect().await?;
    Ok(chunks.concat())
}

pub(super) fn tmp_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("tmp")).unwrap().count()
}
