//! The HTTP `CONNECT` handshake with `upstream.proxy`: ask for a tunnel to `host:port` (with
//! `Proxy-Authorization` when configured) and read the proxy's answer head; anything but a 2xx is
//! a [`TunnelError`] that names the proxy's status (tinyproxy answers a wrong password with 401,
//! squid with 407).

use http::HeaderValue;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The longest answer head read from a proxy.
const MAX_HEAD: usize = 8192;

/// Why no tunnel was opened. The texts never contain the credentials.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("cannot connect to the proxy: {0}")]
    Connect(crate::proxy::BoxError),
    #[error("the proxy connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("no answer from the proxy within {0}s")]
    Timeout(u64),
    #[error("the proxy answered {status} {reason:?} to CONNECT {target}")]
    Refused {
        status: u16,
        reason: String,
        target: String,
    },
    #[error("the proxy's answer to CONNECT is not HTTP")]
    NotHttp,
}

impl TunnelError {
    /// The proxy wants (other) credentials: 407, or 401 from proxies that answer so.
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            Self::Refused {
                status: 401 | 407,
                ..
            }
        )
    }
}

/// Sends `CONNECT target` on `io` and reads the answer head: `io` is the tunnel on a 2xx.
pub async fn handshake<S>(
    mut io: S,
    target: &str,
    auth: Option<&HeaderValue>,
) -> Result<S, TunnelError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n").into_bytes();
    if let Some(auth) = auth {
        head.extend_from_slice(b"Proxy-Authorization: ");
        head.extend_from_slice(auth.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    io.write_all(&head).await?;
    let answer = read_head(&mut io).await?;
    let line = answer.lines().next().unwrap_or_default();
    let mut parts = line.splitn(3, ' ');
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err(TunnelError::NotHttp);
    };
    let status: u16 = code.parse().map_err(|_| TunnelError::NotHttp)?;
    if !version.starts_with("HTTP/1.") {
        return Err(TunnelError::NotHttp);
    }
    if (200..300).contains(&status) {
        return Ok(io);
    }
    Err(TunnelError::Refused {
        status,
        reason: parts
            .next()
            .unwrap_or_default()
            .trim()
            .chars()
            .take(80)
            .collect(),
        target: target.to_owned(),
    })
}

/// The answer head up to its blank line, read a byte at a time so that nothing of the tunnel
/// is consumed (a proxy sends nothing after a 200 before the client speaks).
async fn read_head<S: AsyncRead + Unpin>(io: &mut S) -> Result<String, TunnelError> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") && !head.ends_with(b"\n\n") {
        if head.len() >= MAX_HEAD {
            return Err(TunnelError::NotHttp);
        }
        let byte = io.read_u8().await?;
        head.push(byte);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The request the proxy got and the handshake's result, for a proxy answering `answer`.
    async fn exchange(answer: &'static str) -> (String, Result<Vec<u8>, TunnelError>) {
        let (client, mut proxy) = tokio::io::duplex(4096);
        let server = tokio::spawn(async move {
            let request = read_head(&mut proxy).await.unwrap();
            proxy.write_all(answer.as_bytes()).await.unwrap();
            proxy.write_all(b"tunnelled").await.unwrap();
            request
        });
        let auth = HeaderValue::from_static("Basic dTpw");
        let result = handshake(client, "registry.test:443", Some(&auth)).await;
        let request = server.await.unwrap();
        let result = match result {
            Ok(mut io) => {
                let mut rest = vec![0; 9];
                io.read_exact(&mut rest).await.unwrap();
                Ok(rest)
            }
            Err(e) => Err(e),
        };
        (request, result)
    }

    #[tokio::test]
    async fn a_200_gives_the_tunnel_with_nothing_consumed() {
        let (request, result) = exchange("HTTP/1.1 200 Connection established\r\n\r\n").await;
        assert_eq!(
            request,
            "CONNECT registry.test:443 HTTP/1.1\r\nHost: registry.test:443\r\n\
             Proxy-Authorization: Basic dTpw\r\n\r\n"
        );
        assert_eq!(result.unwrap(), b"tunnelled");
    }

    #[tokio::test]
    async fn refusals_name_the_status() {
        let (_, result) = exchange("HTTP/1.0 401 Unauthorized\r\nServer: tinyproxy\r\n\r\n").await;
        let e = result.unwrap_err();
        assert!(e.is_auth());
        let text = e.to_string();
        assert_eq!(
            text,
            "the proxy answered 401 \"Unauthorized\" to CONNECT registry.test:443"
        );
        let (_, result) = exchange("HTTP/1.1 403 Forbidden\r\n\r\n").await;
        assert!(!result.unwrap_err().is_auth());
        let (_, result) = exchange("SSH-2.0-OpenSSH\r\n\r\n").await;
        assert!(matches!(result, Err(TunnelError::NotHttp)));
    }
}
