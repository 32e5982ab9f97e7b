//! Leaf certificates: issue one for a name ([`Ca::issue`]), and the bounded cache of issued
//! leaves with the budget for new wildcard leaves ([`LeafCache`]).
//!
//! rustls asks for a leaf synchronously inside each handshake, so each leaf name has its own
//! slot ([`LeafSlot`]): a key is generated under that one slot's lock, so issuing a leaf for a new
//! name never delays handshakes for names already issued, and concurrent handshakes for the same
//! new name wait for the one issuance instead of each minting a key.
//!
//! A name matched only by a wildcard alias (`*.example.com`) gets the leaf of its parent's
//! wildcard (`us.example.com` and `eu.example.com` share one leaf with SAN `*.example.com`). The
//! CA's constraint subtree `example.com` permits that SAN (RFC 5280; webpki accepts it in this
//! module's tests, OpenSSL's `s_client -verify_hostname` too; Go's crypto/x509 compares the SAN's
//! labels with the subtree the same way, not run here), so 1000 names under one alias cost one
//! key. Deeper names (`a.b.example.com`) need `*.b.example.com`, one per parent, so new wildcard
//! leaves also draw on a small budget (a burst of [`WILDCARD_BURST`], then [`WILDCARD_REFILL`] per
//! second; a handshake beyond it is refused and logged). Sharing alone would leave a client free
//! to mint a key per handshake with made-up parents; the budget alone would refuse honest names
//! under a busy alias. At most [`MAX_LEAVES`] slots are kept, evicting an idle one when full.
//!
//! A configured pattern's own leaf (`ghcr.io`; `*.pkg.dev` for `*.pkg.dev`) is pinned: never
//! charged to the budget, never evicted, so made-up deep names cannot starve the real ones.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use time::OffsetDateTime;

use super::authority::{random_serial, CLOCK_SKEW};
use super::{Ca, Error};
use crate::names::NamePattern;

/// How long a leaf is valid; it is re-issued when less than [`LEAF_RENEW_BEFORE`] remains.
const LEAF_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
const LEAF_RENEW_BEFORE: Duration = Duration::from_secs(10 * 24 * 3600);
/// At most this many cached leaves (a `*.suffix` alias admits any number of names).
pub(super) const MAX_LEAVES: usize = 4096;
/// New `*.parent` leaves: a burst of this many, then [`WILDCARD_REFILL`] per second.
pub(super) const WILDCARD_BURST: f64 = 64.0;
pub(super) const WILDCARD_REFILL: f64 = 1.0;

impl Ca {
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

/// One leaf name's slot: its lock is held while that leaf is issued, so concurrent handshakes for
/// the same new name wait for the one issuance; handshakes for other names never wait on it.
pub(super) type LeafSlot = Arc<Mutex<Option<Leaf>>>;

/// The bounded slot map and the budget for new wildcard leaves.
///
/// The leaves of the configured patterns themselves (`ghcr.io`, and `*.pkg.dev` for the pattern
/// `*.pkg.dev`) are pinned: kept apart, never evicted and never charged to the budget, so made-up
/// names under an alias can neither spend the budget a real name needs nor push its leaf out.
pub(super) struct LeafCache {
    /// The configured patterns' own leaves; as many as the configured list.
    pub(super) pinned: HashMap<String, LeafSlot>,
    /// Every other leaf (`*.b.pkg.dev` for `a.b.pkg.dev`); at most [`MAX_LEAVES`].
    pub(super) map: HashMap<String, LeafSlot>,
    /// Tokens for new `*.parent` slots; refilled at [`WILDCARD_REFILL`] per second.
    wildcard_tokens: f64,
    refilled: Instant,
}

impl LeafCache {
    pub(super) fn new() -> Self {
        Self {
            pinned: HashMap::new(),
            map: HashMap::new(),
            wildcard_tokens: WILDCARD_BURST,
            refilled: Instant::now(),
        }
    }

    /// The slot for `key`, creating it (within the bounds) when missing; a pinned key (a
    /// configured pattern's own leaf) is outside the bounds.
    pub(super) fn get_or_insert(&mut self, key: &str, pinned: bool) -> Option<LeafSlot> {
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
        let slot = LeafSlot::default();
        self.map.insert(key.to_owned(), slot.clone());
        Some(slot)
    }

    /// Keeps the pinned leaves of `names` only (after a reload); the others become ordinary
    /// (bounded, evictable) leaves.
    pub(super) fn repin(&mut self, names: &[NamePattern]) {
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
