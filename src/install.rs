//! `regcache ca install` / `uninstall`: put the CA where each client runtime reads it, for every
//! intercepted name, and take exactly that away again.
//!
//! What install wrote is recorded in `{root}/var/lib/regcache/ca-install.list` (files and the
//! folders it created); uninstall removes those files whose content is still what install wrote,
//! then the folders it created if they are empty.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};

use crate::cache::Digest;
use crate::names::NamePattern;

const RECORD: &str = "var/lib/regcache/ca-install.list";

/// The client runtimes `ca install` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    Docker,
    Containerd,
    Podman,
    System,
}

impl Runtime {
    pub const ALL: [Runtime; 4] = [Self::Docker, Self::Containerd, Self::Podman, Self::System];

    /// Whether this runtime seems present under `root`.
    fn present(self, root: &Path) -> bool {
        let has = |p: &str| root.join(p).exists();
        match self {
            Self::Docker => has("etc/docker") || has("usr/bin/dockerd"),
            Self::Containerd => has("etc/containerd") || has("usr/bin/containerd"),
            Self::Podman => has("etc/containers") || has("usr/bin/podman"),
            Self::System => {
                has("usr/local/share/ca-certificates") || has("etc/pki/ca-trust/source/anchors")
            }
        }
    }
}

/// One planned file.
struct Planned {
    path: PathBuf,
    content: String,
}

/// What install did, for the summary.
pub struct Report {
    pub lines: Vec<String>,
}

/// Installs `ca_pem` for `names` into the runtimes chosen (all present ones when `chosen` is
/// empty; all four when `root` is not `/` and nothing is chosen).
pub fn install(
    root: &Path,
    ca_pem: &str,
    names: &[NamePattern],
    chosen: &[Runtime],
) -> anyhow::Result<Report> {
    let runtimes = pick(root, chosen);
    if runtimes.is_empty() {
        bail!("no client runtime found under {} (docker, containerd, podman, system trust store): name one with --docker, --containerd, --podman or --system", root.display());
    }
    let hosts: Vec<&str> = names
        .iter()
        .filter_map(|n| match n {
            NamePattern::Exact(host) => Some(host.as_str()),
            NamePattern::Suffix(_) => None,
        })
        .collect();
    let mut lines = Vec::new();
    for n in names {
        if let NamePattern::Suffix(s) = n {
            lines.push(format!(
                "skipped *.{s}: certs.d folders are per host; add the hosts you use"
            ));
        }
    }
    let mut record = read_record(root);
    for runtime in &runtimes {
        for planned in plan(*runtime, ca_pem, &hosts) {
            lines.push(install_file(root, &planned, &mut record)?);
        }
    }
    write_record(root, &record)?;
    lines.extend(after_install(root, &runtimes));
    Ok(Report { lines })
}

/// Writes one planned file unless it is there already or is someone else's; records it as ours.
/// Returns the summary line.
fn install_file(
    root: &Path,
    planned: &Planned,
    record: &mut BTreeSet<String>,
) -> anyhow::Result<String> {
    let path = root.join(&planned.path);
    let hash = Digest::of(planned.content.as_bytes());
    let ours = format!("file {} {}", hash.hex(), planned.path.display());
    let recorded_tail = format!(" {}", planned.path.display());
    match fs::read(&path) {
        Ok(existing) if existing == planned.content.as_bytes() => {
            record.insert(ours);
            return Ok(format!("unchanged {}", path.display()));
        }
        Ok(_) if !record.iter().any(|e| e.ends_with(&recorded_tail)) => {
            return Ok(format!(
                "left alone {}: it exists with other content",
                path.display()
            ));
        }
        _ => {}
    }
    create_parents(root, &path, record)?;
    fs::write(&path, &planned.content)
        .with_context(|| format!("cannot write {}", path.display()))?;
    record.retain(|e| !e.ends_with(&recorded_tail));
    record.insert(ours);
    Ok(format!("wrote {}", path.display()))
}

/// Removes what install wrote under `root`.
pub fn uninstall(root: &Path) -> anyhow::Result<Report> {
    let record = read_record(root);
    if record.is_empty() {
        bail!(
            "nothing to uninstall: {} lists nothing",
            root.join(RECORD).display()
        );
    }
    let mut lines = Vec::new();
    let mut system = false;
    for entry in &record {
        let Some((hash, rel)) = entry.strip_prefix("file ").and_then(|e| e.split_once(' ')) else {
            continue;
        };
        let path = root.join(rel);
        match fs::read(&path) {
            Ok(now) if Digest::of(&now).hex() == hash => match fs::remove_file(&path) {
                Ok(()) => lines.push(format!("removed {}", path.display())),
                Err(e) => lines.push(format!("could not remove {}: {e}", path.display())),
            },
            Ok(_) => lines.push(format!(
                "left alone {}: changed since install",
                path.display()
            )),
            Err(_) => {}
        }
        system |= rel.starts_with("usr/local/share/ca-certificates") || rel.starts_with("etc/pki");
    }
    // Folders deepest first, and only those install created and that are now empty.
    let mut dirs: Vec<&str> = record
        .iter()
        .filter_map(|e| e.strip_prefix("dir "))
        .collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.len()));
    for dir in dirs {
        let _ = fs::remove_dir(root.join(dir));
    }
    let _ = fs::remove_file(root.join(RECORD));
    if system {
        lines.extend(refresh_system_store(root));
    }
    lines.push(
        "restart dockerd, containerd and podman services for the change to take effect".into(),
    );
    Ok(Report { lines })
}

