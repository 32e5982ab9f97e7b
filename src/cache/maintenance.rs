//! The operations behind `regcache cache …`: list, purge, verify (re-hash every object).

use std::time::SystemTime;

use super::files::hash_file;
use super::index::Doomed;
use super::store::Store;
use super::Digest;

/// One stored object, as listed by `regcache cache ls`.
#[derive(Clone, Debug)]
pub struct ObjectInfo {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    pub refs: Vec<(String, String)>,
    pub last_used: SystemTime,
}

/// What `regcache cache verify` found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub checked: usize,
    pub bytes: u64,
    pub dropped: Vec<(Digest, String)>,
}

impl Store {
    pub fn list(&self) -> Vec<ObjectInfo> {
        let state = self.lock();
        let mut out: Vec<ObjectInfo> = (state.objects.iter())
            .map(|(d, e)| ObjectInfo {
                digest: d.clone(),
                size: e.size,
                media_type: e.media_type.clone(),
                refs: e.refs.clone(),
                last_used: e.last_used,
            })
            .collect();
        out.sort_by_key(|o| std::cmp::Reverse(o.last_used));
        out
    }

    /// Removes the objects `select` picks; returns (objects, bytes) removed.
    pub fn purge(&self, select: impl Fn(&ObjectInfo) -> bool) -> (usize, u64) {
        let chosen: Vec<ObjectInfo> = self.list().into_iter().filter(|o| select(o)).collect();
        let mut doomed = Doomed::default();
        let mut state = self.lock();
        let mut bytes = 0;
        for o in &chosen {
            bytes += o.size;
            state.remove(&self.dir, &o.digest, &mut doomed);
        }
        self.gauge(&state);
        drop(state);
        self.bury(doomed);
        (chosen.len(), bytes)
    }

    /// Re-hashes every object; drops those whose size or hash is wrong.
    pub fn verify(&self) -> VerifyReport {
        self.verify_each(|_, _| {})
    }

    /// [`Store::verify`], telling `each` every object's verdict as it goes (`Some(why)`: bad,
    /// dropped), for progress and per-object reports.
    pub fn verify_each(&self, mut each: impl FnMut(&ObjectInfo, Option<&str>)) -> VerifyReport {
        let mut report = VerifyReport::default();
        for o in self.list() {
            let path = self.object_path(&o.digest);
            let problem = match hash_file(&path) {
                Ok((d, n)) if d == o.digest && n == o.size => None,
                Ok((d, n)) => Some(format!("content is {d}, {n} bytes")),
                Err(e) => Some(e.to_string()),
            };
            report.checked += 1;
            report.bytes += o.size;
            each(&o, problem.as_deref());
            if let Some(why) = problem {
                let mut doomed = Doomed::default();
                self.lock().remove(&self.dir, &o.digest, &mut doomed);
                self.bury(doomed);
                report.dropped.push((o.digest, why));
            }
        }
        report
    }
}
