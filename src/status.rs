//! What the status page shows: totals, a per-minute ring buffer for the last hour, per-registry
//! traffic and upstream health, top repositories by bytes served. Fed by the proxy, read as JSON
//! at `/api/status` and rendered by the page at `/` (`status.html`, self-contained). Which
//! freshness rule answered each tag request is counted in `tag_rules`; the storage tiers' rows
//! are `tiers`.
//!
//! A leaf: of the crate it imports only the lock helper [`crate::sync`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::sync::Locked;

mod tag_rules;
mod tiers;
pub use tag_rules::{RuleStatus, TagServed};
pub use tiers::TierRow;

/// Minutes of history kept for the chart.
const MINUTES: usize = 60;
/// Repositories tracked for the top list (the least-served are forgotten beyond this).
const MAX_REPOS: usize = 5_000;
const TOP: usize = 10;

/// The page, with `/*STATUS_JSON*/null` replaced by the snapshot.
pub const PAGE: &str = include_str!("status.html");

/// One finished client request.
pub struct RequestRecord<'a> {
    pub registry: &'a str,
    pub repo: Option<&'a str>,
    pub bytes: u64,
    /// Served from the cache (hit, joined fill, revalidated or stale).
    pub from_cache: bool,
    /// A cacheable request that had to go upstream.
    pub miss: bool,
}

#[derive(Default, Clone, Copy, Serialize)]
pub struct Counts {
    pub requests: u64,
    pub hits: u64,
    pub misses: u64,
    pub bytes_from_cache: u64,
    pub bytes_from_upstream: u64,
}

impl Counts {
    fn add(&mut self, r: &RequestRecord<'_>) {
        self.requests += 1;
        self.hits += u64::from(r.from_cache);
        self.misses += u64::from(r.miss);
        if r.from_cache {
            self.bytes_from_cache += r.bytes;
        } else {
            self.bytes_from_upstream += r.bytes;
        }
    }

    fn merge(&mut self, o: &Counts) {
        self.requests += o.requests;
        self.hits += o.hits;
        self.misses += o.misses;
        self.bytes_from_cache += o.bytes_from_cache;
        self.bytes_from_upstream += o.bytes_from_upstream;
    }
}

#[derive(Default, Clone, Serialize)]
pub struct RegistryStatus {
    pub requests: u64,
    pub bytes: u64,
    pub upstream_requests: u64,
    pub upstream_errors: u64,
    /// Milliseconds until the response head, of the last upstream request.
    pub last_latency_ms: Option<f64>,
    pub last_error: Option<String>,
    /// Unix seconds.
    pub last_error_at: Option<u64>,
}

#[derive(Clone, Copy, Serialize)]
pub struct Minute {
    /// Unix seconds of the minute's start.
    pub start: u64,
    #[serde(flatten)]
    pub counts: Counts,
}

/// The last run of a `[[warm]]` job, for the page.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WarmStatus {
    /// Its number in the config, from 1.
    pub job: usize,
    pub images: Vec<String>,
    pub every_s: u64,
    /// Unix seconds; `None` before its first run.
    pub last_run: Option<u64>,
    pub ok: Option<bool>,
    pub fetched: u64,
    pub cached: u64,
    pub bytes: u64,
    pub error: Option<String>,
}

#[derive(Default)]
struct Inner {
    total: Counts,
    warm: BTreeMap<usize, WarmStatus>,
    registries: BTreeMap<String, RegistryStatus>,
    repos: HashMap<(String, String), u64>,
    minutes: VecDeque<Minute>,
    tag_rules: tag_rules::TagRules,
}

/// Things the status page shows that the proxy does not see.
#[derive(Clone, Serialize)]
pub struct Facts {
    pub cache_bytes: u64,
    pub cache_objects: u64,
    pub cache_max_bytes: u64,
    pub ca_fingerprint: String,
    /// Unix seconds.
    pub ca_expires: u64,
    pub version: &'static str,
    /// The storage tiers: local, then shared when there is one.
    pub tiers: Vec<TierRow>,
}

#[derive(Serialize)]
pub struct RepoBytes {
    pub registry: String,
    pub repo: String,
    pub bytes: u64,
}

/// The JSON at `/api/status`.
#[derive(Serialize)]
pub struct Snapshot {
    pub now: u64,
    pub started: u64,
    pub total: Counts,
    pub last_hour: Counts,
    pub registries: BTreeMap<String, RegistryStatus>,
    pub top_repositories: Vec<RepoBytes>,
    pub minutes: Vec<Minute>,
    /// Per freshness rule, the default (`cache.manifest_ttl`) last.
    pub tag_rules: Vec<RuleStatus>,
    /// `[[warm]]` jobs, by number.
    pub warm: Vec<WarmStatus>,
    #[serde(flatten)]
    pub facts: Facts,
}

/// The aggregator. std Mutex, never held across .await; every update is a few map operations.
pub struct Status {
    started: SystemTime,
    inner: Mutex<Inner>,
}

