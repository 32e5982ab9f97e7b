//! Entry points for the fuzz targets in `fuzz/` (not an API; hidden from the docs).
//!
//! Each function feeds the fuzzer's bytes to one parser or handler of the crate and panics when a
//! cheap invariant of its answer does not hold, so that libFuzzer reports it like a crash. The
//! targets themselves are one line each; the unit tests below run every function over the committed
//! seed corpus.

use std::cell::RefCell;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use hickory_proto::op::Message;
use hickory_proto::rr::RData;

use crate::cache::{parse_meta, parse_tag, Digest};
use crate::config::{self, Source};
use crate::dns::{self, Answers, Handler};
use crate::metrics::Metrics;
use crate::names::{normalize, NamePattern};
use crate::proxy::auth::{bearer_challenge, parse_token_response};
use crate::proxy::manifest::{is_manifest, manifest_type};
use crate::proxy::registry::{classify, normalize_accept, repo_of, Target};

const ANSWER_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 53);
const ANSWER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x53);

/// The intercepted names of the embedded default config.
fn default_patterns() -> Vec<NamePattern> {
    config::load(None)
        .expect("the embedded config parses")
        .patterns()
}

struct DnsRig {
    runtime: tokio::runtime::Runtime,
    handler: Handler,
    answers: Answers,
}

thread_local! {
    static DNS: RefCell<Option<DnsRig>> = const { RefCell::new(None) };
}

fn dns_rig() -> DnsRig {
    let runtime = (tokio::runtime::Builder::new_current_thread().enable_all())
        .build()
        .expect("a tokio runtime");
    let answers = Answers {
        intercept: default_patterns(),
        ipv4: vec![ANSWER_V4],
        ipv6: vec![ANSWER_V6],
        ttl: 60,
    };
    // No upstream resolvers: a forwarded query fails at once (SERVFAIL), without traffic.
    let resolver = runtime.block_on(async { dns::resolver(&[]) });
    let resolver = resolver.expect("a resolver without upstreams");
    let handler = Handler::new(answers.clone(), resolver, Arc::new(Metrics::new()));
    DnsRig {
        runtime,
        handler,
        answers,
    }
}

/// A raw DNS request through the real handler (default intercept list, no upstream). Checks: a
/// response carries the request's id and parses; records are only ever answered for an
/// intercepted name, and they are the appliance's own addresses.
pub fn dns_request(raw: &[u8]) {
    let src = SocketAddr::from((Ipv4Addr::LOCALHOST, 53535));
    let response = DNS.with(|cell| {
        let mut cell = cell.borrow_mut();
        let rig = cell.get_or_insert_with(dns_rig);
        let response = rig
            .runtime
            .block_on(dns::answer_raw(&rig.handler, raw, src));
        response.map(|r| (r, rig.answers.clone()))
    });
    let Some((response, answers)) = response else {
        return;
    };
    assert!(raw.len() >= 12, "a response to {} bytes", raw.len());
    assert!(
        response.len() >= 12 && response[..2] == raw[..2],
        "the request's id"
    );
    assert!(response[2] & 0x80 != 0, "a response");
    let msg = match Message::from_vec(&response) {
        Ok(msg) => msg,
        // hickory-server echoes the question's bytes as received: a compression pointer in them
        // then points into the response's header instead of the request's.
        Err(_) if question_has_pointer(raw) => {
            if response[6..8] != [0, 0] {
                intercepted_question(raw, &answers);
            }
            return;
        }
        Err(e) => panic!("our response does not parse: {e}"),
    };
    if msg.answers.is_empty() {
        return;
    }
    let name = intercepted_question(raw, &answers);
    for record in &msg.answers {
        assert_eq!(normalize(&record.name.to_ascii()), name);
        match &record.data {
            RData::A(a) => assert!(answers.ipv4.contains(&a.0)),
            RData::AAAA(a) => assert!(answers.ipv6.contains(&a.0)),
            other => panic!("answered {other:?}"),
        }
    }
}

/// The one question of an answered request, which must be an intercepted name.
fn intercepted_question(raw: &[u8], answers: &Answers) -> String {
    let request = Message::from_vec(raw).expect("an answered request parsed");
    let [query] = request.queries.as_slice() else {
        panic!("answers to {} questions", request.queries.len());
    };
    let name = normalize(&query.name().to_ascii());
    let ours = answers.intercept.iter().any(|p| p.matches(&name));
    assert!(ours, "answered {name}, which is not intercepted");
    name
}

