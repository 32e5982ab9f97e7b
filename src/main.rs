//! The `regcache` binary: tracing, CLI, runtime, exit codes (64 on a config error).

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use regcache::ca::Ca;
use regcache::cli::{CaCommand, CacheCommand, Cli, Command, ConfigArg, ConfigCommand, OutputArg};
use regcache::config::{self, Config, LogConfig, LogFormat};
use regcache::install::{self, Runtime};
use regcache::output::{self, Format};
use regcache::{app, maintenance, proxy::access_log::AccessLog};
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::{fmt, reload};

/// sysexits.h EX_USAGE: the configuration is wrong.
const EXIT_CONFIG: u8 = 64;
/// sysexits.h EX_DATAERR: `cache verify` found (and dropped) bad objects.
const EXIT_BAD_OBJECTS: u8 = 65;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        // serve sets tracing up from its configuration.
        init_tracing(&LogConfig::default());
    }
    match cli.command {
        Command::Config {
            command: ConfigCommand::Default,
        } => {
            print!("{}", config::DEFAULT_TOML);
            ExitCode::SUCCESS
        }
        Command::Config {
            command: ConfigCommand::Check { config, output },
        } => check(&config, output),
        Command::Ca { command } => ca(command),
        Command::Serve(arg) => {
            let path = config::locate(arg.file());
            with_config(&arg, |config| serve(config, path))
        }
        Command::Healthcheck { config, admin } => match admin {
            Some(admin) => healthcheck(admin),
            None => match load(&config, Format::Human) {
                Ok(config) => healthcheck(loopback_if_wildcard(config.admin.listen)),
                Err(code) => code,
            },
        },
        Command::Warm(args) => warm(args),
        Command::Cache { command } => cache(&command),
    }
}

/// `regcache warm …`: with `--json`, a failure that stops it is a JSON error document too.
fn warm(args: regcache::cli::WarmArgs) -> ExitCode {
    let format = Format::from_flag(args.json);
    let config = match load(&args.config, format) {
        Ok(config) => config,
        Err(code) => return code,
    };
    match regcache::warm::command(config, args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            // A run that went through already printed its document (images that failed inside).
            if format == Format::Json && !e.is::<regcache::warm::Failed>() {
                print!("{}", output::error_json(format!("{e:#}"), Vec::new()));
            }
            ExitCode::FAILURE
        }
    }
}

/// `regcache cache …`: exit 65 when verify found bad objects.
fn cache(command: &CacheCommand) -> ExitCode {
    let format = Format::from_flag(command.output().json);
    let config = match load(command.config(), format) {
        Ok(config) => config,
        Err(code) => return code,
    };
    match maintenance::run(&config, command) {
        Ok(outcome) => {
            print!("{}", outcome.text);
            match outcome.found_bad {
                true => ExitCode::from(EXIT_BAD_OBJECTS),
                false => ExitCode::SUCCESS,
            }
        }
        Err(e) => failed(&e, format),
    }
}

