//! What opening the store finds on disk: the objects under `objects/` (sizes from metadata,
//! recency from mtimes, references from `.meta` files) and the crash leftovers in `tmp/`.

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::time::SystemTime;

use super::files::{io_err, meta_path, read_meta};
use super::index::Entry;
use super::{Digest, Error};

pub(super) fn clear_dir(dir: &Path) -> Result<usize, Error> {
    let mut removed = 0;
    for entry in fs::read_dir(dir).map_err(io_err(dir))?.flatten() {
        if fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

pub(super) fn scan_objects(root: &Path) -> Result<(HashMap<Digest, Entry>, u64), Error> {
    let mut objects = HashMap::new();
    let mut total = 0;
    for shard in fs::read_dir(root).map_err(io_err(root))?.flatten() {
        let Ok(files) = fs::read_dir(shard.path()) else {
            continue;
        };
        for file in files.flatten() {
            let path = file.path();
            let name = file.file_name().to_string_lossy().into_owned();
            if name.ends_with(".partial") {
                // A metadata write cut short by a crash.
                let _ = fs::remove_file(&path);
                continue;
            }
            let Some(digest) = Digest::parse(&format!("sha256:{name}")) else {
                if !name.ends_with(".meta") {
                    tracing::warn!(path = %path.display(), "unexpected file in the cache; ignored");
                }
                continue;
            };
            let Ok(meta) = file.metadata() else { continue };
            let (media_type, refs) = read_meta(&meta_path(&path));
            total += meta.len();
            objects.insert(
                digest,
                Entry {
                    size: meta.len(),
                    media_type,
                    refs,
                    last_used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    pins: 0,
                    verified: false,
                },
            );
        }
    }
    Ok((objects, total))
}
