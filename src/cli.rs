//! Command-line definitions (clap derive) only.

use std::path::PathBuf;

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
    /// Config file; default $REGCACHE_CONFIG, else ./regcache.toml if present, else the embedded default.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
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
}

#[derive(Subcommand, Debug)]
pub enum CaCommand {
    /// Print the CA certificate (PEM), creating the CA first if it is missing.
    Cert(ConfigArg),
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Validate the configuration: each error with file:line and why; exit 64 on error.
    Check(ConfigArg),
    /// Print the embedded default configuration, commented.
    Default,
}
