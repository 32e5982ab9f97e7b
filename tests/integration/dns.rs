//! DNS through the appliance: intercepted names, forwarding, relayed negative answers, TCP,
//! truncation, malformed packets, access control.

use std::net::Ipv4Addr;

use hickory_server::proto::op::{Message, ResponseCode};
use hickory_server::proto::rr::{RData, RecordType};

use crate::support::dns::{ipv4s, query, tcp, udp, udp_plain, udp_raw};
use crate::support::World;

#[tokio::test]
async fn intercepted_names_answer_with_the_appliance_and_never_leak_upstream_records() {
    let w = World::start().await;
    let dns = w.app.dns;
    for host in [
        "registry-1.docker.io.",
        "Docker.IO.",
        "eu.mirror.test.",
        "ghcr.io.",
    ] {
        let a = udp(dns, host, RecordType::A).await;
        assert_eq!(a.metadata.response_code, ResponseCode::NoError, "{host}");
        assert_eq!(ipv4s(&a), [Ipv4Addr::new(10, 9, 8, 7)], "{host}");
        assert_eq!(a.answers[0].ttl, 60);
        for other in [RecordType::AAAA, RecordType::HTTPS, RecordType::MX] {
            let r = udp(dns, host, other).await;
            assert_eq!(
                r.metadata.response_code,
                ResponseCode::NoError,
                "{host} {other}"
            );
            assert!(r.answers.is_empty(), "{host} {other}: {:?}", r.answers);
        }
    }
    // Over TCP as well.
    let t = tcp(dns, "registry-1.docker.io.", RecordType::A).await;
    assert_eq!(ipv4s(&t), [Ipv4Addr::new(10, 9, 8, 7)]);
    // None of these went to the upstream resolver.
    for host in [
        "registry-1.docker.io.",
        "docker.io.",
        "eu.mirror.test.",
        "ghcr.io.",
    ] {
        assert!(
            w.resolver.asked_about(host).is_empty(),
            "{host} leaked upstream"
        );
    }
    // The bare suffix of a wildcard alias is not intercepted: it is forwarded.
    let bare = udp(dns, "mirror.test.", RecordType::A).await;
    assert_eq!(bare.metadata.response_code, ResponseCode::NXDomain);
}

#[tokio::test]
async fn other_names_are_forwarded_with_cname_chains_and_ttls() {
    let w = World::start().await;
    let r = udp(w.app.dns, "www.example.test.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    let kinds: Vec<RecordType> = r.answers.iter().map(|r| r.record_type()).collect();
    assert_eq!(kinds, [RecordType::CNAME, RecordType::A], "{:?}", r.answers);
    assert_eq!(ipv4s(&r), [Ipv4Addr::new(192, 0, 2, 77)]);
    let a = r
        .answers
        .iter()
        .find(|r| r.record_type() == RecordType::A)
        .unwrap();
    assert!(a.ttl <= 123 && a.ttl > 100, "TTL honoured: {}", a.ttl);
    assert_eq!(w.resolver.asked_about("www.example.test."), [RecordType::A]);
}

#[tokio::test]
async fn negative_answers_are_relayed_as_such() {
    let w = World::start().await;
    let nx = udp(w.app.dns, "nope.example.test.", RecordType::A).await;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    assert!(nx.answers.is_empty());
    let soa = nx
        .authorities
        .iter()
        .find(|r| r.record_type() == RecordType::SOA);
    assert!(
        soa.is_some(),
        "NXDOMAIN carries the SOA: {:?}",
        nx.authorities
    );

    let nodata = udp(w.app.dns, "nodata.example.test.", RecordType::AAAA).await;
    assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
    assert!(nodata.answers.is_empty());
}

#[tokio::test]
async fn large_answers_truncate_over_udp_and_come_whole_over_tcp() {
    let w = World::start().await;
    let small = udp_plain(w.app.dns, "many.example.test.", RecordType::TXT).await;
    assert!(small.metadata.truncation, "512-byte UDP answer sets TC");
    let whole = tcp(w.app.dns, "many.example.test.", RecordType::TXT).await;
    assert!(!whole.metadata.truncation);
    let txts = whole
        .answers
        .iter()
        .filter(|r| matches!(r.data, RData::TXT(_)))
        .count();
    assert_eq!(txts, 40);
}

#[tokio::test]
async fn malformed_packets_get_formerr_or_are_dropped_and_the_server_lives_on() {
    let w = World::start().await;
    let dns = w.app.dns;
    // Shorter than a header: dropped.
    assert!(udp_raw(dns, &[1, 2, 3, 4, 5]).await.is_none());
    // A header that promises a question that is not there: FORMERR.
    let header_only = [0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    let reply = udp_raw(dns, &header_only)
        .await
        .expect("an answer to a broken question");
    let reply = Message::from_vec(&reply).unwrap();
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    // Garbage after a valid query's header.
    let mut garbage = query("ghcr.io.", RecordType::A, false);
    garbage.truncate(20);
    garbage.extend_from_slice(&[0xff; 30]);
    if let Some(reply) = udp_raw(dns, &garbage).await {
        let reply = Message::from_vec(&reply).unwrap();
        assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    }
    // Still serving.
    let ok = udp(dns, "ghcr.io.", RecordType::A).await;
    assert_eq!(ipv4s(&ok), [Ipv4Addr::new(10, 9, 8, 7)]);
}

#[tokio::test]
async fn clients_outside_access_allow_are_refused() {
    let w = World::start_with("[access]\nallow = [\"10.0.0.0/8\"]").await;
    let r = udp(w.app.dns, "ghcr.io.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);
    assert!(r.answers.is_empty());
    let f = udp(w.app.dns, "www.example.test.", RecordType::A).await;
    assert_eq!(f.metadata.response_code, ResponseCode::Refused);
    assert!(w.resolver.asked_about("www.example.test.").is_empty());
    // And HTTPS closes the connection before any TLS.
    assert!(w.app.tls("ghcr.io", &[b"http/1.1"]).await.is_err());
}
