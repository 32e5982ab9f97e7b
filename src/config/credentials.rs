//! Upstream credentials: the masked [`Secret`], and reading a password file or a Docker
//! `config.json` named by a `[[registry]]` entry (files are read once, at load, up to 1 MiB).

use std::fmt;

use toml::Spanned;

use super::validate::Validator;
use crate::names::{normalize, NamePattern};

/// A user name and password for an upstream registry.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
}

/// A secret: `Debug` and `Display` print `MASKED`, so it never reaches a log or an error.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself, for the one place that sends it upstream.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MASKED")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MASKED")
    }
}

/// Why a credential file gave no credentials. The texts are part of `config check`'s output.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("cannot read {path}: files are not read while fuzzing")]
    Fuzzing { path: String },
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is larger than {MAX_CREDENTIAL_FILE} bytes")]
    TooLarge { path: String },
    #[error("{path} is empty")]
    Empty { path: String },
    #[error("{path} is not JSON: {source}")]
    NotJson {
        path: String,
        source: serde_json::Error,
    },
    #[error("{path} has no \"auths\" object")]
    NoAuths { path: String },
    /// `names` joined with " or ".
    #[error("{path} has no entry for {names}")]
    NoEntry { path: String, names: String },
    #[error("the entry in {path} has no \"auth\"")]
    NoAuth { path: String },
    #[error("the \"auth\" entry in {path} is not base64")]
    NotBase64 { path: String },
    #[error("the auth entry is not UTF-8")]
    NotUtf8,
    #[error("the \"auth\" entry in {path} is not user:password")]
    NotUserPassword { path: String },
}

impl Validator<'_> {
    /// A registry's credentials: `username` + `password_file`, or `credentials_file`, or none.
    pub(super) fn credentials(
        &mut self,
        host: &Spanned<String>,
        aliases: &[NamePattern],
        username: Option<Spanned<String>>,
        password_file: Option<Spanned<String>>,
        credentials_file: Option<Spanned<String>>,
    ) -> Option<Credentials> {
        let (at, key, read) = match (username, password_file, credentials_file) {
            (None, None, None) => return None,
            (Some(user), Some(file), None) => {
                let read = read_secret(file.get_ref()).map(|password| Credentials {
                    username: user.into_inner(),
                    password,
                });
                (file, "registry.password_file", read)
            }
            (None, None, Some(file)) => {
                let mut names = vec![normalize(host.get_ref())];
                names.extend(aliases.iter().map(ToString::to_string));
                let read = docker_config_credentials(file.get_ref(), &names);
                (file, "registry.credentials_file", read)
            }
            (Some(user), None, None) => {
                let msg = "registry.username needs password_file next to it";
                self.problem(&user, msg.into());
                return None;
            }
            (None, Some(file), None) => {
                let msg = "registry.password_file needs username next to it";
                self.problem(&file, msg.into());
                return None;
            }
            (_, _, Some(file)) => {
                let msg = "give either username + password_file or credentials_file, not both";
                self.problem(&file, msg.into());
                return None;
            }
        };
        read.inspect_err(|why| self.problem(&at, format!("{key}: {why}")))
            .ok()
    }
}

/// A password file's content, without a trailing newline.
pub(super) fn read_secret(path: &str) -> Result<Secret, CredentialError> {
    let text = read_credential_file(path)?;
    let secret = text.strip_suffix('\n').unwrap_or(&text);
    let secret = secret.strip_suffix('\r').unwrap_or(secret);
    if secret.is_empty() {
        return Err(CredentialError::Empty { path: path.into() });
    }
    Ok(Secret::new(secret))
}

/// The entry for one of `names` in a Docker `config.json` (`auths` → `auth` = base64 of
/// `user:password`, or `username` + `password`). Docker Hub's key is "https://index.docker.io/v1/".
fn docker_config_credentials(path: &str, names: &[String]) -> Result<Credentials, CredentialError> {
    let text = read_credential_file(path)?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| CredentialError::NotJson {
            path: path.into(),
            source,
        })?;
    let auths = json.get("auths").and_then(|a| a.as_object());
    let auths = auths.ok_or_else(|| CredentialError::NoAuths { path: path.into() })?;
    let hub = names.iter().any(|n| n.ends_with("docker.io"));
    let entry = auths.iter().find_map(|(key, value)| {
        let key = key
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        let key = key.split('/').next().unwrap_or(key);
        let wanted = names.iter().any(|n| n == key) || (hub && key == "index.docker.io");
        wanted.then_some(value)
    });
    let entry = entry.ok_or_else(|| CredentialError::NoEntry {
        path: path.into(),
        names: names.join(" or "),
    })?;
    docker_entry_credentials(path, entry)
}

