//! What went wrong in a config file, by line: [`Problem`], and the [`Error`] that prints them as
//! `file:line: why`, one a line (the format of `regcache config check`, which exits 64 on it).

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
        assert_eq!(line_of("a\nb\nc", 2), 2);
        assert_eq!(line_of("a\n", 99), 2);
    }
}
