//! DNS over UDP: several tasks per socket (one per core) receive, answer intercepted names on
//! the [`Fast`] path and hand the rest to [`Handler`] in a task of its own, as hickory's server
//! loop did: clients outside the access list get REFUSED before any parse (not counted, as
//! before), a datagram shorter than a header or a response gets nothing, one that does not parse
//! gets FORMERR.

use std::net::SocketAddr;
use std::sync::Arc;

use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::net::NetError;
use hickory_server::proto::op::{Header, MessageType, ResponseCode};
use hickory_server::proto::rr::{Record, RecordType};
use hickory_server::proto::serialize::binary::{BinDecodable, BinDecoder, BinEncoder};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder, Queries};
use tokio::net::UdpSocket;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::fast::Fast;
use super::Handler;
use crate::metrics::DnsOutcome;
use crate::sync::Locked;

/// The largest datagram read.
const MAX_DATAGRAM: usize = 65_535;

/// Serves `sockets` until `shutdown`, with as many receiving tasks per socket as there are cores.
pub async fn serve(handler: Arc<Handler>, sockets: Vec<UdpSocket>, shutdown: CancellationToken) {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    let mut tasks = JoinSet::new();
    for socket in sockets {
        let socket = Arc::new(socket);
        for _ in 0..workers {
            let (handler, socket) = (handler.clone(), socket.clone());
            tasks.spawn(receive(handler, socket, shutdown.clone()));
        }
    }
    shutdown.cancelled().await;
    tasks.shutdown().await;
}

/// One receiving loop on `socket`.
async fn receive(handler: Arc<Handler>, socket: Arc<UdpSocket>, shutdown: CancellationToken) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut out = Vec::with_capacity(512);
    let mut fast = Fast::new(handler.answers());
    loop {
        let (len, src) = tokio::select! {
            () = shutdown.cancelled() => return,
            got = socket.recv_from(&mut buf) => match got {
                Ok(got) => got,
                Err(e) => {
                    debug!(error = %e, "DNS UDP receive failed");
                    continue;
                }
            },
        };
        let raw = &buf[..len];
        if handler.access.allows(src.ip()) && answer_fast(&handler, &mut fast, raw, &mut out) {
            send(&socket, &out, src).await;
            continue;
        }
        let (handler, socket, raw) = (handler.clone(), socket.clone(), raw.to_vec());
        tokio::spawn(async move {
            if let Some(reply) = answer_slow(&handler, &raw, src).await {
                send(&socket, &reply, src).await;
            }
        });
    }
}

async fn send(socket: &UdpSocket, reply: &[u8], to: SocketAddr) {
    if let Err(e) = socket.send_to(reply, to).await {
        warn!(error = %e, peer = %to, "cannot send DNS response");
    }
}

/// Answers `raw` on the fast path into `out`, refreshing `fast` after a reload; counts it.
fn answer_fast(handler: &Handler, fast: &mut Fast, raw: &[u8], out: &mut Vec<u8>) -> bool {
    let answers = handler.answers();
    if !fast.is_for(&answers) {
        *fast = Fast::new(answers);
    }
    let Some(qtype) = fast.answer(raw, out) else {
        return false;
    };
    let qtype = RecordType::from(qtype).to_string();
    handler.metrics.dns(&qtype, DnsOutcome::Intercepted);
    true
}

/// The bytes sent back for `raw` from `src`, as the server loop produces them (see the module
/// doc): the fast path for a plain query of an intercepted name, else the handler's.
pub async fn answer(handler: &Handler, raw: &[u8], src: SocketAddr) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(512);
    let mut fast = Fast::new(handler.answers());
    if handler.access.allows(src.ip()) && answer_fast(handler, &mut fast, raw, &mut out) {
        return Some(out);
    }
    answer_slow(handler, raw, src).await
}

/// The bytes sent back for `raw` from `src` without the fast path.
pub async fn answer_slow(handler: &Handler, raw: &[u8], src: SocketAddr) -> Option<Vec<u8>> {
    let mut decoder = BinDecoder::new(raw);
    let header = Header::read(&mut decoder).ok()?;
    let capture = Capture::default();
    if !handler.access.allows(src.ip()) {
        debug!(peer = %src, "DNS query refused: client not in access.allow");
        let count = usize::from(header.counts.queries);
        let queries = Queries::read(&mut decoder, count)
            .ok()
            .or_else(no_queries)?;
        error(&capture, &queries, &header, ResponseCode::Refused).await;
        return capture.take();
    }
    match Request::from_bytes(raw.to_vec(), src, Protocol::Udp) {
        Ok(request) if request.metadata.message_type == MessageType::Response => return None,
        Ok(request) => {
            (handler.handle_request::<_, TokioTime>(&request, capture.clone())).await;
        }
        Err(_) => error(&capture, &no_queries()?, &header, ResponseCode::FormErr).await,
    }
    capture.take()
}

