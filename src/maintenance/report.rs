//! What `regcache cache ls|du|verify` found, as typed reports: serialized as they are for `--json`
//! (field names are a contract, documented in README's "Command line") and printed for people by
//! the `*_text` functions (the text the commands always printed).

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::human;
use crate::cache::ObjectInfo;

/// `cache ls`: the objects, most recently used first, and their total.
#[derive(Debug, Serialize)]
pub struct Listing {
    pub objects: Vec<Object>,
    pub total: Total,
}

#[derive(Debug, Serialize)]
pub struct Object {
    /// `sha256:` and 64 hex digits.
    pub digest: String,
    /// Bytes.
    pub size: u64,
    pub media_type: String,
    /// Seconds since the Unix epoch.
    pub last_used_unix: u64,
    /// Where it was pulled from (several places can share one object).
    pub refs: Vec<Ref>,
    /// `"local"` (the cache directory) or `"shared"` (the `[storage]` store).
    pub tier: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Ref {
    pub registry: String,
    pub repo: String,
}

#[derive(Debug, Serialize)]
pub struct Total {
    pub objects: usize,
    pub bytes: u64,
}

impl From<&ObjectInfo> for Object {
    fn from(o: &ObjectInfo) -> Self {
        let refs = (o.refs.iter())
            .map(|(registry, repo)| Ref {
                registry: registry.clone(),
                repo: repo.clone(),
            })
            .collect();
        Self {
            digest: o.digest.to_string(),
            size: o.size,
            media_type: o.media_type.clone(),
            last_used_unix: unix(o.last_used),
            refs,
            tier: "local",
        }
    }
}

impl Listing {
    pub fn of(listed: &[ObjectInfo]) -> Self {
        Self {
            objects: listed.iter().map(Object::from).collect(),
            total: Total {
                objects: listed.len(),
                bytes: listed.iter().map(|o| o.size).sum(),
            },
        }
    }
}

impl Listing {
    /// With the shared tier's objects after the local ones.
    pub fn with_shared(mut self, shared: &[ObjectInfo]) -> Self {
        for o in shared {
            self.objects.push(Object {
                tier: "shared",
                ..Object::from(o)
            });
        }
        self.total.objects += shared.len();
        self.total.bytes += shared.iter().map(|o| o.size).sum::<u64>();
        self
    }
}

/// One line per object, then `N objects, SIZE`.
pub fn listing_text(listing: &Listing) -> String {
    let now = unix(SystemTime::now());
    let mut out = String::new();
    for o in &listing.objects {
        let refs: Vec<String> = o
            .refs
            .iter()
            .map(|r| format!("{}/{}", r.registry, r.repo))
            .collect();
        out.push_str(&format!(
            "{}  {:>10}  {:<48}  {}  {}\n",
            o.digest,
            human(o.size),
            o.media_type,
            match o.tier {
                "shared" => "in the shared store".to_owned(),
                _ => format!("used {} ago", ago(now.saturating_sub(o.last_used_unix))),
            },
            refs.join(", ")
        ));
    }
    let total = &listing.total;
    out.push_str(&format!(
        "{} objects, {}\n",
        total.objects,
        human(total.bytes)
    ));
    out
}

/// `cache du`: the cache's totals against `cache.max_size`, and per registry.
#[derive(Debug, Serialize)]
pub struct Usage {
    /// cache.dir
    pub dir: String,
    pub objects: usize,
    pub bytes: u64,
    /// cache.max_size, bytes.
    pub max_size: u64,
    /// bytes of max_size, 0 to 100 (one decimal).
    pub used_percent: f64,
    /// By registry name, sorted; an object pulled from two registries counts in both, one with
    /// no recorded registry only in the totals.
    pub registries: Vec<RegistryUsage>,
    /// The shared tier (`[storage]`), when there is one and it was asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared: Option<SharedUsage>,
}

/// The shared store's totals.
#[derive(Debug, Serialize)]
pub struct SharedUsage {
    /// `s3://bucket/prefix at endpoint`.
    pub store: String,
    pub objects: usize,
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct RegistryUsage {
    pub registry: String,
    pub objects: usize,
    pub bytes: u64,
}

impl Usage {
    /// `(objects, bytes)` as the store counts them; `listed` for the per-registry figures.
    pub fn of(
        dir: String,
        (objects, bytes): (usize, u64),
        max_size: u64,
        listed: &[ObjectInfo],
    ) -> Self {
        let used_percent = match max_size {
            0 => 0.0,
            max => (bytes as f64 * 1000.0 / max as f64).round() / 10.0,
        };
        let mut by: BTreeMap<&str, (usize, u64)> = BTreeMap::new();
        for o in listed {
            let mut registries: Vec<&str> = o.refs.iter().map(|(r, _)| r.as_str()).collect();
            registries.sort_unstable();
            registries.dedup();
            for r in registries {
                let entry = by.entry(r).or_default();
                *entry = (entry.0 + 1, entry.1 + o.size);
            }
        }
        let registries = (by.into_iter())
            .map(|(registry, (objects, bytes))| RegistryUsage {
                registry: registry.to_owned(),
                objects,
                bytes,
            })
            .collect();
        Self {
            dir,
            objects,
            bytes,
            max_size,
            used_percent,
            registries,
            shared: None,
        }
    }
}

/// `N objects, SIZE of MAX (P%) in DIR`, and `shared: N objects, SIZE in STORE`.
pub fn usage_text(u: &Usage) -> String {
    let local = format!(
        "{} objects, {} of {} ({:.1}%) in {}\n",
        u.objects,
        human(u.bytes),
        human(u.max_size),
        u.used_percent,
        u.dir
    );
    match &u.shared {
        None => local,
        Some(s) => {
            let (n, bytes) = (s.objects, human(s.bytes));
            format!("{local}shared: {n} objects, {bytes} in {}\n", s.store)
        }
    }
}

/// `cache verify`: each object's verdict and a summary. Bad objects have been dropped.
#[derive(Debug, Default, Serialize)]
pub struct Verified {
    pub objects: Vec<Verdict>,
    pub summary: Summary,
}

#[derive(Debug, Serialize)]
pub struct Verdict {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
    /// `"ok"`, `"bad"` (size or hash wrong; dropped), or `"unreadable"` (the shared store's
    /// object could not be read whole: kept, not judged).
    pub verdict: &'static str,
    /// Why it is bad; null when ok.
    pub reason: Option<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub checked: usize,
    pub bytes: u64,
    pub ok: usize,
    pub bad: usize,
    /// The shared store's objects that could not be read (kept).
    pub unreadable: usize,
    /// Why the check stopped before the end (the shared store down); null when it did not.
    pub stopped: Option<String>,
}

impl Verified {
    /// One more object checked; `problem` is why it is bad.
    pub fn add(&mut self, o: &ObjectInfo, problem: Option<&str>) {
        self.summary.checked += 1;
        self.summary.bytes += o.size;
        match problem {
            None => self.summary.ok += 1,
            Some(_) => self.summary.bad += 1,
        }
        self.objects.push(Verdict {
            digest: o.digest.to_string(),
            size: o.size,
            media_type: o.media_type.clone(),
            verdict: if problem.is_some() { "bad" } else { "ok" },
            reason: problem.map(str::to_owned),
        });
    }

