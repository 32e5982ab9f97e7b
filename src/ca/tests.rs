use super::*;

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
