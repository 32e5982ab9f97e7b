//! The listeners: accept within the access list and the connection cap, TLS with a leaf per SNI
//! name (HTTPS) or plain HTTP (the mirror), then HTTP/1.1 and HTTP/2 within `[limits]`; each
//! request goes to [`Proxy::handle`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use super::request::Conn;
use super::{records, Proxy};
use crate::config::LimitsConfig;
use crate::conn::{self, Activity, Slot, Tracked, Watched};
use crate::metrics::{self as m, Handshake};
use crate::names::normalize;

/// A client that does not finish its TLS handshake within this time is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// After a first-byte or idle timeout the connection is asked to close gracefully (HTTP/2
/// GOAWAY); it is dropped if that takes longer than this.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// The largest request head: HTTP/1.1 read buffer (`max_buf_size`, which also caps the head) and
/// HTTP/2 `max_header_list_size`. Registry requests carry small heads; the largest part is a
/// bearer token (a few KiB). hyper's defaults are ~400 KiB (HTTP/1.1: × 4096 connections, 1.6 GiB of
/// heads) and 16 KiB (HTTP/2). In HTTP/1.1 it also caps the write queue, which changes nothing for
/// blobs: a 1 MiB cache chunk exceeds either value and is flushed alone.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Header fields per HTTP/1.1 request (hyper's default, set explicitly).
const MAX_HEADERS: usize = 100;
/// Concurrent HTTP/2 streams per connection (hyper's default is 200; RFC 9113 asks for ≥ 100).
const MAX_STREAMS: u32 = 100;
/// HTTP/2 streams reset by the client before we answered, per connection, before it is closed
/// (the "rapid reset" attack; the h2 crate's default, set explicitly).
const MAX_PENDING_RESETS: usize = 20;

/// What a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// TLS with a leaf per SNI name; routed by Host/SNI.
    Https,
    /// Plain-HTTP registry mirror; routed by `?ns=` (containerd), else to Docker Hub (dockerd's
    /// `registry-mirrors`).
    Mirror,
}

/// Serves the bound listeners until `shutdown`, then lets open requests finish within `grace`.
pub async fn serve(
    proxy: Arc<Proxy>,
    listeners: Vec<(TcpListener, Listener)>,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let mut loops = tokio::task::JoinSet::new();
    for (listener, kind) in listeners {
        loops.spawn(accept_loop(proxy.clone(), listener, kind, shutdown.clone()));
    }
    while loops.join_next().await.is_some() {}
    // Every connection saw `shutdown` and is closing gracefully; wait for them.
    if tokio::time::timeout(grace, proxy.slots.drained())
        .await
        .is_err()
    {
        warn!(
            ?grace,
            open = proxy.slots.open(),
            "grace period over; closing the remaining connections"
        );
    }
    info!("https stopped");
}

impl Listener {
    fn label(self) -> m::Listener {
        match self {
            Self::Https => m::Listener::Https,
            Self::Mirror => m::Listener::Mirror,
        }
    }
}

async fn accept_loop(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    kind: Listener,
    shutdown: CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and the like: back off briefly rather than spin.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        // Both families: `allows` compares IPv4-mapped IPv6 peers as IPv4.
        if !proxy.access.allows(peer.ip()) {
            proxy.metrics.rejected(kind.label(), m::Rejected::Access);
            warn!(%peer, "connection refused: client not in access.allow");
            continue;
        }
        let Some(admission) = proxy.slots.try_take() else {
            // Dropping the stream closes it at once; debug only, as a flood would flood the log.
            proxy.metrics.rejected(kind.label(), m::Rejected::Limit);
            debug!(%peer, "connection refused: limits.max_connections reached");
            continue;
        };
        let (proxy, shutdown) = (proxy.clone(), shutdown.clone());
        tokio::spawn(async move {
            // At the cap: the slot of the connection told to give way, once it has closed.
            let Some(slot) = admission.slot().await else {
                proxy.metrics.rejected(kind.label(), m::Rejected::Limit);
                debug!(%peer, "connection refused: limits.max_connections reached");
                return;
            };
            match kind {
                Listener::Https => connection(proxy, stream, peer, slot, shutdown).await,
                Listener::Mirror => mirror_connection(proxy, stream, peer, slot, shutdown).await,
            }
        });
    }
}

async fn connection(
    proxy: Arc<Proxy>,
    stream: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    shutdown: CancellationToken,
) {
    let _open = proxy.metrics.open(m::Listener::Https);
    let _ = stream.set_nodelay(true);
    let Some(tls) = handshake(&proxy, stream, peer, &slot, &shutdown).await else {
        return;
    };
    let sni = tls
        .get_ref()
        .1
        .server_name()
        .map(normalize)
        .unwrap_or_default();
    let span = info_span!("proxy", %peer, host = %sni);
    let ctx = Conn {
        peer,
        sni,
        mirror: false,
    };
    // The first-byte clock starts here, at the end of the handshake.
    // HTTP/2 writes frame by frame; see `records` for why its records are coalesced.
    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
        let io = records::Records::new(tls);
        serve_http(proxy, io, ctx, Listener::Https, &slot, shutdown)
            .instrument(span)
            .await;
    } else {
        serve_http(proxy, tls, ctx, Listener::Https, &slot, shutdown)
            .instrument(span)
            .await;
    }
}

