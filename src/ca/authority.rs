//! The CA itself: load it from the state directory or create it (name-constrained, key private),
//! check that it permits the configured names, and say what it is (PEM, fingerprint, expiry).
//! Leaves are signed in [`super::leaf`].

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType, GeneralSubtree,
    IsCa, Issuer, KeyPair, KeyUsagePurpose, NameConstraints, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::{Error, Unusable};
use crate::names::{normalize, NamePattern};

/// How long the CA is valid from creation.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Back-dating of `not_before`, for clients whose clocks run a little behind.
pub(super) const CLOCK_SKEW: Duration = Duration::from_secs(3600);

/// A loaded CA: certificate, key, and what its name constraints permit.
pub struct Ca {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    /// Signs leaves ([`Ca::issue`], in `leaf`).
    pub(super) issuer: Issuer<'static, KeyPair>,
    /// DNS subtrees of the CA's NameConstraints (empty: the CA is unconstrained).
    pub(super) permitted: Vec<String>,
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
        let unusable = |why: Unusable| Error::Unusable {
            path: crt.to_owned(),
            why,
        };
        let key_pair = KeyPair::from_pem(&key_pem).map_err(|e| Error::Unusable {
            path: key.to_owned(),
            why: Unusable::Key(e),
        })?;
        let cert_der = pem_to_der(&cert_pem).ok_or(unusable(Unusable::NoPem))?;
        let Inspected {
            permitted,
            not_after,
            public_key,
        } = inspect(&cert_der).map_err(unusable)?;
        if public_key != key_pair.public_key_raw() {
            return Err(unusable(Unusable::KeyMismatch(key.to_owned())));
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

/// What a CA certificate says: its permitted DNS subtrees, expiry and public key.
struct Inspected {
    permitted: Vec<String>,
    not_after: SystemTime,
    public_key: Vec<u8>,
}

/// Reads the facts of a CA certificate; fails when it is not a CA.
fn inspect(der: &[u8]) -> Result<Inspected, Unusable> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der)?;
    if !cert.is_ca() {
        return Err(Unusable::NotCa);
    }
    let mut permitted = Vec::new();
    if let Some(nc) = cert.name_constraints()? {
        for subtree in nc.value.permitted_subtrees.iter().flatten() {
            if let GeneralName::DNSName(name) = subtree.base {
                permitted.push(normalize(name.trim_start_matches('.')));
            }
        }
    }
    let secs = cert.validity().not_after.timestamp();
    Ok(Inspected {
        permitted,
        not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64),
        public_key: cert.public_key().subject_public_key.data.to_vec(),
    })
}

/// Whether `name` equals `subtree` or lies below it.
pub(super) fn within(name: &str, subtree: &str) -> bool {
    name == subtree
        || name
            .strip_suffix(subtree)
            .is_some_and(|head| head.ends_with('.'))
}

pub(super) fn pem_to_der(pem: &str) -> Option<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes()).next()?.ok()
}

pub(super) fn random_serial() -> SerialNumber {
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
