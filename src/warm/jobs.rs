//! `[[warm]]` jobs: the running appliance keeps images warm. Each job is `regcache warm` of its
//! images, run against the appliance's own HTTPS listener (so it takes the path a client pull
//! takes and is subject to `access.allow`: loopback must be allowed), first shortly after start,
//! then every `every`. Each run revalidates the tags (fetching new digests) and is counted in the
//! metrics per job and shown on the status page.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::RootCertStore;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::client::RegistryClient;
use super::progress::Progress;
use super::pull::{Platforms, Tally};
use super::{warm_all, Outcome};
use crate::config::WarmJob;
use crate::metrics::{Metrics, WarmJobLabels, WarmLabels, WarmObjectLabels};
use crate::reference::{Platform, Reference};
use crate::status::{Status, WarmStatus};

/// A job's first run waits this long after start (the listeners are up, the logs readable).
const FIRST_RUN: Duration = Duration::from_secs(5);

/// What the jobs need of the running appliance.
pub struct Appliance {
    /// Its first HTTPS address (a wildcard address is asked on loopback).
    pub https: SocketAddr,
    pub roots: RootCertStore,
    pub metrics: Arc<Metrics>,
    pub status: Arc<Status>,
}

/// Runs every job until `shutdown`.
pub async fn run(jobs: Vec<WarmJob>, appliance: Appliance, shutdown: CancellationToken) {
    let client = Arc::new(RegistryClient::new(
        loopback_if_wildcard(appliance.https),
        appliance.roots,
    ));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, job) in jobs.into_iter().enumerate() {
        let (metrics, status) = (appliance.metrics.clone(), appliance.status.clone());
        let runner = Runner {
            number: i + 1,
            job,
            client: client.clone(),
            metrics,
            status,
        };
        tasks.spawn(runner.run(shutdown.clone()));
    }
    while tasks.join_next().await.is_some() {}
}

struct Runner {
    number: usize,
    job: WarmJob,
    client: Arc<RegistryClient>,
    metrics: Arc<Metrics>,
    status: Arc<Status>,
}

impl Runner {
    async fn run(self, shutdown: CancellationToken) {
        self.status.warm(self.state(None));
        let mut wait = FIRST_RUN;
        loop {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => return,
            }
            let outcomes = tokio::select! {
                outcomes = self.once() => outcomes,
                () = shutdown.cancelled() => return,
            };
            self.record(&outcomes);
            wait = self.job.every;
        }
    }

    async fn once(&self) -> Vec<Outcome> {
        let images: Vec<Reference> = (self.job.images.iter())
            .filter_map(|i| Reference::parse(i).ok())
            .collect();
        let platforms = match self.job.platforms.is_empty() {
            true => vec![Platform::host()],
            false => (self.job.platforms.iter())
                .filter_map(|p| Platform::parse(p))
                .collect(),
        };
        let progress = Progress::new(true);
        warm_all(
            &self.client,
            &images,
            &Platforms::These(platforms),
            &progress,
        )
        .await
    }

    fn record(&self, outcomes: &[Outcome]) {
        let mut total = Tally::default();
        for o in outcomes {
            total.fetched += o.tally.fetched;
            total.cached += o.tally.cached;
            total.bytes += o.tally.bytes;
        }
        let error =
            (outcomes.iter()).find_map(|o| o.error.as_ref().map(|e| format!("{}: {e}", o.image)));
        let job = self.number.to_string();
        let result = if error.is_some() { "failed" } else { "ok" };
        let labels = WarmLabels {
            job: job.clone(),
            result: result.into(),
        };
        self.metrics.warm_runs.get_or_create(&labels).inc();
        for (how, n) in [("fetched", total.fetched), ("cached", total.cached)] {
            let labels = WarmObjectLabels {
                job: job.clone(),
                how: how.into(),
            };
            self.metrics.warm_objects.get_or_create(&labels).inc_by(n);
        }
        (self
            .metrics
            .warm_bytes
            .get_or_create(&WarmJobLabels { job }))
        .inc_by(total.bytes);
        match &error {
            Some(e) => warn!(job = self.number, error = %e, "warm job failed"),
            None => info!(
                job = self.number,
                fetched = total.fetched,
                cached = total.cached,
                bytes = total.bytes,
                "warm job done"
            ),
        }
        self.status.warm(self.state(Some((total, error))));
    }

    /// The status page's line: the job, and its last run when there was one.
    fn state(&self, last: Option<(Tally, Option<String>)>) -> WarmStatus {
        let mut state = WarmStatus {
            job: self.number,
            images: self.job.images.clone(),
            every_s: self.job.every.as_secs(),
            ..WarmStatus::default()
        };
        if let Some((tally, error)) = last {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            state.last_run = Some(now.as_secs());
            state.ok = Some(error.is_none());
            (state.fetched, state.cached, state.bytes) = (tally.fetched, tally.cached, tally.bytes);
            state.error = error;
        }
        state
    }
}

fn loopback_if_wildcard(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}