impl Default for Status {
    fn default() -> Self {
        Self {
            started: SystemTime::now(),
            inner: Mutex::default(),
        }
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

impl Status {
    pub fn request(&self, r: &RequestRecord<'_>) {
        self.request_at(r, SystemTime::now());
    }

    fn request_at(&self, r: &RequestRecord<'_>, now: SystemTime) {
        let mut inner = self.inner.locked();
        inner.total.add(r);
        // Looked up before inserting: no key is allocated for a registry seen before.
        if !inner.registries.contains_key(r.registry) {
            inner
                .registries
                .insert(r.registry.to_owned(), Default::default());
        }
        if let Some(reg) = inner.registries.get_mut(r.registry) {
            reg.requests += 1;
            reg.bytes += r.bytes;
        }
        if let Some(repo) = r.repo {
            let key = (r.registry.to_owned(), repo.to_owned());
            *inner.repos.entry(key).or_default() += r.bytes;
            if inner.repos.len() > MAX_REPOS {
                let mut sizes: Vec<u64> = inner.repos.values().copied().collect();
                sizes.sort_unstable();
                let cutoff = sizes[sizes.len() / 2];
                inner.repos.retain(|_, b| *b > cutoff);
            }
        }
        let start = unix(now) / 60 * 60;
        if inner.minutes.back().is_none_or(|m| m.start != start) {
            inner.minutes.push_back(Minute {
                start,
                counts: Counts::default(),
            });
            while inner.minutes.len() > MINUTES {
                inner.minutes.pop_front();
            }
        }
        if let Some(m) = inner.minutes.back_mut() {
            m.counts.add(r);
        }
    }

    /// An upstream request finished (`error` says why it failed).
    pub fn upstream(&self, registry: &str, latency: Duration, error: Option<String>) {
        let mut inner = self.inner.locked();
        let reg = inner.registries.entry(registry.to_owned()).or_default();
        reg.upstream_requests += 1;
        reg.last_latency_ms = Some(latency.as_secs_f64() * 1000.0);
        if let Some(error) = error {
            reg.upstream_errors += 1;
            reg.last_error = Some(error);
            reg.last_error_at = Some(unix(SystemTime::now()));
        }
    }

    /// The freshness rules in force (start, reload), the default last; unchanged rules keep
    /// their counts.
    pub fn set_tag_rules(&self, rows: Vec<RuleStatus>) {
        self.inner.locked().tag_rules.set(rows);
    }

    /// A tag request decided by rule `index` (named `rule`) was answered `how`.
    pub fn tag_served(&self, index: usize, rule: &str, reference: &str, how: TagServed) {
        let now = unix(SystemTime::now());
        (self.inner.locked().tag_rules).served(index, rule, reference, how, now);
    }

    /// A `[[warm]]` job's state (configured, or after a run).
    pub fn warm(&self, job: WarmStatus) {
        self.inner.locked().warm.insert(job.job, job);
    }

    pub fn snapshot(&self, facts: Facts) -> Snapshot {
        let now = unix(SystemTime::now());
        let inner = self.inner.locked();
        let mut last_hour = Counts::default();
        for m in inner.minutes.iter().filter(|m| m.start + 3600 > now) {
            last_hour.merge(&m.counts);
        }
        let mut top: Vec<RepoBytes> = (inner.repos.iter())
            .map(|((registry, repo), bytes)| RepoBytes {
                registry: registry.clone(),
                repo: repo.clone(),
                bytes: *bytes,
            })
            .collect();
        top.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.repo.cmp(&b.repo)));
        top.truncate(TOP);
        Snapshot {
            now,
            started: unix(self.started),
            total: inner.total,
            last_hour,
            registries: inner.registries.clone(),
            top_repositories: top,
            minutes: inner.minutes.iter().copied().collect(),
            tag_rules: inner.tag_rules.rows(),
            warm: inner.warm.values().cloned().collect(),
            facts,
        }
    }

    /// The status page with `snapshot` embedded (it renders without a second request).
    pub fn page(snapshot: &Snapshot) -> String {
        let json = serde_json::to_string(snapshot).unwrap_or_else(|_| "null".into());
        // Inside <script>: keep "</" from closing it.
        PAGE.replace("/*STATUS_JSON*/null", &json.replace("</", "<\\/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            cache_bytes: 1,
            cache_objects: 1,
            cache_max_bytes: 10,
            ca_fingerprint: "AB".into(),
            ca_expires: 0,
            version: "test",
            tiers: Vec::new(),
        }
    }

    #[test]
    fn requests_add_up_by_minute_registry_and_repository() {
        let s = Status::default();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let rec = |repo, bytes, from_cache, miss| RequestRecord {
            registry: "ghcr.io",
            repo: Some(repo),
            bytes,
            from_cache,
            miss,
        };
        s.request_at(&rec("a/x", 100, false, true), t0);
        s.request_at(&rec("a/x", 100, true, false), t0 + Duration::from_secs(5));
        s.request_at(&rec("b/y", 500, true, false), t0 + Duration::from_secs(65));
        s.upstream(
            "ghcr.io",
            Duration::from_millis(12),
            Some("connect refused".into()),
        );
        let snap = s.snapshot(facts());
        assert_eq!(snap.total.requests, 3);
        assert_eq!((snap.total.hits, snap.total.misses), (2, 1));
        assert_eq!(
            (snap.total.bytes_from_cache, snap.total.bytes_from_upstream),
            (600, 100)
        );
        assert_eq!(snap.minutes.len(), 2);
        assert_eq!(snap.minutes[0].counts.requests, 2);
        assert_eq!(snap.top_repositories[0].repo, "b/y");
        let ghcr = &snap.registries["ghcr.io"];
        assert_eq!((ghcr.requests, ghcr.upstream_errors), (3, 1));
        assert_eq!(ghcr.last_error.as_deref(), Some("connect refused"));
        let page = Status::page(&snap);
        assert!(
            page.contains("\"requests\":3") && !page.contains("/*STATUS_JSON*/"),
            "data embedded"
        );
    }
}
