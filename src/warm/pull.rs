//! Pulling one image through the appliance as a client would: the manifest by tag or digest, the
//! platform manifests an index names (those asked for), then every config and layer blob, each
//! checked against its digest as it arrives. `X-Cache` says which objects the cache already held.

use std::collections::BTreeMap;

use futures_util::{stream, StreamExt};
use http::header;
use http_body_util::BodyExt;
use serde_json::Value;

use super::client::{read_small, Error as ClientError, RegistryClient};
use super::progress::Progress;
use crate::cache::{Digest, Hasher};
pub use crate::reference::Platform;
use crate::reference::Reference;

/// Blobs fetched at once per image (as dockerd does).
const PARALLEL_BLOBS: usize = 3;

const INDEX_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0}: not a manifest ({1})")]
    NotAManifest(String, String),
    #[error("{what}: the bytes are {got}, not {want}")]
    Mismatch {
        what: String,
        want: Digest,
        got: Digest,
    },
    #[error("{0}: the index has no manifest for {1}")]
    NoPlatform(String, String),
}

/// Whether an index entry is for `platform`.
fn matches(platform: &Platform, entry: &Value) -> bool {
    let p = &entry["platform"];
    let variant_ok = platform
        .variant
        .as_deref()
        .is_none_or(|v| p["variant"] == v);
    p["os"] == platform.os.as_str() && p["architecture"] == platform.arch.as_str() && variant_ok
}

/// Which manifests of an index to warm.
pub enum Platforms {
    All,
    These(Vec<Platform>),
}

/// What warming one image did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Tally {
    /// Objects (manifests and blobs) the appliance fetched from the upstream now.
    pub fetched: u64,
    /// Objects it already held.
    pub cached: u64,
    /// Bytes received from the appliance.
    pub bytes: u64,
}

impl Tally {
    fn count(&mut self, cached: bool, bytes: u64) {
        match cached {
            true => self.cached += 1,
            false => self.fetched += 1,
        }
        self.bytes += bytes;
    }
}

/// Warms one image; `Err` with the first reason it could not be completed.
pub async fn warm_image(
    client: &RegistryClient,
    image: &Reference,
    platforms: &Platforms,
    progress: &Progress,
) -> Result<Tally, Error> {
    let mut tally = Tally::default();
    let (top, media_type) = manifest(client, image, &image.reference, &mut tally).await?;
    let mut images = Vec::new();
    if INDEX_TYPES.contains(&media_type.as_str()) {
        for digest in chosen(image, &top, platforms)? {
            let (child, media_type) = manifest(client, image, &digest, &mut tally).await?;
            if INDEX_TYPES.contains(&media_type.as_str()) {
                let what = format!("{image}@{digest}");
                return Err(Error::NotAManifest(what, "an index inside an index".into()));
            }
            images.push(child);
        }
    } else {
        images.push(top);
    }
    let blobs = blobs_of(image, &images)?;
    progress.begin(&image.to_string(), blobs.values().sum());
    let results: Vec<Result<(u64, bool), Error>> = stream::iter(blobs.into_keys())
        .map(|digest| async move { blob(client, image, &digest, progress).await })
        .buffer_unordered(PARALLEL_BLOBS)
        .collect()
        .await;
    progress.end();
    for result in results {
        let (bytes, cached) = result?;
        tally.count(cached, bytes);
    }
    Ok(tally)
}

/// A manifest by tag or digest, its JSON and media type; a digest is checked.
async fn manifest(
    client: &RegistryClient,
    image: &Reference,
    reference: &str,
    tally: &mut Tally,
) -> Result<(Value, String), Error> {
    let path = format!("/v2/{}/manifests/{reference}", image.repo);
    let resp = client
        .get(&image.registry, &image.repo, &path, MANIFEST_TYPES)
        .await?;
    let cached = is_cached(&resp);
    let media_type = (resp.headers().get(header::CONTENT_TYPE))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_owned();
    let what = format!("{}/{}@{reference}", image.registry, image.repo);
    let body = read_small(&what, resp).await?;
    if let Some(want) = Digest::parse(reference) {
        let got = Digest::of(&body);
        if got != want {
            return Err(Error::Mismatch { what, want, got });
        }
    }
    let json: Value = serde_json::from_slice(&body)
        .map_err(|e| Error::NotAManifest(what.clone(), e.to_string()))?;
    if !MANIFEST_TYPES.contains(&media_type.as_str()) || !json.is_object() {
        return Err(Error::NotAManifest(
            what,
            format!("Content-Type {media_type:?}"),
        ));
    }
    tally.count(cached, body.len() as u64);
    Ok((json, media_type))
}

/// The digests of an index's manifests for the platforms asked for.
fn chosen(image: &Reference, index: &Value, platforms: &Platforms) -> Result<Vec<String>, Error> {
    let entries = index["manifests"].as_array().cloned().unwrap_or_default();
    let chosen: Vec<&Value> = match platforms {
        Platforms::All => entries.iter().collect(),
        Platforms::These(wanted) => {
            let mut chosen = Vec::new();
            for platform in wanted {
                let Some(entry) = entries.iter().find(|e| matches(platform, e)) else {
                    let name = format!("{}/{}", platform.os, platform.arch);
                    return Err(Error::NoPlatform(image.to_string(), name));
                };
                chosen.push(entry);
            }
            chosen
        }
    };
    chosen.into_iter().map(|e| digest_of(image, e)).collect()
}

