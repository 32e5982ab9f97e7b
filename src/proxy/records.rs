//! Whole TLS records for HTTP/2, handed to rustls in batches.
//!
//! rustls cuts a record at every 16 KiB of plaintext counted from the start of each write. h2
//! writes each DATA frame on its own, a 9-byte frame header and a 16 KiB payload, and flushes after
//! each, so every frame left as a full record and a 9-byte one: twice the records, and a client
//! reads each record with its own system calls. curl fetching a 512 MiB blob over HTTP/2 made
//! 131,741 reads from regcache against 65,955 from nginx.
//!
//! [`Records`] sits between hyper and the TLS stream of an HTTP/2 connection. It keeps writes
//! until it holds [`BATCH`] bytes (whole records) and then hands them to rustls in one write, once
//! rustls has sent what it had (so rustls takes all of it: [`BATCH`] is its default buffer
//! limit, and an HTTP/1.1 body leaves in writes of that size too).
//!
//! A flush that follows new writes sends nothing: it wakes the task and returns, so the frames h2
//! writes next fill the batch (sending the whole records at every flush made one `writev` per
//! record, 65 per MiB). The next flush that follows no new write sends everything held: h2 ends
//! every poll of its connection with a flush, so that flush comes at once when h2 has nothing more
//! to write, and a partial batch never waits for more data that may not come. A connection
//! that closes goes through `poll_shutdown`, which sends what is held first; only when the
//! client's side ends abruptly (EOF without close_notify) does h2 drop the connection without a
//! shutdown, and what is held (at most [`BATCH`]; before batching, less than a record) is not
//! sent: that matters only to a client that half-closes its side and still awaits responses.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most plaintext one TLS record carries.
pub const RECORD: usize = 16 * 1024;
/// What one write hands rustls at most: rustls's default buffer limit, four records.
pub const BATCH: usize = 4 * RECORD;

/// A TLS stream that can say whether it still holds encrypted bytes it has not written.
pub trait TlsPending {
    fn tls_pending(&self) -> bool;
}

impl<IO> TlsPending for tokio_rustls::server::TlsStream<IO> {
    fn tls_pending(&self) -> bool {
        self.get_ref().1.wants_write()
    }
}

/// Coalesces writes into whole TLS records; see the module docs.
pub struct Records<S> {
    inner: S,
    /// Plaintext not yet handed to the TLS stream; never more than [`BATCH`].
    buf: Vec<u8>,
    /// Something was written since the last flush.
    fresh: bool,
}

