//! `[[warm]]`: images the running appliance keeps warm (`images`, `platforms`, `every`), checked at
//! load like every other key: a bad reference, platform or interval names its line.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::validate::Validator;
use super::values::parse_duration;
use crate::reference::{Platform, Reference};

/// How often a job runs when `every` is not given.
const DEFAULT_EVERY: &str = "6h";
/// The shortest `every`: a warm run is a pull of every image.
const MIN_EVERY: Duration = Duration::from_secs(60);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWarm {
    pub(super) images: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(super) platforms: Vec<Spanned<String>>,
    pub(super) every: Option<Spanned<String>>,
}

/// One `[[warm]]` job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WarmJob {
    /// References as `docker pull` reads them (checked).
    pub images: Vec<String>,
    /// `os/arch[/variant]`; empty: the host's platform.
    pub platforms: Vec<String>,
    pub every: Duration,
}

impl Validator<'_> {
    pub(super) fn warm_jobs(&mut self, raw: Vec<RawWarm>) -> Vec<WarmJob> {
        raw.into_iter().map(|job| self.warm_job(job)).collect()
    }

    fn warm_job(&mut self, raw: RawWarm) -> WarmJob {
        if raw.images.get_ref().is_empty() {
            self.problem(
                &raw.images,
                "warm.images: empty: name at least one image".into(),
            );
        }
        let images = self.each("warm.images", raw.images.get_ref(), |text| {
            Reference::parse(text).map(|_| text.to_owned())
        });
        let platforms = self.each(
            "warm.platforms",
            &raw.platforms,
            |text| match Platform::parse(text) {
                Some(_) => Ok(text.to_owned()),
                None => Err("expected OS/ARCH[/VARIANT], e.g. linux/amd64"),
            },
        );
        let at = raw.every.clone();
        let mut every = self.value("warm.every", raw.every, DEFAULT_EVERY, parse_duration);
        if let Some(at) = at.filter(|_| every < MIN_EVERY) {
            self.problem(&at, format!("warm.every: {:?}: at least 1m", at.get_ref()));
            every = MIN_EVERY;
        }
        WarmJob {
            images,
            platforms,
            every,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{parse, Source};

    #[test]
    fn warm_jobs_are_read_and_checked_line_by_line() {
        let ok = "[[warm]]\nimages = [\"ghcr.io/acme/tool:v1\", \"alpine\"]\nplatforms = [\"linux/arm64\"]\nevery = \"1h\"\n[[warm]]\nimages = [\"nvcr.io/nvidia/pytorch:25.03-py3\"]\n";
        let config = parse(ok, Source::Embedded).unwrap();
        assert_eq!(config.warm.len(), 2);
        assert_eq!(config.warm[0].images, ["ghcr.io/acme/tool:v1", "alpine"]);
        assert_eq!(config.warm[0].every.as_secs(), 3600);
        assert_eq!(config.warm[1].every.as_secs(), 6 * 3600);
        assert!(config.warm[1].platforms.is_empty());

        let bad = "[[warm]]\nimages = [\"UPPER/case\"]\nplatforms = [\"linux\"]\nevery = \"10s\"\n[[warm]]\nimages = []\n";
        let text = parse(bad, Source::Embedded).unwrap_err().to_string();
        for (line, what) in [
            (2, "warm.images"),
            (3, "warm.platforms"),
            (4, "warm.every"),
            (6, "warm.images: empty"),
        ] {
            assert!(
                text.contains(&format!(":{line}: {what}")),
                "line {line} {what}: {text}"
            );
        }
        let unknown = parse(
            "[[warm]]\nimages = [\"a\"]\nevry = \"1h\"\n",
            Source::Embedded,
        );
        assert!(unknown.unwrap_err().to_string().contains(":3:"));
    }
}