/// The sha256 digest an index entry, config or layer names (it goes into a URL path).
fn digest_of(image: &Reference, entry: &Value) -> Result<String, Error> {
    let digest = entry["digest"]
        .as_str()
        .filter(|d| Digest::parse(d).is_some());
    let why = || "an entry without a sha256 digest".to_owned();
    digest
        .map(str::to_owned)
        .ok_or_else(|| Error::NotAManifest(image.to_string(), why()))
}

/// Every config and layer blob of these image manifests, with its size.
fn blobs_of(image: &Reference, manifests: &[Value]) -> Result<BTreeMap<String, u64>, Error> {
    let mut blobs = BTreeMap::new();
    for m in manifests {
        let layers = m["layers"].as_array().into_iter().flatten();
        // (a manifest without a config, such as some artifacts, has only layers)
        let config = Some(&m["config"]).filter(|c| !c.is_null());
        for d in config.into_iter().chain(layers) {
            blobs.insert(digest_of(image, d)?, d["size"].as_u64().unwrap_or(0));
        }
    }
    Ok(blobs)
}

/// One blob, read to the end and checked; its size and whether the cache held it.
async fn blob(
    client: &RegistryClient,
    image: &Reference,
    digest: &str,
    progress: &Progress,
) -> Result<(u64, bool), Error> {
    let path = format!("/v2/{}/blobs/{digest}", image.repo);
    let what = format!("{}/{}@{digest}", image.registry, image.repo);
    let resp = client.get(&image.registry, &image.repo, &path, &[]).await?;
    if !resp.status().is_success() {
        let status = resp.status();
        let error = match read_small(&what, resp).await {
            Err(e) => e,
            Ok(_) => ClientError::Status {
                url: what,
                status,
                detail: None,
            },
        };
        return Err(error.into());
    }
    let cached = is_cached(&resp);
    let mut body = resp.into_body();
    let (mut hasher, mut bytes) = (Hasher::new(), 0u64);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ClientError::Request {
            url: what.clone(),
            why: format!("reading the body: {e}"),
        })?;
        if let Ok(data) = frame.into_data() {
            hasher.update(&data);
            bytes += data.len() as u64;
            progress.add(data.len() as u64);
        }
    }
    let got = hasher.finish();
    let Some(want) = Digest::parse(digest) else {
        return Err(Error::NotAManifest(what, "not a sha256 digest".into()));
    };
    if want != got {
        return Err(Error::Mismatch { what, want, got });
    }
    progress.object(digest, bytes, cached);
    Ok((bytes, cached))
}

/// The appliance served it from its store.
fn is_cached<B>(resp: &http::Response<B>) -> bool {
    let outcome = resp.headers().get(crate::proxy::outcome::X_CACHE);
    outcome.is_some_and(|v| v == "HIT" || v == "REVALIDATED")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn platforms_choose_index_entries() {
        let index = serde_json::json!({"manifests": [
            {"digest": d('a'), "platform": {"os": "linux", "architecture": "amd64"}},
            {"digest": d('b'), "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        ]});
        let image = Reference::parse("x").unwrap();
        let these =
            |p: &[&str]| Platforms::These(p.iter().map(|p| Platform::parse(p).unwrap()).collect());
        assert_eq!(
            chosen(&image, &index, &these(&["linux/arm64"])).unwrap(),
            [d('b')]
        );
        assert_eq!(
            chosen(&image, &index, &these(&["linux/arm64/v8", "linux/amd64"])).unwrap(),
            [d('b'), d('a')]
        );
        assert!(chosen(&image, &index, &these(&["linux/s390x"])).is_err());
        assert_eq!(chosen(&image, &index, &Platforms::All).unwrap().len(), 2);
        assert!(Platform::parse("linux").is_none());
        assert!(Platform::parse("linux/amd64/v2/x").is_none());
        // A digest goes into a URL path: only sha256 ones are taken.
        let odd = serde_json::json!({"manifests": [{"digest": "sha256:../../x", "platform": {}}]});
        assert!(chosen(&image, &odd, &Platforms::All).is_err());
    }

    #[test]
    fn blobs_are_the_config_and_layers_once_each() {
        let image = Reference::parse("x").unwrap();
        let m = serde_json::json!({
            "config": {"digest": d('c'), "size": 10},
            "layers": [{"digest": d('1'), "size": 100}, {"digest": d('2'), "size": 200}]
        });
        let blobs = blobs_of(&image, &[m.clone(), m]).unwrap();
        assert_eq!(blobs.len(), 3);
        assert_eq!(blobs.values().sum::<u64>(), 310);
        let bad = serde_json::json!({"config": {"digest": "md5:00"}, "layers": []});
        assert!(blobs_of(&image, &[bad]).is_err());
    }
}