fn pick(root: &Path, chosen: &[Runtime]) -> Vec<Runtime> {
    if !chosen.is_empty() {
        return chosen.to_vec();
    }
    if root != Path::new("/") {
        return Runtime::ALL.to_vec();
    }
    Runtime::ALL
        .into_iter()
        .filter(|r| r.present(root))
        .collect()
}

fn plan(runtime: Runtime, ca_pem: &str, hosts: &[&str]) -> Vec<Planned> {
    let file = |path: String, content: String| Planned {
        path: PathBuf::from(path),
        content,
    };
    match runtime {
        Runtime::Docker => (hosts.iter())
            .map(|h| file(format!("etc/docker/certs.d/{h}/ca.crt"), ca_pem.to_owned()))
            .collect(),
        Runtime::Podman => (hosts.iter())
            .map(|h| file(format!("etc/containers/certs.d/{h}/ca.crt"), ca_pem.to_owned()))
            .collect(),
        Runtime::Containerd => hosts
            .iter()
            .flat_map(|h| {
                let dir = format!("etc/containerd/certs.d/{h}");
                // containerd keeps Docker Hub under "docker.io" and talks to registry-1.docker.io.
                let server = if *h == "docker.io" { "registry-1.docker.io" } else { h };
                let toml = format!(
                    "# Written by regcache ca install: trust the appliance's CA for {h}.\n\
                     server = \"https://{server}\"\n\n[host.\"https://{server}\"]\n  \
                     capabilities = [\"pull\", \"resolve\", \"push\"]\n  ca = \"/{dir}/regcache-ca.crt\"\n"
                );
                [
                    file(format!("{dir}/regcache-ca.crt"), ca_pem.to_owned()),
                    file(format!("{dir}/hosts.toml"), toml),
                ]
            })
            .collect(),
        Runtime::System => vec![file("usr/local/share/ca-certificates/regcache.crt".into(), ca_pem.to_owned())],
    }
}

fn after_install(root: &Path, runtimes: &[Runtime]) -> Vec<String> {
    let mut lines = Vec::new();
    if runtimes.contains(&Runtime::System) {
        lines.extend(refresh_system_store(root));
    }
    for r in runtimes {
        lines.push(match r {
            Runtime::Docker => "dockerd: restart it (systemctl restart docker); Docker Hub names (docker.io/…, short names) use the system trust store only".into(),
            Runtime::Containerd => "containerd: needs config_path = \"/etc/containerd/certs.d\" in the CRI registry config, then restart it".into(),
            Runtime::Podman => "podman, skopeo, buildah: read certs.d on each run; nothing to restart".into(),
            Runtime::System => "system trust store: restart long-running programs that read it at start (dockerd)".into(),
        });
    }
    lines
}

/// Runs update-ca-certificates when installing into the real root; says what to run otherwise.
fn refresh_system_store(root: &Path) -> Vec<String> {
    if root != Path::new("/") {
        return vec![format!(
            "run update-ca-certificates inside {} to refresh its trust store",
            root.display()
        )];
    }
    match Command::new("update-ca-certificates").status() {
        Ok(s) if s.success() => vec!["ran update-ca-certificates".into()],
        Ok(s) => vec![format!("update-ca-certificates failed ({s}); run it by hand")],
        Err(e) => vec![format!("cannot run update-ca-certificates ({e}); on RHEL-like systems copy the CA to /etc/pki/ca-trust/source/anchors/ and run update-ca-trust")],
    }
}

fn create_parents(root: &Path, path: &Path, record: &mut BTreeSet<String>) -> anyhow::Result<()> {
    let parent = path.parent().expect("planned files have a parent");
    let mut missing = Vec::new();
    let mut dir = parent;
    while !dir.exists() && dir != root {
        missing.push(dir.to_owned());
        dir = dir.parent().unwrap_or(root);
    }
    fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    for dir in missing {
        if let Ok(rel) = dir.strip_prefix(root) {
            record.insert(format!("dir {}", rel.display()));
        }
    }
    Ok(())
}

