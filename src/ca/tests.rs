//! The CA's tests: creation and loading, leaf issuance, the cache and the wildcard budget.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::crypto::CryptoProvider;

use super::authority::{pem_to_der, within};
use super::leaf::{LeafSlot, MAX_LEAVES, WILDCARD_BURST, WILDCARD_REFILL};
use super::{Ca, CertResolver, Error};
use crate::names::NamePattern;

fn names(list: &[&str]) -> Vec<NamePattern> {
    list.iter()
        .map(|n| NamePattern::parse(n).unwrap())
        .collect()
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

#[test]
fn creates_a_constrained_ca_with_private_key_and_reloads_it() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let ca = Ca::load_or_create(&certs, &names(&["ghcr.io", "*.pkg.dev"])).unwrap();
    let key_mode = fs::metadata(certs.join("ca.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    let crt_mode = fs::metadata(certs.join("ca.crt"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!((key_mode, crt_mode), (0o600, 0o644));
    assert_eq!(ca.permitted, ["ghcr.io", "pkg.dev"]);

    let der = pem_to_der(ca.cert_pem()).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let nc = cert
        .name_constraints()
        .unwrap()
        .expect("name constraints present");
    assert!(nc.critical, "NameConstraints must be critical");

    let again = Ca::load_or_create(&certs, &names(&["ghcr.io"])).unwrap();
    assert_eq!(again.cert_pem(), ca.cert_pem(), "an existing CA is reused");
    assert_eq!(again.fingerprint(), ca.fingerprint());
}

#[test]
fn refuses_names_the_existing_ca_does_not_permit() {
    let dir = tempfile::tempdir().unwrap();
    Ca::load_or_create(dir.path(), &names(&["ghcr.io"])).unwrap();
    let err =
        Ca::load_or_create(dir.path(), &names(&["ghcr.io", "quay.io", "x.ghcr.io"])).unwrap_err();
    match &err {
        Error::NamesNotPermitted { names, .. } => assert_eq!(names, &["quay.io"]),
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("Delete"), "{err}");
}

#[test]
fn refuses_a_key_readable_by_others() {
    let dir = tempfile::tempdir().unwrap();
    Ca::load_or_create(dir.path(), &names(&["ghcr.io"])).unwrap();
    let key = dir.path().join("ca.key");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let err = Ca::load_or_create(dir.path(), &names(&["ghcr.io"])).unwrap_err();
    assert!(
        matches!(err, Error::KeyPermissions { mode: 0o644, .. }),
        "{err}"
    );
}

#[test]
fn refuses_half_a_ca_and_a_mismatched_key() {
    let dir = tempfile::tempdir().unwrap();
    Ca::load_or_create(dir.path(), &names(&["ghcr.io"])).unwrap();
    let other = tempfile::tempdir().unwrap();
    Ca::load_or_create(other.path(), &names(&["ghcr.io"])).unwrap();
    fs::copy(other.path().join("ca.key"), dir.path().join("ca.key")).unwrap();
    let err = Ca::load_or_create(dir.path(), &names(&["ghcr.io"])).unwrap_err();
    assert!(matches!(err, Error::Unusable { .. }), "{err}");

    fs::remove_file(dir.path().join("ca.key")).unwrap();
    let err = Ca::load_or_create(dir.path(), &names(&["ghcr.io"])).unwrap_err();
    assert!(matches!(err, Error::Incomplete { .. }), "{err}");
}

#[test]
fn resolver_issues_cached_leaves_for_our_names_only() {
    let dir = tempfile::tempdir().unwrap();
    let list = names(&["ghcr.io", "*.pkg.dev"]);
    let ca = Arc::new(Ca::load_or_create(dir.path(), &list).unwrap());
    let resolver = CertResolver::new(ca, list, provider());
    let a = resolver.leaf_for("GHCR.io").expect("leaf for ghcr.io");
    let b = resolver.leaf_for("ghcr.io").unwrap();
    assert!(Arc::ptr_eq(&a, &b), "the leaf is cached");
    assert!(resolver.leaf_for("us.pkg.dev").is_some());
    assert!(resolver.leaf_for("pkg.dev").is_none());
    assert!(resolver.leaf_for("example.com").is_none());

    let (_, leaf) = x509_parser::parse_x509_certificate(a.cert[0].as_ref()).unwrap();
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        format!("{:?}", san.value.general_names),
        "[DNSName(\"ghcr.io\")]"
    );
}

#[test]
fn within_matches_whole_labels() {
    assert!(within("ghcr.io", "ghcr.io"));
    assert!(within("a.ghcr.io", "ghcr.io"));
    assert!(!within("aghcr.io", "ghcr.io"));
}

/// A resolver over a fresh CA for `list`, counting the leaves it issues.
fn counting_resolver(
    dir: &Path,
    list: &[&str],
) -> (Arc<CertResolver>, Arc<std::sync::atomic::AtomicUsize>) {
    let list = names(list);
    let ca = Arc::new(Ca::load_or_create(dir, &list).unwrap());
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = count.clone();
    let resolver = CertResolver::new(ca, list, provider()).on_issue(Box::new(move || {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }));
    (Arc::new(resolver), count)
}

#[test]
fn concurrent_handshakes_for_one_new_name_mint_one_key() {
    let dir = tempfile::tempdir().unwrap();
    let (resolver, issued) = counting_resolver(dir.path(), &["ghcr.io"]);
    let start = Arc::new(std::sync::Barrier::new(16));
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let (resolver, start) = (resolver.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                resolver.leaf_for("ghcr.io").unwrap()
            })
        })
        .collect();
    let keys: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(issued.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(keys.iter().all(|k| Arc::ptr_eq(k, &keys[0])));
}

