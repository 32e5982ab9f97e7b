//! The TCP connector under the pooled client: straight to the upstream (its name resolved through
//! `dns.upstream`), or, when `upstream.proxy` is set and the host is not in `upstream.no_proxy`,
//! through an HTTP `CONNECT` tunnel at the proxy, which resolves the upstream name itself (only
//! the proxy's own name is resolved here). TLS to the upstream then runs inside the tunnel.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine;
use http::{HeaderValue, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::buffered::Buffered;
use super::client::HickoryDns;
use super::tunnel::{handshake, TunnelError};
use crate::config::ProxyUrl;
use crate::proxy::BoxError;

/// How long the proxy has to answer a CONNECT.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where upstream connections go: `upstream.proxy` and `upstream.no_proxy`.
#[derive(Clone, Debug)]
pub struct ProxyRoute {
    pub url: ProxyUrl,
    pub no_proxy: Vec<String>,
}

/// Direct, or through the proxy for the hosts the proxy is for.
#[derive(Clone)]
pub struct Connector {
    direct: HttpConnector<HickoryDns>,
    via: Option<Arc<Via>>,
}

struct Via {
    /// `http://host:port/` of the proxy, for the direct connector.
    uri: Uri,
    /// `Proxy-Authorization`, marked sensitive.
    auth: Option<HeaderValue>,
    /// Says which destinations the proxy is for (curl's `NO_PROXY` rules).
    matcher: Matcher,
    /// The proxy URL with its password masked, for errors.
    shown: String,
}

/// A failed tunnel, named by the masked proxy URL.
#[derive(Debug, thiserror::Error)]
#[error("proxy {proxy}: {source}{}", hint(.source, *.with_credentials))]
pub struct ProxyError {
    proxy: String,
    with_credentials: bool,
    source: TunnelError,
}

/// What to change when the proxy wants credentials.
fn hint(e: &TunnelError, with_credentials: bool) -> &'static str {
    match (e.is_auth(), with_credentials) {
        (false, _) => "",
        (true, true) => " (it refused the user and password in upstream.proxy)",
        (true, false) => {
            " (it wants a user and password: upstream.proxy = \"http://user:pass@host:port\")"
        }
    }
}

impl Connector {
    pub fn new(direct: HttpConnector<HickoryDns>, proxy: Option<&ProxyRoute>) -> Self {
        let via = proxy.map(|route| {
            let uri: Uri = format!("http://{}/", route.url.authority())
                .parse()
                .expect("a validated proxy authority");
            // http too, though the client is https-only: no scheme may bypass the proxy.
            let matcher = Matcher::builder()
                .http(uri.to_string())
                .https(uri.to_string())
                .no(route.no_proxy.join(","))
                .build();
            Arc::new(Via {
                uri,
                auth: route.url.credentials().map(|(u, p)| basic(u, p)),
                matcher,
                shown: route.url.to_string(),
            })
        });
        Self { direct, via }
    }

    /// Whether a connection to `dst` goes through the proxy.
    pub fn proxied(&self, dst: &Uri) -> bool {
        (self.via.as_ref()).is_some_and(|via| via.matcher.intercept(dst).is_some())
    }
}

/// `Basic base64(user:pass)`, marked sensitive (never printed by hyper).
fn basic(user: &str, pass: &str) -> HeaderValue {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).expect("base64 is ASCII");
    value.set_sensitive(true);
    value
}

type Connecting = Pin<Box<dyn Future<Output = Result<Buffered, BoxError>> + Send>>;

impl tower_service::Service<Uri> for Connector {
    type Response = Buffered;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // HttpConnector is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Connecting {
        match self.via.clone() {
            Some(via) if self.proxied(&dst) => {
                let to_proxy = self.direct.call(via.uri.clone());
                Box::pin(async move {
                    let result = tunnel(to_proxy, &dst, &via).await;
                    result.map_err(|source| {
                        let proxy = via.shown.clone();
                        let with_credentials = via.auth.is_some();
                        let e = ProxyError {
                            proxy,
                            with_credentials,
                            source,
                        };
                        Box::new(e) as BoxError
                    })
                })
            }
            _ => {
                let direct = self.direct.call(dst);
                Box::pin(async move {
                    let tcp = direct.await?;
                    Ok(Buffered::new(tcp.into_inner()))
                })
            }
        }
    }
}

