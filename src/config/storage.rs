//! `[storage]`: where the shared tier lives. `backend = "local"` (the default: the local cache
//! alone) or `"s3"`, an S3-compatible store (Amazon S3, MinIO, Ceph RGW, Garage, R2) named by
//! `endpoint`, `bucket`, `region`, `prefix`, path-style or virtual-host addressing, with its
//! credentials from `access_key_id` + `secret_access_key_file`, else `AWS_ACCESS_KEY_ID` /
//! `AWS_SECRET_ACCESS_KEY` (/ `AWS_SESSION_TOKEN`), else the shared credentials file
//! (`AWS_SHARED_CREDENTIALS_FILE` or `~/.aws/credentials`, profile `AWS_PROFILE` or `default`).
//! Read once, at load; the secret is a [`Secret`] and never printed.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::credentials::read_secret;
use super::validate::Validator;
use super::Secret;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStorage {
    pub(super) backend: Option<Spanned<String>>,
    pub(super) endpoint: Option<Spanned<String>>,
    pub(super) bucket: Option<Spanned<String>>,
    pub(super) region: Option<Spanned<String>>,
    pub(super) prefix: Option<Spanned<String>>,
    pub(super) virtual_hosted_style: Option<bool>,
    pub(super) access_key_id: Option<Spanned<String>>,
    pub(super) secret_access_key_file: Option<Spanned<String>>,
    pub(super) ca_file: Option<Spanned<String>>,
}

/// Where verified objects are shared beyond this appliance's disk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum StorageConfig {
    /// The local cache alone.
    #[default]
    Local,
    /// An S3-compatible store shared by the fleet.
    S3(Box<S3Config>),
}

/// An S3-compatible bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Config {
    /// `http(s)://host[:port]`, no trailing slash; `None`: Amazon S3 for `region`.
    pub endpoint: Option<String>,
    pub bucket: String,
    pub region: String,
    /// Without leading or trailing `/`; may be empty.
    pub prefix: String,
    /// `https://bucket.host/key` instead of `https://host/bucket/key`.
    pub virtual_hosted_style: bool,
    pub credentials: S3Credentials,
    /// A PEM file with the CA that signed the endpoint's certificate.
    pub ca_file: Option<PathBuf>,
}

/// The key that signs requests to the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
    /// Where they came from, for `config check` and the status page.
    pub source: String,
}

/// The environment, as the validator reads it (tests pass their own).
pub(super) type Env<'e> = &'e dyn Fn(&str) -> Option<String>;

/// The process's environment.
pub(super) fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Validator<'_> {
    /// `[storage]`; a missing or bad key is a problem on its line (or the `backend` line).
    pub(super) fn storage(&mut self, raw: Option<RawStorage>) -> StorageConfig {
        let env = self.env;
        let Some(raw) = raw else {
            return StorageConfig::Local;
        };
        let Some(backend) = raw.backend.clone() else {
            if let Some(at) = raw.bucket.as_ref().or(raw.endpoint.as_ref()) {
                let msg = "storage: set backend = \"s3\" (or remove the section)";
                self.problem(at, msg.into());
            }
            return StorageConfig::Local;
        };
        match backend.get_ref().as_str() {
            "local" => StorageConfig::Local,
            "s3" => self
                .s3(raw, &backend, env)
                .map_or(StorageConfig::Local, |s3| StorageConfig::S3(Box::new(s3))),
            other => {
                let msg = format!("storage.backend: {other:?}: expected \"local\" or \"s3\"");
                self.problem(&backend, msg);
                StorageConfig::Local
            }
        }
    }

    fn s3(&mut self, raw: RawStorage, backend: &Spanned<String>, env: Env) -> Option<S3Config> {
        let endpoint = raw.endpoint.as_ref().and_then(|e| {
            let checked = parse_endpoint(e.get_ref());
            checked
                .inspect_err(|why| self.problem(e, format!("storage.endpoint: {why}")))
                .ok()
        });
        let bucket = match raw.bucket.as_ref().map(|b| (b, b.get_ref().as_str())) {
            Some((at, name)) if !valid_bucket(name) => {
                let msg = format!("storage.bucket: {name:?}: 3 to 63 of a-z 0-9 . -");
                self.problem(at, msg);
                None
            }
            Some((_, name)) => Some(name.to_owned()),
            None => {
                self.problem(backend, "storage: backend = \"s3\" needs a bucket".into());
                None
            }
        };
        let credentials = self.s3_credentials(&raw, backend, env);
        let region = (raw.region.map(Spanned::into_inner))
            .or_else(|| env("AWS_REGION"))
            .unwrap_or_else(|| "us-east-1".into());
        let prefix = (raw.prefix.map(Spanned::into_inner)).unwrap_or_else(|| "regcache".into());
        Some(S3Config {
            endpoint: if raw.endpoint.is_some() {
                Some(endpoint?)
            } else {
                None
            },
            bucket: bucket?,
            region,
            prefix: prefix.trim_matches('/').to_owned(),
            virtual_hosted_style: raw.virtual_hosted_style.unwrap_or(false),
            credentials: credentials?,
            ca_file: raw.ca_file.map(|f| PathBuf::from(f.into_inner())),
        })
    }

    /// The keys, the environment, or the shared credentials file, in that order.
    fn s3_credentials(
        &mut self,
        raw: &RawStorage,
        backend: &Spanned<String>,
        env: Env,
    ) -> Option<S3Credentials> {
        match (&raw.access_key_id, &raw.secret_access_key_file) {
            (Some(id), Some(file)) => {
                let read = read_secret(file.get_ref());
                let secret = read
                    .inspect_err(|why| {
                        self.problem(file, format!("storage.secret_access_key_file: {why}"))
                    })
                    .ok()?;
                return Some(S3Credentials {
                    access_key_id: id.get_ref().clone(),
                    secret_access_key: secret,
                    session_token: None,
                    source: "storage.access_key_id".into(),
                });
            }
            (Some(id), None) => {
                let msg = "storage.access_key_id needs secret_access_key_file next to it";
                self.problem(id, msg.into());
                return None;
            }
            (None, Some(file)) => {
                let msg = "storage.secret_access_key_file needs access_key_id next to it";
                self.problem(file, msg.into());
                return None;
            }
            (None, None) => {}
        }
        let found = env_credentials(env).or_else(|| shared_file_credentials(env));
        if found.is_none() {
            let msg = "storage: no credentials: set access_key_id + secret_access_key_file, \
                       AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY, or ~/.aws/credentials";
            self.problem(backend, msg.into());
        }
        found
    }
}