#[test]
fn issuing_one_leaf_does_not_block_handshakes_for_issued_names() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;
    let dir = tempfile::tempdir().unwrap();
    let list = names(&["ghcr.io", "quay.io"]);
    let ca = Arc::new(Ca::load_or_create(dir.path(), &list).unwrap());
    // Once `stall` is set, the next issuance waits (inside its slot) until `release` is sent.
    let stall = Arc::new(AtomicBool::new(false));
    let (release, released) = mpsc::channel::<()>();
    let released = Mutex::new(released);
    let stalling = stall.clone();
    let resolver = Arc::new(CertResolver::new(ca, list, provider()).on_issue(Box::new(
        move || {
            if stalling.swap(false, Ordering::SeqCst) {
                let _ = released
                    .lock()
                    .unwrap()
                    .recv_timeout(Duration::from_secs(30));
            }
        },
    )));
    resolver.leaf_for("ghcr.io").unwrap();
    stall.store(true, Ordering::SeqCst);
    let slow = {
        let resolver = resolver.clone();
        std::thread::spawn(move || resolver.leaf_for("quay.io").is_some())
    };
    while stall.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(5)); // until quay.io's issuance is stalled
    }
    let (done, got) = mpsc::channel();
    let fast = resolver.clone();
    std::thread::spawn(move || done.send(fast.leaf_for("ghcr.io").is_some()));
    let answer = got.recv_timeout(Duration::from_secs(5));
    release.send(()).unwrap();
    assert_eq!(answer, Ok(true), "ghcr.io waited for quay.io's issuance");
    assert!(slow.join().unwrap());
}

#[test]
fn names_under_a_wildcard_alias_share_one_leaf_the_client_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let (resolver, issued) = counting_resolver(dir.path(), &["ghcr.io", "*.pkg.dev"]);
    let first = resolver.leaf_for("name0.pkg.dev").unwrap();
    for i in 1..1000 {
        let key = resolver.leaf_for(&format!("name{i}.pkg.dev")).unwrap();
        assert!(Arc::ptr_eq(&key, &first));
    }
    assert_eq!(issued.load(std::sync::atomic::Ordering::SeqCst), 1);

    let (_, leaf) = x509_parser::parse_x509_certificate(first.cert[0].as_ref()).unwrap();
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        format!("{:?}", san.value.general_names),
        "[DNSName(\"*.pkg.dev\")]"
    );
    // rustls (webpki) accepts it for a name under the alias, within the CA's name constraints.
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(pem_to_der(resolver.ca.cert_pem()).unwrap())
        .unwrap();
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .unwrap();
    let name = rustls::pki_types::ServerName::try_from("name7.pkg.dev").unwrap();
    let now = rustls::pki_types::UnixTime::now();
    use rustls::client::danger::ServerCertVerifier as _;
    verifier
        .verify_server_cert(&first.cert[0], &[], &name, &[], now)
        .expect("the wildcard leaf verifies for name7.pkg.dev");
}

#[test]
fn made_up_parents_under_a_wildcard_alias_mint_a_bounded_number_of_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (resolver, issued) = counting_resolver(dir.path(), &["ghcr.io", "*.pkg.dev"]);
    let started = Instant::now();
    let served = (0..1000)
        .filter(|i| resolver.leaf_for(&format!("a.x{i}.pkg.dev")).is_some())
        .count();
    let budget = WILDCARD_BURST + WILDCARD_REFILL * (started.elapsed().as_secs_f64() + 1.0);
    let minted = issued.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        minted as f64 <= budget,
        "{minted} keys for 1000 made-up names"
    );
    assert_eq!(served, minted);
    // Exact names are not on the wildcard budget, and issued leaves are still served.
    assert!(resolver.leaf_for("ghcr.io").is_some());
    assert!(resolver.leaf_for("a.x0.pkg.dev").is_some());
}

