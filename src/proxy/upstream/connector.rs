//! The TCP connector under the pooled client: straight to the upstream (its name resolved through
//! `dns.upstream`), or, when `upstream.proxy` is set and the host is not in `upstream.no_proxy`,
//! through an HTTP `CONNECT` tunnel at the proxy, which resolves the upstream name itself (only
//! the proxy's own name is resolved here). TLS to the upstream then runs inside the tunnel.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine;
use http::{HeaderValue, Uri};
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::client::HickoryDns;
use crate::config::ProxyUrl;
use crate::proxy::BoxError;

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
    via: Option<Via>,
}

#[derive(Clone)]
struct Via {
    tunnel: Tunnel<HttpConnector<HickoryDns>>,
    /// Says which destinations the proxy is for (curl's `NO_PROXY` rules).
    matcher: Arc<Matcher>,
    /// The proxy URL with its password masked, for errors.
    shown: Arc<str>,
}

/// A failed tunnel, named by the masked proxy URL.
#[derive(Debug, thiserror::Error)]
#[error("proxy {proxy}: {}", hint(.source, *.with_credentials))]
pub struct ProxyError {
    proxy: Arc<str>,
    with_credentials: bool,
    /// hyper-util's `TunnelError` (a type it does not export).
    #[source]
    source: BoxError,
}

/// What a tunnel error means for the operator; hyper-util's error is known by its text only.
fn hint(e: &BoxError, with_credentials: bool) -> &'static str {
    let text = e.to_string();
    match () {
        _ if text.contains("authorization required") && with_credentials => {
            "407 Proxy Authentication Required: the proxy refused the user and password in \
             upstream.proxy"
        }
        _ if text.contains("authorization required") => {
            "407 Proxy Authentication Required: give a user and password \
             (upstream.proxy = \"http://user:pass@host:port\")"
        }
        _ if text.contains("unsuccessful") => "the proxy refused the CONNECT",
        _ if text.contains("underlying connection") => "cannot connect to the proxy",
        _ => "the CONNECT tunnel failed",
    }
}

impl Connector {
    pub fn new(direct: HttpConnector<HickoryDns>, proxy: Option<&ProxyRoute>) -> Self {
        let via = proxy.map(|route| {
            let uri: Uri = format!("http://{}/", route.url.authority())
                .parse()
                .expect("a validated proxy authority");
            let mut tunnel = Tunnel::new(uri.clone(), direct.clone());
            if let Some((user, pass)) = route.url.credentials() {
                tunnel = tunnel.with_auth(basic(user, pass));
            }
            let matcher = Matcher::builder()
                .https(uri.to_string())
                .no(route.no_proxy.join(","))
                .build();
            Via {
                tunnel,
                matcher: Arc::new(matcher),
                shown: route.url.to_string().into(),
            }
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

type Connecting = Pin<Box<dyn Future<Output = Result<TokioIo<TcpStream>, BoxError>> + Send>>;

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Both connectors are always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Connecting {
        let proxied = self.proxied(&dst);
        match &mut self.via {
            Some(via) if proxied => {
                let with_credentials = via.tunnel_has_credentials();
                let proxy = via.shown.clone();
                let tunnel = via.tunnel.call(dst);
                Box::pin(async move {
                    tunnel.await.map_err(|source| {
                        let e = ProxyError {
                            proxy,
                            with_credentials,
                            source: source.into(),
                        };
                        Box::new(e) as BoxError
                    })
                })
            }
            _ => {
                let direct = self.direct.call(dst);
                Box::pin(async move { direct.await.map_err(Into::into) })
            }
        }
    }
}

impl Via {
    fn tunnel_has_credentials(&self) -> bool {
        self.shown.contains('@')
    }
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
        let e = ProxyError {
            proxy: "http://u:***@p:3128".into(),
            with_credentials: true,
            source: "tunnel error: proxy authorization required".into(),
        };
        let text = crate::proxy::error::chain(&e);
        assert!(text.starts_with("proxy http://u:***@p:3128: 407"), "{text}");
        assert!(text.contains("refused the user and password"), "{text}");
    }

    fn test_dns() -> HickoryDns {
        HickoryDns(crate::dns::resolver(&[]).unwrap())
    }
}
