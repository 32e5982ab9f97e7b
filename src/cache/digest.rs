//! Content digests: [`Digest`] (sha256 only, parsed strictly) and the incremental [`Hasher`].

use std::fmt;

/// A sha256 content digest (`sha256:` and 64 lower-case hex digits). Other algorithms are not
/// cached: requests for them pass through.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    pub fn parse(s: &str) -> Option<Self> {
        let hex = s.strip_prefix("sha256:")?;
        let ok = hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        ok.then(|| Self(hex.to_owned()))
    }

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        let mut h = Hasher::new();
        h.update(data);
        h.finish()
    }

    pub fn hex(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Incremental sha256.
#[derive(Clone)]
pub struct Hasher(sha2::Sha256);

impl Hasher {
    pub fn new() -> Self {
        use sha2::Digest as _;
        Self(sha2::Sha256::new())
    }

    pub fn update(&mut self, data: &[u8]) {
        use sha2::Digest as _;
        self.0.update(data);
    }

    pub fn finish(self) -> Digest {
        use sha2::Digest as _;
        let out = self.0.finalize();
        Digest(out.iter().map(|b| format!("{b:02x}")).collect())
    }
}

impl Default for Hasher {
    fn default() -> Self {
        Self::new()
    }
}
