//! `[[cache.rule]]`: freshness per reference. Each rule names repositories (`match`, a glob over
//! `registry/repository`), tags (`tags`, a glob, or a regular expression written `/…/`) and how long a tag mapping is served without
//! asking the upstream (`manifest_ttl`: a duration, `"0s"` = ask every time, `"forever"` = an
//! immutable tag). The first rule that matches decides; none: `cache.manifest_ttl`.
//!
//! Parsed and checked here (each problem on its line); [`rule_for`] is the lookup the proxy makes.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::glob::Glob;
use super::tag_regex::TagRegex;
use super::validate::Validator;
use super::values::parse_duration;

/// What "forever" lasts: long enough never to come, short enough for any clock's arithmetic.
pub const FOREVER: Duration = super::values::MAX_DURATION;

/// One `[[cache.rule]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    name: Option<String>,
    #[serde(rename = "match")]
    repos: Option<Spanned<String>>,
    tags: Option<Spanned<String>>,
    manifest_ttl: Spanned<String>,
}

/// How long a tag mapping chosen by a rule stays fresh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestTtl {
    For(Duration),
    /// An immutable tag: never revalidated while the appliance runs.
    Forever,
}

impl ManifestTtl {
    /// The duration to add to a clock ([`FOREVER`] for `Forever`).
    pub fn duration(self) -> Duration {
        match self {
            Self::For(d) => d,
            Self::Forever => FOREVER,
        }
    }

    /// As a config value, in its largest whole unit (`"forever"`, `"1d"`, `"90s"`, `"0s"`).
    pub fn describe(self) -> String {
        let d = match self {
            Self::Forever => return "forever".to_owned(),
            Self::For(d) if d.subsec_millis() != 0 => return format!("{}ms", d.as_millis()),
            Self::For(d) => d.as_secs(),
        };
        let unit = [(86_400, "d"), (3600, "h"), (60, "m")]
            .into_iter()
            .find(|(n, _)| d != 0 && d % n == 0);
        match unit {
            Some((n, unit)) => format!("{}{unit}", d / n),
            None => format!("{d}s"),
        }
    }
}

/// The `tags` of a rule: a glob, or a regular expression written between slashes (a tag never
/// holds a `/`, so the two cannot be confused).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TagPattern {
    Glob(Glob),
    Regex(TagRegex),
}

impl TagPattern {
    pub fn matches(&self, tag: &str) -> bool {
        match self {
            Self::Glob(g) => g.matches(tag),
            Self::Regex(r) => r.matches(tag),
        }
    }
}

impl std::fmt::Display for TagPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Glob(g) => write!(f, "{g}"),
            Self::Regex(r) => write!(f, "/{r}/"),
        }
    }
}

/// A validated `[[cache.rule]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagRule {
    /// `name` as written, else `rule N` (N counts from 1 in file order): shown on the status page.
    pub name: String,
    /// Over `registry/repository`; any of the registry's exact names (host or alias) may match.
    pub repos: Glob,
    pub tags: TagPattern,
    pub manifest_ttl: ManifestTtl,
}

impl TagRule {
    /// Whether the rule covers `tag` of `repo` on a registry known by `names`.
    pub fn covers<'a>(
        &self,
        mut names: impl Iterator<Item = &'a str>,
        repo: &str,
        tag: &str,
    ) -> bool {
        self.tags.matches(tag) && names.any(|n| self.repos.matches(&format!("{n}/{repo}")))
    }
}

/// The first rule covering the tag, with its index; `None`: `cache.manifest_ttl` applies.
pub fn rule_for<'r, 'a>(
    rules: &'r [TagRule],
    names: impl Iterator<Item = &'a str> + Clone,
    repo: &str,
    tag: &str,
) -> Option<(usize, &'r TagRule)> {
    (rules.iter().enumerate()).find(|(_, r)| r.covers(names.clone(), repo, tag))
}

/// `"forever"` or a duration.
fn parse_ttl(s: &str) -> Result<ManifestTtl, super::ValueError> {
    match s {
        "forever" => Ok(ManifestTtl::Forever),
        s => parse_duration(s).map(ManifestTtl::For),
    }
}

