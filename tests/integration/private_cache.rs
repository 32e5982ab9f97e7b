//! Cache folders and files are private to the appliance's user (0700 / 0600) whatever the umask,
//! and an older world-readable cache folder is tightened on open.
//!
//! The umask is process-wide, so the check runs in a child of this test binary started by
//! `sh -c 'umask …; exec …'`; the parent asserts that the child passed.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use regcache::cache::{Claim, Digest, Store, TagKey};

const CHILD: &str = "REGCACHE_PRIVATE_CACHE_CHILD";

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Every folder and file under `dir` with its mode, relative paths.
fn modes(dir: &Path) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
            out.push((rel, mode(&e.path())));
            if e.path().is_dir() {
                stack.push(e.path());
            }
        }
    }
    out
}

/// Runs in the child: a store in a fresh folder and in an old 0755 one, a fill, a tag.
fn check_modes() {
    let parent = tempfile::tempdir().unwrap();
    let fresh = parent.path().join("fresh/cache");
    let old = parent.path().join("old");
    std::fs::DirBuilder::new().mode(0o755).create(&old).unwrap();
    assert_eq!(mode(&old), 0o755, "the umask let the old folder be 0755");
    for dir in [&fresh, &old] {
        let store = Store::open(dir, 1 << 30).unwrap();
        let content = b"private layer".repeat(100);
        let digest = Digest::of(&content);
        let Claim::Lead(mut w) = store.claim(&digest).unwrap() else {
            panic!("expected to lead the fill")
        };
        w.start(Some(content.len() as u64), "x/y", "reg", "lib/a");
        w.write(&content[..10]).unwrap();
        let temp = modes(&dir.join("tmp"));
        assert!(
            !temp.is_empty() && temp.iter().all(|(_, m)| *m == 0o600),
            "{temp:?}"
        );
        w.write(&content[10..]).unwrap();
        w.finish().unwrap();
        let key = TagKey {
            registry: "reg".into(),
            repo: "lib/a".into(),
            tag: "1".into(),
            accept: "x".into(),
        };
        store.put_tag(key, digest, "x/y", Duration::from_secs(60));
        drop(store); // a store that is gone has written its tag files

        assert_eq!(mode(dir), 0o700, "{}", dir.display());
        let all = modes(dir);
        let files = all.iter().filter(|(p, _)| !dir.join(p).is_dir()).count();
        assert!(files >= 3, "an object, its meta and a tag: {all:?}");
        for (path, m) in &all {
            let want = if dir.join(path).is_dir() {
                0o700
            } else {
                0o600
            };
            assert_eq!(*m, want, "{path} in {}", dir.display());
        }
    }
}

#[test]
fn cache_files_and_folders_are_private_whatever_the_umask() {
    if std::env::var_os(CHILD).is_some() {
        return check_modes();
    }
    let exe = std::env::current_exe().unwrap();
    let name = "private_cache::cache_files_and_folders_are_private_whatever_the_umask";
    for umask in ["022", "000"] {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("umask {umask} && exec \"$0\" \"$@\""))
            .arg(&exe)
            .args(["--exact", name, "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "umask {umask}: {text}");
        assert!(text.contains("1 passed"), "the child ran the check: {text}");
    }
}