    /// One more object that could not be read whole (a shared store's read error): kept.
    pub fn unreadable(&mut self, o: &ObjectInfo, why: &str) {
        self.summary.unreadable += 1;
        self.objects.push(Verdict {
            digest: o.digest.to_string(),
            size: o.size,
            media_type: o.media_type.clone(),
            verdict: "unreadable",
            reason: Some(why.to_owned()),
        });
    }

    /// Whether something was wrong: a bad or unreadable object, or a check cut short.
    pub fn found_bad(&self) -> bool {
        let s = &self.summary;
        s.bad > 0 || s.unreadable > 0 || s.stopped.is_some()
    }
}

/// A line per bad object, then the summary.
pub fn verified_text(v: &Verified) -> String {
    let mut out = String::new();
    for o in v.objects.iter().filter(|o| o.reason.is_some()) {
        let why = o.reason.as_deref().unwrap_or_default();
        match o.verdict {
            "unreadable" => out.push_str(&format!("unreadable {}: {why}; kept\n", o.digest)),
            _ => out.push_str(&format!("bad {}: {why}; dropped\n", o.digest)),
        }
    }
    let s = &v.summary;
    out.push_str(&format!(
        "verified {} objects, {}: {} bad, dropped",
        s.checked,
        human(s.bytes),
        s.bad
    ));
    if s.unreadable > 0 {
        out.push_str(&format!("; {} unreadable, kept", s.unreadable));
    }
    out.push('\n');
    if let Some(why) = &s.stopped {
        out.push_str(&format!("stopped before the end: {why}\n"));
    }
    out
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn ago(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Digest;

    fn object(data: &[u8], refs: &[(&str, &str)]) -> ObjectInfo {
        ObjectInfo {
            digest: Digest::of(data),
            size: data.len() as u64,
            media_type: "application/octet-stream".into(),
            refs: refs
                .iter()
                .map(|(r, p)| (r.to_string(), p.to_string()))
                .collect(),
            last_used: UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000),
        }
    }

    #[test]
    fn usage_counts_each_registry_once_per_object() {
        let listed = [
            object(
                b"ab",
                &[("ghcr.io", "a"), ("ghcr.io", "b"), ("quay.io", "c")],
            ),
            object(b"cde", &[("ghcr.io", "a")]),
            object(b"f", &[]),
        ];
        let u = Usage::of("/c".into(), (3, 6), 600, &listed);
        let by: Vec<_> = u
            .registries
            .iter()
            .map(|r| (r.registry.as_str(), r.objects, r.bytes))
            .collect();
        assert_eq!(by, [("ghcr.io", 2, 5), ("quay.io", 1, 2)]);
        assert_eq!(u.used_percent, 1.0);
        assert_eq!(usage_text(&u), "3 objects, 6 B of 600 B (1.0%) in /c\n");
    }

    #[test]
    fn listing_and_verdicts_carry_the_documented_fields() {
        let listed = [object(b"ab", &[("ghcr.io", "a")])];
        let value = serde_json::to_value(Listing::of(&listed)).unwrap();
        assert_eq!(value["objects"][0]["last_used_unix"], 1_700_000_000);
        assert_eq!(value["objects"][0]["refs"][0]["repo"], "a");
        assert_eq!(value["total"]["bytes"], 2);
        let mut v = Verified::default();
        v.add(&listed[0], None);
        v.add(&object(b"x", &[]), Some("content is wrong"));
        let value = serde_json::to_value(&v).unwrap();
        assert_eq!(
            (
                value["objects"][0]["verdict"].as_str(),
                value["objects"][0]["reason"].is_null()
            ),
            (Some("ok"), true)
        );
        assert_eq!(value["objects"][1]["verdict"], "bad");
        assert_eq!(
            (
                value["summary"]["ok"].as_u64(),
                value["summary"]["bad"].as_u64()
            ),
            (Some(1), Some(1))
        );
        assert!(verified_text(&v).ends_with("verified 2 objects, 3 B: 1 bad, dropped\n"));
    }
}