impl<S> Records<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            fresh: false,
        }
    }

    #[cfg(test)]
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncWrite + TlsPending + Unpin> Records<S> {
    /// Waits until the TLS stream has written everything it holds.
    fn poll_tls_sent(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.inner.tls_pending() {
            ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    /// Hands the first `upto` bytes of the buffer to the TLS stream.
    fn poll_send(&mut self, cx: &mut Context<'_>, upto: usize) -> Poll<io::Result<()>> {
        let mut left = upto.min(self.buf.len());
        while left > 0 {
            ready!(self.poll_tls_sent(cx))?;
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[..left]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.buf.drain(..n);
            left -= n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + TlsPending + Unpin> AsyncWrite for Records<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        // Room for it: keep it.
        let room = BATCH - this.buf.len();
        if room > 0 {
            let taken = copy_prefix(&mut this.buf, bufs, room);
            this.fresh = true;
            return Poll::Ready(Ok(taken));
        }
        // Full (BATCH is whole records): send it, then take more.
        ready!(this.poll_send(cx, BATCH))?;
        let taken = copy_prefix(&mut this.buf, bufs, BATCH);
        this.fresh = true;
        Poll::Ready(Ok(taken))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.fresh {
            // More may follow at once: keep it for now and come back (h2 flushes again at the
            // end of the poll this wake-up causes).
            this.fresh = false;
            cx.waker().wake_by_ref();
            return Poll::Ready(Ok(()));
        }
        ready!(this.poll_send(cx, usize::MAX))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx, usize::MAX))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Records<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

/// Appends up to `len` bytes of `bufs` to `buf`; how many.
fn copy_prefix(buf: &mut Vec<u8>, bufs: &[IoSlice<'_>], len: usize) -> usize {
    let mut left = len;
    for b in bufs {
        let take = b.len().min(left);
        buf.extend_from_slice(&b[..take]);
        left -= take;
        if left == 0 {
            break;
        }
    }
    len - left
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    /// Cuts records like rustls (at every RECORD bytes from the start of each write), takes at
    /// most BATCH bytes a write, and holds them as "pending" until flushed.
    #[derive(Default)]
    struct FakeTls {
        records: Vec<usize>,
        writes: usize,
        written: Vec<u8>,
        pending: bool,
    }

    impl TlsPending for FakeTls {
        fn tls_pending(&self) -> bool {
            self.pending
        }
    }

    impl AsyncWrite for FakeTls {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            assert!(!this.pending, "written while it still held encrypted bytes");
            let n = buf.len().min(BATCH);
            this.writes += 1;
            this.records
                .extend(buf[..n].chunks(RECORD).map(<[u8]>::len));
            this.written.extend_from_slice(&buf[..n]);
            this.pending = true;
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.get_mut().pending = false;
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn data(len: usize, seed: usize) -> Vec<u8> {
        (0..len).map(|i| ((i * 7 + seed) % 251) as u8).collect()
    }

    /// Writes `parts` as h2 writes a frame: vectored, again with what is left after a short
    /// write; then flushes, as h2 does after every DATA frame.
    fn frame(w: &mut Records<FakeTls>, cx: &mut Context<'_>, parts: &[&[u8]]) {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let mut done = 0;
        while done < total {
            let mut skip = done;
            let mut slices = Vec::new();
            for p in parts {
                if skip >= p.len() {
                    skip -= p.len();
                    continue;
                }
                slices.push(IoSlice::new(&p[skip..]));
                skip = 0;
            }
            match Pin::new(&mut *w).poll_write_vectored(cx, &slices) {
                Poll::Ready(Ok(n)) => done += n,
                other => panic!("write: {other:?}"),
            }
        }
        assert!(Pin::new(&mut *w).poll_flush(cx).is_ready());
    }

    #[test]
    fn h2_frames_leave_as_whole_records_and_the_end_follows_at_the_next_flush() {
        let wakes = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut w = Records::new(FakeTls::default());
        let mut expected = Vec::new();
        for i in 0..100 {
            let (header, payload) = (data(9, i), data(RECORD, i + 1));
            frame(&mut w, &mut cx, &[&header, &payload]);
            expected.extend_from_slice(&header);
            expected.extend_from_slice(&payload);
        }
        // What h2 does at the end of a poll of its connection: flush with nothing new.
        let held = expected.len() - w.get_ref().written.len();
        assert!(held > 0 && held < BATCH, "a partial batch is held back");
        assert!(
            wakes.0.load(Ordering::SeqCst) > 0,
            "and the task was woken to flush it"
        );
        assert!(Pin::new(&mut w).poll_flush(&mut cx).is_ready());
        let tls = w.get_ref();
        assert_eq!(tls.written, expected);
        let short = tls.records.iter().filter(|r| **r < RECORD).count();
        assert_eq!(short, 1, "one short record, at the end: {:?}", tls.records);
        let batches = expected.len().div_ceil(BATCH);
        assert_eq!(tls.writes, batches, "written in whole batches");
    }

    #[tokio::test]
    async fn everything_reaches_the_stream_whatever_the_write_sizes() {
        let mut w = Records::new(FakeTls::default());
        let mut expected = Vec::new();
        for (i, len) in [1, 300, 16_393, 70_000, 5, 1 << 20, 16_384]
            .into_iter()
            .enumerate()
        {
            let chunk = data(len, i);
            let mut done = 0;
            while done < chunk.len() {
                done += poll_fn(|cx| Pin::new(&mut w).poll_write(cx, &chunk[done..]))
                    .await
                    .unwrap();
            }
            expected.extend_from_slice(&chunk);
        }
        // Two flushes: the first may keep a partial record (data was fresh), the second not.
        for _ in 0..2 {
            poll_fn(|cx| Pin::new(&mut w).poll_flush(cx)).await.unwrap();
        }
        assert_eq!(w.get_ref().written, expected);
        poll_fn(|cx| Pin::new(&mut w).poll_shutdown(cx))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_small_response_goes_out_within_two_flushes() {
        let mut w = Records::new(FakeTls::default());
        let head = b"\x00\x00\x05\x01\x04\x00\x00\x00\x01hello";
        poll_fn(|cx| Pin::new(&mut w).poll_write(cx, head))
            .await
            .unwrap();
        poll_fn(|cx| Pin::new(&mut w).poll_flush(cx)).await.unwrap();
        poll_fn(|cx| Pin::new(&mut w).poll_flush(cx)).await.unwrap();
        assert_eq!(w.get_ref().written, head);
    }
}
