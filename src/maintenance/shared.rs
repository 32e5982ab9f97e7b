//! The shared tier for `regcache cache …`: the `[storage]` store listed, counted, purged and
//! verified (each object read whole and hashed; a bad one is deleted, an unreadable one kept) from a command that has no
//! runtime of its own, so it brings a small one. Objects there carry no media type and no refs
//! (the store keeps bytes by digest only): filters by registry or repository select from the
//! local tier's refs.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use anyhow::Context as _;
use futures_util::StreamExt;

use super::report::Verified;
use crate::cache::{Digest, Hasher, ObjectInfo};
use crate::config::{Config, StorageConfig};
use crate::metrics::Metrics;
use crate::progress::Progress;
use crate::tier::{open_s3, Error, SharedTier};

/// A stored object's body that yields nothing for this long is unreadable.
const BODY_IDLE: std::time::Duration = std::time::Duration::from_secs(30);
/// Checks of one object that found the store down (its backoff waited out between them), and
/// objects in a row that could not be read, before verify stops.
const DOWN_TRIES: usize = 3;

/// The shared store, with the runtime its client needs.
pub struct SharedStore {
    tier: Arc<SharedTier>,
    runtime: tokio::runtime::Runtime,
}

impl SharedStore {
    /// The store `[storage]` names; `None` with `backend = "local"`.
    pub fn open(config: &Config) -> anyhow::Result<Option<Self>> {
        let StorageConfig::S3(s3) = &config.storage else {
            return Ok(None);
        };
        let runtime = runtime()?;
        let tier = {
            let _inside = runtime.enter();
            open_s3(s3, Arc::new(Metrics::new())).context("[storage]")?
        };
        Ok(Some(Self { tier, runtime }))
    }

    /// Over a tier made elsewhere (tests: an in-memory store).
    pub fn over(tier: Arc<SharedTier>) -> anyhow::Result<Self> {
        Ok(Self {
            tier,
            runtime: runtime()?,
        })
    }

    pub fn label(&self) -> &str {
        self.tier.label()
    }

    /// Every object, by digest.
    pub fn list(&self) -> anyhow::Result<Vec<ObjectInfo>> {
        let listed = self.runtime.block_on(self.tier.list());
        let listed = listed.with_context(|| format!("cannot list {}", self.label()))?;
        Ok((listed.into_iter())
            .map(|l| ObjectInfo {
                digest: l.digest,
                size: l.size,
                media_type: String::new(),
                refs: Vec::new(),
                last_used: UNIX_EPOCH,
            })
            .collect())
    }

    /// Deletes `chosen`; (objects, bytes) deleted.
    pub fn delete(&self, chosen: &[ObjectInfo]) -> anyhow::Result<(usize, u64)> {
        for o in chosen {
            let deleted = self.runtime.block_on(self.tier.delete(&o.digest));
            deleted.with_context(|| format!("cannot delete {} from {}", o.digest, self.label()))?;
        }
        Ok((chosen.len(), chosen.iter().map(|o| o.size).sum()))
    }

    /// Reads and hashes every object; deletes those whose whole bytes do not match their
    /// digest. One that cannot be read is reported and kept; while the store is marked down
    /// (after an error) its backoff is waited out, and after `DOWN_TRIES` (3) objects in a row
    /// that could not be read the check stops and says so.
    pub fn verify(&self, progress: bool) -> anyhow::Result<Verified> {
        let listed = self.list()?;
        let bytes = listed.iter().map(|o| o.size).sum();
        let mut progress = Progress::stderr("verify", listed.len() as u64, bytes, progress);
        let mut verified = Verified::default();
        let mut failing = 0;
        for o in &listed {
            let check = self.runtime.block_on(self.check_waiting(&o.digest, o.size));
            failing = if matches!(check, Check::Good | Check::Bad(_)) {
                0
            } else {
                failing + 1
            };
            match check {
                Check::Good => verified.add(o, None),
                Check::Bad(why) => {
                    self.delete(std::slice::from_ref(o))?;
                    verified.add(o, Some(&why));
                }
                Check::Unreadable(why) => verified.unreadable(o, &why),
                Check::Down => {}
            }
            progress.advance(1, o.size);
            if failing >= DOWN_TRIES {
                let label = self.label();
                let why = format!("{label} failed {failing} objects in a row; the rest unchecked");
                verified.summary.stopped = Some(why);
                break;
            }
        }
        Ok(verified)
    }

