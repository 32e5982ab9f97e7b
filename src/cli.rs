//! Command-line definitions (clap derive) only.

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "regcache",
    version,
    about = "DNS-intercepting, TLS-terminating proxy for container registries"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone, Default)]
pub struct ConfigArg {
    /// Config file; default $REGCACHE_CONFIG, else ./regcache.toml, else /etc/regcache/regcache.toml
    /// if present, else the embedded default.
    #[arg(long, value_name = "FILE", env = "REGCACHE_CONFIG", value_parser = AnyPath)]
    pub config: Option<PathBuf>,
}

impl ConfigArg {
    /// The file named by `--config`, else by `$REGCACHE_CONFIG`; an empty value counts as none
    /// (an exported but empty `REGCACHE_CONFIG` falls through to the next place to look).
    pub fn file(&self) -> Option<&Path> {
        self.config.as_deref().filter(|p| !p.as_os_str().is_empty())
    }
}

/// How a command prints; flattened into every command that has `--json` (and meant for `warm`).
#[derive(Args, Debug, Clone, Copy, Default)]
pub struct OutputArg {
    /// Print one JSON document on stdout instead of text, and no progress line; on failure too
    /// (then with a non-zero exit). Field names: README, "Command line".
    #[arg(long)]
    pub json: bool,
}

/// A path, possibly empty: clap's own path parser refuses an empty value, and an empty
/// `$REGCACHE_CONFIG` is "not set", not an error.
#[derive(Clone, Debug)]
struct AnyPath;

impl clap::builder::TypedValueParser for AnyPath {
    type Value = PathBuf;