/// One `auths` entry of a Docker `config.json`: `username` + `password`, else `auth`.
fn docker_entry_credentials(
    path: &str,
    entry: &serde_json::Value,
) -> Result<Credentials, CredentialError> {
    use base64::Engine as _;
    let field = |k: &str| {
        entry
            .get(k)
            .and_then(|v| v.as_str())
            .filter(|v| !v.is_empty())
    };
    if let (Some(user), Some(pass)) = (field("username"), field("password")) {
        return Ok(Credentials {
            username: user.to_owned(),
            password: Secret::new(pass),
        });
    }
    let auth = field("auth").ok_or_else(|| CredentialError::NoAuth { path: path.into() })?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth)
        .map_err(|_| CredentialError::NotBase64 { path: path.into() })?;
    let decoded = String::from_utf8(decoded).map_err(|_| CredentialError::NotUtf8)?;
    let (user, pass) = (decoded.split_once(':'))
        .ok_or_else(|| CredentialError::NotUserPassword { path: path.into() })?;
    Ok(Credentials {
        username: user.to_owned(),
        password: Secret::new(pass),
    })
}

/// Credential files are read up to this size (a Docker config.json with many auths is a few KiB).
const MAX_CREDENTIAL_FILE: u64 = 1 << 20;

/// A credential file's text, refused beyond [`MAX_CREDENTIAL_FILE`] (so that `/dev/zero` or a
/// log file named by mistake is an error, not an endless read). Fuzzing reads no files.
fn read_credential_file(path: &str) -> Result<String, CredentialError> {
    use std::io::Read as _;
    if cfg!(fuzzing) {
        return Err(CredentialError::Fuzzing { path: path.into() });
    }
    let cannot = |source| CredentialError::Read {
        path: path.into(),
        source,
    };
    let file = std::fs::File::open(path).map_err(cannot)?;
    let mut text = String::new();
    (file.take(MAX_CREDENTIAL_FILE + 1).read_to_string(&mut text)).map_err(cannot)?;
    if text.len() as u64 > MAX_CREDENTIAL_FILE {
        return Err(CredentialError::TooLarge { path: path.into() });
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::super::tests::problems;
    use super::super::{parse, Source};

    #[test]
    fn credentials_come_from_a_password_file_or_a_docker_config_and_stay_masked() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "s3cret\n").unwrap();
        let cfg = dir.path().join("config.json");
        // "bob:hunter2"
        std::fs::write(
            &cfg,
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"Ym9iOmh1bnRlcjI="}}}"#,
        )
        .unwrap();
        let text = format!(
            "[[registry]]\nhost = \"ghcr.io\"\nusername = \"alice\"\npassword_file = {:?}\n\
             [[registry]]\nhost = \"registry-1.docker.io\"\naliases = [\"docker.io\"]\ncredentials_file = {:?}\n",
            pw.display().to_string(),
            cfg.display().to_string()
        );
        let c = parse(&text, Source::Embedded).unwrap();
        let ghcr = c.registries[0].credentials.as_ref().unwrap();
        assert_eq!(
            (ghcr.username.as_str(), ghcr.password.expose()),
            ("alice", "s3cret")
        );
        let hub = c.registries[1].credentials.as_ref().unwrap();
        assert_eq!(
            (hub.username.as_str(), hub.password.expose()),
            ("bob", "hunter2")
        );
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("hunter2") && shown.contains("MASKED")
        );
    }

    #[test]
    fn unreadable_or_incomplete_credentials_name_their_line() {
        let p = problems("[[registry]]\nhost = \"a.io\"\nusername = \"x\"\n\
                          [[registry]]\nhost = \"b.io\"\nusername = \"x\"\npassword_file = \"/nonexistent\"\n");
        assert_eq!(
            p.iter().map(|p| p.line).collect::<Vec<_>>(),
            [3, 7],
            "{p:?}"
        );
        assert!(
            p[1].message.contains("cannot read /nonexistent"),
            "{}",
            p[1].message
        );
        let p = problems(
            "[[registry]]\nhost = \"a.io\"\nusername = \"x\"\npassword_file = \"/dev/zero\"\n",
        );
        assert!(p[0].message.contains("larger than"), "{}", p[0].message);
    }

    #[test]
    fn docker_config_entries_are_found_by_host_or_alias() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.json");
        std::fs::write(
            &cfg,
            r#"{"auths":{"b.io":{"username":"u","password":"p"},"c.io":{"auth":"Ym9i"}}}"#,
        )
        .unwrap();
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let path = cfg.to_str().unwrap();
        let c = super::docker_config_credentials(path, &names(&["a.io", "b.io"])).unwrap();
        assert_eq!((c.username.as_str(), c.password.expose()), ("u", "p"));
        let why = super::docker_config_credentials(path, &names(&["c.io"])).unwrap_err();
        assert_eq!(
            why.to_string(),
            format!("the \"auth\" entry in {path} is not user:password")
        );
        let why = super::docker_config_credentials(path, &names(&["x.io", "y.io"])).unwrap_err();
        assert_eq!(
            why.to_string(),
            format!("{path} has no entry for x.io or y.io")
        );
    }
}