    /// [`SharedStore::check`], waiting out the store's backoff while it is marked down.
    async fn check_waiting(&self, digest: &Digest, size: u64) -> Check {
        for _ in 0..DOWN_TRIES {
            if let Some(wait) = self.tier.health().retry_in {
                tokio::time::sleep(wait).await;
            }
            match self.check(digest, size).await {
                Check::Down => continue,
                done => return done,
            }
        }
        Check::Down
    }

    /// Whether the stored object is `digest` of `size` bytes, read whole.
    async fn check(&self, digest: &Digest, size: u64) -> Check {
        let (_, mut body) = match self.tier.get(digest).await {
            Ok(got) => got,
            Err(Error::Down) => return Check::Down,
            Err(e) => return Check::Unreadable(e.to_string()),
        };
        let (mut hasher, mut read) = (Hasher::new(), 0u64);
        loop {
            match tokio::time::timeout(BODY_IDLE, body.next()).await {
                Ok(None) => break,
                Ok(Some(Ok(chunk))) => {
                    hasher.update(&chunk);
                    read += chunk.len() as u64;
                }
                Ok(Some(Err(e))) => return Check::Unreadable(e.to_string()),
                Err(_) => {
                    return Check::Unreadable(format!("no data from the store for {BODY_IDLE:?}"))
                }
            }
        }
        if read != size {
            return Check::Bad(format!("{read} bytes, listed as {size}"));
        }
        match hasher.finish() == *digest {
            true => Check::Good,
            false => Check::Bad("content does not match its digest".to_owned()),
        }
    }
}

/// One object's check.
enum Check {
    Good,
    /// Read whole, and not the object: deleted.
    Bad(String),
    /// Not read whole (an error, a stall): kept.
    Unreadable(String),
    /// The store is marked down: not asked.
    Down,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    runtime.context("cannot start a runtime for the shared store")
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use object_store::memory::InMemory;
    use object_store::{ObjectStoreExt, PutPayload};

    use super::*;
    use crate::cache::{Claim, Store};
    use crate::cli::{CacheCommand, Cli, Command};
    use crate::config::{parse, Source};
    use crate::maintenance::{run, run_with};

    fn command(args: &[&str]) -> CacheCommand {
        let args = ["regcache", "cache"].iter().chain(args);
        match Cli::try_parse_from(args).unwrap().command {
            Command::Cache { command } => command,
            _ => unreachable!(),
        }
    }

    fn stored(store: &Arc<Store>, data: &[u8]) -> Digest {
        let digest = Digest::of(data);
        let Ok(Claim::Lead(mut w)) = store.claim(&digest) else {
            panic!("a new object")
        };
        w.start(Some(data.len() as u64), "x/y", "reg.io", "lib/a");
        w.write(data).unwrap();
        w.finish().unwrap();
        digest
    }

    /// A cache with object a, a shared store with a and a corrupt b.
    fn fixture() -> (
        tempfile::TempDir,
        crate::config::Config,
        Arc<Store>,
        SharedStore,
        Digest,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let text = format!("[cache]\ndir = {:?}\n", dir.path().display().to_string());
        let config = parse(&text, Source::Embedded).unwrap();
        let store = Store::open(&config.cache.dir, 1 << 30).unwrap();
        let a = b"object a".as_slice();
        let a_digest = stored(&store, a);
        let memory = Arc::new(InMemory::new());
        let metrics = Arc::new(Metrics::new());
        let tier = SharedTier::new(memory.clone(), "fleet", "memory", metrics);
        let shared = SharedStore::over(tier.clone()).unwrap();
        let put = |data: &[u8], key: &Digest| {
            let payload = PutPayload::from(data.to_vec());
            let key = tier.key(key);
            shared.runtime.block_on(memory.put(&key, payload)).unwrap();
        };
        put(a, &a_digest);
        put(b"not b at all", &Digest::of(b"object b!"));
        (dir, config, store, shared, a_digest)
    }

