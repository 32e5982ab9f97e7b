//! `regcache warm IMAGE...`: puts images into the cache before anyone asks, through the same path
//! a client pull takes (so authorization, verification and coalescing apply): it is a registry
//! client of the appliance ([`client`]). With `--via URL` it asks a running appliance; without,
//! it starts one of its own on loopback (the configured cache and CA, no DNS or mirror listener
//! a client could reach), which is refused while the configured appliance runs.

pub mod client;
mod command;
pub mod jobs;
mod progress;
pub mod pull;

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;
use tokio_util::sync::CancellationToken;

use crate::access::AccessList;
use crate::config::Config;
use crate::proxy::access_log::AccessLog;
use crate::reference::Reference;
use client::RegistryClient;
pub use command::{command, Failed};
pub use progress::human;
use progress::Progress;
pub use pull::{Platform, Platforms, Tally};

/// What `regcache warm` was asked.
pub struct Options {
    pub images: Vec<String>,
    pub platforms: Platforms,
    /// `https://host[:port]` of a running appliance.
    pub via: Option<String>,
    /// The appliance's CA certificate; default `{state_dir}/certs/ca.crt`.
    pub ca: Option<std::path::PathBuf>,
    /// No progress output (a JSON summary follows).
    pub quiet: bool,
}

/// The result for one reference.
#[derive(Debug, serde::Serialize)]
pub struct Outcome {
    pub image: String,
    #[serde(flatten)]
    pub tally: Tally,
    /// Why it failed, when it did.
    pub error: Option<String>,
    pub seconds: f64,
}

/// Warms every image; one [`Outcome`] per reference, in order.
pub async fn run(config: &Config, options: Options) -> anyhow::Result<Vec<Outcome>> {
    let images = (options.images.iter())
        .map(|i| Reference::parse(i))
        .collect::<Result<Vec<_>, _>>()?;
    let ca = options
        .ca
        .clone()
        .unwrap_or_else(|| config.state_dir.join("certs/ca.crt"));
    let (addr, own) = match &options.via {
        Some(url) => (appliance_addr(url).await?, None),
        None => {
            let (addr, own) = start_own(config).await?;
            (addr, Some(own))
        }
    };
    let client = RegistryClient::new(addr, roots(&ca)?);
    let progress = Progress::new(options.quiet);
    let outcomes = warm_all(&client, &images, &options.platforms, &progress).await;
    if let Some((shutdown, task)) = own {
        shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
    }
    Ok(outcomes)
}

/// Warms each image in turn: one [`Outcome`] per image, in order.
async fn warm_all(
    client: &RegistryClient,
    images: &[Reference],
    platforms: &Platforms,
    progress: &Progress,
) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    for image in images {
        let started = Instant::now();
        let result = pull::warm_image(client, image, platforms, progress).await;
        let (tally, error) = match result {
            Ok(tally) => (tally, None),
            Err(e) => (Tally::default(), Some(e.to_string())),
        };
        outcomes.push(Outcome {
            image: image.to_string(),
            tally,
            error,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    outcomes
}

type Own = (CancellationToken, tokio::task::JoinHandle<()>);

/// An appliance of this process's own on loopback, for warming without a running one.
async fn start_own(config: &Config) -> anyhow::Result<(SocketAddr, Own)> {
    let admin = match config.admin.listen.ip().is_unspecified() {
        true => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), config.admin.listen.port()),
        false => config.admin.listen,
    };
    let probe = tokio::net::TcpStream::connect(admin);
    if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), probe).await {
        bail!(
            "an appliance is running here (its admin listener answers on {admin}): warm through \
             it with --via https://ADDRESS (its tls.listen), so that both do not write one cache"
        );
    }
    let loopback = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0);
    let mut own = config.clone();
    own.dns.listen = vec![loopback];
    if own.dns.answer_ipv4.is_empty() {
        own.dns.answer_ipv4 = vec![Ipv4Addr::LOCALHOST];
    }
    own.tls.listen = vec![loopback];
    own.http_listen = Vec::new();
    own.admin.listen = loopback;
    own.access = AccessList::default();
    own.warm = Vec::new();
    let log = AccessLog::to_writer(Box::new(io::sink()));
    let bound = crate::app::build(own, log).await?;
    let addr = *bound.https_addrs.first().context("no https listener")?;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(crate::app::run(bound, shutdown.clone()));
    Ok((addr, (shutdown, task)))
}

/// The address in `https://host[:port]`.
async fn appliance_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let uri: http::Uri = url.parse().with_context(|| format!("--via {url:?}"))?;
    if uri.scheme_str() != Some("https") {
        bail!("--via {url:?}: give the appliance's HTTPS address, https://HOST[:PORT]");
    }
    let host = uri.host().context("--via: no host")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(443);
    let mut addrs = tokio::net::lookup_host((host, port)).await?;
    addrs
        .next()
        .with_context(|| format!("--via {url:?}: no address"))
}

/// The appliance's CA, the only certificate trusted.
pub fn roots(path: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read the appliance CA {} (--ca)", path.display()))?;
    for cert in certs {
        roots.add(cert?)?;
    }
    if roots.is_empty() {
        bail!("{}: no certificate (--ca)", path.display());
    }
    Ok(roots)
}