/// The TLS handshake, within [`HANDSHAKE_TIMEOUT`]; `None` (counted and logged) when it fails.
async fn handshake(
    proxy: &Proxy,
    stream: TcpStream,
    peer: SocketAddr,
    slot: &Slot,
    shutdown: &CancellationToken,
) -> Option<TlsStream<TcpStream>> {
    // A connection in its handshake is idle too: at the cap it gives way like any idle one, so
    // stalled handshakes cannot hold every slot for HANDSHAKE_TIMEOUT.
    let handshaking = Activity::new();
    slot.watch(&handshaking);
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, proxy.tls.accept(stream));
    let tls = tokio::select! {
        done = handshake => done,
        () = handshaking.evicted() => {
            proxy.metrics.expired(Listener::Https.label(), m::Expired::Evicted);
            return None;
        }
        () = shutdown.cancelled() => return None,
    };
    match tls {
        Ok(Ok(tls)) => {
            proxy.metrics.handshake(Handshake::Ok);
            Some(tls)
        }
        Ok(Err(e)) => {
            // rustls says this when the resolver had no certificate: not our name, or no SNI.
            let refused = e
                .to_string()
                .contains("no server certificate chain resolved");
            let outcome = match refused {
                true => Handshake::Refused,
                false => Handshake::Failed,
            };
            proxy.metrics.handshake(outcome);
            info!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            proxy.metrics.handshake(Handshake::Failed);
            debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

async fn mirror_connection(
    proxy: Arc<Proxy>,
    stream: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    shutdown: CancellationToken,
) {
    let _open = proxy.metrics.open(m::Listener::Mirror);
    let _ = stream.set_nodelay(true);
    let span = info_span!("mirror", %peer);
    let ctx = Conn {
        peer,
        sni: String::new(),
        mirror: true,
    };
    serve_http(proxy, stream, ctx, Listener::Mirror, &slot, shutdown)
        .instrument(span)
        .await;
}

/// Serves HTTP/1.1 and HTTP/2 on one (TLS or plain) connection, within the connection limits:
/// closed when no byte comes within `first_byte_timeout`, when no request is in flight for
/// `idle_timeout`, and (gracefully) on `shutdown`.
async fn serve_http<I>(
    proxy: Arc<Proxy>,
    io: I,
    ctx: Conn,
    kind: Listener,
    slot: &Slot,
    shutdown: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = proxy.limits();
    let activity = Activity::new();
    slot.watch(&activity);
    let io = TokioIo::new(Watched::new(io, activity.clone()));
    let ctx = Arc::new(ctx);
    let service = {
        let (proxy, activity) = (proxy.clone(), activity.clone());
        service_fn(move |req: Request<Incoming>| {
            let (proxy, ctx) = (proxy.clone(), ctx.clone());
            let in_flight = activity.begin();
            async move {
                let resp = proxy.handle(req, &ctx).await;
                Ok::<_, Infallible>(resp.map(|body| Tracked::new(body, in_flight)))
            }
        })
    };
    let builder = http_builder(&limits);
    let conn = builder.serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let expiry = conn::expiry(&activity, limits.first_byte_timeout, limits.idle_timeout);
    let timed_out = tokio::select! {
        done = conn.as_mut() => {
            if let Err(e) = done {
                debug!(error = %e, "connection ended with an error");
            }
            return;
        }
        why = expiry => {
            proxy.metrics.expired(kind.label(), expired_label(why));
            debug!(?why, "closing the connection: timeout");
            true
        }
        () = shutdown.cancelled() => false,
    };
    // HTTP/1.1: closes once no request is in flight; HTTP/2: GOAWAY, then closes.
    conn.as_mut().graceful_shutdown();
    if timed_out {
        let _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
    } else if let Err(e) = conn.await {
        debug!(error = %e, "connection ended with an error while draining");
    }
}

fn expired_label(why: conn::Expired) -> m::Expired {
    match why {
        conn::Expired::FirstByte => m::Expired::FirstByte,
        conn::Expired::Idle => m::Expired::Idle,
        conn::Expired::Evicted => m::Expired::Evicted,
        conn::Expired::Stalled => m::Expired::Stalled,
    }
}

/// The server side of one connection, with the limits of `[limits]` and hyper's own bounds set
/// explicitly.
fn http_builder(limits: &LimitsConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // hyper starts this whenever the connection waits for a request head: it bounds a slow
        // head (slowloris) and an idle HTTP/1.1 keep-alive connection alike.
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(MAX_HEAD_BYTES).unwrap_or(u32::MAX))
        .max_concurrent_streams(MAX_STREAMS)
        .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
        .keep_alive_interval(limits.h2_keepalive_interval)
        .keep_alive_timeout(
            limits
                .h2_keepalive_interval
                .unwrap_or(Duration::from_secs(20)),
        );
    builder
}