/// Whether a name in the question section of `raw` uses a compression pointer.
fn question_has_pointer(raw: &[u8]) -> bool {
    let count = u16::from_be_bytes([raw[4], raw[5]]);
    let mut at = 12;
    for _ in 0..count {
        loop {
            match raw.get(at) {
                None => return false,
                Some(0) => break,
                Some(len) if len & 0xc0 != 0 => return true,
                Some(len) => at += 1 + usize::from(*len),
            }
        }
        at += 5;
    }
    false
}

/// `host\npath\naccept`: host-name patterns, the registry path router, the digest parser and the
/// Accept normaliser. Checks: a routed repository satisfies the repository rules and is what
/// [`repo_of`] says; digests print as they were read; normalising is idempotent.
pub fn http_router(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.splitn(3, '\n');
    let (host, path, accept) = (lines.next(), lines.next(), lines.next());
    let (host, path, accept) = (host.unwrap_or(""), path.unwrap_or(""), accept.unwrap_or(""));
    route_host(host);
    route_path(path);
    let accept = normalize_accept(&[accept]);
    assert_eq!(normalize_accept(&[&accept]), accept);
}

fn route_host(host: &str) {
    thread_local! {
        static PATTERNS: Vec<NamePattern> = default_patterns();
    }
    let name = normalize(host);
    PATTERNS.with(|patterns| {
        for p in patterns.iter().filter(|p| p.matches(&name)) {
            let below = name
                .strip_suffix(p.subtree())
                .is_some_and(|h| h.ends_with('.'));
            assert!(name == p.subtree() || below, "{p} matched {name}");
        }
    });
    if let Ok(pattern) = NamePattern::parse(host) {
        let again = NamePattern::parse(&pattern.to_string());
        assert_eq!(again.as_ref(), Ok(&pattern));
        assert!(pattern.subtree().len() <= 253);
    }
}

fn route_path(path: &str) {
    let target = classify(path);
    let (repo, reference) = match target {
        Target::Manifest { repo, reference } => (Some(repo), Some(reference)),
        Target::Blob { repo, digest } => (Some(repo), Some(digest)),
        Target::Tags { repo } => (Some(repo), None),
        Target::Root | Target::Other => (None, None),
    };
    if let Some(repo) = repo {
        assert!(path.starts_with("/v2/") && path[4..].starts_with(repo));
        assert!(valid_repo(repo), "routed repository {repo:?}");
        assert_eq!(repo_of(path), Some(repo));
    }
    if let Some(repo) = repo_of(path) {
        assert!(valid_repo(repo), "repository {repo:?} of {path:?}");
    }
    if let Some(reference) = reference {
        assert!(!reference.is_empty() && !reference.contains('/'));
        if let Some(digest) = Digest::parse(reference) {
            assert_eq!(digest.to_string(), reference);
        }
    }
}

/// The OCI distribution spec's repository name grammar, restated here for the check.
fn valid_repo(repo: &str) -> bool {
    repo.split('/').all(|c| {
        !c.is_empty()
            && c != "."
            && c != ".."
            && (c.bytes())
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    })
}

/// The bytes as a `WWW-Authenticate` value and as a token service's answer. Checks: a token URL
/// starts with the realm and adds only percent-encoded parameters; a token fits in a header.
pub fn www_authenticate(data: &[u8]) {
    if let Some(challenge) = bearer_challenge(&String::from_utf8_lossy(data)) {
        let url = challenge.token_url("repository:library/alpine:pull");
        let added = url
            .strip_prefix(challenge.realm.as_str())
            .expect("the realm first");
        let clean = |b: u8| b.is_ascii_alphanumeric() || b"-._~%&=?".contains(&b);
        assert!(added.bytes().all(clean), "token URL tail {added:?}");
    }
    if let Some((token, _expires)) = parse_token_response(data) {
        assert!(!token.is_empty() && token.len() <= 64 << 10);
        assert!(http::HeaderValue::from_str(&format!("Bearer {token}")).is_ok());
    }
}

/// `content-type\nbody`: whether it is taken for a manifest. Checks: only JSON objects with
/// a schema version of 1 or 2, served as a manifest media type, are.
pub fn manifest(data: &[u8]) {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let content_type = String::from_utf8_lossy(&data[..split]);
    let body = data.get(split + 1..).unwrap_or_default();
    if !is_manifest(body, &content_type) {
        return;
    }
    assert!(manifest_type(&content_type));
    // serde_json's own leniency: a string it skips is not checked for lone surrogates (`\ud800`),
    // which a `serde_json::Value` refuses; Go's decoder, as used by the clients, takes them too.
    serde_json::from_slice::<serde::de::IgnoredAny>(body).expect("a manifest is JSON");
    assert!(
        body.trim_ascii_start().starts_with(b"{"),
        "a manifest is an object"
    );
    let version: SchemaVersion = serde_json::from_slice(body).expect("a schema version");
    assert!(matches!(version.v, 1 | 2), "schemaVersion {}", version.v);
}

