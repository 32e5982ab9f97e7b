//! Image references as `docker pull` reads them, and the platforms an index is chosen by. A leaf,
//! shared by `config` (`[[warm]]` is checked at load) and `warm`.
//!
//! References as `docker pull` reads them: `alpine` is `docker.io/library/alpine:latest`,
//! `acme/tool` is on Docker Hub, a first component with a dot, a colon or `localhost` names the
//! registry; a tag after `:`, a digest after `@`.

use std::fmt;

use crate::cache::Digest;

/// One image to warm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// The registry name as a client uses it (`docker.io`, `ghcr.io`, `nvcr.io`…).
    pub registry: String,
    pub repo: String,
    /// A tag or a digest.
    pub reference: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("{0:?} is not an image reference: {1}")]
    Invalid(String, &'static str),
}

impl Reference {
    pub fn parse(text: &str) -> Result<Self, Error> {
        let bad = |why| Error::Invalid(text.to_owned(), why);
        let (name, digest) = match text.split_once('@') {
            Some((name, digest)) => {
                Digest::parse(digest).ok_or(bad("the digest after @ is not sha256:<64 hex>"))?;
                (name, Some(digest))
            }
            None => (text, None),
        };
        let (registry, path) = match name.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_ascii_lowercase(), rest)
            }
            _ => ("docker.io".to_owned(), name),
        };
        // A tag is what follows the last ':' after the last '/'.
        let (repo, tag) = match path.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag)),
            _ => (path, None),
        };
        let repo = match (registry.as_str(), repo.contains('/')) {
            ("docker.io", false) => format!("library/{repo}"),
            _ => repo.to_owned(),
        };
        if repo.is_empty() || repo.split('/').any(str::is_empty) {
            return Err(bad("empty repository name"));
        }
        let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/".contains(c);
        if !repo.chars().all(valid) {
            return Err(bad(
                "repository names are lower-case letters, digits and ._-/",
            ));
        }
        let reference = match (digest, tag) {
            (Some(digest), _) => digest.to_owned(),
            (None, Some(tag)) if !tag.is_empty() => tag.to_owned(),
            (None, Some(_)) => return Err(bad("empty tag")),
            (None, None) => "latest".to_owned(),
        };
        Ok(Self {
            registry,
            repo,
            reference,
        })
    }

    /// Whether the reference is a digest (immutable) rather than a tag.
    pub fn is_digest(&self) -> bool {
        self.reference.contains(':')
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sep = if self.is_digest() { '@' } else { ':' };
        write!(f, "{}/{}{sep}{}", self.registry, self.repo, self.reference)
    }
}

/// An `os/arch[/variant]` a manifest list entry is chosen by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split('/');
        let (os, arch) = (parts.next()?, parts.next()?);
        let variant = parts.next().map(str::to_owned);
        let ok = !os.is_empty() && !arch.is_empty() && parts.next().is_none();
        ok.then(|| Self {
            os: os.to_owned(),
            arch: arch.to_owned(),
            variant,
        })
    }

    /// This machine's, in the OCI spelling (`linux/amd64`, `linux/arm64`).
    pub fn host() -> Self {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            other => other,
        };
        Self {
            os: "linux".into(),
            arch: arch.into(),
            variant: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> String {
        Reference::parse(text).unwrap().to_string()
    }

    #[test]
    fn references_read_like_docker_pull() {
        assert_eq!(parsed("alpine"), "docker.io/library/alpine:latest");
        assert_eq!(parsed("acme/tool:v1"), "docker.io/acme/tool:v1");
        assert_eq!(parsed("ghcr.io/acme/tool:v1"), "ghcr.io/acme/tool:v1");
        assert_eq!(
            parsed("nvcr.io/nvidia/pytorch:25.03-py3"),
            "nvcr.io/nvidia/pytorch:25.03-py3"
        );
        assert_eq!(parsed("localhost:5000/x"), "localhost:5000/x:latest");
        assert_eq!(parsed("Quay.IO/a/b"), "quay.io/a/b:latest");
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            parsed(&format!("ghcr.io/acme/tool:v1@{digest}")),
            format!("ghcr.io/acme/tool@{digest}")
        );
        assert!(Reference::parse(&format!("x@{digest}"))
            .unwrap()
            .is_digest());
    }

    #[test]
    fn bad_references_say_why() {
        for bad in ["", "ghcr.io/", "UPPER", "a:", "x@sha256:12", "a//b"] {
            assert!(Reference::parse(bad).is_err(), "{bad:?}");
        }
    }
}
