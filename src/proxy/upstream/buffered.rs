//! Upstream connections read in large pieces: rustls asks its transport for at most 4 KiB at a
//! time, so a body streaming from the upstream cost a `recv` (and often a window-update ACK)
//! per 4 KiB. [`Buffered`] reads up to [`SIZE`] at once and hands rustls what it asks for from
//! there: about one `recv` per 64 KiB, for one copy in memory.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How much one read from the socket may take.
const SIZE: usize = 64 << 10;

/// A TCP connection to an upstream whose reads go through a buffer; writes go straight through.
pub struct Buffered {
    tcp: TcpStream,
    /// Allocated at the first read.
    buf: Vec<u8>,
    /// `buf[start..end]` was read from the socket and not yet handed out.
    start: usize,
    end: usize,
}

impl Buffered {
    pub fn new(tcp: TcpStream) -> Self {
        Self {
            tcp,
            buf: Vec::new(),
            start: 0,
            end: 0,
        }
    }
}

impl Read for Buffered {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut out: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.start == this.end {
            if this.buf.is_empty() {
                this.buf = vec![0; SIZE];
            }
            let mut read = ReadBuf::new(&mut this.buf);
            ready!(Pin::new(&mut this.tcp).poll_read(cx, &mut read))?;
            (this.start, this.end) = (0, read.filled().len());
        }
        let n = (this.end - this.start).min(out.remaining());
        out.put_slice(&this.buf[this.start..this.start + n]);
        this.start += n;
        Poll::Ready(Ok(()))
    }
}

impl Write for Buffered {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

impl Connection for Buffered {
    fn connected(&self) -> Connected {
        self.tcp.connected()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Small reads are served from one large read of the socket, in order, to the end.
    #[tokio::test]
    async fn small_reads_get_every_byte_in_order() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(&sent).await.unwrap();
            let mut echo = [0; 5];
            s.read_exact(&mut echo).await.unwrap();
            echo
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut conn = TokioIo::new(Buffered::new(tcp));
        let mut got = Vec::new();
        let mut piece = [0; 4096];
        while got.len() < data.len() {
            let n = conn.read(&mut piece).await.unwrap();
            assert!(n > 0, "no early end");
            got.extend_from_slice(&piece[..n]);
        }
        assert_eq!(got, data);
        conn.write_all(b"hello").await.unwrap();
        assert_eq!(&server.await.unwrap(), b"hello", "writes go through");
        assert_eq!(conn.read(&mut piece).await.unwrap(), 0, "then the end");
    }
}
