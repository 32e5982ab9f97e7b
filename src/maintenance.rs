//! `regcache cache …`: the store's maintenance operations, printed for people or as one JSON
//! document (`--json`; the reports and their field names are in `report.rs`), with a progress
//! line on a terminal for the long ones (verify, purge). `--tier local|shared` picks the cache
//! directory or the `[storage]` store (`shared.rs`); without it `ls`, `du` and `purge` take both,
//! `verify` the local tier (verifying the shared one reads every object in it).

mod report;
mod shared;

use std::collections::HashSet;

use anyhow::{bail, Context as _};

use crate::cache::{Digest, ObjectInfo, Store};
use crate::cli::{CacheCommand, TierArg};
use crate::config::Config;
use crate::output::Format;
use crate::progress::Progress;
pub use report::{Listing, SharedUsage, Usage, Verified};
pub use shared::SharedStore;

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
    let shared = match command.tier() {
        Some(TierArg::Local) => None,
        _ => SharedStore::open(config)?,
    };
    if command.tier() == Some(TierArg::Shared) && shared.is_none() {
        bail!("--tier shared: there is no shared tier ([storage] backend = \"local\")");
    }
    run_with(config, command, &store, shared.as_ref())
}

/// Runs one `regcache cache` command on `store` and, unless `--tier local`, `shared`.
pub fn run_with(
    config: &Config,
    command: &CacheCommand,
    store: &Store,
    shared: Option<&SharedStore>,
) -> anyhow::Result<Outcome> {
    let tier = command.tier();
    let local = tier != Some(TierArg::Shared);
    let shared = shared.filter(|_| tier != Some(TierArg::Local));
    let format = Format::from_flag(command.output().json);
    let text = |text: String| Outcome {
        text,
        found_bad: false,
    };
    Ok(match command {
        CacheCommand::Ls { registry, repo, .. } => {
            let (registry, repo) = (registry.as_deref(), repo.as_deref());
            text(ls(store, local, shared, registry, repo, format)?)
        }
        CacheCommand::Du { .. } => text(du(store, local, shared, config, format)?),
        CacheCommand::Purge {
            repo, digest, all, ..
        } => {
            let chosen = choose(repo.as_deref(), digest.as_deref(), *all)?;
            text(purge(store, local, shared, chosen)?)
        }
        CacheCommand::Verify { .. } => match shared.filter(|_| !local) {
            Some(shared) => {
                let verified = shared.verify(format.allows_progress())?;
                Outcome {
                    found_bad: verified.found_bad(),
                    text: format.render(&verified, report::verified_text),
                }
            }
            None => verify(store, format),
        },
    })
}

/// `cache ls`: the objects referenced by `registry`/`repo` (all when neither), and a total;
/// the shared tier's after the local ones (only without a filter: it keeps no refs).
fn ls(
    store: &Store,
    local: bool,
    shared: Option<&SharedStore>,
    registry: Option<&str>,
    repo: Option<&str>,
    format: Format,
) -> anyhow::Result<String> {
    let listed: Vec<ObjectInfo> = (store.list().into_iter())
        .filter(|o| local && referenced(o, registry, repo))
        .collect();
    let others = match shared.filter(|_| registry.is_none() && repo.is_none()) {
        Some(shared) => shared.list()?,
        None => Vec::new(),
    };
    let listing = Listing::of(&listed).with_shared(&others);
    Ok(format.render(&listing, report::listing_text))
}

/// `cache du`: objects and bytes against `cache.max_size`, and per registry; the shared
/// store's objects and bytes.
fn du(
    store: &Store,
    local: bool,
    shared: Option<&SharedStore>,
    config: &Config,
    format: Format,
) -> anyhow::Result<String> {
    let dir = config.cache.dir.display().to_string();
    let shared = match shared {
        Some(shared) => Some(shared_usage(shared)?),
        None => None,
    };
    let usage = match (local, shared) {
        (true, shared) => Usage {
            shared,
            ..Usage::of(dir, store.usage(), config.cache.max_size, &store.list())
        },
        (false, Some(s)) => Usage::of(s.store, (s.objects, s.bytes), 0, &[]),
        (false, None) => bail!("no tier to show"),
    };
    Ok(format.render(&usage, report::usage_text))
}

fn shared_usage(shared: &SharedStore) -> anyhow::Result<SharedUsage> {
    let listed = shared.list()?;
    Ok(SharedUsage {
        store: shared.label().to_owned(),
        objects: listed.len(),
        bytes: listed.iter().map(|o| o.size).sum(),
    })
}

/// What `cache purge` removes.
enum Chosen {
    /// Objects referenced from matching repositories (in the shared tier: those the local tier
    /// knows so; it keeps the refs).
    Repo(String),
    Digest(Digest),
    All,
}

fn choose(repo: Option<&str>, digest: Option<&str>, all: bool) -> anyhow::Result<Chosen> {
    Ok(match (repo, digest, all) {
        (Some(pattern), _, _) => Chosen::Repo(pattern.to_owned()),
        (_, Some(d), _) => match Digest::parse(d) {
            Some(d) => Chosen::Digest(d),
            None => bail!("--digest {d:?}: expected sha256: and 64 lower-case hex digits"),
        },
        (_, _, true) => Chosen::All,
        _ => bail!("say what to purge: --repo, --digest or --all"),
    })
}

/// `cache purge`: by repository pattern, by digest, or everything (objects and the tags that
/// point at them), from the local tier and the shared one.
fn purge(
    store: &Store,
    local: bool,
    shared: Option<&SharedStore>,
    chosen: Chosen,
) -> anyhow::Result<String> {
    let select = |o: &ObjectInfo| match &chosen {
        Chosen::Repo(pattern) => referenced(o, None, Some(pattern)),
        Chosen::Digest(d) => o.digest == *d,
        Chosen::All => true,
    };
    let here: Vec<ObjectInfo> = store.list().into_iter().filter(select).collect();
    let mut text = String::new();
    if local {
        let (n, bytes) = purge_shown(store, &here);
        text.push_str(&format!("purged {n} objects, {}\n", human(bytes)));
    }
    if let Some(shared) = shared {
        let there: Vec<ObjectInfo> = (shared.list()?.into_iter())
            .filter(|o| match &chosen {
                Chosen::Repo(_) => here.iter().any(|h| h.digest == o.digest),
                _ => select(o),
            })
            .collect();
        let (n, bytes) = shared.delete(&there)?;
        let store = shared.label();
        text.push_str(&format!(
            "purged {n} objects, {} from {store}\n",
            human(bytes)
        ));
    }
    Ok(text)
}

/// Purges `chosen` in about a hundred batches, showing progress between them.
fn purge_shown(store: &Store, chosen: &[ObjectInfo]) -> (usize, u64) {
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
