//! The shared tier against a real S3-compatible server (Garage, MinIO, …) named by the
//! environment: `REGCACHE_TEST_S3_ENDPOINT` (`http://127.0.0.1:3900`), `REGCACHE_TEST_S3_BUCKET`,
//! `REGCACHE_TEST_S3_REGION`, `REGCACHE_TEST_S3_KEY_ID`, `REGCACHE_TEST_S3_SECRET_FILE`.
//! `#[ignore]`d: run with `cargo test --test integration shared_tier_s3 -- --ignored` once a
//! server is up (README, "The shared tier"). Each run uses its own prefix.

use std::sync::Arc;

use http::StatusCode;
use regcache::cache::Digest;
use regcache::config::{parse, Source, StorageConfig};
use regcache::metrics::{Metrics, UploadResult};
use regcache::tier::open_s3;

use crate::support::registry::{blob2, digest_of};
use crate::support::{Appliance, World};

/// The `[storage]` table for the server in the environment, under a prefix of its own.
fn storage_toml() -> String {
    let var = |name: &str| {
        std::env::var(format!("REGCACHE_TEST_S3_{name}"))
            .unwrap_or_else(|_| panic!("set REGCACHE_TEST_S3_{name} (see this file's doc)"))
    };
    let prefix = format!("test-{}", std::process::id());
    format!(
        "[storage]\nbackend = \"s3\"\nendpoint = {:?}\nbucket = {:?}\nregion = {:?}\n\
         prefix = {prefix:?}\naccess_key_id = {:?}\nsecret_access_key_file = {:?}\n",
        var("ENDPOINT"),
        var("BUCKET"),
        var("REGION"),
        var("KEY_ID"),
        var("SECRET_FILE")
    )
}

#[tokio::test]
#[ignore = "needs an S3-compatible server (REGCACHE_TEST_S3_*)"]
async fn uploads_reads_lists_and_deletes_on_a_real_store() {
    let config = parse(&storage_toml(), Source::Embedded).unwrap();
    let StorageConfig::S3(s3) = &config.storage else {
        panic!("s3 expected")
    };
    let tier = open_s3(s3, Arc::new(Metrics::new())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // One small object (one PUT) and one of 40 MiB (a multipart upload).
    let big: Vec<u8> = (0..40u32 << 20).map(|i| (i % 253) as u8).collect();
    for data in [b"a small one".to_vec(), big] {
        let digest = Digest::of(&data);
        let path = dir.path().join(digest.hex());
        std::fs::write(&path, &data).unwrap();
        assert_eq!(
            tier.upload(&digest, &path).await.unwrap(),
            UploadResult::Uploaded
        );
        assert_eq!(tier.head(&digest).await, Some(data.len() as u64));
        let (size, body) = tier.get(&digest).await.unwrap();
        let read: Vec<bytes::Bytes> = futures_util::TryStreamExt::try_collect(body).await.unwrap();
        assert_eq!((size, read.concat() == data), (data.len() as u64, true));
    }
    // A file that no longer hashes to its name: the multipart upload is aborted, nothing appears.
    let digest = Digest::of(b"x");
    let path = dir.path().join("changed");
    std::fs::write(&path, vec![9u8; 20 << 20]).unwrap();
    assert!(tier.upload(&digest, &path).await.is_err());
    assert_eq!(tier.head(&digest).await, None);
    let listed = tier.list().await.unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    for l in &listed {
        tier.delete(&l.digest).await.unwrap();
    }
    assert!(tier.list().await.unwrap().is_empty());
    assert!(tier.health().up);
}

#[tokio::test]
#[ignore = "needs an S3-compatible server (REGCACHE_TEST_S3_*)"]
async fn a_second_appliance_serves_from_the_real_store_with_no_upstream_get() {
    let w = World::start_with(&storage_toml()).await;
    let two = Appliance::start_with_store(&w.dns_keys, &w.toml, None).await;
    let hub = "registry-1.docker.io";
    let path = format!("/v2/library/small/blobs/{}", digest_of(&blob2()));
    assert_eq!(w.app.get(hub, &path, &[]).await.status(), StatusCode::OK);
    let digest = Digest::parse(&digest_of(&blob2())).unwrap();
    let store = two.tier.clone().expect("the appliance opened [storage]");
    for _ in 0..100 {
        if store.head(&digest).await.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let resp = two.get(hub, &path, &[]).await;
    let x_cache = resp.headers()["x-cache"].to_str().unwrap().to_owned();
    assert_eq!(
        (resp.status(), x_cache.as_str()),
        (StatusCode::OK, "SHARED")
    );
    assert_eq!(resp.body(), &blob2());
    assert_eq!(w.registry.count("GET", &path), 1);
    store.delete(&digest).await.unwrap();
    two.stop().await;
}