#[derive(serde::Deserialize)]
struct SchemaVersion {
    #[serde(rename = "schemaVersion")]
    v: u64,
}

/// Config text → validated config. Checks: every problem names a line of the text and says why;
/// the freshness rules of a valid one match the text as a tag without panicking.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines = text.lines().count().max(1) + 1;
    match config::parse(text, Source::Embedded) {
        Ok(config) => {
            assert!(!config.registries.is_empty());
            // Freshness rules match any text without panicking (a tag is at most 128 characters).
            let tag: String = text.chars().take(128).collect();
            for rule in &config.cache.rules {
                rule.covers(["docker.io"].into_iter(), "library/x", &tag);
            }
        }
        Err(config::Error::Invalid { problems, .. }) => {
            assert!(!problems.is_empty());
            for p in problems {
                assert!((1..=lines).contains(&p.line), "line {} of {lines}", p.line);
                assert!(!p.message.trim().is_empty());
            }
        }
        Err(e) => panic!("parsing text: {e}"),
    }
}

/// The bytes as an object's `.meta` file and as a tag file. Checks: no field holds a line break,
/// and a mapping is read back as written (the parser and `Store::put_tag` agree) whenever its
/// fields hold no `\r` (HTTP header values and paths never do).
pub fn cache_meta(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (media_type, refs) = parse_meta(&text);
    assert!(!media_type.is_empty() && !media_type.contains('\n'));
    for (registry, repo) in &refs {
        assert!(!registry.contains(' ') && !registry.contains('\n') && !repo.contains('\n'));
    }
    let now = tokio::time::Instant::now();
    if let Some((key, entry)) = parse_tag(&text, now) {
        let fields = [
            &key.registry,
            &key.repo,
            &key.tag,
            &key.accept,
            &entry.media_type,
        ];
        assert!(fields.iter().all(|f| !f.contains('\n')));
        if fields.iter().any(|f| f.contains('\r')) {
            return;
        }
        let written = format!(
            "{}\n{}\n{}\n{}\n{}\n{}\n",
            key.registry, key.repo, key.tag, key.accept, entry.digest, entry.media_type
        );
        let (key2, entry2) = parse_tag(&written, now).expect("a written tag file reads back");
        assert_eq!(key2, key);
        assert_eq!(
            (entry2.digest, entry2.media_type),
            (entry.digest, entry.media_type)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `target` over every file of `fuzz/corpus/<name>/`, which must not be empty.
    fn over_corpus(name: &str, target: fn(&[u8])) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(name);
        let files: Vec<_> = (std::fs::read_dir(&dir).expect("a seed corpus").flatten())
            .map(|e| e.path())
            .collect();
        assert!(!files.is_empty(), "{} is empty", dir.display());
        for file in files {
            target(&std::fs::read(&file).unwrap());
        }
    }

    #[test]
    fn seed_corpora_pass_their_targets() {
        over_corpus("dns_request", dns_request);
        over_corpus("http_router", http_router);
        over_corpus("www_authenticate", www_authenticate);
        over_corpus("manifest", manifest);
        over_corpus("config", config);
        over_corpus("cache_meta", cache_meta);
    }

    #[test]
    fn intercepted_names_get_our_address_and_others_no_records() {
        let query = |name: &str| {
            let mut msg = Message::query();
            msg.metadata.id = 7;
            msg.add_query(hickory_proto::op::Query::query(
                hickory_proto::rr::Name::from_ascii(name).unwrap(),
                hickory_proto::rr::RecordType::A,
            ));
            msg.to_vec().unwrap()
        };
        let raw_answer = |raw: &[u8]| {
            DNS.with(|cell| {
                let mut cell = cell.borrow_mut();
                let rig = cell.get_or_insert_with(dns_rig);
                let src = SocketAddr::from((Ipv4Addr::LOCALHOST, 53535));
                rig.runtime
                    .block_on(dns::answer_raw(&rig.handler, raw, src))
            })
        };
        let answer = |raw: &[u8]| Message::from_vec(&raw_answer(raw).expect("an answer")).unwrap();
        let ours = answer(&query("ghcr.io."));
        assert_eq!(ours.answers.len(), 1);
        let other = answer(&query("example.com."));
        assert!(other.answers.is_empty());
        assert!(raw_answer(&[0; 11]).is_none());
        let mut garbage = query("ghcr.io.");
        garbage.truncate(14);
        let formerr = answer(&garbage);
        assert_eq!(
            formerr.metadata.response_code,
            hickory_proto::op::ResponseCode::FormErr
        );
        dns_request(&query("ghcr.io."));
    }
}