/// `regcache ca cert|install|uninstall`.
fn ca(command: CaCommand) -> ExitCode {
    match command {
        CaCommand::Cert {
            config,
            fingerprint,
        } => with_config(&config, |config| {
            let ca = app::load_ca(&config)?;
            match fingerprint {
                true => println!("{}", ca.fingerprint()),
                false => print!("{}", ca.cert_pem()),
            }
            Ok(())
        }),
        CaCommand::Install {
            config,
            create,
            docker,
            containerd,
            podman,
            system,
            root,
        } => with_config(&config, |config| {
            let flags = [docker, containerd, podman, system];
            let chosen: Vec<Runtime> = (Runtime::ALL.into_iter().zip(flags))
                .filter_map(|(r, on)| on.then_some(r))
                .collect();
            let ca = match create {
                true => app::load_ca(&config)?,
                false => Ca::load_existing(&config.state_dir.join("certs"), &config.patterns())?,
            };
            let report = install::install(&root, ca.cert_pem(), &config.patterns(), &chosen)?;
            report.lines.iter().for_each(|l| println!("{l}"));
            println!("CA fingerprint (SHA-256): {}", ca.fingerprint());
            Ok(())
        }),
        CaCommand::Uninstall { root } => match install::uninstall(&root) {
            Ok(report) => {
                report.lines.iter().for_each(|l| println!("{l}"));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// The configuration, or exit 64 with its problems on stderr (and as a JSON error on stdout).
fn load(arg: &ConfigArg, format: Format) -> Result<Config, ExitCode> {
    let path = config::locate(arg.file());
    config::load(path.as_deref()).map_err(|e| {
        eprintln!("{e}");
        if format == Format::Json {
            print!(
                "{}",
                output::error_json("invalid configuration", e.located())
            );
        }
        ExitCode::from(EXIT_CONFIG)
    })
}

/// `config check [--json]`: exit 0 when it loads, 64 with every problem otherwise.
fn check(arg: &ConfigArg, out: OutputArg) -> ExitCode {
    #[derive(serde::Serialize)]
    struct Checked {
        ok: bool,
        file: String,
        registries: usize,
        names: usize,
        /// `upstream.proxy`, its password masked.
        upstream_proxy: Option<String>,
        no_proxy: Vec<String>,
        problems: Vec<config::Located>,
    }
    let path = config::locate(arg.file());
    let file = (path.as_ref()).map_or("<embedded default>".to_owned(), |p| p.display().to_string());
    let (loaded, problems) = match config::load(path.as_deref()) {
        Ok(config) => (Some(config), vec![]),
        Err(e) => {
            eprintln!("{e}");
            (None, e.located())
        }
    };
    let counts = (loaded.as_ref()).map_or((0, 0), |c| (c.registries.len(), c.patterns().len()));
    let upstream = loaded.as_ref().map(|c| &c.upstream);
    let checked = Checked {
        ok: loaded.is_some(),
        file,
        registries: counts.0,
        names: counts.1,
        // Display masks the password.
        upstream_proxy: upstream
            .and_then(|u| u.proxy.as_ref())
            .map(|p| p.to_string()),
        no_proxy: upstream.map(|u| u.no_proxy.clone()).unwrap_or_default(),
        problems,
    };
    let human = |c: &Checked| match (c.ok, &c.upstream_proxy) {
        (true, None) => format!(
            "{}: OK ({} registries, {} names)\n",
            c.file, c.registries, c.names
        ),
        (true, Some(proxy)) => format!(
            "{}: OK ({} registries, {} names)\nupstream.proxy: {proxy} (no_proxy: {:?})\n",
            c.file, c.registries, c.names, c.no_proxy
        ),
        (false, _) => String::new(),
    };
    print!("{}", Format::from_flag(out.json).render(&checked, human));
    match checked.ok {
        true => ExitCode::SUCCESS,
        false => ExitCode::from(EXIT_CONFIG),
    }
}

/// A command failed: `error: …` on stderr, and the JSON error object on stdout under `--json`.
fn failed(e: &anyhow::Error, format: Format) -> ExitCode {
    eprintln!("error: {e:#}");
    if format == Format::Json {
        print!("{}", output::error_json(format!("{e:#}"), vec![]));
    }
    ExitCode::FAILURE
}

fn with_config(arg: &ConfigArg, f: impl FnOnce(Config) -> anyhow::Result<()>) -> ExitCode {
    let config = match load(arg, Format::Human) {
        Ok(config) => config,
        Err(code) => return code,
    };
    match f(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => failed(&e, Format::Human),
    }
}

/// `0.0.0.0:9090` is asked as `127.0.0.1:9090` (and `[::]` as `[::1]`).
fn loopback_if_wildcard(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
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

/// The filter for `level`, quieting hickory's per-query INFO lines unless `level` names hickory.
/// RUST_LOG, when set, wins.
fn filter(level: &str) -> EnvFilter {
    if let Ok(env) = EnvFilter::try_from_default_env() {
        return env;
    }
    let quiet = "hickory_server=warn,hickory_net=warn,hickory_resolver=warn,hickory_proto=warn";
    let directives = match level.contains("hickory") {
        true => level.to_owned(),
        false => format!("{level},{quiet}"),
    };
    EnvFilter::try_new(directives).unwrap_or_else(|_| EnvFilter::new("info"))
}

type FilterHandle = reload::Handle<EnvFilter, tracing_subscriber::Registry>;

/// Application logs on stderr, text or JSON; the level can change later (SIGHUP).
fn init_tracing(log: &LogConfig) -> FilterHandle {
    let (filter, handle) = reload::Layer::new(filter(&log.level));
    let base = tracing_subscriber::registry().with(filter);
    let stderr = std::io::stderr;
    let ansi = std::io::stderr().is_terminal();
    match log.format {
        LogFormat::Text => base
            .with(fmt::layer().with_writer(stderr).with_ansi(ansi))
            .init(),
        LogFormat::Json => base.with(fmt::layer().json().with_writer(stderr)).init(),
    }
    handle
}

fn serve(config: Config, path: Option<PathBuf>) -> anyhow::Result<()> {
    let levels = init_tracing(&config.log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        // Handlers first: a SIGTERM that comes as soon as "listening" is logged still drains.
        let term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
        let log = AccessLog::open(&config.log).context("cannot open log.access_file")?;
        let mut bound = app::build(config, log.clone()).await?;
        let reloader = bound.reloader.take().expect("build makes a reloader");
        let shutdown = CancellationToken::new();
        let handlers = (term, hup);
        tokio::spawn(signals(shutdown.clone(), handlers, reloader, path, levels));
        app::run(bound, shutdown).await;
        // Lines still in the access log's buffer (it writes them out within 100 ms otherwise).
        log.flush();
        Ok(())
    })
}

/// SIGINT/SIGTERM: drain and stop. SIGHUP: re-read the configuration and reopen the access log.
async fn signals(
    shutdown: CancellationToken,
    (mut term, mut hup): (tokio::signal::unix::Signal, tokio::signal::unix::Signal),
    mut reloader: app::Reloader,
    path: Option<PathBuf>,
    levels: FilterHandle,
) {
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = hup.recv() => reload(&mut reloader, path.as_deref(), &levels),
        }
    }
    tracing::info!(
        "shutting down; draining in-flight requests for up to {:?}",
        app::GRACE
    );
    shutdown.cancel();
}

fn reload(reloader: &mut app::Reloader, path: Option<&std::path::Path>, levels: &FilterHandle) {
    let source = path.map_or("<embedded default>".into(), |p| p.display().to_string());
    let config = match config::load(path) {
        Ok(config) => config,
        Err(e) => {
            for line in e.to_string().lines() {
                tracing::error!("config reload rejected, the old configuration stays: {line}");
            }
            if let Err(e) = reloader.reopen_logs() {
                tracing::error!(error = %e, "cannot reopen the access log");
            }
            return;
        }
    };
    let level = config.log.level.clone();
    match reloader.apply(config) {
        Ok(notes) => {
            if let Err(e) = levels.reload(filter(&level)) {
                tracing::warn!(error = %e, "cannot change the log level");
            }
            for note in notes {
                tracing::warn!("{note}");
            }
            tracing::info!(%source, "configuration reloaded; access log reopened");
        }
        Err(e) => tracing::error!("config reload rejected, the old configuration stays: {e:#}"),
    }
}
