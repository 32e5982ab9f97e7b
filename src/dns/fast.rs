//! The fast path for intercepted names over UDP: the answer records are encoded once per
//! configuration and a reply is the request's header and question patched around them, without
//! hickory's parse and encode.
//!
//! It takes only the plain case — one question, an intercepted name in letters, digits, `-` and
//! `_`, class IN, no flags but RD and CD, at most an option-less EDNS version 0 record, nothing
//! after — and its reply is the message [`super::Handler`] would send (the tests compare them),
//! only shorter: the records name the question by pointer where hickory repeats the name once. Anything else returns `None` and goes the slow way, which answers it as before (FORMERR,
//! REFUSED, forwarding).

use std::sync::Arc;

use super::Answers;
use crate::names::normalize;

/// Bytes in a DNS header.
const HEADER: usize = 12;
/// The most a UDP reply may carry without EDNS (RFC 1035 4.2.1).
const PLAIN_UDP: usize = 512;
/// An OPT record without options: root name, type, class (payload), TTL (flags), rdlength.
const OPT_LEN: usize = 11;
const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const TYPE_OPT: u16 = 41;
const CLASS_IN: u16 = 1;

/// The encoded answers of one configuration.
pub struct Fast {
    answers: Arc<Answers>,
    /// The A records, each naming the question by pointer (offset 12).
    a: Vec<u8>,
    a_count: u16,
    aaaa: Vec<u8>,
    aaaa_count: u16,
}

/// A question the fast path can answer, as found in the request.
struct Question {
    /// Where the question ends (type and class included).
    end: usize,
    qtype: u16,
}

impl Fast {
    /// Encodes the records of `answers`.
    pub fn new(answers: Arc<Answers>) -> Self {
        let ttl = answers.ttl.to_be_bytes();
        let mut a = Vec::new();
        for ip in &answers.ipv4 {
            record(&mut a, TYPE_A, ttl, &ip.octets());
        }
        let mut aaaa = Vec::new();
        for ip in &answers.ipv6 {
            record(&mut aaaa, TYPE_AAAA, ttl, &ip.octets());
        }
        let a_count = u16::try_from(answers.ipv4.len()).unwrap_or(u16::MAX);
        let aaaa_count = u16::try_from(answers.ipv6.len()).unwrap_or(u16::MAX);
        Self {
            answers,
            a,
            a_count,
            aaaa,
            aaaa_count,
        }
    }

    /// Whether these are the encoded `answers` (a reload replaces the `Arc`).
    pub fn is_for(&self, answers: &Arc<Answers>) -> bool {
        Arc::ptr_eq(&self.answers, answers)
    }

    /// Writes the reply to `raw` into `out` and returns the query type, or `None` (and `out` is
    /// unspecified) when the request is not the plain query of an intercepted name.
    pub fn answer(&self, raw: &[u8], out: &mut Vec<u8>) -> Option<u16> {
        let flags = plain_header(raw)?;
        let question = self.question(raw)?;
        let payload = match u16::from_be_bytes([raw[10], raw[11]]) {
            0 if raw.len() == question.end => None,
            1 => Some(plain_opt(&raw[question.end..])?),
            _ => return None,
        };
        let (records, count): (&[u8], u16) = match question.qtype {
            TYPE_A => (&self.a, self.a_count),
            TYPE_AAAA => (&self.aaaa, self.aaaa_count),
            _ => (&[], 0),
        };
        let len = question.end + records.len() + payload.map_or(0, |_| OPT_LEN);
        if len > usize::from(payload.unwrap_or(0)).max(PLAIN_UDP) {
            return None; // would be truncated: hickory's encoder does that
        }
        out.clear();
        out.extend_from_slice(&raw[..2]);
        // QR, AA and the request's RD; RA and the request's CD; NOERROR.
        out.extend_from_slice(&[0x84 | (flags[0] & 0x01), 0x80 | (flags[1] & 0x10)]);
        out.extend_from_slice(&[0, 1]);
        out.extend_from_slice(&count.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, u8::from(payload.is_some())]);
        out.extend_from_slice(&raw[HEADER..question.end]);
        out.extend_from_slice(records);
        if let Some(payload) = payload {
            out.push(0);
            out.extend_from_slice(&TYPE_OPT.to_be_bytes());
            out.extend_from_slice(&payload.max(512).to_be_bytes());
            out.extend_from_slice(&[0; 6]);
        }
        Some(question.qtype)
    }

    /// The single question of `raw`, if its name is intercepted and its type is answered here.
    fn question(&self, raw: &[u8]) -> Option<Question> {
        let mut name = String::with_capacity(64);
        let mut at = HEADER;
        loop {
            let len = usize::from(*raw.get(at)?);
            at += 1;
            if len == 0 {
                break;
            }
            // Pointers and extended labels go the slow way; so do names hickory would escape.
            let label = raw.get(at..at + len).filter(|_| len <= 63)?;
            if !label
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return None;
            }
            if !name.is_empty() {
                name.push('.');
            }
            name.extend(label.iter().map(|&b| char::from(b)));
            at += len;
        }
        if name.is_empty() || at - HEADER > 255 {
            return None;
        }
        let field = |at: usize| Some(u16::from_be_bytes([*raw.get(at)?, *raw.get(at + 1)?]));
        let (qtype, class) = (field(at)?, field(at + 2)?);
        // OPT, TKEY, TSIG, IXFR, AXFR, MAILB, MAILA, ANY: the slow way (most are refused).
        if class != CLASS_IN || qtype == TYPE_OPT || (249..=255).contains(&qtype) {
            return None;
        }
        let name = normalize(&name);
        if !self.answers.intercept.iter().any(|p| p.matches(&name)) {
            return None;
        }
        Some(Question { end: at + 4, qtype })
    }
}

