//! The glob patterns of `[[cache.rule]]` (`match` and `tags`), a matcher of our own (no regex or
//! glob crate is in the dependency tree).
//!
//! `*` is any run of characters without `/`; `**` is any run, `/` included; `?` is one character
//! other than `/`; `[a-z0-9]` is one character of a class (`[!…]` or `[^…]` negates it); every
//! other character stands for itself (`\` escapes the next one). A glob matches the whole text.

use std::fmt;

/// One element of a compiled glob.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Char(char),
    /// `?`: one character other than `/`.
    One,
    /// `*`: any run without `/`.
    Star,
    /// `**`: any run.
    Stars,
    /// `[…]`: one character in (or, negated, not in) the ranges.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

/// A compiled glob; `Display` gives it back as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Glob {
    text: String,
    tokens: Vec<Token>,
}

/// Why a glob was refused; completes a `config check` problem line.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum GlobError {
    #[error("an unclosed [ (a class needs its ])")]
    UnclosedClass,
    #[error("an empty class []")]
    EmptyClass,
    #[error("the range {0}-{1} is backwards")]
    BackwardsRange(char, char),
    #[error("*** is ambiguous: write * (within one path segment) or ** (across segments)")]
    ThreeStars,
    #[error("a \\ at the end escapes nothing")]
    TrailingEscape,
    #[error("longer than {MAX_LEN} characters")]
    TooLong,
}

/// Characters a glob may have (matching is linear in glob × text, per tag request).
const MAX_LEN: usize = 1024;

impl Glob {
    pub fn new(text: &str) -> Result<Self, GlobError> {
        if text.chars().count() > MAX_LEN {
            return Err(GlobError::TooLong);
        }
        let mut tokens = Vec::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            let token = match c {
                '*' if chars.next_if_eq(&'*').is_some() => match chars.peek() {
                    Some('*') => return Err(GlobError::ThreeStars),
                    _ => Token::Stars,
                },
                '*' => Token::Star,
                '?' => Token::One,
                '[' => class(&mut chars)?,
                '\\' => Token::Char(chars.next().ok_or(GlobError::TrailingEscape)?),
                c => Token::Char(c),
            };
            tokens.push(token);
        }
        Ok(Self {
            text: text.to_owned(),
            tokens,
        })
    }

    /// Whether the whole of `s` matches (dynamic programming: linear in pattern × text).
    pub fn matches(&self, s: &str) -> bool {
        let s: Vec<char> = s.chars().collect();
        // ok[j]: the tokens from i on match s[j..]; computed from the last token back.
        let mut ok = vec![false; s.len() + 1];
        ok[s.len()] = true;
        for token in self.tokens.iter().rev() {
            let mut next = vec![false; s.len() + 1];
            for j in (0..=s.len()).rev() {
                let c = s.get(j).copied();
                next[j] = match token {
                    Token::Stars => ok[j] || (c.is_some() && next[j + 1]),
                    Token::Star => ok[j] || (c.is_some_and(|c| c != '/') && next[j + 1]),
                    _ => c.is_some_and(|c| one(token, c)) && ok[j + 1],
                };
            }
            ok = next;
        }
        ok[0]
    }

    /// Whether the glob can match a `/` (a tag never holds one).
    pub fn spans_segments(&self) -> bool {
        (self.tokens.iter()).any(|t| matches!(t, Token::Stars | Token::Char('/')))
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Whether a one-character token matches `c`.
fn one(token: &Token, c: char) -> bool {
    match token {
        Token::Char(want) => *want == c,
        Token::One => c != '/',
        Token::Class { negated, ranges } => {
            let inside = ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi);
            inside != *negated && c != '/'
        }
        Token::Star | Token::Stars => false,
    }
}

/// The rest of a `[…]` class, after its `[`.
fn class(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<Token, GlobError> {
    let negated = chars.next_if(|c| *c == '!' || *c == '^').is_some();
    let mut ranges = Vec::new();
    loop {
        let lo = match chars.next().ok_or(GlobError::UnclosedClass)? {
            ']' if ranges.is_empty() => return Err(GlobError::EmptyClass),
            ']' => return Ok(Token::Class { negated, ranges }),
            '\\' => chars.next().ok_or(GlobError::UnclosedClass)?,
            c => c,
        };
        let hi = match chars.next_if_eq(&'-') {
            None => lo,
            Some(_) => match chars.next().ok_or(GlobError::UnclosedClass)? {
                // `[a-]`: the dash is a character of its own
                ']' => {
                    ranges.extend([(lo, lo), ('-', '-')]);
                    return Ok(Token::Class { negated, ranges });
                }
                hi if hi < lo => return Err(GlobError::BackwardsRange(lo, hi)),
                hi => hi,
            },
        };
        ranges.push((lo, hi));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(glob: &str, s: &str) -> bool {
        Glob::new(glob).unwrap().matches(s)
    }

    #[test]
    fn one_star_stays_within_a_segment_two_cross_them() {
        assert!(m("docker.io/library/*", "docker.io/library/nginx"));
        assert!(!m("docker.io/library/*", "docker.io/library/a/b"));
        assert!(!m("docker.io/library/*", "docker.io/library"));
        assert!(m("ghcr.io/acme/**", "ghcr.io/acme/a/b/c"));
        assert!(m("ghcr.io/acme/**", "ghcr.io/acme/x"));
        assert!(!m("ghcr.io/acme/**", "ghcr.io/acmeco/x"));
        assert!(m("**", "any/thing"));
        assert!(m("*", ""));
        assert!(!m("", "x"));
    }

    #[test]
    fn classes_question_marks_and_escapes() {
        let release = "v[0-9]*.[0-9]*.[0-9]*";
        assert!(m(release, "v1.2.3") && m(release, "v10.0.1-rc1"));
        assert!(!m(release, "latest") && !m(release, "v1.2"));
        assert!(m("[!a-z]*", "1abc") && !m("[^a-z]*", "abc"));
        assert!(m("v?", "v1") && !m("v?", "v") && !m("a?b", "a/b"));
        assert!(m("a\\*", "a*") && !m("a\\*", "ab"));
        assert!(m("[a-]", "-") && m("[a-]", "a"));
        assert!(m("*-[0-9][0-9][0-9][0-9]", "nightly-2024"));
    }

    #[test]
    fn many_stars_stay_fast() {
        let glob = "*a*a*a*a*a*a*a*a*a*a*b";
        let text = "a".repeat(5_000);
        assert!(!m(glob, &text));
        assert!(m(glob, &(text + "b")));
    }

    #[test]
    fn bad_globs_say_why() {
        assert_eq!(Glob::new("v[0-9"), Err(GlobError::UnclosedClass));
        assert_eq!(Glob::new("a[]"), Err(GlobError::EmptyClass));
        assert_eq!(Glob::new("[9-0]"), Err(GlobError::BackwardsRange('9', '0')));
        assert_eq!(Glob::new("a/***"), Err(GlobError::ThreeStars));
        assert_eq!(Glob::new("a\\"), Err(GlobError::TrailingEscape));
        assert_eq!(Glob::new(&"a".repeat(1025)), Err(GlobError::TooLong));
        assert_eq!(Glob::new("a/*/b").unwrap().to_string(), "a/*/b");
        assert!(Glob::new("a/**").unwrap().spans_segments());
        assert!(!Glob::new("v*").unwrap().spans_segments());
    }
}