impl Validator<'_> {
    /// The rules in file order; a rule with a problem is left out (its problems recorded).
    pub(super) fn rules(&mut self, raw: Vec<RawRule>) -> Vec<TagRule> {
        let mut out = Vec::new();
        for (i, rule) in raw.into_iter().enumerate() {
            if let Some(rule) = self.rule(i + 1, rule) {
                out.push(rule);
            }
        }
        out
    }

    fn rule(&mut self, n: usize, raw: RawRule) -> Option<TagRule> {
        let RawRule {
            name,
            repos,
            tags,
            manifest_ttl,
        } = raw;
        let key = |k: &str| format!("cache.rule[{n}].{k}");
        let repos = self.glob(&key("match"), repos, |g| {
            (!g.spans_segments()).then_some(
                "write registry/repository, e.g. \"docker.io/library/*\" (or \"ghcr.io/**\")",
            )
        });
        let tags = self.tag_pattern(&key("tags"), tags);
        let ttl = match parse_ttl(manifest_ttl.get_ref()) {
            Ok(ttl) => Some(ttl),
            Err(why) => {
                let value = manifest_ttl.get_ref();
                let why = format!("{why}, or \"forever\"");
                self.problem(
                    &manifest_ttl,
                    format!("{}: {value:?}: {why}", key("manifest_ttl")),
                );
                None
            }
        };
        Some(TagRule {
            name: name.unwrap_or_else(|| format!("rule {n}")),
            repos: repos?,
            tags: tags?,
            manifest_ttl: ttl?,
        })
    }

    /// A glob or `/regex/` (every tag when absent).
    fn tag_pattern(&mut self, key: &str, item: Option<Spanned<String>>) -> Option<TagPattern> {
        let regex = (item.as_ref()).and_then(|i| i.get_ref().strip_prefix('/')?.strip_suffix('/'));
        let Some(regex) = regex else {
            let glob = self.glob(key, item, |g| {
                g.spans_segments()
                    .then_some("a tag holds no /: write * (or /regex/ for an expression)")
            });
            return glob.map(TagPattern::Glob);
        };
        match TagRegex::new(regex) {
            Ok(re) => Some(TagPattern::Regex(re)),
            Err(why) => {
                let item = item.expect("a regex was written");
                self.problem(&item, format!("{key}: {:?}: {why}", item.get_ref()));
                None
            }
        }
    }

    /// A glob (`**` when absent), refused when it does not compile or `wrong` says why.
    fn glob(
        &mut self,
        key: &str,
        item: Option<Spanned<String>>,
        wrong: impl Fn(&Glob) -> Option<&'static str>,
    ) -> Option<Glob> {
        let Some(item) = item else {
            return Some(Glob::new("**").expect("** compiles"));
        };
        let why = match Glob::new(item.get_ref()) {
            Ok(glob) => match wrong(&glob) {
                None => return Some(glob),
                Some(why) => why.to_owned(),
            },
            Err(e) => e.to_string(),
        };
        self.problem(&item, format!("{key}: {:?}: {why}", item.get_ref()));
        None
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::problems;
    use super::super::{parse, Source};
    use super::*;

    const SITE: &str = "[cache]\nmanifest_ttl = \"5m\"\n\
        [[cache.rule]]\nmatch = \"docker.io/**\"\ntags = \"latest\"\nmanifest_ttl = \"1m\"\n\
        [[cache.rule]]\nname = \"releases\"\nmatch = \"docker.io/library/*\"\n\
        tags = \"v[0-9]*.[0-9]*.[0-9]*\"\nmanifest_ttl = \"1d\"\n\
        [[cache.rule]]\nmatch = \"registry.site.example/**\"\nmanifest_ttl = \"forever\"\n\
        [[cache.rule]]\nmatch = \"docker.io/library/nginx\"\nmanifest_ttl = \"0s\"\n";

    fn which(rules: &[TagRule], names: &[&str], repo: &str, tag: &str) -> Option<String> {
        rule_for(rules, names.iter().copied(), repo, tag).map(|(_, r)| r.name.clone())
    }

    #[test]
    fn rules_parse_in_order_and_the_first_match_wins() {
        let rules = parse(SITE, Source::Embedded).unwrap().cache.rules;
        assert_eq!(rules.len(), 4);
        let ttls: Vec<ManifestTtl> = rules.iter().map(|r| r.manifest_ttl).collect();
        let ttl = ManifestTtl::For;
        assert_eq!(
            ttls,
            [
                ttl(Duration::from_secs(60)),
                ttl(Duration::from_secs(86_400)),
                ManifestTtl::Forever,
                ttl(Duration::ZERO)
            ]
        );
        let hub = ["registry-1.docker.io", "docker.io"];
        let name = |repo, tag| which(&rules, &hub, repo, tag);
        // nginx:latest is covered by rule 1 and rule 4: the first wins
        assert_eq!(name("library/nginx", "latest").as_deref(), Some("rule 1"));
        assert_eq!(name("library/nginx", "v1.2.3").as_deref(), Some("releases"));
        assert_eq!(name("library/nginx", "1.27").as_deref(), Some("rule 4"));
        assert_eq!(name("library/redis", "1.27"), None);
        assert_eq!(name("acme/x", "v1.2.3"), None, "releases: library/* only");
        let site = ["registry.site.example"];
        assert_eq!(
            which(&rules, &site, "a/b/c", "x").as_deref(),
            Some("rule 3")
        );
        assert_eq!(which(&rules, &["ghcr.io"], "a", "latest"), None);
    }

    #[test]
    fn forever_is_long_but_safe_on_the_clock() {
        assert_eq!(ManifestTtl::Forever.duration(), FOREVER);
        let later = tokio::time::Instant::now().checked_add(FOREVER);
        assert!(later.is_some(), "now + forever does not overflow");
        assert_eq!(ManifestTtl::Forever.describe(), "forever");
        let text = |secs| ManifestTtl::For(Duration::from_secs(secs)).describe();
        assert_eq!(
            [text(60), text(90), text(7200), text(86_400)],
            ["1m", "90s", "2h", "1d"]
        );
        assert_eq!(text(0), "0s");
        assert_eq!(
            ManifestTtl::For(Duration::from_millis(1500)).describe(),
            "1500ms"
        );
    }

    #[test]
    fn tags_between_slashes_are_regular_expressions() {
        let text = "[[cache.rule]]\nmatch = \"**\"\ntags = '/v?\\d+\\.\\d+\\.\\d+/'\n\
                    manifest_ttl = \"1d\"\n";
        let rules = parse(text, Source::Embedded).unwrap().cache.rules;
        assert!(matches!(rules[0].tags, TagPattern::Regex(_)));
        assert_eq!(rules[0].tags.to_string(), "/v?\\d+\\.\\d+\\.\\d+/");
        let hit = |tag| which(&rules, &["quay.io"], "a/b", tag).is_some();
        assert!(hit("v1.2.3") && hit("1.27.0"));
        assert!(!hit("latest") && !hit("v1.2.3-rc1"));
        let p = problems(
            "[[cache.rule]]\nmatch = \"a/*\"\n\ntags = '/v(\\d+/'\nmanifest_ttl = \"1s\"\n",
        );
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].line, 4);
        assert!(
            p[0].message
                .starts_with("cache.rule[1].tags: \"/v(\\\\d+/\": an unclosed ("),
            "{}",
            p[0].message
        );
    }

    #[test]
    fn the_readme_example_means_what_it_says() {
        let readme = include_str!("../../README.md");
        let section = readme
            .split("### Freshness rules per reference")
            .nth(1)
            .unwrap();
        let example = section.split("```toml\n").nth(1).unwrap();
        let example = example.split("```").next().unwrap();
        let rules = parse(example, Source::Embedded).unwrap().cache.rules;
        let ttl = |names: &[&str], repo, tag| {
            rule_for(&rules, names.iter().copied(), repo, tag).map(|(_, r)| r.manifest_ttl)
        };
        let hub = ["registry-1.docker.io", "docker.io"];
        let d = |s| ManifestTtl::For(Duration::from_secs(s));
        assert_eq!(ttl(&hub, "library/nginx", "latest"), Some(d(60)));
        assert_eq!(ttl(&["quay.io"], "a/b", "latest"), Some(d(60)));
        assert_eq!(ttl(&hub, "library/nginx", "v1.2.3"), Some(d(86_400)));
        assert_eq!(ttl(&hub, "library/nginx", "1.27"), None);
        let site = ["registry.site.example"];
        assert_eq!(ttl(&site, "team/app", "v7"), Some(ManifestTtl::Forever));
        let nightly = ttl(&["ghcr.io"], "acme/nightly", "2024-06-01");
        assert_eq!(nightly, Some(d(0)));
    }

    #[test]
    fn no_rules_is_the_default() {
        assert!(parse("", Source::Embedded).unwrap().cache.rules.is_empty());
    }

    #[test]
    fn bad_rules_name_their_line_and_why() {
        let p = problems(
            "[cache]\nmanifest_ttl = \"1m\"\n\
             [[cache.rule]]\nmatch = \"docker.io/[abc\"\ntags = \"v*/x\"\nmanifest_ttl = \"always\"\n\
             [[cache.rule]]\nmatch = \"docker.io\"\nmanifest_ttl = \"10\"\n\
             [[cache.rule]]\nmatch = \"ok.io/*\"\ntags = \"[]\"\nmanifest_ttl = \"1h\"\n",
        );
        let lines: Vec<usize> = p.iter().map(|p| p.line).collect();
        assert_eq!(lines, [4, 5, 6, 8, 9, 12], "{p:?}");
        assert!(p[0]
            .message
            .starts_with("cache.rule[1].match: \"docker.io/[abc\": an unclosed ["));
        assert!(
            p[1].message.contains("a tag holds no /"),
            "{}",
            p[1].message
        );
        assert!(p[2].message.contains("or \"forever\""), "{}", p[2].message);
        assert!(
            p[3].message.contains("registry/repository"),
            "{}",
            p[3].message
        );
        assert!(p[4].message.contains("unit"), "{}", p[4].message);
        assert!(
            p[5].message.starts_with("cache.rule[3].tags"),
            "{}",
            p[5].message
        );
        let p = problems("[[cache.rule]]\nmatch = \"a/b\"\nbogus = 1\nmanifest_ttl = \"1s\"\n");
        assert_eq!(p[0].line, 3, "{p:?}");
        let p = problems("[[cache.rule]]\nmatch = \"a/b\"\n");
        assert!(p[0].message.contains("manifest_ttl"), "{p:?}");
    }
}