    fn parse_ref(
        &self,
        _cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<PathBuf, clap::Error> {
        Ok(PathBuf::from(value))
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Answer DNS, terminate TLS and forward registry requests until SIGINT/SIGTERM.
    Serve(ConfigArg),
    /// The local CA.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Validate or print configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Exit 0 when the admin listener answers /healthz with 200 (for container healthchecks).
    Healthcheck {
        #[command(flatten)]
        config: ConfigArg,
        /// Admin address to ask; default: admin.listen of the configuration (a wildcard address
        /// is asked on loopback).
        #[arg(long, value_name = "ADDR")]
        admin: Option<std::net::SocketAddr>,
    },
    /// Fetch images into the cache through the same path a client pull takes.
    Warm(WarmArgs),
    /// Inspect and maintain the content cache (safe while `serve` runs).
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum CacheCommand {
    /// List stored objects, most recently used first.
    Ls {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        output: OutputArg,
        /// Only objects referenced from this registry (e.g. registry-1.docker.io).
        #[arg(long)]
        registry: Option<String>,
        /// Only objects referenced from matching repositories ("*" matches any run, e.g. "library/*").
        #[arg(long, value_name = "PATTERN")]
        repo: Option<String>,
        /// Which tier: local (the cache directory) or shared (the [storage] store); default both.
        #[arg(long, value_enum)]
        tier: Option<TierArg>,
    },
    /// Show how much the cache holds against cache.max_size (and the shared store).
    Du {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        output: OutputArg,
        /// Which tier: local (the cache directory) or shared (the [storage] store); default both.
        #[arg(long, value_enum)]
        tier: Option<TierArg>,
    },
    /// Remove objects (and the tags that point at them).
    #[command(group = clap::ArgGroup::new("what").required(true))]
    Purge {
        #[command(flatten)]
        config: ConfigArg,
        /// Objects referenced from matching repositories ("*" matches any run).
        #[arg(long, value_name = "PATTERN", group = "what")]
        repo: Option<String>,
        /// One object, by digest (sha256:…).
        #[arg(long, value_name = "DIGEST", group = "what")]
        digest: Option<String>,
        /// Everything.
        #[arg(long, group = "what")]
        all: bool,
        /// Which tier: local (the cache directory) or shared (the [storage] store); default both.
        #[arg(long, value_enum)]
        tier: Option<TierArg>,
    },
    /// Re-hash every object; report and drop those whose size or hash is wrong (exit 65 when
    /// any was).
    Verify {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        output: OutputArg,
        /// Which tier: local (default) or shared (reads every object of the [storage] store).
        #[arg(long, value_enum)]
        tier: Option<TierArg>,
    },
}

/// A storage tier, for `regcache cache … --tier`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum TierArg {
    /// The cache directory.
    Local,
    /// The fleet's shared store (`[storage] backend = "s3"`).
    Shared,
}

impl CacheCommand {
    /// The `--tier` of any `cache` command.
    pub fn tier(&self) -> Option<TierArg> {
        match self {
            Self::Ls { tier, .. } | Self::Du { tier, .. } => *tier,
            Self::Purge { tier, .. } | Self::Verify { tier, .. } => *tier,
        }
    }

    /// The `--config` of any `cache` command.
    pub fn config(&self) -> &ConfigArg {
        match self {
            Self::Ls { config, .. } | Self::Du { config, .. } => config,
            Self::Purge { config, .. } | Self::Verify { config, .. } => config,
        }
    }

    /// How it prints (`purge` has no `--json`).
    pub fn output(&self) -> OutputArg {
        match self {
            Self::Ls { output, .. } | Self::Du { output, .. } | Self::Verify { output, .. } => {
                *output
            }
            Self::Purge { .. } => OutputArg::default(),
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum CaCommand {
    /// Print the CA certificate (PEM), creating the CA first if it is missing.
    Cert {
        #[command(flatten)]
        config: ConfigArg,
        /// Print only the certificate's SHA-256 fingerprint (AB:CD:…, as
        /// `openssl x509 -noout -fingerprint -sha256` prints it), for client-setup.sh --fingerprint.
        #[arg(long)]
        fingerprint: bool,
    },
    /// Write the CA where client runtimes read it, for every intercepted name (on the appliance
    /// itself; other clients use scripts/client-setup.sh --fingerprint).
    Install {
        #[command(flatten)]
        config: ConfigArg,
        /// Create a new CA in the state directory when there is none (without it, a host with no
        /// CA is refused: a CA made here would not be the appliance's).
        #[arg(long)]
        create: bool,
        /// /etc/docker/certs.d/<host>/ca.crt
        #[arg(long)]
        docker: bool,
        /// /etc/containerd/certs.d/<host>/hosts.toml (with ca = …)
        #[arg(long)]
        containerd: bool,
        /// /etc/containers/certs.d/<host>/ca.crt (podman, skopeo, buildah)
        #[arg(long)]
        podman: bool,
        /// The system trust store (needed for Docker Hub names with dockerd)
        #[arg(long)]
        system: bool,
        /// Write under this folder instead of / (default: every runtime then).
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: PathBuf,
    },
    /// Remove exactly what `ca install` wrote.
    Uninstall {
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Validate the configuration: each error with file:line and why; exit 64 on error.
    Check {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Print the embedded default configuration, commented.
    Default,
}

/// `regcache warm IMAGE... [--platform OS/ARCH]... [--all-platforms] [--via URL]`.
#[derive(Args, Debug)]
pub struct WarmArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Images as `docker pull` reads them: NAME[:TAG] or NAME@DIGEST.
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<String>,
    /// A platform of an index to warm (OS/ARCH[/VARIANT]); repeatable; default this host's.
    #[arg(long = "platform", value_name = "OS/ARCH")]
    pub platforms: Vec<String>,
    /// Every platform an index names.
    #[arg(long, conflicts_with = "platforms")]
    pub all_platforms: bool,
    /// A running appliance's HTTPS address (https://HOST[:PORT]); default: an appliance of this
    /// command's own on loopback, with the configured cache and CA.
    #[arg(long, value_name = "URL")]
    pub via: Option<String>,
    /// The appliance's CA certificate; default {state_dir}/certs/ca.crt.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// One JSON document on stdout (per image: fetched, cached, bytes, error, seconds).
    #[arg(long)]
    pub json: bool,
}