/// The two flag bytes of a plain query with one question and no answer or authority records.
fn plain_header(raw: &[u8]) -> Option<[u8; 2]> {
    let header = raw.get(..HEADER)?;
    let flags = [header[2], header[3]];
    // QR=0, opcode QUERY, no AA or TC; in the second byte only CD, no Z, AD or RCODE.
    let plain = flags[0] & 0xfe == 0 && flags[1] & 0xef == 0;
    (plain && header[4..10] == [0, 1, 0, 0, 0, 0]).then_some(flags)
}

/// The advertised payload of an OPT record that is all of `rest`: root name, version 0, no
/// extended rcode, no flags but DO, no options.
fn plain_opt(rest: &[u8]) -> Option<u16> {
    let [0, 0, 41, p1, p2, 0, 0, f1, 0, 0, 0] = *rest else {
        return None;
    };
    (f1 & 0x7f == 0).then_some(u16::from_be_bytes([p1, p2]))
}

/// Appends a class-IN record whose name points at the question.
fn record(out: &mut Vec<u8>, rtype: u16, ttl: [u8; 4], data: &[u8]) {
    out.extend_from_slice(&[0xc0, 0x0c]);
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out.extend_from_slice(&ttl);
    out.extend_from_slice(&u16::try_from(data.len()).unwrap_or(0).to_be_bytes());
    out.extend_from_slice(data);
}

#[cfg(test)]
mod tests {
    //! The fast path against the slow one: the same message for every plain query it takes, and
    //! it declines the rest.

    use super::*;
    use crate::dns::{resolver, udp, Handler};
    use crate::metrics::Metrics;
    use crate::names::NamePattern;
    use crate::sync::ReadWrite;
    use hickory_server::proto::op::{Edns, Message, Query, ResponseCode};
    use hickory_server::proto::rr::{Name, RData, RecordType};
    use std::net::{Ipv4Addr, SocketAddr};

    fn answers(ttl: u32, v6: bool) -> Answers {
        Answers {
            intercept: vec![
                NamePattern::parse("ghcr.io").unwrap(),
                NamePattern::parse("*.example.test").unwrap(),
            ],
            ipv4: vec![Ipv4Addr::new(10, 0, 0, 7), Ipv4Addr::new(10, 0, 0, 8)],
            ipv6: if v6 {
                vec!["fd00::7".parse().unwrap()]
            } else {
                vec![]
            },
            ttl,
        }
    }

    fn handler() -> Handler {
        Handler::new(
            answers(60, true),
            resolver(&[]).unwrap(),
            Arc::new(Metrics::new()),
        )
    }

    fn query(name: &str, qtype: RecordType, edns: Option<u16>, rd: bool, cd: bool) -> Vec<u8> {
        let mut msg = Message::query();
        msg.metadata.id = 0xbeef;
        msg.metadata.recursion_desired = rd;
        msg.metadata.checking_disabled = cd;
        msg.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        if let Some(payload) = edns {
            let mut e = Edns::new();
            e.set_max_payload(payload);
            msg.set_edns(e);
        }
        msg.to_vec().unwrap()
    }

    const SRC: ([u8; 4], u16) = ([127, 0, 0, 1], 5353);

