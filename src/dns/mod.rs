//! The DNS side: registry names answer with the appliance's own address, every other name is
//! forwarded to the upstream resolvers through hickory-resolver.
//!
//! Owns the hickory [`RequestHandler`] and the resolver that the proxy also uses for its own upstream
//! lookups. Does not bind sockets: [`serve`] takes bound ones. UDP is served by `udp`'s own loop,
//! which answers plain queries of intercepted names on `fast`'s path (answers encoded once per
//! configuration) and hands the rest to the handler; TCP by hickory's server.

mod fast;
mod system;
mod udp;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_server::net::runtime::{Time, TokioRuntimeProvider};
use hickory_server::net::{DnsError, NetError};
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::rdata::{A, AAAA};
use hickory_server::proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_server::resolver::config::{
    NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_server::resolver::TokioResolver;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use std::sync::{Arc, RwLock};

use crate::access::AccessList;
use crate::metrics::{DnsOutcome, Metrics};
use crate::names::{normalize, NamePattern};
use crate::sync::ReadWrite;

pub use system::{primary_ipv4, resolv_conf_nameservers};

/// How long a TCP client may stay idle between queries.
const TCP_TIMEOUT: Duration = Duration::from_secs(10);

/// What the DNS handler needs to answer.
#[derive(Clone, Debug)]
pub struct Answers {
    /// Names answered locally.
    pub intercept: Vec<NamePattern>,
    /// Never empty: the A records for intercepted names.
    pub ipv4: Vec<Ipv4Addr>,
    /// May be empty: AAAA for intercepted names is then NOERROR with no records.
    pub ipv6: Vec<Ipv6Addr>,
    pub ttl: u32,
}

/// The answers in force, shared with the app so a config reload can replace them. std RwLock,
/// never held across .await.
pub type SharedAnswers = Arc<RwLock<Arc<Answers>>>;

/// Answers intercepted names locally and forwards the rest, for clients in its access list.
#[derive(Clone)]
pub struct Handler {
    answers: SharedAnswers,
    resolver: TokioResolver,
    metrics: Arc<Metrics>,
    /// Checked on every request, beside hickory's own check (see [`serve`]).
    access: AccessList,
}

impl Handler {
    /// A handler serving the default access list; [`serve`] sets the configured one.
    pub fn new(answers: Answers, resolver: TokioResolver, metrics: Arc<Metrics>) -> Self {
        Self {
            answers: Arc::new(RwLock::new(Arc::new(answers))),
            resolver,
            metrics,
            access: AccessList::default(),
        }
    }

    /// The same handler serving only the clients in `access`.
    pub fn with_access(mut self, access: AccessList) -> Self {
        self.access = access;
        self
    }

    /// The handle through which a reload replaces the answers.
    pub fn shared_answers(&self) -> SharedAnswers {
        self.answers.clone()
    }

    fn answers(&self) -> Arc<Answers> {
        self.answers.read_now().clone()
    }

    fn intercepts(&self, name: &str) -> bool {
        let name = normalize(name);
        self.answers().intercept.iter().any(|p| p.matches(&name))
    }

    /// The records for an intercepted name; other types get an empty NOERROR (their data, e.g.
    /// HTTPS/SVCB address hints, would leak the real addresses).
    fn local_records(&self, name: &Name, qtype: RecordType) -> Vec<Record> {
        let answers = self.answers();
        let ttl = answers.ttl;
        match qtype {
            RecordType::A => (answers.ipv4.iter())
                .map(|ip| Record::from_rdata(name.clone(), ttl, RData::A(A(*ip))))
                .collect(),
            RecordType::AAAA => (answers.ipv6.iter())
                .map(|ip| Record::from_rdata(name.clone(), ttl, RData::AAAA(AAAA(*ip))))
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// The outcome of a query, before encoding.
struct Reply {
    code: ResponseCode,
    authoritative: bool,
    answers: Vec<Record>,
    soa: Vec<Record>,
    outcome: DnsOutcome,
}

impl Reply {
    fn error(code: ResponseCode) -> Self {
        let outcome = match code {
            ResponseCode::Refused => DnsOutcome::Refused,
            ResponseCode::NXDomain => DnsOutcome::Nxdomain,
            _ => DnsOutcome::Error,
        };
        Self {
            code,
            authoritative: false,
            answers: Vec::new(),
            soa: Vec::new(),
            outcome,
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let reply = self.reply(request).await;
        let qtype = (request.queries.queries().first())
            .map_or_else(|| "none".to_owned(), |q| q.query_type().to_string());
        self.metrics.dns(&qtype, reply.outcome);
        let mut edns = None;
        if let Some(req_edns) = &request.edns {
            let mut resp = Edns::new();
            resp.set_max_payload(req_edns.max_payload().max(512));
            resp.set_version(0);
            edns = Some(resp);
        }
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(edns) = &edns {
            builder.edns(edns);
        }
        let mut meta = Metadata::response_from_request(&request.metadata);
        meta.response_code = reply.code;
        meta.authoritative = reply.authoritative;
        meta.recursion_available = true;
        let response = builder.build(meta, &reply.answers, &[], &reply.soa, &[]);
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(e) => {
                warn!(error = %e, peer = %request.src(), "cannot send DNS response");
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}

impl Handler {
    async fn reply(&self, request: &Request) -> Reply {
        if !self.access.allows(request.src().ip()) {
            // REFUSED, as hickory's own check answers: as small as the query (no amplification),
            // and the client stops at once instead of retrying into a timeout.
            debug!(peer = %request.src(), "DNS query refused: client not in access.allow");
            return Reply {
                outcome: DnsOutcome::Denied,
                ..Reply::error(ResponseCode::Refused)
            };
        }
        if request.metadata.message_type != MessageType::Query {
            return Reply::error(ResponseCode::FormErr);
        }
        if request.metadata.op_code != OpCode::Query {
            return Reply::error(ResponseCode::NotImp);
        }
        let Ok(info) = request.request_info() else {
            // Not exactly one question.
            return Reply::error(ResponseCode::FormErr);
        };
        let query = info.query;
        let name = Name::from(query.name().clone());
        let qtype = query.query_type();
        if query.query_class() != DNSClass::IN {
            return Reply::error(ResponseCode::Refused);
        }
        if matches!(qtype, RecordType::AXFR | RecordType::IXFR | RecordType::ANY) {
            return Reply::error(ResponseCode::Refused);
        }
        if self.intercepts(&name.to_ascii()) {
            debug!(%name, %qtype, peer = %request.src(), "intercepted");
            return Reply {
                code: ResponseCode::NoError,
                authoritative: true,
                answers: self.local_records(&name, qtype),
                soa: Vec::new(),
                outcome: DnsOutcome::Intercepted,
            };
        }
        self.forward(name, qtype).await
    }

    async fn forward(&self, name: Name, qtype: RecordType) -> Reply {
        let started = Instant::now();
        let result = self.resolver.lookup(name.clone(), qtype).await;
        (self.metrics.dns_forward_duration).observe(started.elapsed().as_secs_f64());
        match result {
            Ok(lookup) => Reply {
                code: ResponseCode::NoError,
                authoritative: false,
                answers: lookup.answers().to_vec(),
                soa: Vec::new(),
                outcome: DnsOutcome::Forwarded,
            },
            Err(NetError::Dns(DnsError::NoRecordsFound(no))) => Reply {
                outcome: match no.response_code {
                    ResponseCode::NXDomain => DnsOutcome::Nxdomain,
                    _ => DnsOutcome::Forwarded,
                },
                code: no.response_code,
                authoritative: false,
                answers: Vec::new(),
                soa: no
                    .soa
                    .map(|s| (*s).into_record_of_rdata())
                    .into_iter()
                    .collect(),
            },
            Err(NetError::Dns(DnsError::ResponseCode(code))) => Reply::error(code),
            Err(e) => {
                warn!(%name, %qtype, error = %e, elapsed = ?started.elapsed(), "forwarding failed");
                Reply::error(ResponseCode::ServFail)
            }
        }
    }
}

/// A resolver that asks exactly `upstreams` (UDP, and TCP on truncation), never /etc/hosts.
pub fn resolver(upstreams: &[SocketAddr]) -> Result<TokioResolver, NetError> {
    let servers = upstreams
        .iter()
        .map(|addr| {
            let mut server = NameServerConfig::udp_and_tcp(addr.ip());
            for conn in &mut server.connections {
                conn.port = addr.port();
            }
            server
        })
        .collect();
    let config = ResolverConfig::from_parts(None, vec![], servers);
    let mut builder = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
    let opts: &mut ResolverOpts = builder.options_mut();
    opts.use_hosts_file = ResolveHosts::Never;
    opts.preserve_intermediates = true;
    opts.ndots = 0;
    opts.timeout = Duration::from_secs(3);
    opts.attempts = 2;
    builder.build()
}

/// Serves DNS on the bound sockets until `shutdown` is cancelled, refusing clients outside `access`
/// (IPv4 and IPv6 alike) twice: before parsing (hickory's check on TCP, [`udp`]'s on UDP), and the
/// handler refuses whatever reaches it from outside the list.
pub async fn serve(
    handler: Handler,
    udp: Vec<UdpSocket>,
    tcp: Vec<TcpListener>,
    access: &AccessList,
    shutdown: CancellationToken,
) {
    let rules = access.hickory_rules();
    let handler = handler.with_access(access.clone());
    let udp = udp::serve(Arc::new(handler.clone()), udp, shutdown.clone());
    let mut server = Server::with_access(handler, rules.deny, rules.allow);
    for listener in tcp {
        server.register_listener(listener, TCP_TIMEOUT, 64 * 1024);
    }
    let ((), ()) = tokio::join!(udp, shutdown.cancelled());
    if let Err(e) = server.shutdown_gracefully().await {
        warn!(error = %e, "DNS server stopped with an error");
    }
    info!("dns stopped");
}

/// The bytes the UDP server sends back for the raw request `raw` from `src`: what [`udp`]'s loop
/// produces, fast path included (queries it forwards go to the handler's resolver). For fuzzing
/// and tests: no socket involved.
pub async fn answer_raw(handler: &Handler, raw: &[u8], src: SocketAddr) -> Option<Vec<u8>> {
    udp::answer(handler, raw, src).await
}

#[cfg(test)]
mod tests {
    //! Hickory's access check on its own: a handler that answers everything, behind the rules
    //! [`AccessList::hickory_rules`] gives, asked from IPv4 and IPv6 loopback.

    use super::*;
    use hickory_server::proto::op::{Message, Query};

    struct AnswerAll;

    #[async_trait::async_trait]
    impl RequestHandler for AnswerAll {
        async fn handle_request<R: ResponseHandler, T: Time>(
            &self,
            request: &Request,
            mut response_handle: R,
        ) -> ResponseInfo {
            let builder = MessageResponseBuilder::from_message_request(request);
            let meta = Metadata::response_from_request(&request.metadata);
            let response = builder.build(meta, &[], &[], &[], &[]);
            response_handle.send_response(response).await.unwrap()
        }
    }

    /// The response code a UDP query from `client` to `server` gets.
    async fn ask(client: &str, server: SocketAddr) -> ResponseCode {
        let mut msg = Message::query();
        msg.add_query(Query::query(
            Name::from_ascii("x.test.").unwrap(),
            RecordType::A,
        ));
        let socket = UdpSocket::bind(client).await.unwrap();
        socket
            .send_to(&msg.to_vec().unwrap(), server)
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        Message::from_vec(&buf[..n]).unwrap().metadata.response_code
    }

    async fn codes(allow: &[&str]) -> (ResponseCode, ResponseCode) {
        let nets = allow.iter().map(|n| n.parse().unwrap()).collect();
        let rules = AccessList::new(nets).hickory_rules();
        let mut server = Server::with_access(AnswerAll, rules.deny, rules.allow);
        let v4 = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let v6 = UdpSocket::bind("[::1]:0")
            .await
            .expect("IPv6 loopback ::1 is needed for this test");
        let (a4, a6) = (v4.local_addr().unwrap(), v6.local_addr().unwrap());
        server.register_socket(v4);
        server.register_socket(v6);
        let got = (ask("127.0.0.1:0", a4).await, ask("[::1]:0", a6).await);
        server.shutdown_gracefully().await.unwrap();
        got
    }

    #[tokio::test]
    async fn hickory_refuses_the_family_without_allow_entries() {
        use ResponseCode::{NoError, Refused};
        assert_eq!(codes(&["127.0.0.1/32"]).await, (NoError, Refused));
        assert_eq!(codes(&["::1/128"]).await, (Refused, NoError));
        assert_eq!(codes(&["0.0.0.0/0"]).await, (NoError, Refused));
        assert_eq!(codes(&["::/0"]).await, (Refused, NoError));
        assert_eq!(codes(&["0.0.0.0/0", "::/0"]).await, (NoError, NoError));
        assert_eq!(codes(&["10.0.0.0/8", "fd00::/8"]).await, (Refused, Refused));
    }
}
