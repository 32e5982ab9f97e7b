//! The S3 client behind the shared tier: `object_store`'s `AmazonS3` built from `[storage]`
//! (endpoint, path-style or virtual-host addressing, http:// allowed for a LAN store, an
//! optional private CA), with short connect timeouts and few retries, so that a store that is
//! down is noticed in seconds and the upstream asked instead.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::{BackoffConfig, Certificate, ClientOptions, RetryConfig};

use super::{Error, SharedTier};
use crate::config::S3Config;
use crate::metrics::Metrics;

/// Connecting to the store takes at most this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The shared tier on the S3-compatible store of `config`.
pub fn open_s3(config: &S3Config, metrics: Arc<Metrics>) -> Result<Arc<SharedTier>, Error> {
    // No overall request timeout: a GET streams objects of many GiB; the tier and the proxy
    // bound each wait themselves (the response head, the idle body, the upload's deadline).
    let mut options = ClientOptions::new()
        .with_allow_http(true)
        .with_timeout_disabled()
        .with_connect_timeout(CONNECT_TIMEOUT);
    if let Some(path) = &config.ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| Error::Setup(format!("storage.ca_file {}: {e}", path.display())))?;
        let certs = Certificate::from_pem_bundle(&pem)
            .map_err(|e| Error::Setup(format!("storage.ca_file {}: {e}", path.display())))?;
        for cert in certs {
            options = options.with_root_certificate(cert);
        }
    }
    let retry = RetryConfig {
        backoff: BackoffConfig::default(),
        max_retries: 2,
        retry_timeout: Duration::from_secs(10),
    };
    let creds = &config.credentials;
    let mut builder = AmazonS3Builder::new()
        .with_bucket_name(&config.bucket)
        .with_region(&config.region)
        .with_access_key_id(&creds.access_key_id)
        .with_secret_access_key(creds.secret_access_key.expose())
        .with_virtual_hosted_style_request(config.virtual_hosted_style)
        .with_allow_http(true)
        .with_client_options(options)
        .with_retry(retry);
    if let Some(endpoint) = &config.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    if let Some(token) = &creds.session_token {
        builder = builder.with_token(token.expose());
    }
    let store = builder.build().map_err(|e| Error::Setup(e.to_string()))?;
    Ok(SharedTier::new(
        Arc::new(store),
        &config.prefix,
        &label(config),
        metrics,
    ))
}

/// `s3://bucket/prefix at endpoint`: where the store is, without any secret.
pub fn label(config: &S3Config) -> String {
    let at = config.endpoint.as_deref().unwrap_or("Amazon S3");
    let prefix = match config.prefix.is_empty() {
        true => String::new(),
        false => format!("/{}", config.prefix),
    };
    format!("s3://{}{prefix} at {at} ({})", config.bucket, config.region)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{S3Credentials, Secret};

    fn config() -> S3Config {
        S3Config {
            endpoint: Some("http://127.0.0.1:1".into()),
            bucket: "cache".into(),
            region: "garage".into(),
            prefix: "site".into(),
            virtual_hosted_style: false,
            credentials: S3Credentials {
                access_key_id: "GK1".into(),
                secret_access_key: Secret::new("verysecret"),
                session_token: None,
                source: "test".into(),
            },
            ca_file: None,
        }
    }

    #[tokio::test]
    async fn the_store_is_built_for_a_lan_endpoint_and_its_label_holds_no_secret() {
        let tier = open_s3(&config(), Arc::new(Metrics::new())).unwrap();
        assert_eq!(
            tier.label(),
            "s3://cache/site at http://127.0.0.1:1 (garage)"
        );
        assert!(!format!("{tier:?}").contains("verysecret"));
        // Nothing listens on port 1: a failure, counted, and the store marked down.
        let digest = crate::cache::Digest::of(b"x");
        assert_eq!(tier.head(&digest).await, None);
        assert!(tier.health.is_down());
        // A private CA for the endpoint is read at start.
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).unwrap().pem();
        let mut with_ca = config();
        with_ca.ca_file = Some(dir.path().join("ca.pem"));
        std::fs::write(with_ca.ca_file.as_ref().unwrap(), pem).unwrap();
        assert!(open_s3(&with_ca, Arc::new(Metrics::new())).is_ok());
        let mut bad = config();
        bad.ca_file = Some("/nonexistent/ca.pem".into());
        let err = open_s3(&bad, Arc::new(Metrics::new())).unwrap_err();
        assert!(err.to_string().contains("storage.ca_file"), "{err}");
    }
}