    async fn both(handler: &Handler, raw: &[u8]) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
        let src = SocketAddr::from(SRC);
        let fast = Fast::new(handler.answers());
        let mut out = Vec::new();
        let taken = fast.answer(raw, &mut out).map(|_| out);
        (taken, udp::answer_slow(handler, raw, src).await)
    }

    #[tokio::test]
    async fn fast_replies_are_the_slow_path_messages() {
        let handler = handler();
        let types = [
            RecordType::A,
            RecordType::AAAA,
            RecordType::HTTPS,
            RecordType::MX,
        ];
        for name in [
            "ghcr.io.",
            "GHCR.Io.",
            "a.b.example.test.",
            "x_y-z.example.test",
        ] {
            for qtype in types {
                for edns in [None, Some(0), Some(1232), Some(4096)] {
                    for (rd, cd) in [(true, false), (false, false), (true, true)] {
                        let raw = query(name, qtype, edns, rd, cd);
                        let (fast, slow) = both(&handler, &raw).await;
                        let fast = fast.unwrap_or_else(|| panic!("{name} {qtype} not taken"));
                        let slow = slow.expect("a slow reply");
                        let parse = |b: &[u8]| Message::from_vec(b).unwrap();
                        let what = format!("{name} {qtype} {edns:?} {rd} {cd}");
                        assert_eq!(parse(&fast), parse(&slow), "{what}");
                        assert!(fast.len() <= slow.len(), "{what}");
                    }
                }
            }
        }
    }

    #[tokio::test]
    async fn other_requests_go_the_slow_way() {
        let handler = handler();
        let declined = |raw: Vec<u8>| {
            let fast = Fast::new(handler.answers());
            fast.answer(&raw, &mut Vec::new()).is_none()
        };
        assert!(declined(query(
            "example.com.",
            RecordType::A,
            None,
            true,
            false
        )));
        assert!(declined(query(
            "example.test.",
            RecordType::A,
            None,
            true,
            false
        )));
        assert!(declined(query(
            "ghcr.io.",
            RecordType::ANY,
            None,
            true,
            false
        )));
        assert!(declined(query(
            "ghcr.io.",
            RecordType::AXFR,
            None,
            true,
            false
        )));
        let raw = query("ghcr.io.", RecordType::A, None, true, false);
        for cut in 0..raw.len() {
            assert!(declined(raw[..cut].to_vec()), "cut at {cut}");
        }
        let mut trailing = raw.clone();
        trailing.push(0);
        assert!(declined(trailing));
        let mut response = raw.clone();
        response[2] |= 0x80;
        assert!(declined(response));
        let mut two = raw.clone();
        two[5] = 2;
        assert!(declined(two));
        let mut chaos = raw.clone();
        let at = chaos.len() - 1;
        chaos[at] = 3;
        assert!(declined(chaos));
        // A label with a byte hickory would escape.
        let mut odd = raw;
        odd[13] = b' ';
        assert!(declined(odd));
    }

    #[tokio::test]
    async fn a_reply_echoes_id_and_question_with_our_addresses_and_ttl() {
        let handler = handler();
        let raw = query("Ghcr.IO.", RecordType::A, None, true, false);
        let src = SocketAddr::from(SRC);
        let reply = Message::from_vec(&udp::answer(&handler, &raw, src).await.unwrap()).unwrap();
        assert_eq!(reply.metadata.id, 0xbeef);
        assert!(reply.metadata.authoritative && reply.metadata.recursion_available);
        assert_eq!(reply.queries[0].name().to_ascii(), "Ghcr.IO.");
        let ips: Vec<_> = (reply.answers.iter())
            .map(|r| (r.ttl, r.data.clone()))
            .collect();
        let want = [Ipv4Addr::new(10, 0, 0, 7), Ipv4Addr::new(10, 0, 0, 8)];
        let want: Vec<_> = want.iter().map(|ip| (60, RData::A((*ip).into()))).collect();
        assert_eq!(ips, want);
    }

    #[tokio::test]
    async fn a_reload_is_answered_at_once() {
        let handler = handler();
        let raw = query("ghcr.io.", RecordType::AAAA, None, true, false);
        let mut fast = Fast::new(handler.answers());
        let mut out = Vec::new();
        fast.answer(&raw, &mut out).unwrap();
        assert_eq!(Message::from_vec(&out).unwrap().answers.len(), 1);
        *handler.shared_answers().write_now() = Arc::new(answers(30, false));
        assert!(!fast.is_for(&handler.answers()));
        fast = Fast::new(handler.answers());
        fast.answer(&raw, &mut out).unwrap();
        let reply = Message::from_vec(&out).unwrap();
        assert!(reply.answers.is_empty());
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        let raw = query("ghcr.io.", RecordType::A, None, true, false);
        fast.answer(&raw, &mut out).unwrap();
        assert!(Message::from_vec(&out)
            .unwrap()
            .answers
            .iter()
            .all(|r| r.ttl == 30));
    }
}
