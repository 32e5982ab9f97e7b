//! The rustls certificate resolver: for each SNI name, refuse it unless it is one of ours, else
//! hand over its leaf from the [`LeafCache`], issuing it on first use.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::leaf::LeafCache;
use super::Ca;
use crate::names::{normalize, NamePattern};
use crate::sync::{Locked, ReadWrite};

/// Hands rustls a leaf for each permitted SNI name, issuing on first use; refuses other names.
pub struct CertResolver {
    pub(super) ca: Arc<Ca>,
    /// Replaced on a config reload; std RwLock, never held across .await.
    names: std::sync::RwLock<Vec<NamePattern>>,
    provider: Arc<CryptoProvider>,
    /// Leaf slots by leaf name. std Mutex, held only to find or insert a slot, never while a
    /// key is generated (rustls calls `resolve` synchronously).
    pub(super) leaves: Mutex<LeafCache>,
    /// Called after each issued leaf (the app counts them), inside that name's slot.
    on_issue: Option<Box<dyn Fn() + Send + Sync>>,
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
            leaves: Mutex::new(LeafCache::new()),
            on_issue: None,
        }
    }

    /// Serves `names` from now on (a config reload). The caller checked [`Ca::not_permitted`].
    pub fn set_names(&self, names: Vec<NamePattern>) {
        let mut current = self.names.write_now();
        self.leaves.locked().repin(&names);
        *current = names;
    }

    /// Calls `f` after each leaf issued.
    pub fn on_issue(mut self, f: Box<dyn Fn() + Send + Sync>) -> Self {
        self.on_issue = Some(f);
        self
    }

    /// The name the leaf for `name` is issued for: `name` itself when an exact pattern lists it,
    /// `*.parent` when only a wildcard pattern matches it, `None` when it is not ours. The flag
    /// says whether that leaf is a configured pattern's own (pinned: see [`LeafCache`]).
    fn leaf_name(&self, name: &str) -> Option<(String, bool)> {
        let names = self.names.read_now();
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
        let slot = self.leaves.locked().get_or_insert(&key, pinned);
        let Some(slot) = slot else {
            tracing::warn!(sni = %name, leaf = %key, "TLS handshake refused: too many new wildcard leaves issued recently");
            return None;
        };
        let mut leaf = slot.locked();
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
