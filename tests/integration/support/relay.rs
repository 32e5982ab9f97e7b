//! A TCP relay in front of an appliance, standing for its address in `fleet.peers`: bound
//! before the appliance starts (so that its address can be configured), pointed at it after,
//! and cut (every connection dropped, new ones refused) to kill the appliance as its peers see
//! it, in the middle of a body if need be), or stalled (connections accepted, never answered).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub struct Relay {
    pub addr: SocketAddr,
    target: Arc<Mutex<Option<SocketAddr>>>,
    cut: CancellationToken,
    stalled: Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    pub async fn bind() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let target = Arc::new(Mutex::new(None));
        let cut = CancellationToken::new();
        let stalled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        tokio::spawn(accept(
            listener,
            target.clone(),
            cut.clone(),
            stalled.clone(),
        ));
        Self {
            addr,
            target,
            cut,
            stalled,
        }
    }

    /// Accepts every later connection and sends nothing on it (until cut).
    pub fn stall(&self) {
        (self.stalled).store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Sends every later connection to `target`.
    pub fn point_to(&self, target: SocketAddr) {
        *self.target.lock().unwrap() = Some(target);
    }

    /// Drops every connection at once and refuses new ones.
    pub fn cut(&self) {
        self.cut.cancel();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut.cancel();
    }
}

async fn accept(
    listener: TcpListener,
    target: Arc<Mutex<Option<SocketAddr>>>,
    cut: CancellationToken,
    stalled: Arc<std::sync::atomic::AtomicBool>,
) {
    loop {
        let accepted = tokio::select! {
            _ = cut.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((mut client, _)) = accepted else {
            return;
        };
        let Some(to) = *target.lock().unwrap() else {
            continue;
        };
        let cut = cut.clone();
        if stalled.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::spawn(async move {
                cut.cancelled().await;
                drop(client)
            });
            continue;
        }
        tokio::spawn(async move {
            let Ok(mut server) = TcpStream::connect(to).await else {
                return;
            };
            tokio::select! {
                _ = cut.cancelled() => {}
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
            }
        });
    }
}
