//! The admin listener (plain HTTP): the status page `/` and its JSON `/api/status`, `/healthz`,
//! `/metrics` (Prometheus), and `/ca.crt` and `/registries` (the intercepted
//! host names) for client onboarding.
//!
//! Does not bind: [`serve`] takes a bound listener. Clients outside `access.allow` (IPv4 and IPv6
//! alike) are closed. At most [`MAX_CONNECTIONS`] are open, with the connection bounds of the
//! proxy listeners (first-byte and idle timeouts, the idlest giving way at the cap).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::access::AccessList;
use crate::cache::Store;
use crate::conn::{self, Activity, Slot, Slots, Tracked, Watched};
use crate::metrics::Tier;
use crate::metrics::{self, Listener, Metrics, Rejected};
use crate::status::{Facts, Status, TierRow};
use crate::sync::ReadWrite;

/// Admin connections open at once. Scrapers and people need few: at the cap, the connection idle
/// longest gives way to a newcomer, as on the proxy listeners ([`crate::conn::Slots`]); when
/// every one has a request in flight, the newcomer is closed.
pub const MAX_CONNECTIONS: usize = 64;
/// A connection that sends no byte within this is closed (as hyper's header timeout would).
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection with no request in flight for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing connection may take to finish the response it is sending.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// A request head must arrive whole within this. hyper starts it whenever the connection waits
/// for a request, so it also closes a client that sends nothing and an idle keep-alive
/// connection.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What the admin pages show.
pub struct Admin {
    pub ca_pem: String,
    /// The intercepted host names (exact ones), for client onboarding scripts; replaced on reload.
    pub registries: std::sync::RwLock<Vec<String>>,
    pub access: AccessList,
    pub metrics: Arc<Metrics>,
    pub status: Arc<Status>,
    pub cache: Arc<Store>,
    /// The fleet's shared tier, when there is one (set once at start).
    pub shared: std::sync::OnceLock<Arc<crate::tier::SharedTier>>,
    pub ca_fingerprint: String,
    /// Unix seconds.
    pub ca_expires: u64,
}

impl Admin {
    fn snapshot(&self) -> crate::status::Snapshot {
        let (objects, bytes) = self.cache.usage();
        self.status.snapshot(Facts {
            cache_bytes: bytes,
            cache_objects: objects as u64,
            cache_max_bytes: self.cache.max_size(),
            ca_fingerprint: self.ca_fingerprint.clone(),
            ca_expires: self.ca_expires,
            version: concat!("regcache ", env!("CARGO_PKG_VERSION")),
            tiers: self.tier_rows(),
        })
    }

    /// The local tier, then the shared one.
    fn tier_rows(&self) -> Vec<TierRow> {
        let totals = |tier| self.metrics.tier.totals(tier);
        let (hits, bytes, errors) = totals(Tier::Local);
        let mut rows = vec![TierRow {
            tier: "local",
            store: self.cache.dir().display().to_string(),
            hits,
            bytes,
            errors,
            up: !self.cache.writes_failing(),
            ..TierRow::default()
        }];
        if let Some(shared) = self.shared.get() {
            let (hits, bytes, errors) = totals(Tier::Shared);
            let health = shared.health();
            rows.push(TierRow {
                tier: "shared",
                store: shared.label().to_owned(),
                hits,
                bytes,
                errors,
                up: health.up,
                failures: health.failures,
                retry_in_s: health.retry_in.map(|d| d.as_secs()),
                pending_uploads: shared.pending() as u64,
            });
        }
        rows
    }
}

/// Serves the admin pages until `shutdown`.
pub async fn serve(admin: Arc<Admin>, listener: TcpListener, shutdown: CancellationToken) {
    let slots = Slots::new(MAX_CONNECTIONS);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        if !admin.access.allows(peer.ip()) {
            admin.metrics.rejected(Listener::Admin, Rejected::Access);
            warn!(%peer, "admin connection refused: client not in access.allow");
            continue;
        }
        let Some(admission) = slots.try_take() else {
            admin.metrics.rejected(Listener::Admin, Rejected::Limit);
            debug!(%peer, "admin connection refused: {MAX_CONNECTIONS} already open");
            continue;
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let Some(slot) = admission.slot().await else {
                admin.metrics.rejected(Listener::Admin, Rejected::Limit);
                debug!(%peer, "admin connection refused: {MAX_CONNECTIONS} already open");
                return;
            };
            connection(admin, stream, peer, slot).await;
        });
    }
    info!("admin stopped");
}

/// Serves one admin connection within the bounds of [`crate::conn`]: closed when no byte comes
/// within [`FIRST_BYTE_TIMEOUT`], when no request is in flight for [`IDLE_TIMEOUT`], or when a
/// newcomer at [`MAX_CONNECTIONS`] needs its slot while it is idle.
async fn connection(admin: Arc<Admin>, stream: TcpStream, peer: SocketAddr, slot: Slot) {
    let _open = admin.metrics.open(Listener::Admin);
    let activity = Activity::new();
    slot.watch(&activity);
    let service = {
        let (admin, activity) = (admin.clone(), activity.clone());
        service_fn(move |req| {
            let in_flight = activity.begin();
            let resp = page(&admin, &req).map(|body| Tracked::new(body, in_flight));
            async move { Ok::<_, Infallible>(resp) }
        })
    };
    let io = TokioIo::new(Watched::new(stream, activity.clone()));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(16 * 1024)
        .max_headers(64)
        .serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let why = tokio::select! {
        done = conn.as_mut() => {
            if let Err(e) = done {
                debug!(%peer, error = %e, "admin connection error");
            }
            return;
        }
        why = conn::expiry(&activity, FIRST_BYTE_TIMEOUT, IDLE_TIMEOUT) => why,
    };
    admin.metrics.expired(Listener::Admin, expired_label(why));
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
}

fn expired_label(why: conn::Expired) -> metrics::Expired {
    match why {
        conn::Expired::FirstByte => metrics::Expired::FirstByte,
        conn::Expired::Idle => metrics::Expired::Idle,
        conn::Expired::Evicted => metrics::Expired::Evicted,
        conn::Expired::Stalled => metrics::Expired::Stalled,
    }
}

fn page(admin: &Admin, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".into()),
        "/ca.crt" => text(
            StatusCode::OK,
            "application/x-pem-file",
            admin.ca_pem.clone(),
        ),
        "/metrics" => text(
            StatusCode::OK,
            metrics::CONTENT_TYPE,
            admin.metrics.encode(),
        ),
        "/" => {
            let page = Status::page(&admin.snapshot());
            text(StatusCode::OK, "text/html; charset=utf-8", page)
        }
        "/api/status" => {
            let json = serde_json::to_string(&admin.snapshot()).unwrap_or_default();
            text(StatusCode::OK, "application/json", json)
        }
        "/registries" => {
            let names = admin.registries.read_now();
            let list: String = names.iter().map(|h| format!("{h}\n")).collect();
            text(StatusCode::OK, "text/plain", list)
        }
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}
