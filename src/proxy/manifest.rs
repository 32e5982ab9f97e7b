//! What a manifest body must look like before regcache stores it, maps a tag to it or takes it as
//! proof that the upstream served registry content (rather than, say, a login page's HTML).

use serde::Deserialize;

/// Registries refuse manifests above 4 MiB; so do we (they are read into memory).
pub const MAX_MANIFEST: usize = 4 << 20;

/// The fields every manifest and index carries, one schema version or another.
#[derive(Deserialize)]
struct Shape {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    config: Option<serde_json::Value>,
    layers: Option<Vec<serde_json::Value>>,
    manifests: Option<Vec<serde_json::Value>>,
    #[serde(rename = "fsLayers")]
    fs_layers: Option<Vec<serde_json::Value>>,
}

/// Whether `body`, served as `content_type`, is an image manifest or index (OCI, Docker schema 2,
/// or schema 1): a JSON object with `schemaVersion` and the parts of one of those formats, within
/// [`MAX_MANIFEST`]. HTML and other media types are not.
pub fn is_manifest(body: &[u8], content_type: &str) -> bool {
    if body.len() > MAX_MANIFEST || !manifest_type(content_type) {
        return false;
    }
    // serde reads a struct from a JSON array too (fields in order): only an object is a manifest.
    if !body.trim_ascii_start().starts_with(b"{") {
        return false;
    }
    let Ok(shape) = serde_json::from_slice::<Shape>(body) else {
        return false;
    };
    let parts = shape.config.is_some() || shape.layers.is_some() || shape.manifests.is_some();
    match shape.schema_version {
        1 => shape.fs_layers.is_some(),
        2 => parts || shape.media_type.is_some_and(|t| manifest_type(&t)),
        _ => false,
    }
}

/// The media type a verified manifest's own bytes declare (`mediaType`), else the one its shape
/// implies; `None` when the bytes are not a manifest. For objects from third parties (mirrors),
/// whose `Content-Type` the cache must not take on trust: clients pick their parser by it.
pub fn media_type_of(body: &[u8]) -> Option<String> {
    if !is_manifest(body, "") {
        return None;
    }
    let shape: Shape = serde_json::from_slice(body).ok()?;
    let declared = (shape.media_type)
        .filter(|t| manifest_type(t) && (t.contains("manifest") || t.contains("index")));
    let implied = match (shape.schema_version, shape.manifests.is_some()) {
        (1, _) => "application/vnd.docker.distribution.manifest.v1+prettyjws",
        (_, true) => "application/vnd.oci.image.index.v1+json",
        (_, false) => "application/vnd.oci.image.manifest.v1+json",
    };
    Some(declared.unwrap_or_else(|| implied.to_owned()))
}

/// A media type a registry serves manifests as: JSON of some kind, never HTML or plain text.
/// Registries that send none, or `application/octet-stream`, are taken at their body's word.
pub fn manifest_type(content_type: &str) -> bool {
    let t = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    t.is_empty()
        || t == "application/octet-stream"
        || t.ends_with("json")
        || t.ends_with("+prettyjws")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_says_its_own_media_type() {
        let docker = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{},"layers":[]}"#;
        let t = media_type_of(docker).unwrap();
        assert_eq!(t, "application/vnd.docker.distribution.manifest.v2+json");
        let oci_index = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert_eq!(
            media_type_of(oci_index).unwrap(),
            "application/vnd.oci.image.index.v1+json"
        );
        let oci = br#"{"schemaVersion":2,"config":{},"layers":[]}"#;
        assert_eq!(
            media_type_of(oci).unwrap(),
            "application/vnd.oci.image.manifest.v1+json"
        );
        let odd = br#"{"schemaVersion":2,"mediaType":"text/html","layers":[]}"#;
        assert_eq!(
            media_type_of(odd).unwrap(),
            "application/vnd.oci.image.manifest.v1+json"
        );
        assert!(media_type_of(b"<html></html>").is_none());
        assert!(media_type_of(b"\x1f\x8b binary layer").is_none());
    }

    #[test]
    fn manifests_and_indexes_pass() {
        let oci = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}"#;
        assert!(is_manifest(
            oci,
            "application/vnd.oci.image.manifest.v1+json"
        ));
        let index = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(is_manifest(
            index,
            "application/vnd.oci.image.index.v1+json"
        ));
        let v1 = br#"{"schemaVersion":1,"fsLayers":[]}"#;
        assert!(is_manifest(
            v1,
            "application/vnd.docker.distribution.manifest.v1+prettyjws"
        ));
    }

    #[test]
    fn login_pages_and_other_json_do_not() {
        let html = b"<html><body>Sign in</body></html>";
        assert!(!is_manifest(html, "text/html; charset=utf-8"));
        assert!(!is_manifest(html, ""));
        let oci = br#"{"schemaVersion":2,"config":{},"layers":[]}"#;
        assert!(!is_manifest(oci, "text/html"));
        assert!(!is_manifest(br#"{"errors":[]}"#, "application/json"));
        assert!(!is_manifest(
            br#"{"schemaVersion":3,"layers":[]}"#,
            "application/json"
        ));
        assert!(!is_manifest(br#"{"schemaVersion":2}"#, "application/json"));
        let array = br#"[2,"application/vnd.oci.image.index.v1+json",null,null,null,null]"#;
        assert!(!is_manifest(array, "application/json"));
    }
}
