//! What went wrong in a config file, by line: [`Problem`], and the [`Error`] that prints them as
//! `file:line: why`, one a line (the format of `regcache config check`, which exits 64 on it), or
//! as [`Located`] records for `--json`.

use std::fmt;
use std::path::PathBuf;

/// Where a configuration came from, for messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Embedded,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Embedded => f.write_str("<embedded default>"),
        }
    }
}

/// One problem in a config file, located by line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// 1-based; 0 when the problem has no single place (a missing file).
    pub line: usize,
    pub message: String,
}

/// Why a configuration could not be loaded. `Display` prints one `file:line: why` per problem.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", render(.origin, .problems))]
    Invalid {
        origin: Source,
        problems: Vec<Problem>,
    },
}

/// One problem with its file, for `config check --json` (field names are a documented contract).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Located {
    pub file: String,
    /// 1-based; `None` (JSON null) when the problem has no single line (an unreadable file).
    pub line: Option<usize>,
    pub message: String,
}

impl Error {
    /// Every problem with the file it is in, in the order `Display` prints them.
    pub fn located(&self) -> Vec<Located> {
        match self {
            Self::Read { path, source } => vec![Located {
                file: path.display().to_string(),
                line: None,
                message: format!("cannot read config file: {source}"),
            }],
            Self::Invalid { origin, problems } => (problems.iter())
                .map(|p| Located {
                    file: origin.to_string(),
                    line: (p.line > 0).then_some(p.line),
                    message: p.message.clone(),
                })
                .collect(),
        }
    }
}

fn render(source: &Source, problems: &[Problem]) -> String {
    let lines: Vec<String> = problems
        .iter()
        .map(|p| match p.line {
            0 => format!("{source}: {}", p.message),
            line => format!("{source}:{line}: {}", p.message),
        })
        .collect();
    lines.join("\n")
}

/// The 1-based line of byte `offset` in `text`.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_print_as_file_line_why() {
        let problems = vec![
            Problem {
                line: 0,
                message: "no line".into(),
            },
            Problem {
                line: 3,
                message: "bad".into(),
            },
        ];
        let err = Error::Invalid {
            origin: Source::File("site.toml".into()),
            problems,
        };
        assert_eq!(err.to_string(), "site.toml: no line\nsite.toml:3: bad");
        let located = err.located();
        assert_eq!((located[0].line, located[1].line), (None, Some(3)));
        assert_eq!(
            (located[1].file.as_str(), located[1].message.as_str()),
            ("site.toml", "bad")
        );
        assert_eq!(line_of("a\nb\nc", 2), 2);
        assert_eq!(line_of("a\n", 99), 2);
    }
}
