//! An in-process HTTP `CONNECT` proxy (a tokio task): it counts the tunnels it opens, by target,
//! checks `Proxy-Authorization` when told to, and "resolves" every name to 127.0.0.1 itself,
//! as a corporate proxy resolves names the appliance cannot.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The proxy; stops with the test's runtime.
pub struct ConnectProxy {
    pub addr: SocketAddr,
    /// `host:port` of each tunnel opened, in order.
    tunnels: Arc<Mutex<Vec<String>>>,
    /// CONNECTs refused with 407.
    refused: Arc<Mutex<usize>>,
}

impl ConnectProxy {
    /// `auth`: the `Proxy-Authorization` value required, if any.
    pub async fn start(auth: Option<&str>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tunnels = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(Mutex::new(0));
        let (t, r, auth) = (tunnels.clone(), refused.clone(), auth.map(str::to_owned));
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (t, r, auth) = (t.clone(), r.clone(), auth.clone());
                tokio::spawn(serve(tcp, auth, t, r));
            }
        });
        Self {
            addr,
            tunnels,
            refused,
        }
    }

    pub fn tunnels(&self) -> Vec<String> {
        self.tunnels.lock().unwrap().clone()
    }

    pub fn refused(&self) -> usize {
        *self.refused.lock().unwrap()
    }
}

/// One client connection: a CONNECT head, then bytes both ways.
async fn serve(
    mut tcp: TcpStream,
    auth: Option<String>,
    tunnels: Arc<Mutex<Vec<String>>>,
    refused: Arc<Mutex<usize>>,
) {
    let Some(head) = read_head(&mut tcp).await else {
        return;
    };
    let mut lines = head.lines();
    let request = lines.next().unwrap_or_default().to_owned();
    let given = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("proxy-authorization"))
        .map(|(_, v)| v.trim().to_owned());
    let target = match request.split(' ').collect::<Vec<_>>()[..] {
        ["CONNECT", target, "HTTP/1.1"] => target.to_owned(),
        _ => {
            let _ = tcp
                .write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
                .await;
            return;
        }
    };
    if auth.is_some() && given != auth {
        *refused.lock().unwrap() += 1;
        let no = "HTTP/1.1 407 Proxy Authentication Required\r\n\
                  Proxy-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\n\r\n";
        let _ = tcp.write_all(no.as_bytes()).await;
        return;
    }
    let port: u16 = target.rsplit(':').next().unwrap().parse().unwrap();
    let Ok(mut up) = TcpStream::connect(("127.0.0.1", port)).await else {
        let _ = tcp.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
        return;
    };
    tunnels.lock().unwrap().push(target);
    if tcp
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_ok()
    {
        let _ = tokio::io::copy_bidirectional(&mut tcp, &mut up).await;
    }
}

/// The request head, up to the blank line (at most 8 KiB; the client sends nothing more before
/// the answer).
async fn read_head(tcp: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if buf.len() > 8192 || tcp.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        buf.push(byte[0]);
    }
    String::from_utf8(buf).ok()
}
