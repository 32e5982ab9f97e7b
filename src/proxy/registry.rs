//! What a registry request is about, read from its path (OCI distribution spec endpoints).

/// The endpoint a request path names.
#[derive(Debug, PartialEq, Eq)]
pub enum Target<'a> {
    /// `/v2/`: the API version check.
    Root,
    /// `/v2/<repo>/manifests/<reference>` (a tag or a digest).
    Manifest { repo: &'a str, reference: &'a str },
    /// `/v2/<repo>/blobs/<digest>`.
    Blob { repo: &'a str, digest: &'a str },
    /// `/v2/<repo>/tags/list`.
    Tags { repo: &'a str },
    /// Anything else (uploads, catalog, referrers, tokens…): passed through.
    Other,
}

/// Classifies a path (without its query).
pub fn classify(path: &str) -> Target<'_> {
    if path == "/v2/" || path == "/v2" {
        return Target::Root;
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return Target::Other;
    };
    if let Some(repo) = rest.strip_suffix("/tags/list").filter(|r| valid_repo(r)) {
        return Target::Tags { repo };
    }
    // The endpoint is the last `/manifests/` or `/blobs/` (repositories may contain either word).
    let last = [("/manifests/", false), ("/blobs/", true)]
        .into_iter()
        .filter_map(|(marker, is_blob)| Some((rest.rfind(marker)?, marker, is_blob)))
        .max_by_key(|(at, _, _)| *at);
    if let Some((at, marker, is_blob)) = last {
        let repo = &rest[..at];
        let reference = &rest[at + marker.len()..];
        if !valid_repo(repo) || !valid_reference(reference) {
            return Target::Other;
        }
        return match is_blob {
            true if reference == "uploads" => Target::Other,
            true => Target::Blob {
                repo,
                digest: reference,
            },
            false => Target::Manifest { repo, reference },
        };
    }
    Target::Other
}

/// The repository a request path is about, for any `/v2/<repo>/…` endpoint.
pub fn repo_of(path: &str) -> Option<&str> {
    match classify(path) {
        Target::Manifest { repo, .. } | Target::Blob { repo, .. } | Target::Tags { repo } => {
            Some(repo)
        }
        Target::Root => None,
        Target::Other => {
            let rest = path.strip_prefix("/v2/")?;
            let end = ["/tags/list", "/blobs/uploads", "/referrers/"]
                .iter()
                .filter_map(|m| rest.find(m))
                .min()?;
            valid_repo(&rest[..end]).then(|| &rest[..end])
        }
    }
}

/// The distribution spec's bounds: repository names up to 255 characters (with the registry's
/// name, which is shorter than this slack), tags up to 128, digests of known algorithms well
/// under 256. Anything longer is passed through for the upstream to refuse, never cached.
const MAX_REPO: usize = 255;
const MAX_TAG: usize = 128;
const MAX_DIGEST: usize = 255;

/// A tag (`[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`) or a digest (`algorithm:encoded`).
fn valid_reference(reference: &str) -> bool {
    let b = reference.as_bytes();
    match reference.split_once(':') {
        Some((algorithm, encoded)) => {
            reference.len() <= MAX_DIGEST
                && !algorithm.is_empty()
                && !encoded.is_empty()
                && (algorithm.bytes())
                    .all(|c| matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'+' | b'.' | b'_' | b'-'))
                && (encoded.bytes())
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'=' | b'_' | b'-'))
        }
        None => {
            !b.is_empty()
                && b.len() <= MAX_TAG
                && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
                && (b.iter()).all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
        }
    }
}

/// Repository names: lower-case path components of `[a-z0-9._-]`, never `.` or `..`, at most
/// [`MAX_REPO`] characters.
fn valid_repo(repo: &str) -> bool {
    !repo.is_empty()
        && repo.len() <= MAX_REPO
        && repo.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.bytes()
                    .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
        })
}

/// The media types a manifest can have (and `*/*`): only these make a difference to what a
/// registry answers, so only these distinguish tag mappings — other Accept values are dropped,
/// and clients cannot create mappings without bound by sending made-up ones.
const MANIFEST_TYPES: &[&str] = &[
    "*/*",
    "application/json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.artifact.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
];

/// An Accept header in a canonical form (known manifest media types, sorted, parameters
/// dropped), so that equivalent headers share a tag mapping and different ones never do.
pub fn normalize_accept(values: &[&str]) -> String {
    let mut types: Vec<String> = values
        .iter()
        .flat_map(|v| v.split(','))
        .map(|t| {
            t.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|t| MANIFEST_TYPES.contains(&t.as_str()))
        .collect();
    types.sort();
    types.dedup();
    types.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_registry_endpoints() {
        assert_eq!(classify("/v2/"), Target::Root);
        assert_eq!(
            classify("/v2/library/ubuntu/manifests/22.04"),
            Target::Manifest {
                repo: "library/ubuntu",
                reference: "22.04"
            }
        );
        assert_eq!(
            classify("/v2/a/b/c/blobs/sha256:00"),
            Target::Blob {
                repo: "a/b/c",
                digest: "sha256:00"
            }
        );
        assert_eq!(classify("/v2/a/blobs/uploads/"), Target::Other);
        assert_eq!(classify("/v2/a/blobs/uploads"), Target::Other);
        assert_eq!(classify("/v2/a/b/tags/list"), Target::Tags { repo: "a/b" });
        assert_eq!(classify("/v2/A/tags/list"), Target::Other);
        assert_eq!(classify("/v2/tags/list"), Target::Other);
        assert_eq!(classify("/v2/../x/blobs/sha256:00"), Target::Other);
        assert_eq!(classify("/v2/A/manifests/1"), Target::Other);
        assert_eq!(classify("/token"), Target::Other);
        // The spec's bounds: longer names, tags and digests are not ours to cache.
        let long_repo = format!("/v2/{}/manifests/1", "a".repeat(256));
        assert_eq!(classify(&long_repo), Target::Other);
        let long_tag = format!("/v2/a/manifests/{}", "t".repeat(129));
        assert_eq!(classify(&long_tag), Target::Other);
        let ok_tag = format!("/v2/a/manifests/{}", "t".repeat(128));
        assert!(matches!(classify(&ok_tag), Target::Manifest { .. }));
        assert_eq!(classify("/v2/a/manifests/.hidden"), Target::Other);
        assert_eq!(classify("/v2/a/manifests/a%2Fb"), Target::Other);
        assert_eq!(classify("/v2/a/blobs/sha256:"), Target::Other);
        // A repository may itself contain "blobs" or "manifests" components.
        assert_eq!(
            classify("/v2/x/manifests/y/blobs/sha256:1"),
            Target::Blob {
                repo: "x/manifests/y",
                digest: "sha256:1"
            }
        );
    }

    #[test]
    fn repositories_are_found_in_every_endpoint() {
        assert_eq!(repo_of("/v2/a/b/manifests/1"), Some("a/b"));
        assert_eq!(repo_of("/v2/a/b/tags/list"), Some("a/b"));
        assert_eq!(repo_of("/v2/a/blobs/uploads/123"), Some("a"));
        assert_eq!(repo_of("/v2/"), None);
        assert_eq!(repo_of("/token"), None);
    }

    #[test]
    fn accept_headers_normalise() {
        let a = normalize_accept(&[
            "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json;q=0.9",
        ]);
        let b = normalize_accept(&[
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.oci.image.index.v1+json",
        ]);
        assert_eq!(a, b);
        assert_ne!(
            a,
            normalize_accept(&["application/vnd.docker.distribution.manifest.v2+json"])
        );
    }
}
