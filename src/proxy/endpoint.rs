//! A request classified once into the registry endpoint it is for, with its repository and
//! reference validated (a digest parsed), and the GET/HEAD handler of each endpoint:
//!
//! | endpoint | handled in |
//! |---|---|
//! | `/v2/` | `root.rs` |
//! | manifest by tag | `tag.rs` |
//! | blob, manifest by digest | `object.rs` (and `download.rs` for the upstream fetch) |
//! | tag list | `tag_list.rs` |
//! | uploads, anything else | passed through ([`Proxy::pass`]) |

use std::sync::Arc;

use hyper::Response;

use super::registry::{classify, repo_of, Target};
use super::request::Outbound;
use super::response::relay;
use super::{Body, Error, Proxy};
use crate::cache::Digest;
use crate::metrics::Kind;

/// What a request path asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Endpoint<'a> {
    /// `/v2/`: the API version check.
    Root,
    ManifestByTag {
        repo: &'a str,
        tag: &'a str,
    },
    ManifestByDigest {
        repo: &'a str,
        digest: Digest,
    },
    Blob {
        repo: &'a str,
        digest: Digest,
    },
    TagList {
        repo: &'a str,
    },
    /// `/v2/<repo>/blobs/uploads/…`: pushes.
    Upload {
        repo: &'a str,
    },
    /// Anything else (catalog, referrers, tokens, digests of unknown algorithms): passed through.
    Other {
        repo: Option<&'a str>,
    },
}

impl<'a> Endpoint<'a> {
    /// Classifies a path (without its query).
    pub fn of(path: &'a str) -> Self {
        match classify(path) {
            Target::Root => Self::Root,
            Target::Blob { repo, digest } => match Digest::parse(digest) {
                Some(digest) => Self::Blob { repo, digest },
                None => Self::Other { repo: Some(repo) },
            },
            Target::Manifest { repo, reference } => match Digest::parse(reference) {
                Some(digest) => Self::ManifestByDigest { repo, digest },
                None if reference.contains(':') => Self::Other { repo: Some(repo) },
                None => Self::ManifestByTag {
                    repo,
                    tag: reference,
                },
            },
            Target::Tags { repo } => Self::TagList { repo },
            Target::Other => match repo_of(path) {
                Some(repo) if path.contains("/blobs/uploads") => Self::Upload { repo },
                repo => Self::Other { repo },
            },
        }
    }

    /// The repository the request is about.
    pub fn repo(&self) -> Option<&'a str> {
        match *self {
            Self::Root => None,
            Self::ManifestByTag { repo, .. }
            | Self::ManifestByDigest { repo, .. }
            | Self::Blob { repo, .. }
            | Self::TagList { repo }
            | Self::Upload { repo } => Some(repo),
            Self::Other { repo } => repo,
        }
    }

    /// The metrics' request kind.
    pub fn kind(&self, path: &str) -> Kind {
        match self {
            Self::ManifestByTag { .. } | Self::ManifestByDigest { .. } => Kind::Manifest,
            Self::Blob { .. } => Kind::Blob,
            _ if path.ends_with("/token") || path.contains("/token/") => Kind::Token,
            _ => Kind::Other,
        }
    }
}

impl Proxy {
    /// A GET or HEAD, handled by its endpoint.
    pub(super) async fn read(
        self: &Arc<Self>,
        out: Outbound<'_>,
        endpoint: &Endpoint<'_>,
    ) -> Result<Response<Body>, Error> {
        match endpoint {
            Endpoint::Root => self.root(&out).await,
            Endpoint::Blob { repo, digest } | Endpoint::ManifestByDigest { repo, digest } => {
                self.object(&out, repo, digest.clone()).await
            }
            Endpoint::ManifestByTag { repo, tag } => self.tag(&out, repo, tag).await,
            Endpoint::TagList { repo } => self.tag_list(&out, repo).await,
            Endpoint::Upload { .. } | Endpoint::Other { .. } => self.pass(&out).await,
        }
    }

    /// Forwards a GET/HEAD (following redirects) and relays the answer.
    pub(super) async fn pass(&self, out: &Outbound<'_>) -> Result<Response<Body>, Error> {
        let resp = (self.upstream)
            .follow(&out.method, &out.url, out.headers.clone())
            .await?;
        Ok(relay(resp, out.route, out.host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_is_told_apart() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let d = Digest::parse(&digest).unwrap();
        assert_eq!(Endpoint::of("/v2/"), Endpoint::Root);
        assert_eq!(
            Endpoint::of("/v2/a/b/manifests/1"),
            Endpoint::ManifestByTag {
                repo: "a/b",
                tag: "1"
            }
        );
        assert_eq!(
            Endpoint::of(&format!("/v2/a/manifests/{digest}")),
            Endpoint::ManifestByDigest {
                repo: "a",
                digest: d.clone()
            }
        );
        assert_eq!(
            Endpoint::of(&format!("/v2/a/blobs/{digest}")),
            Endpoint::Blob {
                repo: "a",
                digest: d
            }
        );
        assert_eq!(
            Endpoint::of("/v2/a/tags/list"),
            Endpoint::TagList { repo: "a" }
        );
        assert_eq!(
            Endpoint::of("/v2/a/blobs/uploads/123"),
            Endpoint::Upload { repo: "a" }
        );
        // A digest of an unknown algorithm is not ours to verify: passed through.
        assert_eq!(
            Endpoint::of("/v2/a/manifests/md5:00"),
            Endpoint::Other { repo: Some("a") }
        );
        assert_eq!(Endpoint::of("/token"), Endpoint::Other { repo: None });
        for path in ["/v2/a/b/manifests/1", "/v2/a/blobs/uploads/1", "/v2/", "/x"] {
            assert_eq!(Endpoint::of(path).repo(), repo_of(path), "{path}");
        }
    }
}
