//! The config file as written: serde structs that mirror the TOML with `deny_unknown_fields`.
//!
//! Every value that needs checking is read as [`Spanned`], so that a problem can name its line;
//! nothing here is checked beyond its TOML type (see `validate`).

use serde::Deserialize;
use toml::Spanned;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) state_dir: Option<String>,
    #[serde(default)]
    pub(super) dns: RawDns,
    #[serde(default)]
    pub(super) tls: RawTls,
    #[serde(default)]
    pub(super) upstream: RawUpstream,
    #[serde(default)]
    pub(super) admin: RawAdmin,
    #[serde(default)]
    pub(super) http: RawHttp,
    #[serde(default)]
    pub(super) access: RawAccess,
    #[serde(default)]
    pub(super) cache: RawCache,
    #[serde(default)]
    pub(super) limits: RawLimits,
    #[serde(default)]
    pub(super) log: RawLog,
    pub(super) registry: Option<Vec<RawRegistry>>,
    #[serde(default)]
    pub(super) warm: Vec<super::warm::RawWarm>,
    #[serde(default)]
    pub(super) fleet: super::fleet::RawFleet,
    pub(super) storage: Option<super::storage::RawStorage>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub(super) level: Option<Spanned<String>>,
    pub(super) format: Option<Spanned<String>>,
    pub(super) access_format: Option<Spanned<String>>,
    pub(super) access_file: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCache {
    pub(super) dir: Option<String>,
    pub(super) max_size: Option<Spanned<String>>,
    pub(super) manifest_ttl: Option<Spanned<String>>,
    pub(super) auth_ttl: Option<Spanned<String>>,
    pub(super) offline: Option<bool>,
    pub(super) offline_auth_window: Option<Spanned<String>>,
    /// `[[cache.rule]]`, in file order.
    #[serde(default)]
    pub(super) rule: Vec<super::rules::RawRule>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) max_connections: Option<Spanned<i64>>,
    pub(super) first_byte_timeout: Option<Spanned<String>>,
    pub(super) header_read_timeout: Option<Spanned<String>>,
    pub(super) idle_timeout: Option<Spanned<String>>,
    pub(super) h2_keepalive_interval: Option<Spanned<String>>,
    pub(super) max_fills: Option<Spanned<i64>>,
    pub(super) max_fills_per_registry: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDns {
    pub(super) listen: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(super) answer_ipv4: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) answer_ipv6: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) upstream: Vec<Spanned<String>>,
    pub(super) ttl: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) listen: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    #[serde(default)]
    pub(super) extra_ca: Vec<String>,
    pub(super) proxy: Option<Spanned<String>>,
    pub(super) no_proxy: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) listen: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    #[serde(default)]
    pub(super) listen: Vec<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAccess {
    #[serde(default)]
    pub(super) allow: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRegistry {
    pub(super) host: Spanned<String>,
    #[serde(default)]
    pub(super) aliases: Vec<Spanned<String>>,
    pub(super) upstream: Option<Spanned<String>>,
    pub(super) username: Option<Spanned<String>>,
    pub(super) password_file: Option<Spanned<String>>,
    pub(super) credentials_file: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) mirrors: Vec<Spanned<String>>,
    pub(super) mirrors_first: Option<Spanned<bool>>,
}
