//! Whether the primary has said that a repository holds a digest, from what the store holds: the
//! object's own refs (it was fetched from there, or a check there proved it), or a stored manifest
//! of that repository (fetched from the primary for it, and verified) that lists the digest as its
//! config, a layer or a child manifest. Annotations and other fields naming digests do not count.

use futures_util::StreamExt;
use serde::Deserialize;

use crate::cache::Digest;
use crate::proxy::manifest::MAX_MANIFEST;
use crate::proxy::Proxy;

/// The parts of a manifest or index that name what it is made of.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Parts {
    config: Option<Named>,
    layers: Vec<Named>,
    manifests: Vec<Named>,
    #[serde(rename = "fsLayers")]
    fs_layers: Vec<Named>,
}

#[derive(Deserialize)]
struct Named {
    #[serde(alias = "blobSum")]
    digest: Option<String>,
}

impl Proxy {
    /// Whether `registry`/`repo` holds `digest` by the primary's own word (see the module doc).
    pub(in crate::proxy) async fn repo_holds(
        &self,
        registry: &str,
        repo: &str,
        digest: &Digest,
    ) -> bool {
        if self.cache.has_ref(digest, registry, repo) {
            return true;
        }
        let small_manifest =
            |size, media_type: &str| size <= MAX_MANIFEST as u64 && is_manifest_type(media_type);
        let manifests = self.cache.referenced_in(registry, repo, small_manifest);
        for manifest in manifests {
            let Some(reader) = self.cache.get(&manifest) else {
                continue;
            };
            let mut body = Vec::new();
            let mut stream = std::pin::pin!(reader.stream(None));
            while let Some(Ok(chunk)) = stream.next().await {
                body.extend_from_slice(&chunk);
            }
            if names(&body, digest) {
                return true;
            }
        }
        false
    }
}

/// A manifest's or index's media type (never `application/octet-stream`, which blobs are).
/// Asked of every stored object under the store's lock: no allocation.
fn is_manifest_type(media_type: &str) -> bool {
    let has = |word: &str| {
        (media_type.as_bytes().windows(word.len())).any(|w| w.eq_ignore_ascii_case(word.as_bytes()))
    };
    has("manifest") || has("image.index")
}

/// Whether the manifest `body` lists `digest` among its parts.
fn names(body: &[u8], digest: &Digest) -> bool {
    let Ok(parts) = serde_json::from_slice::<Parts>(body) else {
        return false;
    };
    let want = digest.to_string();
    let all = parts.config.into_iter().chain(parts.layers);
    let mut all = all.chain(parts.manifests).chain(parts.fs_layers);
    all.any(|n| n.digest.as_deref() == Some(want.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_parts_of_a_manifest_count() {
        let d = |c: char| Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap();
        let body = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{}"}},"layers":[{{"digest":"{}"}}],
            "annotations":{{"org.opencontainers.image.base.digest":"{}"}}}}"#,
            d('a'),
            d('b'),
            d('c')
        );
        assert!(names(body.as_bytes(), &d('a')), "the config");
        assert!(names(body.as_bytes(), &d('b')), "a layer");
        assert!(!names(body.as_bytes(), &d('c')), "an annotation is no part");
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"digest":"{}"}}]}}"#,
            d('e')
        );
        assert!(names(index.as_bytes(), &d('e')));
        let v1 = format!(
            r#"{{"schemaVersion":1,"fsLayers":[{{"blobSum":"{}"}}]}}"#,
            d('f')
        );
        assert!(names(v1.as_bytes(), &d('f')));
        assert!(!names(b"<html>", &d('a')));
        assert!(is_manifest_type("application/vnd.oci.image.index.v1+json"));
        assert!(!is_manifest_type("application/octet-stream"));
    }
}
