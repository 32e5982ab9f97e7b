//! Host-name patterns shared by DNS interception, the CA's name constraints and proxy routing.
//!
//! A leaf like `ca`: it imports nothing else from the crate. It exists so that the three places that
//! ask "is this one of our registry names?" cannot disagree about the answer.

use std::fmt;

/// One intercepted name: an exact host (`ghcr.io`) or every name under a suffix (`*.example.com`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum NamePattern {
    /// Matches this name only (lower case, no trailing dot).
    Exact(String),
    /// Matches names strictly below this suffix (lower case, no leading or trailing dot).
    Suffix(String),
}

/// Why a configured name was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("{0:?} is not a valid DNS name (letters, digits, '-' and '.' only, labels of 1 to 63 characters)")]
    Invalid(String),
    #[error("{0:?}: a wildcard is allowed only as the whole first label, as in \"*.example.com\"")]
    Wildcard(String),
}

impl NamePattern {
    /// Parses `name` or `*.suffix`, normalising case and a trailing dot.
    pub fn parse(raw: &str) -> Result<Self, Error> {
        let name = normalize(raw);
        if let Some(suffix) = name.strip_prefix("*.") {
            if suffix.contains('*') {
                return Err(Error::Wildcard(raw.to_owned()));
            }
            check_name(suffix).map_err(|_| Error::Invalid(raw.to_owned()))?;
            return Ok(Self::Suffix(suffix.to_owned()));
        }
        if name.contains('*') {
            return Err(Error::Wildcard(raw.to_owned()));
        }
        check_name(&name).map_err(|_| Error::Invalid(raw.to_owned()))?;
        Ok(Self::Exact(name))
    }

    /// Whether `name` (already normalised with [`normalize`]) is covered by this pattern.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Self::Exact(exact) => name == exact,
            Self::Suffix(suffix) => name
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        }
    }

    /// The DNS name-constraint subtree that permits this pattern (RFC 5280: a DNS subtree
    /// permits the name itself and every name below it).
    pub fn subtree(&self) -> &str {
        match self {
            Self::Exact(name) | Self::Suffix(name) => name,
        }
    }
}

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(name) => f.write_str(name),
            Self::Suffix(suffix) => write!(f, "*.{suffix}"),
        }
    }
}

/// Lower-cases a host name and drops one trailing dot (`Docker.IO.` → `docker.io`).
pub fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

fn check_name(name: &str) -> Result<(), ()> {
    let labels_ok = name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    if labels_ok && !name.is_empty() && name.len() <= 253 {
        Ok(())
    } else {
        Err(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_names_match_only_themselves() {
        let p = NamePattern::parse("GHCR.io.").unwrap();
        assert_eq!(p, NamePattern::Exact("ghcr.io".into()));
        assert!(p.matches("ghcr.io"));
        assert!(!p.matches("x.ghcr.io"));
        assert!(!p.matches("aghcr.io"));
    }

    #[test]
    fn wildcards_match_names_below_the_suffix_only() {
        let p = NamePattern::parse("*.pkg.dev").unwrap();
        assert!(p.matches("us-docker.pkg.dev"));
        assert!(p.matches("a.b.pkg.dev"));
        assert!(!p.matches("pkg.dev"));
        assert!(!p.matches("xpkg.dev"));
        assert_eq!(p.subtree(), "pkg.dev");
        assert_eq!(p.to_string(), "*.pkg.dev");
    }

    #[test]
    fn bad_names_are_refused() {
        assert!(matches!(NamePattern::parse("a..b"), Err(Error::Invalid(_))));
        assert!(matches!(
            NamePattern::parse("a*.b"),
            Err(Error::Wildcard(_))
        ));
        assert!(matches!(
            NamePattern::parse("*.*.b"),
            Err(Error::Wildcard(_))
        ));
        assert!(matches!(
            NamePattern::parse("exa mple.com"),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(NamePattern::parse(""), Err(Error::Invalid(_))));
    }
}
