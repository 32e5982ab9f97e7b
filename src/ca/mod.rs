//! The local CA: load or create it (`authority`), issue and cache one leaf certificate per SNI
//! name (`leaf`), and hand rustls the right leaf during the handshake (`resolver`). No
//! networking.
//!
//! The CA's NameConstraints extension (critical) permits exactly the configured registry names, so
//! a stolen CA key cannot vouch for any other site. rcgen does not enforce a CA's constraints when
//! it signs, so [`CertResolver`] refuses every name the constraints would not permit.
//!
//! A leaf like `names`: it imports nothing else from the crate but [`crate::names`] and the lock
//! helpers of [`crate::sync`].

use std::path::PathBuf;

mod authority;
mod leaf;
mod resolver;

pub use authority::Ca;
pub use leaf::Leaf;
pub use resolver::CertResolver;

/// What can go wrong loading, creating or using the CA.
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
    Unusable { path: PathBuf, why: Unusable },
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

/// Why a CA certificate or key cannot be used (the `why` of [`Error::Unusable`]).
#[derive(Debug, thiserror::Error)]
pub enum Unusable {
    #[error("{0}")]
    Key(rcgen::Error),
    #[error("no PEM certificate")]
    NoPem,
    #[error("{0}")]
    Parse(#[from] x509_parser::nom::Err<x509_parser::error::X509Error>),
    #[error("{0}")]
    Extension(#[from] x509_parser::error::X509Error),
    #[error("basicConstraints does not say CA")]
    NotCa,
    #[error("it does not match the key in {}", .0.display())]
    KeyMismatch(PathBuf),
}

#[cfg(test)]
mod tests;
