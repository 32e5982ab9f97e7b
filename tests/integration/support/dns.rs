//! A fake upstream resolver (hickory-server with a fixed table) and a raw DNS client.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{
    Edns, Message, MessageType, Metadata, OpCode, Query, ResponseCode,
};
use hickory_server::proto::rr::rdata::{A, CNAME, SOA, TXT};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// Answers from a fixed table; NXDOMAIN (with an SOA) for names it does not know.
pub struct Upstream {
    pub addr: SocketAddr,
    /// Every (name, type) asked, in order.
    pub asked: Arc<Mutex<Vec<(String, RecordType)>>>,
    _server: Server<Table>,
}

struct Table {
    records: HashMap<(String, RecordType), Vec<Record>>,
    asked: Arc<Mutex<Vec<(String, RecordType)>>>,
}

fn name(s: &str) -> Name {
    Name::from_str(s).unwrap()
}

impl Upstream {
    /// registry.test and cdn.test → 127.0.0.1; www.example.test → CNAME alias.example.test →
    /// 192.0.2.77 (TTL 123); many.example.test has 40 TXT records (too big for plain UDP);
    /// nodata.example.test exists without AAAA.
    pub async fn start() -> Self {
        let mut records: HashMap<(String, RecordType), Vec<Record>> = HashMap::new();
        let mut add = |n: &str, t: RecordType, rdata: RData, ttl: u32| {
            records
                .entry((n.to_owned(), t))
                .or_default()
                .push(Record::from_rdata(name(n), ttl, rdata));
        };
        let odd = super::registry::ODD_HOSTS.iter().map(|h| format!("{h}."));
        for host in ["registry.test.", "cdn.test.", "auth.test."]
            .map(str::to_owned)
            .into_iter()
            .chain(odd)
        {
            let host = host.as_str();
            add(host, RecordType::A, RData::A(A(Ipv4Addr::LOCALHOST)), 300);
        }
        let alias = RData::CNAME(CNAME(name("alias.example.test.")));
        add("www.example.test.", RecordType::A, alias, 300);
        let target = RData::A(A(Ipv4Addr::new(192, 0, 2, 77)));
        add("www.example.test.", RecordType::A, target, 123);
        add(
            "nodata.example.test.",
            RecordType::A,
            RData::A(A(Ipv4Addr::new(192, 0, 2, 1))),
            60,
        );
        for i in 0..40 {
            let txt = RData::TXT(TXT::new(vec![format!("{i:02}-{}", "x".repeat(40))]));
            add("many.example.test.", RecordType::TXT, txt, 60);
        }
        let asked = Arc::new(Mutex::new(Vec::new()));
        let table = Table {
            records,
            asked: asked.clone(),
        };
        let (udp, tcp) = bind_pair().await;
        let addr = udp.local_addr().unwrap();
        let mut server = Server::new(table);
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 65535);
        Self {
            addr,
            asked,
            _server: server,
        }
    }

    pub fn asked_about(&self, host: &str) -> Vec<RecordType> {
        let asked = self.asked.lock().unwrap();
        asked
            .iter()
            .filter(|(n, _)| n == host)
            .map(|(_, t)| *t)
            .collect()
    }
}

#[async_trait::async_trait]
impl RequestHandler for Table {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let query = request.request_info().unwrap().query;
        let qname = query.name().to_string().to_ascii_lowercase();
        let qtype = query.query_type();
        self.asked.lock().unwrap().push((qname.clone(), qtype));
        let mut meta = Metadata::response_from_request(&request.metadata);
        meta.recursion_available = true;
        let mut answers: Vec<Record> = Vec::new();
        if let Some(cname) = self.records.get(&(qname.clone(), RecordType::A)) {
            answers.extend(
                cname
                    .iter()
                    .filter(|r| r.record_type() == RecordType::CNAME)
                    .cloned(),
            );
            if qtype == RecordType::A {
                answers = cname.clone();
            }
        }
        if qtype != RecordType::A {
            answers.extend(
                self.records
                    .get(&(qname.clone(), qtype))
                    .cloned()
                    .unwrap_or_default(),
            );
        }
        let exists = self.records.keys().any(|(n, _)| *n == qname);
        let soa = Record::from_rdata(
            name("example.test."),
            30,
            RData::SOA(SOA::new(
                name("ns.example.test."),
                name("hostmaster.example.test."),
                1,
                60,
                60,
                60,
                30,
            )),
        );
        let soa_list = if answers.is_empty() {
            vec![soa]
        } else {
            vec![]
        };
        if !exists {
            meta.response_code = ResponseCode::NXDomain;
        }
        let edns = request.edns.as_ref().map(|e| {
            let mut edns = Edns::new();
            edns.set_max_payload(e.max_payload());
            edns
        });
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(edns) = &edns {
            builder.edns(edns);
        }
        let msg = builder.build(meta, &answers, &[], &soa_list, &[]);
        response.send_response(msg).await.unwrap()
    }
}

/// A UDP socket and a TCP listener on the same free port. The port the kernel picks for UDP
/// may be taken for TCP (by any other connection on the machine): try again, a bounded number
/// of times.
async fn bind_pair() -> (UdpSocket, TcpListener) {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()).await {
            return (udp, tcp);
        }
    }
    panic!("no port free for both UDP and TCP after 50 tries")
}

/// A query message for `host`/`rtype`, with EDNS unless `edns` is false.
pub fn query(host: &str, rtype: RecordType, edns: bool) -> Vec<u8> {
    let mut msg = Message::new(0x4242, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(name(host), rtype));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        msg.set_edns(e);
    }
    msg.to_vec().unwrap()
}

/// Sends raw bytes over UDP; `None` when nothing comes back within a second.
pub async fn udp_raw(server: SocketAddr, packet: &[u8]) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(packet, server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let got = tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut buf)).await;
    let n = got.ok()?.ok()?;
    buf.truncate(n);
    Some(buf)
}

pub async fn udp(server: SocketAddr, host: &str, rtype: RecordType) -> Message {
    let reply = udp_raw(server, &query(host, rtype, true))
        .await
        .expect("a UDP answer");
    Message::from_vec(&reply).unwrap()
}

pub async fn udp_plain(server: SocketAddr, host: &str, rtype: RecordType) -> Message {
    let reply = udp_raw(server, &query(host, rtype, false))
        .await
        .expect("a UDP answer");
    Message::from_vec(&reply).unwrap()
}

pub async fn tcp(server: SocketAddr, host: &str, rtype: RecordType) -> Message {
    let packet = query(host, rtype, false);
    let mut stream = TcpStream::connect(server).await.unwrap();
    stream.write_u16(packet.len() as u16).await.unwrap();
    stream.write_all(&packet).await.unwrap();
    let read = async {
        let len = stream.read_u16().await.unwrap();
        let mut buf = vec![0u8; len as usize];
        stream.read_exact(&mut buf).await.unwrap();
        buf
    };
    let buf = tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("a TCP answer");
    Message::from_vec(&buf).unwrap()
}

/// The A addresses of an answer.
pub fn ipv4s(msg: &Message) -> Vec<Ipv4Addr> {
    msg.answers
        .iter()
        .filter_map(|r| match r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}
