//! A TCP relay in front of an appliance, standing for its address in `fleet.peers`: bound
//! before the appliance starts (so that its address can be configured), pointed at it after,
//! and cut (every connection dropped, new ones refused) to kill the appliance as its peers see
//! it, in the middle of a body if need be, or stalled (connections accepted, never answered).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub struct Relay {
    pub addr: SocketAddr,
    state: Arc<State>,
}

#[derive(Default)]
struct State {
    target: Mutex<Option<SocketAddr>>,
    cut: CancellationToken,
    stalled: AtomicBool,
    /// Connections accepted so far.
    accepted: AtomicUsize,
}

impl Relay {
    pub async fn bind() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        tokio::spawn(accept(listener, state.clone()));
        Self { addr, state }
    }

    /// Sends every later connection to `target`.
    pub fn point_to(&self, target: SocketAddr) {
        *self.state.target.lock().unwrap() = Some(target);
    }

    /// Drops every connection at once and refuses new ones.
    pub fn cut(&self) {
        self.state.cut.cancel();
    }

    /// Accepts every later connection and sends nothing on it (until cut).
    pub fn stall(&self) {
        self.state.stalled.store(true, Ordering::SeqCst);
    }

    /// How many connections it accepted.
    pub fn accepted(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.state.cut.cancel();
    }
}

async fn accept(listener: TcpListener, state: Arc<State>) {
    loop {
        let accepted = tokio::select! {
            _ = state.cut.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((mut client, _)) = accepted else {
            return;
        };
        state.accepted.fetch_add(1, Ordering::SeqCst);
        let to = *state.target.lock().unwrap();
        let (Some(to), false) = (to, state.stalled.load(Ordering::SeqCst)) else {
            let cut = state.cut.clone();
            tokio::spawn(async move {
                cut.cancelled().await;
                drop(client)
            });
            continue;
        };
        let cut = state.cut.clone();
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
