//! Binding every listener before anything else is built, with errors that say which config key
//! to change.

use std::io;
use std::net::SocketAddr;

use anyhow::anyhow;
use tokio::net::{TcpListener, UdpSocket};
use tracing::info;

use crate::config::Config;

/// Every listening socket, bound before anything else is built.
pub(super) struct Sockets {
    pub(super) dns_udp: Vec<UdpSocket>,
    pub(super) dns_tcp: Vec<TcpListener>,
    pub(super) dns_addrs: Vec<SocketAddr>,
    pub(super) https: Vec<TcpListener>,
    pub(super) http: Vec<TcpListener>,
    pub(super) admin: TcpListener,
}

/// The addresses of the TCP listeners, port 0 resolved.
pub(super) struct Addresses {
    pub(super) https: Vec<SocketAddr>,
    pub(super) http: Vec<SocketAddr>,
    pub(super) admin: SocketAddr,
}

impl Sockets {
    pub(super) async fn bind(config: &Config) -> anyhow::Result<Self> {
        let (dns_udp, dns_tcp, dns_addrs) = bind_dns(&config.dns.listen).await?;
        Ok(Self {
            dns_udp,
            dns_tcp,
            dns_addrs,
            https: bind_all("https", "tls.listen", &config.tls.listen).await?,
            http: bind_all("http", "http.listen", &config.http_listen).await?,
            admin: bind_tcp("admin", "admin.listen", config.admin.listen).await?,
        })
    }

    /// The bound addresses, each logged as `listening for … on ADDR`.
    pub(super) fn addresses(&self) -> anyhow::Result<Addresses> {
        let addrs = Addresses {
            https: local_addrs(&self.https)?,
            http: local_addrs(&self.http)?,
            admin: self.admin.local_addr()?,
        };
        for addr in &self.dns_addrs {
            info!("listening for dns on {addr}");
        }
        for addr in &addrs.https {
            info!("listening for https on {addr}");
        }
        for addr in &addrs.http {
            info!("listening for http on {addr} (registry mirror)");
        }
        info!("listening for admin on {}", addrs.admin);
        Ok(addrs)
    }
}

/// Binds UDP and TCP on each address, on the same port (also when the port is 0).
async fn bind_dns(
    addrs: &[SocketAddr],
) -> anyhow::Result<(Vec<UdpSocket>, Vec<TcpListener>, Vec<SocketAddr>)> {
    let (mut udp, mut tcp, mut bound) = (Vec::new(), Vec::new(), Vec::new());
    for &addr in addrs {
        let mut attempt = 0;
        let (socket, listener) = loop {
            let socket = UdpSocket::bind(addr)
                .await
                .map_err(|e| bind_error("dns", "dns.listen", addr, "UDP", &e))?;
            let actual = socket.local_addr()?;
            match TcpListener::bind(actual).await {
                Ok(listener) => break (socket, listener),
                // Port 0 picked a UDP port whose TCP twin is taken: try another, a few times.
                Err(_) if addr.port() == 0 && attempt < 50 => attempt += 1,
                Err(e) => return Err(bind_error("dns", "dns.listen", actual, "TCP", &e)),
            }
        };
        bound.push(socket.local_addr()?);
        udp.push(socket);
        tcp.push(listener);
    }
    Ok((udp, tcp, bound))
}

async fn bind_all(what: &str, key: &str, addrs: &[SocketAddr]) -> anyhow::Result<Vec<TcpListener>> {
    let mut out = Vec::new();
    for &addr in addrs {
        out.push(bind_tcp(what, key, addr).await?);
    }
    Ok(out)
}

async fn bind_tcp(what: &str, key: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| bind_error(what, key, addr, "TCP", &e))
}

fn bind_error(
    what: &str,
    key: &str,
    addr: SocketAddr,
    proto: &str,
    e: &io::Error,
) -> anyhow::Error {
    let hint = match e.kind() {
        io::ErrorKind::AddrInUse if key == "dns.listen" => {
            "another DNS server holds the port (systemd-resolved listens on 127.0.0.53:53, \
             dnsmasq or a container runtime's resolver on others): stop it or listen on a \
             specific address"
        }
        io::ErrorKind::AddrInUse => "another process holds the port",
        io::ErrorKind::PermissionDenied => {
            "ports below 1024 need root or the CAP_NET_BIND_SERVICE capability"
        }
        io::ErrorKind::AddrNotAvailable => "no interface of this host has that address",
        _ => "the address cannot be used",
    };
    anyhow!("cannot listen for {what} on {addr} ({proto}): {e}: {hint}; change {key} in the config")
}

fn local_addrs(listeners: &[TcpListener]) -> io::Result<Vec<SocketAddr>> {
    listeners.iter().map(TcpListener::local_addr).collect()
}
