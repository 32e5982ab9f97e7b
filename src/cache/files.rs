//! The store's files on disk: private folders and files (0700/0600), atomic small writes,
//! `.meta` files (media type, then `registry repo` lines), whole-file hashing, and the
//! `io::Error` → [`Error`] mapping that names the path.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{Digest, Error, Hasher, CHUNK};

/// Modes of cache folders and files: other local users read nothing (private layers).
pub(super) const PRIVATE_DIR: u32 = 0o700;
pub(super) const PRIVATE_FILE: u32 = 0o600;

pub(super) fn hash_file(path: &Path) -> io::Result<(Digest, u64)> {
    let file = File::open(path)?;
    let mut hasher = Hasher::new();
    let mut offset = 0u64;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = file.read_at(&mut buf, offset)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        offset += n as u64;
    }
    Ok((hasher.finish(), offset))
}

/// Where the object `d` is stored under the store's folder `dir`.
pub(super) fn object_path(dir: &Path, d: &Digest) -> PathBuf {
    // One allocation (this is on every cache hit): room for `/objects/sha256/xx/<hex>`.
    let hex = d.hex();
    let mut path = PathBuf::with_capacity(dir.as_os_str().len() + 20 + hex.len());
    path.push(dir);
    path.push("objects/sha256");
    path.push(&hex[..2]);
    path.push(hex);
    path
}

pub(super) fn meta_path(object: &Path) -> PathBuf {
    let mut name = object.file_name().unwrap_or_default().to_owned();
    name.push(".meta");
    object.with_file_name(name)
}

pub(super) fn meta_text(media_type: &str, refs: &[(String, String)]) -> String {
    let mut text = format!("{media_type}\n");
    for (registry, repo) in refs {
        text.push_str(&format!("{registry} {repo}\n"));
    }
    text
}

/// Appends one line to `path` (created if missing).
pub(super) fn append_line(path: &Path, line: &str) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(PRIVATE_FILE)
        .open(path)?;
    file.write_all(line.as_bytes())
}

/// Cache folders: owner only (0700), whatever the umask. Modes of existing folders are kept.
pub(super) fn create_private_dirs(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR)
        .create(path)
}

/// Makes an existing cache folder owner-only (caches of older versions were world-readable).
pub(super) fn tighten_dir(dir: &Path) -> io::Result<()> {
    let mode = fs::metadata(dir)?.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    tracing::warn!(dir = %dir.display(), mode = format!("{mode:o}"), "the cache folder was readable by other users; setting it to 0700");
    fs::set_permissions(dir, fs::Permissions::from_mode(PRIVATE_DIR))
}

/// Writes `path` (owner-only, 0600) through a temp file and rename.
pub(super) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("partial");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(PRIVATE_FILE)
        .open(&tmp)?;
    file.set_permissions(fs::Permissions::from_mode(PRIVATE_FILE))?;
    file.write_all(bytes)?;
    file.sync_data()?;
    fs::rename(&tmp, path)
}

pub(super) fn read_meta(path: &Path) -> (String, Vec<(String, String)>) {
    parse_meta(&fs::read_to_string(path).unwrap_or_default())
}

/// A `.meta` file's text: line 1 the media type, then `registry repo` lines.
pub fn parse_meta(text: &str) -> (String, Vec<(String, String)>) {
    let mut lines = text.lines();
    let media_type = lines
        .next()
        .filter(|l| !l.is_empty())
        .unwrap_or("application/octet-stream")
        .to_owned();
    let refs = lines
        .filter_map(|l| l.split_once(' '))
        .map(|(r, p)| (r.to_owned(), p.to_owned()))
        .collect();
    (media_type, refs)
}

pub(super) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}
