//! The local CA: load or create it, issue one leaf certificate per SNI name, and hand rustls the
//! right leaf during the handshake. No networking.
//!
//! The CA's NameConstraints extension (critical) permits exactly the configured registry names, so
//! a stolen CA key cannot vouch for any other site. rcgen does not enforce a CA's constraints when
//! it signs, so [`CertResolver`] refuses every name the constraints would not permit.
//!
//! Leaf issuance. rustls asks for a leaf synchronously inside each handshake, so:
//! - the resolver's map lock is held only to find or insert a name's slot; a key is generated
//!   under that one slot's lock, so issuing a leaf for a new name never delays handshakes for
//!   names already issued, and concurrent handshakes for the same new name wait for the one
//!   issuance instead of each minting a key;
//! - a name matched only by a wildcard alias (`*.example.com`) gets the leaf of its parent's
//!   wildcard (`us.example.com` and `eu.example.com` share one leaf with SAN `*.example.com`).
//!   The CA's constraint subtree `example.com` permits that SAN (RFC 5280; webpki accepts it in
//!   this module's tests, OpenSSL's `s_client -verify_hostname` too; Go's crypto/x509 compares the
//!   SAN's labels with the subtree the same way, not run here), so 1000 names under one alias
//!   cost one key. Deeper names (`a.b.example.com`) need
//!   `*.b.example.com`, one per parent, so new wildcard leaves also draw on a small budget
//!   (a burst of [`WILDCARD_BURST`], then [`WILDCARD_REFILL`] per second; a handshake beyond it
//!   is refused and logged). Sharing alone would leave a client free to mint a key per
//!   handshake with made-up parents; the budget alone would refuse honest names under a busy
//!   alias. Exact names are few (the configured list), so they need no budget;
//! - at most [`MAX_LEAVES`] slots are kept, evicting an idle one when full;
//! - a configured pattern's own leaf (`ghcr.io`; `*.pkg.dev` for `*.pkg.dev`) is pinned: never
//!   charged to the budget, never evicted, so made-up deep names cannot starve the real ones.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    NameConstraints, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::names::{normalize, NamePattern};

