//! The admin listener (plain HTTP): the status page `/` and its JSON `/api/status`, `/healthz`,
//! `/metrics` (Prometheus), and `/ca.crt` and `/registries` (the intercepted
//! host names) for client onboarding.
//!
//! Does not bind: [`serve`] takes a bound listener. Clients outside `access.allow` (IPv4 and IPv6
//! alike) are closed, and so are connections beyond [`MAX_CONNECTIONS`].

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::access::AccessList;
use crate::cache::Store;
use crate::conn::Slots;
use crate::metrics::{self, Listener, Metrics, Rejected};
use crate::status::{Facts, Status};

/// Admin connections open at once; more are closed at accept. Scrapers and people need few.
pub const MAX_CONNECTIONS: usize = 64;
/// A request head must arrive whole within this. hyper starts it whenever the connection waits
/// for a request, so it also closes a client that sends nothing and an idle keep-alive
/// connection.
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What the admin pages show.
pub struct Admin {
    pub ca_pem: String,
    /// The intercepted host names (exact ones), for client onboarding scripts; replaced on reload.
    pub registries: std::sync::RwLock<Vec<String>>,
    pub access: AccessList,
    pub metrics: Arc<Metrics>,
    pub status: Arc<Status>,
    pub cache: Arc<Store>,
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
        })
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
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
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
        let Some(slot) = slots.try_take() else {
            admin.metrics.rejected(Listener::Admin, Rejected::Limit);
            debug!(%peer, "admin connection refused: {MAX_CONNECTIONS} already open");
            continue;
        };
        let open = admin.metrics.open(Listener::Admin);
        let admin = admin.clone();
        let service = service_fn(move |req| {
            let admin = admin.clone();
            async move { Ok::<_, Infallible>(page(&admin, &req)) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_buf_size(16 * 1024)
            .max_headers(64)
            .serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            let _held = (slot, open);
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "admin connection error");
            }
        });
    }
    info!("admin stopped");
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
            let names = admin.registries.read().unwrap_or_else(|e| e.into_inner());
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
