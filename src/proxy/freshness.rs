//! Tag freshness per reference: which `[[cache.rule]]` decides a tag (first match wins, none:
//! `cache.manifest_ttl`), the TTL it gives a tag mapping, whether a held mapping is still fresh
//! under it, and the status page's count of how each rule's tag requests were answered.

use std::time::Duration;

use tokio::time::Instant;

use super::outcome::CacheOutcome;
use super::{Policy, Proxy, Route};
use crate::cache::TagKey;
use crate::config::rule_for;
use crate::metrics::{TagAnswer, TagRuleLabels};
use crate::names::NamePattern;
use crate::status::{RuleStatus, TagServed};
use crate::sync::ReadWrite;

/// The name of the status page's row for tags no rule covers.
pub(super) const DEFAULT_RULE: &str = "cache.manifest_ttl";

/// The rule deciding one tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Freshness {
    /// The rule's index; the number of rules for the default.
    pub index: usize,
    /// Its name (`DEFAULT_RULE` for the default).
    pub rule: String,
    pub ttl: Duration,
}

impl Proxy {
    /// The rule deciding the tag of `key` on `route`, under the policy in force.
    pub(super) fn freshness(&self, route: &Route, key: &TagKey) -> Freshness {
        let policy = self.policy.read_now();
        let names = route.names.iter().filter_map(|p| match p {
            NamePattern::Exact(name) => Some(name.as_str()),
            NamePattern::Suffix(_) => None,
        });
        match rule_for(&policy.rules, names, &key.repo, &key.tag) {
            Some((index, rule)) => Freshness {
                index,
                rule: rule.name.clone(),
                ttl: rule.manifest_ttl.duration(),
            },
            None => Freshness {
                index: policy.rules.len(),
                rule: DEFAULT_RULE.to_owned(),
                ttl: policy.manifest_ttl,
            },
        }
    }

    /// Counts a tag request on its rule's row of the status page and in the metrics.
    pub(super) fn count_tag(&self, rule: &Freshness, key: &TagKey, outcome: Option<CacheOutcome>) {
        let (how, served) = match outcome {
            Some(CacheOutcome::Hit) => (TagServed::Hit, TagAnswer::Hit),
            Some(CacheOutcome::Revalidated) => (TagServed::Revalidated, TagAnswer::Revalidated),
            Some(CacheOutcome::Stale) => (TagServed::Stale, TagAnswer::Stale),
            _ => (TagServed::Upstream, TagAnswer::Upstream),
        };
        let reference = format!("{}/{}:{}", key.registry, key.repo, key.tag);
        (self.status).tag_served(rule.index, &rule.rule, &reference, how);
        let number = match rule.rule == DEFAULT_RULE {
            true => "default".to_owned(),
            false => (rule.index + 1).to_string(),
        };
        let labels = TagRuleLabels {
            rule: number,
            served,
        };
        self.metrics
            .cache_tag_rule_requests
            .get_or_create(&labels)
            .inc();
    }
}

/// Whether a mapping due at `fresh_until` is fresh at `now` under `ttl`: its deadline is ahead,
/// and no further ahead than `ttl`, so that a rule shortened by a reload takes effect at once
/// (a longer one at the next confirmation). `"0s"` is never fresh.
pub(super) fn fresh(fresh_until: Instant, ttl: Duration, now: Instant) -> bool {
    fresh_until > now && fresh_until.duration_since(now) <= ttl
}

/// The status page's rows for `policy`: each rule, then the default.
pub(super) fn status_rows(policy: &Policy) -> Vec<RuleStatus> {
    let rules = policy.rules.iter().map(|r| RuleStatus {
        rule: r.name.clone(),
        repos: r.repos.to_string(),
        tags: r.tags.to_string(),
        manifest_ttl: r.manifest_ttl.describe(),
        ..RuleStatus::default()
    });
    let default = RuleStatus {
        rule: DEFAULT_RULE.to_owned(),
        repos: "**".to_owned(),
        tags: "*".to_owned(),
        manifest_ttl: crate::config::ManifestTtl::For(policy.manifest_ttl).describe(),
        ..RuleStatus::default()
    };
    rules.chain(std::iter::once(default)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mapping_is_fresh_until_due_and_never_beyond_the_rule() {
        let now = Instant::now();
        let min = Duration::from_secs(60);
        assert!(fresh(now + min, min, now));
        assert!(!fresh(now, min, now), "due now: stale");
        assert!(
            !fresh(now + min, Duration::ZERO, now),
            "0s: always revalidated"
        );
        // put under a day-long rule, then the rule became a minute
        assert!(!fresh(now + Duration::from_secs(86_400), min, now));
        let forever = crate::config::FOREVER;
        assert!(fresh(now + forever, forever, now));
    }
}