/// How long the CA is valid from creation.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long a leaf is valid; it is re-issued when less than [`LEAF_RENEW_BEFORE`] remains.
const LEAF_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
const LEAF_RENEW_BEFORE: Duration = Duration::from_secs(10 * 24 * 3600);
/// At most this many cached leaves (a `*.suffix` alias admits any number of names).
const MAX_LEAVES: usize = 4096;
/// New `*.parent` leaves: a burst of this many, then [`WILDCARD_REFILL`] per second.
const WILDCARD_BURST: f64 = 64.0;
const WILDCARD_REFILL: f64 = 1.0;
/// Back-dating of `not_before`, for clients whose clocks run a little behind.
const CLOCK_SKEW: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}` \
         — the CA key must be private"
    )]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("{present} exists but {missing} does not: restore it, or delete {present} to create a new CA")]
    Incomplete { present: PathBuf, missing: PathBuf },
    #[error(
        "no CA here: run this on the appliance, or use scripts/client-setup.sh with the CA's \
         fingerprint (no ca.crt and ca.key in {dir}; --create makes a new CA there)",
        dir = .dir.display()
    )]
    Missing { dir: PathBuf },
    #[error("{path}: not a usable CA ({why})")]
    Unusable { path: PathBuf, why: String },
    #[error(
        "the CA in {dir} does not permit {names}: it was created for another registry list. \
         Delete {dir}/ca.crt and {dir}/ca.key and start again to create a new CA (then \
         re-install the new ca.crt on every client)",
        dir = .dir.display(),
        names = .names.join(", ")
    )]
    NamesNotPermitted { dir: PathBuf, names: Vec<String> },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("rustls refused the leaf certificate: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A loaded CA: certificate, key, and what its name constraints permit.
pub struct Ca {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    /// DNS subtrees of the CA's NameConstraints (empty: the CA is unconstrained).
    permitted: Vec<String>,
    not_after: SystemTime,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("permitted", &self.permitted)
            .field("key", &"MASKED")
            .finish()
    }
}

impl Ca {
    /// Loads `dir/ca.crt` and `dir/ca.key`, or creates them for `names` when both are missing.
    /// Fails when the existing CA does not permit every name, or its key is not private.
    pub fn load_or_create(dir: &Path, names: &[NamePattern]) -> Result<Self, Error> {
        Self::open(dir, names, true)
    }

    /// Like [`Ca::load_or_create`], but fails with [`Error::Missing`] instead of creating a CA.
    pub fn load_existing(dir: &Path, names: &[NamePattern]) -> Result<Self, Error> {
        Self::open(dir, names, false)
    }

    fn open(dir: &Path, names: &[NamePattern], create_missing: bool) -> Result<Self, Error> {
        let crt = dir.join("ca.crt");
        let key = dir.join("ca.key");
        match (crt.exists(), key.exists()) {
            (false, false) if create_missing => create(dir, &crt, &key, names)?,
            (false, false) => {
                return Err(Error::Missing {
                    dir: dir.to_owned(),
                })
            }
            (true, false) => return Err(incomplete(crt, key)),
            (false, true) => return Err(incomplete(key, crt)),
            (true, true) => {}
        }
        let ca = Self::load(&crt, &key)?;
        if ca.permitted.is_empty() {
            tracing::warn!(
                path = %crt.display(),
                "this CA has no name constraints: clients that trust it trust it for every site; \
                 consider re-creating it (delete ca.crt and ca.key)"
            );
        }
        let missing = ca.not_permitted(names);
        if !missing.is_empty() {
            return Err(Error::NamesNotPermitted {
                dir: dir.to_owned(),
                names: missing,
            });
        }
        Ok(ca)
    }

    fn load(crt: &Path, key: &Path) -> Result<Self, Error> {
        let mode = fs::metadata(key).map_err(io(key))?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(Error::KeyPermissions {
                path: key.to_owned(),
                mode: mode & 0o777,
            });
        }
        let cert_pem = fs::read_to_string(crt).map_err(io(crt))?;
        let key_pem = fs::read_to_string(key).map_err(io(key))?;
        let unusable = |why: String| Error::Unusable {
            path: crt.to_owned(),
            why,
        };
        let key_pair = KeyPair::from_pem(&key_pem).map_err(|e| Error::Unusable {
            path: key.to_owned(),
            why: e.to_string(),
        })?;
        let cert_der =
            pem_to_der(&cert_pem).ok_or_else(|| unusable("no PEM certificate".into()))?;
        let (permitted, not_after, public_key) =
            inspect(&cert_der).map_err(|e| unusable(e.to_string()))?;
        if public_key != key_pair.public_key_raw() {
            return Err(unusable(format!(
                "it does not match the key in {}",
                key.display()
            )));
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der, key_pair)?;
        Ok(Self {
            cert_pem,
            cert_der,
            issuer,
            permitted,
            not_after,
        })
    }

    /// The names among `names` that this CA's constraints do not permit.
    pub fn not_permitted(&self, names: &[NamePattern]) -> Vec<String> {
        (names.iter())
            .filter(|n| !self.permits_subtree(n.subtree()))
            .map(ToString::to_string)
            .collect()
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// SHA-256 of the CA certificate (DER), as `AB:CD:…` like `openssl x509 -fingerprint -sha256`.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.cert_der.as_ref());
        let hex: Vec<String> = digest.iter().map(|b| format!("{b:02X}")).collect();
        hex.join(":")
    }

    /// When the CA expires.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Whether the CA's constraints permit the subtree `name` (the name and everything below it).
    fn permits_subtree(&self, name: &str) -> bool {
        self.permitted.is_empty() || self.permitted.iter().any(|p| within(name, p))
    }

    /// Issues a fresh leaf for `name`. Callers check that the name is one of ours first.
    pub fn issue(&self, name: &str, provider: &CryptoProvider) -> Result<Leaf, Error> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let now = SystemTime::now();
        let mut params = CertificateParams::new(vec![name.to_owned()])?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.not_before = OffsetDateTime::from(now - CLOCK_SKEW);
        params.not_after = OffsetDateTime::from(now + LEAF_LIFETIME);
        params.serial_number = Some(random_serial());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let certified = CertifiedKey::from_der(vec![cert.der().clone()], key_der, provider)?;
        Ok(Leaf {
            key: Arc::new(certified),
            renew_at: now + LEAF_LIFETIME - LEAF_RENEW_BEFORE,
        })
    }
}

/// An issued leaf and when to replace it.
#[derive(Clone, Debug)]
pub struct Leaf {
    pub key: Arc<CertifiedKey>,
    pub renew_at: SystemTime,
}

/// Hands rustls a leaf for each permitted SNI name, issuing on first use; refuses other names.
pub struct CertResolver {
    ca: Arc<Ca>,
    /// Replaced on a config reload; std RwLock, never held across .await.
    names: std::sync::RwLock<Vec<NamePattern>>,
    provider: Arc<CryptoProvider>,
    /// Leaf slots by leaf name. std Mutex, held only to find or insert a slot, never while a
    /// key is generated (rustls calls `resolve` synchronously).
    leaves: Mutex<Slots>,
    /// Called after each issued leaf (the app counts them), inside that name's slot.
    on_issue: Option<Box<dyn Fn() + Send + Sync>>,
}

/// One leaf name's slot: its lock is held while that leaf is issued, so concurrent handshakes for
/// the same new name wait for the one issuance; handshakes for other names never wait on it.
type Slot = Arc<Mutex<Option<Leaf>>>;

/// The bounded slot map and the budget for new wildcard leaves.
///
/// The leaves of the configured patterns themselves (`ghcr.io`, and `*.pkg.dev` for the pattern
/// `*.pkg.dev`) are pinned: kept apart, never evicted and never charged to the budget, so made-up
/// names under an alias can neither spend the budget a real name needs nor push its leaf out.
struct Slots {
    /// The configured patterns' own leaves; as many as the configured list.
    pinned: HashMap<String, Slot>,
    /// Every other leaf (`*.b.pkg.dev` for `a.b.pkg.dev`); at most [`MAX_LEAVES`].
    map: HashMap<String, Slot>,
    /// Tokens for new `*.parent` slots; refilled at [`WILDCARD_REFILL`] per second.
    wildcard_tokens: f64,
    refilled: Instant,
}

impl Slots {
    fn new() -> Self {
        Self {
            pinned: HashMap::new(),
            map: HashMap::new(),
            wildcard_tokens: WILDCARD_BURST,
            refilled: Instant::now(),
        }
    }

    /// The slot for `key`, creating it (within the bounds) when missing; a pinned key (a
    /// configured pattern's own leaf) is outside the bounds.
    fn get_or_insert(&mut self, key: &str, pinned: bool) -> Option<Slot> {
        if pinned {
            return Some(self.pinned.entry(key.to_owned()).or_default().clone());
        }
        if let Some(slot) = self.map.get(key) {
            return Some(slot.clone());
        }
        if key.starts_with("*.") && !self.take_wildcard_token() {
            return None;
        }
        if self.map.len() >= MAX_LEAVES {
            // Prefer a slot nobody is using; any slot otherwise (its users keep their Arc).
            let victim = (self.map.iter())
                .find(|(_, s)| Arc::strong_count(s) == 1)
                .or_else(|| self.map.iter().next())
                .map(|(k, _)| k.clone());
            victim.map(|k| self.map.remove(&k));
        }
        let slot = Slot::default();
        self.map.insert(key.to_owned(), slot.clone());
        Some(slot)
    }

    /// Keeps the pinned leaves of `names` only (after a reload); the others become ordinary
    /// (bounded, evictable) leaves.
    fn repin(&mut self, names: &[NamePattern]) {
        let keep: Vec<String> = names.iter().map(own_leaf).collect();
        let unpinned: Vec<String> = (self.pinned.keys())
            .filter(|k| !keep.contains(k))
            .cloned()
            .collect();
        for key in unpinned {
            if let Some(slot) = self.pinned.remove(&key) {
                if self.map.len() < MAX_LEAVES {
                    self.map.insert(key, slot);
                }
            }
        }
    }

    fn take_wildcard_token(&mut self) -> bool {
        let now = Instant::now();
        let earned = now.duration_since(self.refilled).as_secs_f64() * WILDCARD_REFILL;
        self.wildcard_tokens = (self.wildcard_tokens + earned).min(WILDCARD_BURST);
        self.refilled = now;
        if self.wildcard_tokens < 1.0 {
            return false;
        }
        self.wildcard_tokens -= 1.0;
        true
    }
}

/// The leaf a pattern itself is served with: the name for an exact one, `*.suffix` for a
/// wildcard one.
fn own_leaf(pattern: &NamePattern) -> String {
    match pattern {
        NamePattern::Exact(name) => name.clone(),
        NamePattern::Suffix(suffix) => format!("*.{suffix}"),
    }
}

impl std::fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertResolver")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

impl CertResolver {
    pub fn new(ca: Arc<Ca>, names: Vec<NamePattern>, provider: Arc<CryptoProvider>) -> Self {
        Self {
            ca,
            names: std::sync::RwLock::new(names),
            provider,
            leaves: Mutex::new(Slots::new()),
            on_issue: None,
        }
    }

    /// Serves `names` from now on (a config reload). The caller checked [`Ca::not_permitted`].
    pub fn set_names(&self, names: Vec<NamePattern>) {
        let mut current = self.names.write().unwrap_or_else(|e| e.into_inner());
        (self.leaves.lock().unwrap_or_else(|e| e.into_inner())).repin(&names);
        *current = names;
    }

    /// Calls `f` after each leaf issued.
    pub fn on_issue(mut self, f: Box<dyn Fn() + Send + Sync>) -> Self {
        self.on_issue = Some(f);
        self
    }

    /// The name the leaf for `name` is issued for: `name` itself when an exact pattern lists it,
    /// `*.parent` when only a wildcard pattern matches it, `None` when it is not ours. The flag
    /// says whether that leaf is a configured pattern's own (pinned: see [`Slots`]).
    fn leaf_name(&self, name: &str) -> Option<(String, bool)> {
        let names = self.names.read().unwrap_or_else(|e| e.into_inner());
        if names
            .iter()
            .any(|p| matches!(p, NamePattern::Exact(e) if e == name))
        {
            return Some((name.to_owned(), true));
        }
        let parent = name.split_once('.')?.1;
        let own = names
            .iter()
            .any(|p| matches!(p, NamePattern::Suffix(s) if s == parent));
        names
            .iter()
            .any(|p| p.matches(name))
            .then(|| (format!("*.{parent}"), own))
    }

    /// The leaf for `sni`, from the cache or freshly issued; `None` for names that are not ours
    /// (and for new wildcard leaves beyond the issuance budget).
    pub fn leaf_for(&self, sni: &str) -> Option<Arc<CertifiedKey>> {
        let name = normalize(sni);
        let Some((key, pinned)) = self.leaf_name(&name) else {
            tracing::warn!(sni = %name, "TLS handshake refused: not a registry name of this appliance");
            return None;
        };
        let slot = self
            .leaves
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(&key, pinned);
        let Some(slot) = slot else {
            tracing::warn!(sni = %name, leaf = %key, "TLS handshake refused: too many new wildcard leaves issued recently");
            return None;
        };
        let mut leaf = slot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(leaf) = leaf.as_ref().filter(|l| l.renew_at > SystemTime::now()) {
            return Some(leaf.key.clone());
        }
        match self.ca.issue(&key, &self.provider) {
            Ok(issued) => {
                tracing::info!(sni = %name, leaf = %key, "issued leaf certificate");
                let certified = issued.key.clone();
                *leaf = Some(issued);
                if let Some(f) = &self.on_issue {
                    f();
                }
                Some(certified)
            }
            Err(e) => {
                tracing::error!(sni = %name, leaf = %key, error = %e, "cannot issue leaf certificate");
                None
            }
        }
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match hello.server_name() {
            Some(sni) => self.leaf_for(sni),
            None => {
                tracing::warn!("TLS handshake refused: the client sent no SNI");
                None
            }
        }
    }
}

fn create(dir: &Path, crt: &Path, key_path: &Path, names: &[NamePattern]) -> Result<(), Error> {
    fs::create_dir_all(dir).map_err(io(dir))?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let now = SystemTime::now();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "regcache");
    params.distinguished_name.push(
        DnType::CommonName,
        format!("regcache local CA {}", hostname()),
    );
    params.not_before = OffsetDateTime::from(now - CLOCK_SKEW);
    params.not_after = OffsetDateTime::from(now + CA_LIFETIME);
    params.serial_number = Some(random_serial());
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let mut subtrees: Vec<String> = names.iter().map(|n| n.subtree().to_owned()).collect();
    subtrees.dedup();
    // DNS names only: every IP address is excluded (a name form without a constraint would
    // otherwise be unconstrained, and a stolen key could vouch for any https://IP).
    params.name_constraints = Some(NameConstraints {
        permitted_subtrees: subtrees.into_iter().map(GeneralSubtree::DnsName).collect(),
        excluded_subtrees: vec![
            GeneralSubtree::IpAddress(CidrSubnet::from_v4_prefix([0; 4], 0)),
            GeneralSubtree::IpAddress(CidrSubnet::from_v6_prefix([0; 16], 0)),
        ],
    });
    let cert = params.self_signed(&key)?;
    write_new(key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(crt, cert.pem().as_bytes(), 0o644)?;
    tracing::info!(dir = %dir.display(), "created a new CA");
    Ok(())
}

/// Writes `path` through a temp file and a rename, so a crash never leaves half a key.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io(&tmp))?;
    file.write_all(bytes).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

/// The permitted DNS subtrees, expiry and public key of a CA certificate.
fn inspect(der: &[u8]) -> Result<(Vec<String>, SystemTime, Vec<u8>), String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    if !cert.is_ca() {
        return Err("basicConstraints does not say CA".into());
    }
    let mut permitted = Vec::new();
    if let Some(nc) = cert.name_constraints().map_err(|e| e.to_string())? {
        for subtree in nc.value.permitted_subtrees.iter().flatten() {
            if let GeneralName::DNSName(name) = subtree.base {
                permitted.push(normalize(name.trim_start_matches('.')));
            }
        }
    }
    let secs = cert.validity().not_after.timestamp();
    let not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64);
    let public_key = cert.public_key().subject_public_key.data.to_vec();
    Ok((permitted, not_after, public_key))
}

/// Whether `name` equals `subtree` or lies below it.
fn within(name: &str, subtree: &str) -> bool {
    name == subtree
        || name
            .strip_suffix(subtree)
            .is_some_and(|head| head.ends_with('.'))
}

fn pem_to_der(pem: &str) -> Option<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes()).next()?.ok()
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut bytes)
        .expect("the system random source works");
    bytes[0] &= 0x7f; // a positive INTEGER
    SerialNumber::from_slice(&bytes)
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

fn incomplete(present: PathBuf, missing: PathBuf) -> Error {
    Error::Incomplete { present, missing }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests;
