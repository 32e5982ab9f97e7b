//! `regcache cache …`: the store's maintenance operations, printed for people.

use std::time::SystemTime;

use anyhow::{bail, Context as _};

use crate::cache::{Digest, ObjectInfo, Store};
use crate::cli::CacheCommand;
use crate::config::Config;

/// Runs one `regcache cache` command; returns the text to print.
pub fn run(config: &Config, command: &CacheCommand) -> anyhow::Result<String> {
    let dir = &config.cache.dir;
    let store = Store::open_for_maintenance(dir)
        .with_context(|| format!("cannot open the cache in {} (cache.dir)", dir.display()))?;
    Ok(match command {
        CacheCommand::Ls { registry, repo, .. } => ls(&store, registry.as_deref(), repo.as_deref()),
        CacheCommand::Du(_) => du(&store, config),
        CacheCommand::Purge {
            repo, digest, all, ..
        } => purge(&store, repo.as_deref(), digest.as_deref(), *all)?,
        CacheCommand::Verify(_) => verify(&store),
    })
}

/// `cache ls`: one line per object referenced by `registry`/`repo` (all when neither), a total.
fn ls(store: &Store, registry: Option<&str>, repo: Option<&str>) -> String {
    let listed: Vec<ObjectInfo> = (store.list().into_iter())
        .filter(|o| referenced(o, registry, repo))
        .collect();
    let mut out: String = listed.iter().map(line).collect();
    let bytes: u64 = listed.iter().map(|o| o.size).sum();
    out.push_str(&format!("{} objects, {}\n", listed.len(), human(bytes)));
    out
}

/// `cache du`: objects and bytes against `cache.max_size`.
fn du(store: &Store, config: &Config) -> String {
    let (objects, bytes) = store.usage();
    let max = config.cache.max_size;
    let pct = if max == 0 {
        0.0
    } else {
        bytes as f64 * 100.0 / max as f64
    };
    format!(
        "{objects} objects, {} of {} ({pct:.1}%) in {}\n",
        human(bytes),
        human(max),
        config.cache.dir.display()
    )
}

/// `cache purge`: by repository pattern, by digest, or everything.
fn purge(
    store: &Store,
    repo: Option<&str>,
    digest: Option<&str>,
    all: bool,
) -> anyhow::Result<String> {
    let (n, bytes) = match (repo, digest, all) {
        (Some(pattern), _, _) => store.purge(|o| referenced(o, None, Some(pattern))),
        (_, Some(d), _) => {
            let Some(d) = Digest::parse(d) else {
                bail!("--digest {d:?}: expected sha256: and 64 lower-case hex digits");
            };
            store.purge(|o| o.digest == d)
        }
        (_, _, true) => store.purge(|_| true),
        _ => bail!("say what to purge: --repo, --digest or --all"),
    };
    Ok(format!("purged {n} objects, {}\n", human(bytes)))
}

/// `cache verify`: re-hash every object, drop the bad ones.
fn verify(store: &Store) -> String {
    let report = store.verify();
    let mut out = String::new();
    for (digest, why) in &report.dropped {
        out.push_str(&format!("bad {digest}: {why}; dropped\n"));
    }
    out.push_str(&format!(
        "verified {} objects, {}: {} bad, dropped\n",
        report.checked,
        human(report.bytes),
        report.dropped.len()
    ));
    out
}

fn referenced(o: &ObjectInfo, registry: Option<&str>, repo: Option<&str>) -> bool {
    if registry.is_none() && repo.is_none() {
        return true;
    }
    o.refs.iter().any(|(r, p)| {
        registry.is_none_or(|want| want == r) && repo.is_none_or(|pattern| glob(pattern, p))
    })
}

fn line(o: &ObjectInfo) -> String {
    let age = SystemTime::now()
        .duration_since(o.last_used)
        .map_or(0, |d| d.as_secs());
    let refs: Vec<String> = o.refs.iter().map(|(r, p)| format!("{r}/{p}")).collect();
    format!(
        "{}  {:>10}  {:<48}  used {} ago  {}\n",
        o.digest,
        human(o.size),
        o.media_type,
        ago(age),
        refs.join(", ")
    )
}

fn ago(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
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