/// `http://` or `https://` with a host, no path; the trailing `/` dropped.
fn parse_endpoint(text: &str) -> Result<String, String> {
    let uri: http::Uri = text.parse().map_err(|e| format!("{text:?}: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(format!("{text:?}: expected http(s)://host[:port]"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "{text:?}: no path: the bucket goes in storage.bucket"
        ));
    }
    Ok(text.trim_end_matches('/').to_owned())
}

fn valid_bucket(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && (name.bytes())
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b))
}

fn env_credentials(env: Env) -> Option<S3Credentials> {
    Some(S3Credentials {
        access_key_id: env("AWS_ACCESS_KEY_ID")?,
        secret_access_key: Secret::new(env("AWS_SECRET_ACCESS_KEY")?),
        session_token: env("AWS_SESSION_TOKEN").map(Secret::new),
        source: "AWS_ACCESS_KEY_ID".into(),
    })
}

/// The profile's keys in the shared credentials file (an INI file), when there is one.
fn shared_file_credentials(env: Env) -> Option<S3Credentials> {
    let path = env("AWS_SHARED_CREDENTIALS_FILE")
        .or_else(|| env("HOME").map(|home| format!("{home}/.aws/credentials")))?;
    let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".into());
    let text = std::fs::read_to_string(&path).ok()?;
    let keys = ini_section(&text, &profile);
    let get = |key: &str| keys.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    Some(S3Credentials {
        access_key_id: get("aws_access_key_id")?,
        secret_access_key: Secret::new(get("aws_secret_access_key")?),
        session_token: get("aws_session_token").map(Secret::new),
        source: format!("{path} [{profile}]"),
    })
}

