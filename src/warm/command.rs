//! The `regcache warm` command: options from the CLI, the summary people read (or one JSON
//! document with `--json`), and the exit status (non-zero when any image failed).

use anyhow::bail;

use super::pull::{Platform, Platforms};
use super::{human, run, Options, Outcome};
use crate::cli::WarmArgs;
use crate::config::Config;

/// Runs `regcache warm`; an error when any image failed (each said with its reason).
pub fn command(config: Config, args: WarmArgs) -> anyhow::Result<()> {
    let platforms = match (args.all_platforms, args.platforms.is_empty()) {
        (true, _) => Platforms::All,
        (false, true) => Platforms::These(vec![Platform::host()]),
        (false, false) => Platforms::These(parse_platforms(&args.platforms)?),
    };
    let options = Options {
        images: args.images,
        platforms,
        via: args.via,
        ca: args.ca,
        quiet: args.json,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let outcomes = runtime.block_on(run(&config, options))?;
    match args.json {
        true => println!("{}", serde_json::to_string_pretty(&outcomes)?),
        false => print!("{}", summary(&outcomes)),
    }
    let failed = outcomes.iter().filter(|o| o.error.is_some()).count();
    if failed > 0 {
        return Err(Failed {
            failed,
            of: outcomes.len(),
        }
        .into());
    }
    Ok(())
}

/// Some images failed (each said why in the output already).
#[derive(Debug, thiserror::Error)]
#[error("{failed} of {of} images failed")]
pub struct Failed {
    pub failed: usize,
    pub of: usize,
}

fn parse_platforms(texts: &[String]) -> anyhow::Result<Vec<Platform>> {
    let parse = |t: &String| match Platform::parse(t) {
        Some(p) => Ok(p),
        None => bail!("--platform {t:?}: expected OS/ARCH[/VARIANT], e.g. linux/amd64"),
    };
    texts.iter().map(parse).collect()
}

/// A line per image, then the totals.
fn summary(outcomes: &[Outcome]) -> String {
    let mut out = String::new();
    let (mut fetched, mut cached, mut bytes, mut secs) = (0, 0, 0, 0.0);
    for o in outcomes {
        let t = &o.tally;
        match &o.error {
            Some(why) => out.push_str(&format!("{}: FAILED: {why}\n", o.image)),
            None => out.push_str(&format!(
                "{}: {} objects ({} fetched, {} already cached), {} in {:.1} s\n",
                o.image,
                t.fetched + t.cached,
                t.fetched,
                t.cached,
                human(t.bytes),
                o.seconds
            )),
        }
        (fetched, cached, bytes, secs) = (
            fetched + t.fetched,
            cached + t.cached,
            bytes + t.bytes,
            secs + o.seconds,
        );
    }
    out.push_str(&format!(
        "total: {} images, {fetched} objects fetched, {cached} already cached, {} in {secs:.1} s\n",
        outcomes.len(),
        human(bytes)
    ));
    out
}