    #[test]
    fn ls_du_verify_and_purge_take_both_tiers() {
        let (_dir, config, store, shared, a_digest) = fixture();
        let json = |args: &[&str]| -> serde_json::Value {
            let out = run_with(&config, &command(args), &store, Some(&shared)).unwrap();
            serde_json::from_str(&out.text).unwrap()
        };

        let ls = json(&["ls", "--json"]);
        let tiers: Vec<&str> = (ls["objects"].as_array().unwrap().iter())
            .map(|o| o["tier"].as_str().unwrap())
            .collect();
        assert_eq!(tiers, ["local", "shared", "shared"]);
        assert_eq!(ls["total"]["objects"], 3);
        assert_eq!(
            json(&["ls", "--tier", "local", "--json"])["total"]["objects"],
            1
        );
        assert_eq!(
            json(&["ls", "--repo", "lib/*", "--json"])["total"]["objects"],
            1
        );
        let du = json(&["du", "--json"]);
        assert_eq!(
            (&du["objects"], &du["shared"]["objects"]),
            (&1.into(), &2.into())
        );
        assert_eq!(json(&["du", "--tier", "shared", "--json"])["dir"], "memory");

        let out = run_with(
            &config,
            &command(&["verify", "--tier", "shared"]),
            &store,
            Some(&shared),
        );
        let out = out.unwrap();
        assert!(out.found_bad && out.text.contains("1 bad"), "{}", out.text);
        assert_eq!(shared.list().unwrap().len(), 1, "the bad object is gone");

        let purge = ["purge", "--digest", &a_digest.to_string()];
        let out = run_with(&config, &command(&purge), &store, Some(&shared)).unwrap();
        assert!(
            out.text
                .contains("purged 1 objects, 8 B\npurged 1 objects, 8 B from memory"),
            "{}",
            out.text
        );
        assert!(!store.contains(&a_digest));
        assert!(shared.list().unwrap().is_empty());

        drop(store);
        let err = run(&config, &command(&["ls", "--tier", "shared"])).unwrap_err();
        assert!(err.to_string().contains("no shared tier"), "{err}");
    }

    #[test]
    fn a_store_that_fails_reads_loses_nothing_and_verify_says_so() {
        let (_dir, config, store, _, _) = fixture();
        let flaky = Arc::new(crate::tier::failing::Flaky::default());
        let tier = SharedTier::new(flaky.clone(), "fleet", "flaky", Arc::new(Metrics::new()));
        let shared = SharedStore::over(tier.clone()).unwrap();
        for data in [
            b"object a".as_slice(),
            b"object c",
            b"object d",
            b"object e",
        ] {
            let key = tier.key(&Digest::of(data));
            let put = flaky.inner.put(&key, data.to_vec().into());
            shared.runtime.block_on(put).unwrap();
        }
        flaky.down.store(true, std::sync::atomic::Ordering::SeqCst);
        let verify = command(&["verify", "--tier", "shared"]);
        let out = run_with(&config, &verify, &store, Some(&shared)).unwrap();
        assert!(out.found_bad, "{}", out.text);
        assert!(out.text.contains("stopped before the end"), "{}", out.text);
        assert!(
            out.text.contains("0 bad, dropped; 3 unreadable, kept"),
            "{}",
            out.text
        );
        flaky.down.store(false, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(shared.list().unwrap().len(), 4, "nothing deleted");
    }
}