/// A TCP connection to the proxy (`to_proxy`), then a CONNECT to `dst`'s host and port.
async fn tunnel(
    to_proxy: impl Future<Output = Result<TokioIo<TcpStream>, impl Into<BoxError>>>,
    dst: &Uri,
    via: &Via,
) -> Result<Buffered, TunnelError> {
    let tcp = to_proxy.await.map_err(|e| TunnelError::Connect(e.into()))?;
    let host = dst.host().unwrap_or_default();
    let target = format!("{host}:{}", dst.port_u16().unwrap_or(443));
    let shaken = handshake(tcp.into_inner(), &target, via.auth.as_ref());
    let secs = HANDSHAKE_TIMEOUT.as_secs();
    let tcp = (tokio::time::timeout(HANDSHAKE_TIMEOUT, shaken).await)
        .map_err(|_| TunnelError::Timeout(secs))??;
    Ok(Buffered::new(tcp))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(no_proxy: &[&str]) -> ProxyRoute {
        let url = "http://u:pw@proxy.test:3128".to_owned();
        let parsed = crate::config::parse(
            &format!("[upstream]\nproxy = {url:?}\nno_proxy = {no_proxy:?}\n"),
            crate::config::Source::Embedded,
        )
        .unwrap();
        ProxyRoute {
            url: parsed.upstream.proxy.unwrap(),
            no_proxy: parsed.upstream.no_proxy,
        }
    }

    #[test]
    fn no_proxy_hosts_go_direct() {
        let route = route(&["internal.corp", ".svc.local", "10.0.0.0/8", "[::1]"]);
        let c = Connector::new(HttpConnector::new_with_resolver(test_dns()), Some(&route));
        let via = |u: &str| c.proxied(&u.parse().unwrap());
        assert!(via("https://registry-1.docker.io/v2/"));
        assert!(via("https://production.cloudflare.docker.com/x"));
        assert!(!via("https://internal.corp/v2/"));
        assert!(!via("https://reg.internal.corp:5000/v2/"));
        assert!(via("https://notinternal.corp/v2/"));
        assert!(!via("https://a.svc.local/"));
        assert!(!via("https://10.1.2.3/"));
        assert!(via("https://11.1.2.3/"));
        assert!(via("http://registry-1.docker.io/"));
        let direct = Connector::new(HttpConnector::new_with_resolver(test_dns()), None);
        assert!(!direct.proxied(&"https://registry-1.docker.io/".parse().unwrap()));
    }

    #[test]
    fn basic_auth_is_encoded_and_sensitive() {
        let v = basic("alice", "s@cret");
        assert_eq!(v.to_str().unwrap(), "Basic YWxpY2U6c0BjcmV0");
        assert!(v.is_sensitive());
    }

    #[test]
    fn tunnel_errors_name_the_masked_proxy() {
        let source = || TunnelError::Refused {
            status: 407,
            reason: "Proxy Authentication Required".into(),
            target: "r.io:443".into(),
        };
        let e = ProxyError {
            proxy: "http://u:***@p:3128".into(),
            with_credentials: true,
            source: source(),
        };
        let text = crate::proxy::error::chain(&e);
        assert_eq!(
            text,
            "proxy http://u:***@p:3128: the proxy answered 407 \"Proxy Authentication Required\" \
             to CONNECT r.io:443 (it refused the user and password in upstream.proxy)"
        );
        let e = ProxyError {
            proxy: "http://p:3128".into(),
            with_credentials: false,
            source: source(),
        };
        assert!(e.to_string().ends_with(
            "(it wants a user and password: upstream.proxy = \"http://user:pass@host:port\")"
        ));
    }

    fn test_dns() -> HickoryDns {
        HickoryDns(crate::dns::resolver(&[]).unwrap())
    }
}
