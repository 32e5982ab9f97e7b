//! `regcache cache …`: the store's maintenance operations, printed for people or as one JSON
//! document (`--json`; the reports and their field names are in `report.rs`), with a progress
//! line on a terminal for the long ones (verify, purge).

mod report;

use std::collections::HashSet;

use anyhow::{bail, Context as _};

use crate::cache::{Digest, ObjectInfo, Store};
use crate::cli::CacheCommand;
use crate::config::Config;
use crate::output::Format;
use crate::progress::Progress;
pub use report::{Listing, Usage, Verified};

/// What a command printed, and whether it found something wrong (verify's bad objects).
#[derive(Debug)]
pub struct Outcome {
    pub text: String,
    pub found_bad: bool,
}

/// Runs one `regcache cache` command.
pub fn run(config: &Config, command: &CacheCommand) -> anyhow::Result<Outcome> {
    let dir = &config.cache.dir;
    let store = Store::open_for_maintenance(dir)
        .with_context(|| format!("cannot open the cache in {} (cache.dir)", dir.display()))?;
    let format = Format::from_flag(command.output().json);
    let text = |text: String| Outcome {
        text,
        found_bad: false,
    };
    Ok(match command {
        CacheCommand::Ls { registry, repo, .. } => {
            text(ls(&store, registry.as_deref(), repo.as_deref(), format))
        }
        CacheCommand::Du { .. } => text(du(&store, config, format)),
        CacheCommand::Purge {
            repo, digest, all, ..
        } => text(purge(&store, repo.as_deref(), digest.as_deref(), *all)?),
        CacheCommand::Verify { .. } => verify(&store, format),
    })
}

/// `cache ls`: the objects referenced by `registry`/`repo` (all when neither), and a total.
fn ls(store: &Store, registry: Option<&str>, repo: Option<&str>, format: Format) -> String {
    let listed: Vec<ObjectInfo> = (store.list().into_iter())
        .filter(|o| referenced(o, registry, repo))
        .collect();
    format.render(&Listing::of(&listed), report::listing_text)
}

/// `cache du`: objects and bytes against `cache.max_size`, and per registry.
fn du(store: &Store, config: &Config, format: Format) -> String {
    let dir = config.cache.dir.display().to_string();
    let usage = Usage::of(dir, store.usage(), config.cache.max_size, &store.list());
    format.render(&usage, report::usage_text)
}

/// `cache purge`: by repository pattern, by digest, or everything (objects and the tags that
/// point at them).
fn purge(
    store: &Store,
    repo: Option<&str>,
    digest: Option<&str>,
    all: bool,
) -> anyhow::Result<String> {
    let (n, bytes) = match (repo, digest, all) {
        (Some(pattern), _, _) => purge_shown(store, |o| referenced(o, None, Some(pattern))),
        (_, Some(d), _) => {
            let Some(d) = Digest::parse(d) else {
                bail!("--digest {d:?}: expected sha256: and 64 lower-case hex digits");
            };
            purge_shown(store, |o| o.digest == d)
        }
        (_, _, true) => purge_shown(store, |_| true),
        _ => bail!("say what to purge: --repo, --digest or --all"),
    };
    Ok(format!("purged {n} objects, {}\n", human(bytes)))
}

/// Purges what `select` picks in about a hundred batches, showing progress between them.
fn purge_shown(store: &Store, select: impl Fn(&ObjectInfo) -> bool) -> (usize, u64) {
    let chosen: Vec<ObjectInfo> = store.list().into_iter().filter(|o| select(o)).collect();
    let bytes = chosen.iter().map(|o| o.size).sum();
    let mut progress = Progress::stderr("purge", chosen.len() as u64, bytes, true);
    let mut purged = (0, 0);
    for batch in chosen.chunks((chosen.len() / 100).max(64)) {
        let digests: HashSet<&Digest> = batch.iter().map(|o| &o.digest).collect();
        let (n, b) = store.purge(|o| digests.contains(&o.digest));
        progress.advance(n as u64, b);
        purged = (purged.0 + n, purged.1 + b);
    }
    purged
}

/// `cache verify`: re-hash every object, drop the bad ones; `found_bad` when there were any.
fn verify(store: &Store, format: Format) -> Outcome {
    let (objects, bytes) = store.usage();
    let mut progress = Progress::stderr("verify", objects as u64, bytes, format.allows_progress());
    let mut verified = Verified::default();
    store.verify_each(|o, problem| {
        verified.add(o, problem);
        progress.advance(1, o.size);
    });
    drop(progress);
    Outcome {
        found_bad: verified.summary.bad > 0,
        text: format.render(&verified, report::verified_text),
    }
}

fn referenced(o: &ObjectInfo, registry: Option<&str>, repo: Option<&str>) -> bool {
    if registry.is_none() && repo.is_none() {
        return true;
    }
    o.refs.iter().any(|(r, p)| {
        registry.is_none_or(|want| want == r) && repo.is_none_or(|pattern| glob(pattern, p))
    })
}

/// Bytes with a binary unit: "512.0 MiB".
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes} B"),
        _ => format!("{value:.1} {}", UNITS[unit]),
    }
}

/// `*` matches any run of characters (slashes included); everything else literally.
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || !text[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("library/*", "library/ubuntu"));
        assert!(glob("*", "a/b"));
        assert!(glob("nvidia/*-py3", "nvidia/pytorch-py3"));
        assert!(!glob("library/*", "acme/library/x"));
        assert!(glob("acme/tool", "acme/tool"));
        assert!(!glob("acme/tool", "acme/tools"));
        assert!(!glob("a*b*c", "acb"));
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(999), "999 B");
        assert_eq!(human(512 << 20), "512.0 MiB");
        assert_eq!(human(50 << 30), "50.0 GiB");
    }
}
