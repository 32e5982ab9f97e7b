//! The status page's table of tag freshness rules: for each `[[cache.rule]]`, and last the
//! default (`cache.manifest_ttl`), how the tag requests it decided were answered and the last tag
//! it served. Rows are plain text handed over by the proxy; a leaf like its parent.

use serde::Serialize;

/// One rule's row (`tag_rules` in `/api/status`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RuleStatus {
    /// The rule's `name`, `rule N`, or `cache.manifest_ttl` for the default.
    pub rule: String,
    /// Its `match` glob over `registry/repository`.
    #[serde(rename = "match")]
    pub repos: String,
    pub tags: String,
    /// `"60s"`, `"0s"`, `"forever"`.
    pub manifest_ttl: String,
    /// Answered from a fresh mapping, without asking the upstream.
    pub hits: u64,
    /// Asked the upstream (a HEAD) and served from the cache: unchanged.
    pub revalidated: u64,
    /// Went to the upstream: first seen, changed, or a HEAD passed on.
    pub upstream: u64,
    /// Served from the cache while the upstream was unavailable.
    pub stale: u64,
    /// `registry/repository:tag` of the last tag request.
    pub last_tag: Option<String>,
    /// Unix seconds of that request.
    pub last_at: Option<u64>,
}

/// How a tag request was answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TagServed {
    Hit,
    Revalidated,
    Upstream,
    Stale,
}

impl RuleStatus {
    /// Whether `other` describes the same rule (its counts carry over a reload).
    fn same_rule(&self, other: &Self) -> bool {
        (&self.rule, &self.repos, &self.tags, &self.manifest_ttl)
            == (&other.rule, &other.repos, &other.tags, &other.manifest_ttl)
    }

    fn count(&mut self, reference: &str, how: TagServed, now: u64) {
        let n = match how {
            TagServed::Hit => &mut self.hits,
            TagServed::Revalidated => &mut self.revalidated,
            TagServed::Upstream => &mut self.upstream,
            TagServed::Stale => &mut self.stale,
        };
        *n += 1;
        self.last_tag = Some(reference.to_owned());
        self.last_at = Some(now);
    }
}

/// The rows in rule order; replaced on reload, keeping the counts of unchanged rules.
#[derive(Default)]
pub(super) struct TagRules(Vec<RuleStatus>);

impl TagRules {
    pub(super) fn set(&mut self, rows: Vec<RuleStatus>) {
        let old = std::mem::take(&mut self.0);
        self.0 = (rows.into_iter())
            .map(|row| match old.iter().find(|o| o.same_rule(&row)) {
                Some(kept) => kept.clone(),
                None => row,
            })
            .collect();
    }

    /// Counts a request on row `index` if that row is still `rule` (a reload may have moved it).
    pub(super) fn served(
        &mut self,
        index: usize,
        rule: &str,
        reference: &str,
        how: TagServed,
        now: u64,
    ) {
        if let Some(row) = self.0.get_mut(index).filter(|r| r.rule == rule) {
            row.count(reference, how, now);
        }
    }

    pub(super) fn rows(&self) -> Vec<RuleStatus> {
        self.0.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(rule: &str, ttl: &str) -> RuleStatus {
        RuleStatus {
            rule: rule.into(),
            repos: "**".into(),
            tags: "**".into(),
            manifest_ttl: ttl.into(),
            ..RuleStatus::default()
        }
    }

    #[test]
    fn rows_count_by_rule_and_keep_their_counts_over_a_reload() {
        let mut t = TagRules::default();
        t.set(vec![row("latest", "1m"), row("cache.manifest_ttl", "60s")]);
        t.served(0, "latest", "docker.io/library/x:latest", TagServed::Hit, 7);
        t.served(
            0,
            "latest",
            "docker.io/library/x:latest",
            TagServed::Revalidated,
            8,
        );
        t.served(
            1,
            "cache.manifest_ttl",
            "ghcr.io/a:1",
            TagServed::Upstream,
            9,
        );
        t.served(1, "gone", "ghcr.io/a:1", TagServed::Upstream, 9);
        let rows = t.rows();
        assert_eq!(
            (rows[0].hits, rows[0].revalidated, rows[0].upstream),
            (1, 1, 0)
        );
        assert_eq!(
            rows[0].last_tag.as_deref(),
            Some("docker.io/library/x:latest")
        );
        assert_eq!((rows[1].upstream, rows[1].last_at), (1, Some(9)));
        // reload: a new rule first, "latest" kept, the default's TTL changed
        t.set(vec![
            row("new", "0s"),
            row("latest", "1m"),
            row("cache.manifest_ttl", "5m"),
        ]);
        let rows = t.rows();
        assert_eq!((rows[0].hits, rows[1].hits, rows[1].revalidated), (0, 1, 1));
        assert_eq!(rows[2].upstream, 0, "a changed rule starts again");
    }
}
