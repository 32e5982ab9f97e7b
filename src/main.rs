//! The `regcache` binary: tracing, CLI, runtime, exit codes (64 on a config error).

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use regcache::cli::{CaCommand, CacheCommand, Cli, Command, ConfigArg, ConfigCommand};
use regcache::config::{self, Config};
use regcache::install::{self, Runtime};
use regcache::{app, maintenance, proxy::access_log::AccessLog};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// sysexits.h EX_USAGE: the configuration is wrong.
const EXIT_CONFIG: u8 = 64;

const DEFAULT_FILTER: &str =
    "info,hickory_server=warn,hickory_net=warn,hickory_resolver=warn,hickory_proto=warn";

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER)),
        )
        .init();
    match cli.command {
        Command::Config {
            command: ConfigCommand::Default,
        } => {
            print!("{}", config::DEFAULT_TOML);
            ExitCode::SUCCESS
        }
        Command::Config {
            command: ConfigCommand::Check(arg),
        } => check(&arg),
        Command::Ca {
            command: CaCommand::Cert(arg),
        } => with_config(&arg, |config| {
            let ca = app::load_ca(&config)?;
            print!("{}", ca.cert_pem());
            Ok(())
        }),
        Command::Ca {
            command:
                CaCommand::Install {
                    config,
                    docker,
                    containerd,
                    podman,
                    system,
                    root,
                },
        } => with_config(&config, |config| {
            let flags = [docker, containerd, podman, system];
            let chosen: Vec<Runtime> = (Runtime::ALL.into_iter().zip(flags))
                .filter_map(|(r, on)| on.then_some(r))
                .collect();
            let ca = app::load_ca(&config)?;
            let report = install::install(&root, ca.cert_pem(), &config.patterns(), &chosen)?;
            report.lines.iter().for_each(|l| println!("{l}"));
            println!("CA fingerprint (SHA-256): {}", ca.fingerprint());
            Ok(())
        }),
        Command::Ca {
            command: CaCommand::Uninstall { root },
        } => match install::uninstall(&root) {
            Ok(report) => {
                report.lines.iter().for_each(|l| println!("{l}"));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Serve(arg) => with_config(&arg, serve),
        Command::Healthcheck { admin } => healthcheck(admin),
        Command::Cache { command } => {
            let arg = match &command {
                CacheCommand::Ls { config, .. } | CacheCommand::Purge { config, .. } => config,
                CacheCommand::Du(config) | CacheCommand::Verify(config) => config,
            };
            with_config(&arg.clone(), |config| {
                print!("{}", maintenance::run(&config, &command)?);
                Ok(())
            })
        }
    }
}

fn load(arg: &ConfigArg) -> Result<Config, ExitCode> {
    let path = config::locate(arg.config.as_deref());
    config::load(path.as_deref()).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn check(arg: &ConfigArg) -> ExitCode {
    let path = config::locate(arg.config.as_deref());
    let source = path
        .as_ref()
        .map_or("<embedded default>".to_owned(), |p| p.display().to_string());
    match load(arg) {
        Ok(config) => {
            println!(
                "{source}: OK ({} registries, {} names)",
                config.registries.len(),
                config.patterns().len()
            );
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn with_config(arg: &ConfigArg, f: impl FnOnce(Config) -> anyhow::Result<()>) -> ExitCode {
    let config = match load(arg) {
        Ok(config) => config,
        Err(code) => return code,
    };
    match f(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A plain HTTP/1.1 GET of /healthz; no HTTP client needed in a minimal image.
fn healthcheck(admin: std::net::SocketAddr) -> ExitCode {
    use std::io::{Read, Write};
    let timeout = std::time::Duration::from_secs(3);
    let check = || -> std::io::Result<bool> {
        let mut tcp = std::net::TcpStream::connect_timeout(&admin, timeout)?;
        tcp.set_read_timeout(Some(timeout))?;
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: regcache\r\nConnection: close\r\n\r\n")?;
        let mut reply = String::new();
        tcp.read_to_string(&mut reply)?;
        Ok(reply.starts_with("HTTP/1.1 200"))
    };
    match check() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("{admin}/healthz did not answer 200");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("cannot reach {admin}/healthz: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let bound = app::build(config, AccessLog::stdout()).await?;
        let shutdown = CancellationToken::new();
        tokio::spawn(wait_for_signal(shutdown.clone()));
        app::run(bound, shutdown).await;
        Ok(())
    })
}

async fn wait_for_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!(
        "shutting down; draining in-flight requests for up to {:?}",
        app::GRACE
    );
    shutdown.cancel();
}