#[test]
fn load_existing_refuses_to_create_a_ca() {
    let dir = tempfile::tempdir().unwrap();
    let err = Ca::load_existing(dir.path(), &names(&["ghcr.io"])).unwrap_err();
    assert!(matches!(err, Error::Missing { .. }), "{err}");
    assert!(
        err.to_string().starts_with("no CA here: run this on the appliance, or use scripts/client-setup.sh with the CA's fingerprint"),
        "{err}"
    );
    assert!(!dir.path().join("ca.key").exists(), "nothing minted");
    let made = Ca::load_or_create(dir.path(), &names(&["ghcr.io"])).unwrap();
    let loaded = Ca::load_existing(dir.path(), &names(&["ghcr.io"])).unwrap();
    assert_eq!(made.fingerprint(), loaded.fingerprint());
}

/// Spends the wildcard budget with made-up deep names until one is refused.
fn spend_the_wildcard_budget(resolver: &CertResolver) {
    let refused = (0..10_000).any(|i| resolver.leaf_for(&format!("a.y{i}.pkg.dev")).is_none());
    assert!(refused, "the budget ran out");
}

#[test]
fn made_up_deep_names_cannot_spend_the_budget_of_a_configured_alias() {
    let dir = tempfile::tempdir().unwrap();
    let (resolver, _) = counting_resolver(dir.path(), &["ghcr.io", "*.pkg.dev"]);
    spend_the_wildcard_budget(&resolver);
    // `*.pkg.dev` is the configured pattern's own leaf: never on the budget.
    let key = resolver
        .leaf_for("us.pkg.dev")
        .expect("a real name still gets its leaf");
    let (_, leaf) = x509_parser::parse_x509_certificate(key.cert[0].as_ref()).unwrap();
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        format!("{:?}", san.value.general_names),
        "[DNSName(\"*.pkg.dev\")]"
    );
    assert!(resolver.leaf_for("ghcr.io").is_some());
    spend_the_wildcard_budget(&resolver);
}

#[test]
fn a_full_leaf_cache_never_evicts_a_configured_patterns_own_leaf() {
    let dir = tempfile::tempdir().unwrap();
    let (resolver, issued) = counting_resolver(dir.path(), &["ghcr.io", "*.pkg.dev"]);
    let own = resolver.leaf_for("us.pkg.dev").unwrap();
    let exact = resolver.leaf_for("ghcr.io").unwrap();
    // Fill the cache with made-up leaves that are all in use: the pinned leaves are the only
    // idle ones, the first choice of an eviction that did not know them.
    let held: Vec<LeafSlot> = {
        let mut leaves = resolver.leaves.lock().unwrap();
        (0..MAX_LEAVES)
            .map(|i| {
                let slot = LeafSlot::default();
                leaves.map.insert(format!("*.z{i}.pkg.dev"), slot.clone());
                slot
            })
            .collect()
    };
    for i in 0..8 {
        assert!(resolver.leaf_for(&format!("a.w{i}.pkg.dev")).is_some());
    }
    assert!(resolver.leaves.lock().unwrap().map.len() <= MAX_LEAVES);
    let before = issued.load(std::sync::atomic::Ordering::SeqCst);
    let again = resolver.leaf_for("eu.pkg.dev").unwrap();
    assert!(
        Arc::ptr_eq(&own, &again),
        "the pinned *.pkg.dev leaf survived"
    );
    assert!(Arc::ptr_eq(&exact, &resolver.leaf_for("ghcr.io").unwrap()));
    assert_eq!(issued.load(std::sync::atomic::Ordering::SeqCst), before);
    drop(held);
}

#[test]
fn a_reload_unpins_the_leaves_of_names_no_longer_configured() {
    let dir = tempfile::tempdir().unwrap();
    let (resolver, _) = counting_resolver(dir.path(), &["ghcr.io", "*.pkg.dev"]);
    resolver.leaf_for("us.pkg.dev").unwrap();
    resolver.leaf_for("ghcr.io").unwrap();
    resolver.set_names(names(&["ghcr.io"]));
    let leaves = resolver.leaves.lock().unwrap();
    let pinned: Vec<&String> = leaves.pinned.keys().collect();
    assert_eq!(pinned, ["ghcr.io"]);
    assert!(leaves.map.contains_key("*.pkg.dev"));
}