fn read_record(root: &Path) -> BTreeSet<String> {
    let text = fs::read_to_string(root.join(RECORD)).unwrap_or_default();
    text.lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

fn write_record(root: &Path, record: &BTreeSet<String>) -> anyhow::Result<()> {
    let path = root.join(RECORD);
    let parent = path.parent().expect("the record has a parent");
    fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let text: String = record.iter().map(|l| format!("{l}\n")).collect();
    fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<NamePattern> {
        ["registry-1.docker.io", "docker.io", "ghcr.io", "*.pkg.dev"]
            .iter()
            .map(|n| NamePattern::parse(n).unwrap())
            .collect()
    }

    fn files(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_owned()];
        while let Some(dir) = stack.pop() {
            for e in fs::read_dir(&dir).unwrap().flatten() {
                if e.path().is_dir() {
                    stack.push(e.path());
                } else {
                    out.push(e.path().strip_prefix(root).unwrap().display().to_string());
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn install_writes_each_runtime_layout_and_uninstall_removes_exactly_that() {
        let root = tempfile::tempdir().unwrap();
        let keep = root.path().join("etc/docker/daemon.json");
        fs::create_dir_all(keep.parent().unwrap()).unwrap();
        fs::write(&keep, "{}").unwrap();
        let report = install(root.path(), "PEM\n", &names(), &[]).unwrap();
        assert!(report.lines.iter().any(|l| l.contains("skipped *.pkg.dev")));
        assert_eq!(
            files(root.path()),
            [
                "etc/containerd/certs.d/docker.io/hosts.toml",
                "etc/containerd/certs.d/docker.io/regcache-ca.crt",
                "etc/containerd/certs.d/ghcr.io/hosts.toml",
                "etc/containerd/certs.d/ghcr.io/regcache-ca.crt",
                "etc/containerd/certs.d/registry-1.docker.io/hosts.toml",
                "etc/containerd/certs.d/registry-1.docker.io/regcache-ca.crt",
                "etc/containers/certs.d/docker.io/ca.crt",
                "etc/containers/certs.d/ghcr.io/ca.crt",
                "etc/containers/certs.d/registry-1.docker.io/ca.crt",
                "etc/docker/certs.d/docker.io/ca.crt",
                "etc/docker/certs.d/ghcr.io/ca.crt",
                "etc/docker/certs.d/registry-1.docker.io/ca.crt",
                "etc/docker/daemon.json",
                "usr/local/share/ca-certificates/regcache.crt",
                "var/lib/regcache/ca-install.list",
            ]
        );
        let hub = fs::read_to_string(
            root.path()
                .join("etc/containerd/certs.d/docker.io/hosts.toml"),
        )
        .unwrap();
        assert!(
            hub.contains("server = \"https://registry-1.docker.io\""),
            "{hub}"
        );
        assert!(
            hub.contains("ca = \"/etc/containerd/certs.d/docker.io/regcache-ca.crt\""),
            "{hub}"
        );
        assert_eq!(
            fs::read_to_string(root.path().join("etc/docker/certs.d/ghcr.io/ca.crt")).unwrap(),
            "PEM\n"
        );

        uninstall(root.path()).unwrap();
        assert_eq!(
            files(root.path()),
            ["etc/docker/daemon.json"],
            "only what was there before"
        );
        assert!(root.path().join("etc/docker").exists());
        assert!(
            !root.path().join("etc/containerd").exists(),
            "folders install made are gone"
        );
        assert!(uninstall(root.path()).is_err(), "nothing left to uninstall");
    }

    #[test]
    fn foreign_files_are_never_overwritten_or_removed() {
        let root = tempfile::tempdir().unwrap();
        let theirs = root.path().join("etc/docker/certs.d/ghcr.io/ca.crt");
        fs::create_dir_all(theirs.parent().unwrap()).unwrap();
        fs::write(&theirs, "THEIR CA\n").unwrap();
        let report = install(root.path(), "PEM\n", &names(), &[Runtime::Docker]).unwrap();
        assert!(report
            .lines
            .iter()
            .any(|l| l.starts_with("left alone") && l.contains("ghcr.io")));
        assert_eq!(fs::read_to_string(&theirs).unwrap(), "THEIR CA\n");
        // A file of ours edited after install stays too.
        let edited = root.path().join("etc/docker/certs.d/docker.io/ca.crt");
        fs::write(&edited, "EDITED\n").unwrap();
        uninstall(root.path()).unwrap();
        assert_eq!(fs::read_to_string(&theirs).unwrap(), "THEIR CA\n");
        assert!(edited.exists());
        assert!(!root
            .path()
            .join("etc/docker/certs.d/registry-1.docker.io")
            .exists());
    }

    #[test]
    fn runtimes_can_be_chosen() {
        let root = tempfile::tempdir().unwrap();
        install(root.path(), "PEM\n", &names(), &[Runtime::Podman]).unwrap();
        let got = files(root.path());
        assert!(
            got.iter()
                .all(|f| f.starts_with("etc/containers") || f.starts_with("var/lib")),
            "{got:?}"
        );
    }
}
