//! Reading stored objects in chunks for the serve path, cheaply.
//!
//! A warm blob is read at about the speed TLS can encrypt it, so the read itself must not cost
//! much. Two things did (measured in `bench/run.sh`, a 512 MiB warm blob over TLS):
//!
//! - **Zero-filling a fresh buffer per chunk** (`vec![0; 1 MiB]`) before the kernel overwrites it.
//!   Chunks are taken from a small pool of buffers that were zero-filled once; a buffer goes back
//!   to the pool when hyper and rustls drop the last [`Bytes`] that points into it.
//! - **Handing every chunk to the blocking pool.** A chunk the page cache holds is read right on
//!   the async worker with `RWF_NOWAIT`, which makes the kernel return what it has instead of
//!   waiting for the disk; only what is not cached goes to `spawn_blocking`. A worker is never
//!   blocked on the disk, and a warm object never leaves its worker thread.
//!
//! Together these took about a tenth off regcache's CPU per warm GET.

use std::fs::File;
use std::io::{self, IoSliceMut};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use rustix::io::{preadv2, ReadWriteFlags};

use super::CHUNK;
use crate::sync::Locked;

/// Buffers kept for reuse: enough for a few streams, each with a chunk or two in flight.
const POOL_MAX: usize = 32;
/// Reads smaller than this (a reader following a fill gets what the upstream just sent, often
/// 16 KiB) get a buffer of their own size: a pooled 1 MiB buffer would be held for each.
const POOLED_MIN: usize = CHUNK / 8;

fn pool() -> &'static Mutex<Vec<Vec<u8>>> {
    static POOL: OnceLock<Mutex<Vec<Vec<u8>>>> = OnceLock::new();
    POOL.get_or_init(Mutex::default)
}

/// A chunk's buffer: `len` bytes of a `CHUNK`-sized, initialized buffer that goes back to the
/// pool when dropped.
struct Pooled {
    buf: Vec<u8>,
    len: usize,
}

impl Pooled {
    fn take(len: usize) -> Self {
        debug_assert!(len <= CHUNK);
        if len < POOLED_MIN {
            return Self {
                buf: vec![0; len],
                len,
            };
        }
        let reused = pool().locked().pop();
        let buf = reused.unwrap_or_else(|| vec![0; CHUNK]);
        Self { buf, len }
    }
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if self.buf.len() != CHUNK {
            return;
        }
        let mut pool = pool().locked();
        if pool.len() < POOL_MAX {
            pool.push(std::mem::take(&mut self.buf));
        }
    }
}

/// Reads `len` (at most [`CHUNK`]) bytes at `offset`. A file shorter than that is an error:
/// the index said it was longer.
pub async fn read(file: Arc<File>, offset: u64, len: usize) -> io::Result<Bytes> {
    let mut chunk = Pooled::take(len);
    let done = cached_prefix(&file, &mut chunk.buf[..len], offset);
    if done == len {
        return Ok(Bytes::from_owner(chunk));
    }
    tokio::task::spawn_blocking(move || {
        read_exact_at(&file, &mut chunk.buf[done..len], offset + done as u64)?;
        Ok(Bytes::from_owner(chunk))
    })
    .await
    .map_err(io::Error::other)?
}

/// Reads what the page cache has of `buf.len()` bytes at `offset` without waiting for the disk:
/// the number of bytes read, 0 when nothing is cached or the file system has no `RWF_NOWAIT`.
fn cached_prefix(file: &File, buf: &mut [u8], offset: u64) -> usize {
    let mut done = 0;
    while done < buf.len() {
        let mut slices = [IoSliceMut::new(&mut buf[done..])];
        match preadv2(
            file,
            &mut slices,
            offset + done as u64,
            ReadWriteFlags::NOWAIT,
        ) {
            Ok(0) | Err(_) => break,
            Ok(n) => done += n,
        }
    }
    done
}

/// Fills `buf` from `offset`, waiting for the disk if need be.
pub fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let n = file.read_at(&mut buf[done..], offset + done as u64)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "object shorter than indexed",
            ));
        }
        done += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[tokio::test]
    async fn reads_chunks_and_reuses_buffers() {
        // Two files with different bytes, read alternately: a pooled buffer that was not fully
        // overwritten would show the other file's bytes.
        let files: Vec<(Arc<File>, Vec<u8>)> = (0..2)
            .map(|seed| {
                let mut file = tempfile::tempfile().unwrap();
                let data: Vec<u8> = (0..CHUNK + 4096)
                    .map(|i| ((i + seed * 97) % 251) as u8)
                    .collect();
                file.write_all(&data).unwrap();
                (Arc::new(file), data)
            })
            .collect();
        for round in 0..4 {
            let (file, data) = &files[round % 2];
            let first = read(file.clone(), 0, CHUNK).await.unwrap();
            assert_eq!(&first[..], &data[..CHUNK]);
            let tail = read(file.clone(), CHUNK as u64, 4096).await.unwrap();
            assert_eq!(&tail[..], &data[CHUNK..]);
            let middle = read(file.clone(), 12_345, POOLED_MIN + 1).await.unwrap();
            assert_eq!(&middle[..], &data[12_345..12_345 + POOLED_MIN + 1]);
        }
    }

    #[test]
    fn a_read_the_page_cache_cannot_answer_is_finished_by_a_blocking_read() {
        let mut file = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..8192).map(|i| (i % 251) as u8).collect();
        file.write_all(&data).unwrap();
        // What the async path does after a short RWF_NOWAIT read: the rest, waiting for the disk.
        let mut buf = vec![0u8; 8192];
        let done = cached_prefix(&file, &mut buf[..4096], 0);
        read_exact_at(&file, &mut buf[done..], done as u64).unwrap();
        assert_eq!(buf, data);
    }

    #[tokio::test]
    async fn a_short_file_is_an_error() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&[7; 100]).unwrap();
        let err = read(Arc::new(file), 50, 100).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