fn no_queries() -> Option<Queries> {
    Queries::read(&mut BinDecoder::new(&[]), 0).ok()
}

async fn error(capture: &Capture, queries: &Queries, header: &Header, code: ResponseCode) {
    let response = MessageResponseBuilder::new(queries, None).error_msg(header, code);
    let _ = capture.clone().send_response(response).await;
}

/// A [`ResponseHandler`] that keeps the encoded response instead of sending it.
#[derive(Clone, Default)]
struct Capture(Arc<std::sync::Mutex<Option<Vec<u8>>>>);

impl Capture {
    fn take(&self) -> Option<Vec<u8>> {
        self.0.locked().take()
    }
}

#[async_trait::async_trait]
impl ResponseHandler for Capture {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let max = response.edns().map_or(512, |e| e.max_payload());
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(max);
        let info = response.destructive_emit(&mut encoder)?;
        *self.0.locked() = Some(bytes);
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    //! The serving loop over a real socket: fast answers, the slow way, refusals, counting.

    use super::*;
    use crate::access::AccessList;
    use crate::dns::{resolver, Answers};
    use crate::metrics::Metrics;
    use crate::names::NamePattern;
    use hickory_server::proto::op::{Message, Query};
    use hickory_server::proto::rr::Name;
    use std::time::Duration;

    /// Serves on loopback for clients in `allow` and sends each of `questions` in turn: the
    /// replies (`None`: nothing within 500 ms) and the metrics text.
    async fn ask(allow: &str, questions: &[Vec<u8>]) -> (Vec<Option<Message>>, String) {
        let answers = Answers {
            intercept: vec![NamePattern::parse("ghcr.io").unwrap()],
            ipv4: vec![[10, 0, 0, 7].into()],
            ipv6: vec![],
            ttl: 60,
        };
        let metrics = Arc::new(Metrics::new());
        let handler = Handler::new(answers, resolver(&[]).unwrap(), metrics.clone())
            .with_access(AccessList::new(vec![allow.parse().unwrap()]));
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let serving = tokio::spawn(serve(Arc::new(handler), vec![server], shutdown.clone()));
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut got = Vec::new();
        for raw in questions {
            client.send_to(raw, addr).await.unwrap();
            let mut buf = vec![0u8; 4096];
            let wait = tokio::time::timeout(Duration::from_millis(500), client.recv(&mut buf));
            got.push(
                wait.await
                    .ok()
                    .map(|n| Message::from_vec(&buf[..n.unwrap()]).unwrap()),
            );
        }
        shutdown.cancel();
        serving.await.unwrap();
        (got, metrics.encode())
    }

    fn query(name: &str, qtype: RecordType) -> Vec<u8> {
        let mut msg = Message::query();
        msg.metadata.id = 4242;
        msg.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        msg.to_vec().unwrap()
    }

    #[tokio::test]
    async fn the_loop_answers_fast_and_slow_and_drops_what_it_must() {
        let mut garbage = query("ghcr.io.", RecordType::A);
        garbage.truncate(14);
        let asked = [
            query("ghcr.io.", RecordType::A),
            query("ghcr.io.", RecordType::AAAA),
            query("ghcr.io.", RecordType::ANY),
            garbage,
            vec![0; 11],
        ];
        let (got, metrics) = ask("127.0.0.1/32", &asked).await;
        let code = |i: usize| got[i].as_ref().map(|m| m.metadata.response_code);
        let a = got[0].as_ref().unwrap();
        assert_eq!((a.metadata.id, a.answers.len()), (4242, 1));
        assert_eq!(code(1), Some(ResponseCode::NoError));
        assert!(got[1].as_ref().unwrap().answers.is_empty());
        assert_eq!(code(2), Some(ResponseCode::Refused));
        assert_eq!(code(3), Some(ResponseCode::FormErr));
        assert!(got[4].is_none());
        assert!(
            metrics.contains("qtype=\"A\",outcome=\"intercepted\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("qtype=\"AAAA\",outcome=\"intercepted\"} 1"),
            "{metrics}"
        );
    }

    #[tokio::test]
    async fn clients_outside_the_list_are_refused_before_any_parse_and_not_counted() {
        let (got, metrics) = ask("10.0.0.0/8", &[query("ghcr.io.", RecordType::A)]).await;
        let reply = got[0].as_ref().expect("a reply");
        assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
        assert!(reply.answers.is_empty());
        assert!(!metrics.contains("outcome=\"intercepted\""), "{metrics}");
        assert!(!metrics.contains("outcome=\"denied\"} 1"), "{metrics}");
    }
}