/// The `key = value` pairs of `[section]` in an INI text.
fn ini_section(text: &str, section: &str) -> Vec<(String, String)> {
    let mut inside = false;
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim() == section;
        } else if let Some((k, v)) = line.split_once('=').filter(|_| inside) {
            out.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Source};

    fn parse_with(text: &str, env: Env) -> Result<Config, String> {
        crate::config::parse_env(text, Source::Embedded, env).map_err(|e| e.to_string())
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn local_is_the_default() {
        let config = parse_with("", &no_env).unwrap();
        assert_eq!(config.storage, StorageConfig::Local);
        let config = parse_with("[storage]\nbackend = \"local\"\n", &no_env).unwrap();
        assert_eq!(config.storage, StorageConfig::Local);
    }

    #[test]
    fn s3_with_a_key_file_is_read_and_the_secret_stays_masked() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s3cr3t-value\n").unwrap();
        let text = format!(
            "[storage]\nbackend = \"s3\"\nendpoint = \"http://10.0.0.5:3900/\"\nbucket = \"cache\"\n\
             region = \"garage\"\nprefix = \"/site-a/\"\nvirtual_hosted_style = true\n\
             access_key_id = \"GK123\"\nsecret_access_key_file = {:?}\n",
            secret.display()
        );
        let config = parse_with(&text, &no_env).unwrap();
        let StorageConfig::S3(s3) = &config.storage else {
            panic!("s3 expected")
        };
        assert_eq!(s3.endpoint.as_deref(), Some("http://10.0.0.5:3900"));
        assert_eq!(
            (s3.bucket.as_str(), s3.region.as_str()),
            ("cache", "garage")
        );
        assert_eq!(s3.prefix, "site-a");
        assert!(s3.virtual_hosted_style);
        assert_eq!(s3.credentials.access_key_id, "GK123");
        assert_eq!(s3.credentials.secret_access_key.expose(), "s3cr3t-value");
        assert!(!format!("{config:?}").contains("s3cr3t"));
    }

    #[test]
    fn credentials_come_from_the_environment_then_the_shared_file() {
        let text = "[storage]\nbackend = \"s3\"\nbucket = \"cache\"\n";
        let env = |k: &str| match k {
            "AWS_ACCESS_KEY_ID" => Some("AKENV".to_owned()),
            "AWS_SECRET_ACCESS_KEY" => Some("envsecret".to_owned()),
            "AWS_SESSION_TOKEN" => Some("tok".to_owned()),
            _ => None,
        };
        let StorageConfig::S3(s3) = parse_with(text, &env).unwrap().storage else {
            panic!("s3 expected")
        };
        assert_eq!(s3.credentials.access_key_id, "AKENV");
        assert_eq!(s3.credentials.session_token.unwrap().expose(), "tok");
        assert_eq!(
            (s3.region.as_str(), s3.prefix.as_str()),
            ("us-east-1", "regcache")
        );
        assert!(!s3.virtual_hosted_style && s3.endpoint.is_none());

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("credentials");
        let ini = "[default]\naws_access_key_id = AKDEF\naws_secret_access_key = d\n\
                   [ci]\naws_access_key_id = AKCI\naws_secret_access_key = c\n";
        std::fs::write(&file, ini).unwrap();
        let path = file.display().to_string();
        let env = |k: &str| match k {
            "AWS_SHARED_CREDENTIALS_FILE" => Some(path.clone()),
            "AWS_PROFILE" => Some("ci".to_owned()),
            _ => None,
        };
        let StorageConfig::S3(s3) = parse_with(text, &env).unwrap().storage else {
            panic!("s3 expected")
        };
        assert_eq!(s3.credentials.access_key_id, "AKCI");
        assert_eq!(s3.credentials.secret_access_key.expose(), "c");
    }

    #[test]
    fn every_bad_key_names_its_line() {
        let text = "[storage]\nbackend = \"s3\"\nendpoint = \"ftp://x\"\nbucket = \"A_B\"\n\
                    access_key_id = \"K\"\n";
        let err = parse_with(text, &no_env).unwrap_err();
        for (line, what) in [
            (3, "storage.endpoint"),
            (4, "storage.bucket"),
            (5, "storage.access_key_id needs"),
        ] {
            assert!(
                err.contains(&format!(":{line}: {what}")),
                "{line} {what}: {err}"
            );
        }
        let err = parse_with("[storage]\nbackend = \"s3\"\n", &no_env).unwrap_err();
        assert!(
            err.contains(":2: storage: backend = \"s3\" needs a bucket"),
            "{err}"
        );
        assert!(err.contains("no credentials"), "{err}");
        let err = parse_with("[storage]\nbackend = \"nfs\"\n", &no_env).unwrap_err();
        assert!(err.contains(":2: storage.backend"), "{err}");
        let err = parse_with("[storage]\nbackend = \"s3\"\nbuckt = \"x\"\n", &no_env).unwrap_err();
        assert!(err.contains(":3:"), "{err}");
    }

    #[test]
    fn a_secret_file_problem_never_shows_the_secret() {
        let text = "[storage]\nbackend = \"s3\"\nbucket = \"cache\"\naccess_key_id = \"K\"\n\
                    secret_access_key_file = \"/nonexistent/secret\"\n";
        let err = parse_with(text, &no_env).unwrap_err();
        assert!(err.contains(":5: storage.secret_access_key_file"), "{err}");
    }
}
