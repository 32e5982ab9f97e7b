//! The regular expressions of `[[cache.rule]] tags = "/…/"`: a small engine of our own (no regex
//! crate is in the dependency tree), compiled to a Pike VM, so matching is linear in pattern ×
//! tag whatever the pattern (no catastrophic backtracking).
//!
//! Supported: literals, `.`, `\d \D \w \W \s \S`, `\` before punctuation, classes `[…]`/`[^…]`
//! with ranges, groups `(…)`/`(?:…)`, `|`, `*`, `+`, `?`, `{n}`, `{n,}`, `{n,m}` (n, m ≤ 100; a
//! trailing `?` for laziness is accepted and changes nothing, as nothing is captured). The
//! expression must match the whole tag; a leading `^` and a trailing `$` are accepted as no-ops.
//! Not supported (refused with a reason): backreferences, lookaround, flags, anchors elsewhere.

/// A set of characters: ranges, or all but them.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Set {
    negated: bool,
    ranges: Vec<(char, char)>,
}

impl Set {
    fn one(c: char) -> Self {
        Self {
            negated: false,
            ranges: vec![(c, c)],
        }
    }

    fn contains(&self, c: char) -> bool {
        self.ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != self.negated
    }
}

/// The parsed expression.
#[derive(Clone, Debug)]
enum Node {
    Set(Set),
    Concat(Vec<Node>),
    Alt(Vec<Node>),
    Repeat(Box<Node>, u32, Option<u32>),
}

/// One instruction of the compiled program.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Inst {
    Set(Set),
    Split(usize, usize),
    Jmp(usize),
    Match,
}

/// Why an expression was refused; completes a `config check` problem line.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegexError {
    #[error("an unclosed ( (a group needs its ))")]
    UnclosedGroup,
    #[error("a ) without its (")]
    UnmatchedParen,
    #[error("an unclosed [ (a class needs its ])")]
    UnclosedClass,
    #[error("the range {0}-{1} is backwards")]
    BackwardsRange(char, char),
    #[error("{0:?} repeats nothing")]
    NothingToRepeat(char),
    #[error("write a count as {{n}}, {{n,}} or {{n,m}} with n <= m <= 100")]
    BadCount,
    #[error("a \\ at the end escapes nothing")]
    TrailingEscape,
    #[error("{0} is not supported (see the README)")]
    Unsupported(&'static str),
    #[error("the expression is too large")]
    TooLarge,
}

/// Instructions a program may have (bounds the work per tag character).
const MAX_INSTS: usize = 10_000;
const MAX_COUNT: u32 = 100;
/// Groups nested deeper are refused (the parser and compiler recurse per level).
const MAX_DEPTH: usize = 32;

/// A compiled tag expression; `Display` gives it back as written (without the slashes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagRegex {
    text: String,
    program: Vec<Inst>,
}

impl std::fmt::Display for TagRegex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl TagRegex {
    pub fn new(text: &str) -> Result<Self, RegexError> {
        let mut p = Parser {
            chars: text.chars().collect(),
            pos: 0,
            depth: 0,
        };
        p.eat('^');
        let node = p.alt()?;
        if p.pos < p.chars.len() {
            return Err(RegexError::UnmatchedParen);
        }
        let mut program = Vec::new();
        compile(&node, &mut program)?;
        program.push(Inst::Match);
        Ok(Self {
            text: text.to_owned(),
            program,
        })
    }

    /// Whether the whole of `s` matches.
    pub fn matches(&self, s: &str) -> bool {
        let mut now = Vec::new();
        let mut seen = vec![usize::MAX; self.program.len()];
        self.add(&mut now, &mut seen, 0, 0);
        for (step, c) in s.chars().enumerate() {
            let mut next = Vec::new();
            for &pc in &now {
                if let Inst::Set(set) = &self.program[pc] {
                    if set.contains(c) {
                        self.add(&mut next, &mut seen, pc + 1, step + 1);
                    }
                }
            }
            now = next;
        }
        now.iter().any(|&pc| self.program[pc] == Inst::Match)
    }

    /// Adds `pc` and what it reaches without reading a character (once per step).
    fn add(&self, list: &mut Vec<usize>, seen: &mut [usize], pc: usize, step: usize) {
        let mut stack = vec![pc];
        while let Some(pc) = stack.pop() {
            if seen[pc] == step {
                continue;
            }
            seen[pc] = step;
            match self.program[pc] {
                Inst::Jmp(to) => stack.push(to),
                Inst::Split(a, b) => stack.extend([b, a]),
                Inst::Set(_) | Inst::Match => list.push(pc),
            }
        }
    }
}

/// Appends the instructions of `node`.
fn compile(node: &Node, out: &mut Vec<Inst>) -> Result<(), RegexError> {
    if out.len() > MAX_INSTS {
        return Err(RegexError::TooLarge);
    }
    match node {
        Node::Set(set) => out.push(Inst::Set(set.clone())),
        Node::Concat(items) => items.iter().try_for_each(|n| compile(n, out))?,
        Node::Alt(branches) => {
            let mut jumps = Vec::new();
            for (i, branch) in branches.iter().enumerate() {
                let split = out.len();
                if i + 1 < branches.len() {
                    out.push(Inst::Split(split + 1, 0));
                }
                compile(branch, out)?;
                if i + 1 < branches.len() {
                    jumps.push(out.len());
                    out.push(Inst::Jmp(0));
                    out[split] = Inst::Split(split + 1, out.len());
                }
            }
            let end = out.len();
            jumps.into_iter().for_each(|j| out[j] = Inst::Jmp(end));
        }
        Node::Repeat(body, min, max) => repeat(body, *min, *max, out)?,
    }
    Ok(())
}

/// `body` at least `min` times, at most `max` (`None`: unbounded).
fn repeat(body: &Node, min: u32, max: Option<u32>, out: &mut Vec<Inst>) -> Result<(), RegexError> {
    for _ in 0..min {
        compile(body, out)?;
    }
    match max {
        None => {
            let split = out.len();
            out.push(Inst::Split(split + 1, 0));
            compile(body, out)?;
            out.push(Inst::Jmp(split));
            out[split] = Inst::Split(split + 1, out.len());
        }
        Some(max) => {
            let mut splits = Vec::new();
            for _ in min..max {
                splits.push(out.len());
                out.push(Inst::Split(out.len() + 1, 0));
                compile(body, out)?;
            }
            let end = out.len();
            splits
                .into_iter()
                .for_each(|s| out[s] = Inst::Split(s + 1, end));
        }
    }
    Ok(())
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
    /// Groups open at `pos`.
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn eat(&mut self, c: char) -> bool {
        let hit = self.peek() == Some(c);
        self.pos += usize::from(hit);
        hit
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        self.pos += usize::from(c.is_some());
        c
    }

    fn alt(&mut self) -> Result<Node, RegexError> {
        let mut branches = vec![self.concat()?];
        while self.eat('|') {
            branches.push(self.concat()?);
        }
        Ok(match branches.len() {
            1 => branches.remove(0),
            _ => Node::Alt(branches),
        })
    }

    fn concat(&mut self) -> Result<Node, RegexError> {
        let mut items = Vec::new();
        while let Some(c) = self.peek() {
            if c == '|' || c == ')' {
                break;
            }
            if c == '$' && self.pos + 1 == self.chars.len() {
                self.pos += 1;
                break;
            }
            let atom = self.atom()?;
            items.push(self.quantified(atom)?);
        }
        Ok(Node::Concat(items))
    }

    fn atom(&mut self) -> Result<Node, RegexError> {
        let c = self.next().expect("concat peeked a character");
        let set = match c {
            '(' => return self.group(),
            '[' => self.class()?,
            '.' => Set {
                negated: true,
                ranges: Vec::new(),
            },
            '\\' => self.escape()?,
            '*' | '+' | '?' | '{' => return Err(RegexError::NothingToRepeat(c)),
            '^' | '$' => return Err(RegexError::Unsupported("an anchor inside the expression")),
            c => Set::one(c),
        };
        Ok(Node::Set(set))
    }

    /// After `(`: the group and its `)`.
    fn group(&mut self) -> Result<Node, RegexError> {
        if self.eat('?') && !self.eat(':') {
            return Err(RegexError::Unsupported("(? other than (?:"));
        }
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(RegexError::TooLarge);
        }
        let node = self.alt()?;
        self.depth -= 1;
        match self.eat(')') {
            true => Ok(node),
            false => Err(RegexError::UnclosedGroup),
        }
    }

    /// After `\`: an escaped character or a class such as `\d`.
    fn escape(&mut self) -> Result<Set, RegexError> {
        let c = self.next().ok_or(RegexError::TrailingEscape)?;
        let ranges = match c.to_ascii_lowercase() {
            'd' => vec![('0', '9')],
            'w' => vec![('0', '9'), ('A', 'Z'), ('_', '_'), ('a', 'z')],
            's' => vec![(' ', ' '), ('\t', '\r')],
            _ if c.is_ascii_alphanumeric() => {
                return Err(RegexError::Unsupported(
                    "this escape (use \\d \\w \\s or a class)",
                ))
            }
            _ => return Ok(Set::one(c)),
        };
        Ok(Set {
            negated: c.is_ascii_uppercase(),
            ranges,
        })
    }

    /// After `[`: the class and its `]`.
    fn class(&mut self) -> Result<Set, RegexError> {
        let negated = self.eat('^');
        let mut ranges = Vec::new();
        let mut first = true;
        loop {
            let lo = match self.next().ok_or(RegexError::UnclosedClass)? {
                ']' if !first => return Ok(Set { negated, ranges }),
                '\\' => {
                    let set = self.escape()?;
                    match set.negated {
                        false => ranges.extend(set.ranges),
                        true => return Err(RegexError::Unsupported("\\D \\W \\S inside a class")),
                    }
                    first = false;
                    continue;
                }
                c => c,
            };
            first = false;
            let dash = self.peek() == Some('-') && self.chars.get(self.pos + 1) != Some(&']');
            let hi = match dash {
                true => {
                    self.pos += 1;
                    self.next().ok_or(RegexError::UnclosedClass)?
                }
                false => lo,
            };
            if hi < lo {
                return Err(RegexError::BackwardsRange(lo, hi));
            }
            ranges.push((lo, hi));
        }
    }

    /// `atom` and its quantifier, if any (one: `a**` is refused, write `(?:a*)*`).
    fn quantified(&mut self, atom: Node) -> Result<Node, RegexError> {
        let simple = match self.peek() {
            Some('*') => Some((0, None)),
            Some('+') => Some((1, None)),
            Some('?') => Some((0, Some(1))),
            _ => None,
        };
        let (min, max) = match (simple, self.peek()) {
            (Some(q), _) => {
                self.pos += 1;
                q
            }
            (None, Some('{')) => {
                self.pos += 1;
                self.count()?
            }
            _ => return Ok(atom),
        };
        self.eat('?');
        Ok(Node::Repeat(Box::new(atom), min, max))
    }

    /// After `{`: `n}`, `n,}` or `n,m}`.
    fn count(&mut self) -> Result<(u32, Option<u32>), RegexError> {
        let close = (self.chars[self.pos..].iter()).position(|&c| c == '}');
        let close = close.ok_or(RegexError::BadCount)? + self.pos;
        let inside: String = self.chars[self.pos..close].iter().collect();
        self.pos = close + 1;
        let number = |s: &str| s.parse::<u32>().ok().filter(|n| *n <= MAX_COUNT);
        let (min, max) = match inside.split_once(',') {
            None => (number(&inside), number(&inside)),
            Some((lo, "")) => (number(lo), None),
            Some((lo, hi)) => (number(lo), Some(number(hi).ok_or(RegexError::BadCount)?)),
        };
        let min = min.ok_or(RegexError::BadCount)?;
        match max {
            Some(max) if max < min => Err(RegexError::BadCount),
            max => Ok((min, max)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(re: &str, s: &str) -> bool {
        TagRegex::new(re).unwrap().matches(s)
    }

    #[test]
    fn release_tags_and_whole_tag_matching() {
        let semver = r"v?\d+\.\d+\.\d+(-[0-9A-Za-z.]+)?";
        for tag in ["v1.2.3", "1.27.0", "v10.0.1-rc.1"] {
            assert!(m(semver, tag), "{tag}");
        }
        for tag in ["latest", "v1.2", "v1.2.3.4", "xv1.2.3"] {
            assert!(!m(semver, tag), "{tag}");
        }
        assert!(
            m("^latest$", "latest") && !m("latest", "latest-1"),
            "whole tag"
        );
        assert!(m("latest|stable|edge", "stable") && !m("latest|stable", "stab"));
        assert!(m("(?:main|dev)-[0-9a-f]{7}", "main-1a2b3c4"));
        assert!(!m("(?:main|dev)-[0-9a-f]{7}", "dev-1a2b3c"));
        assert!(m("a{2,3}", "aaa") && !m("a{2,3}", "aaaa") && m("a{2,}", "aaaaa"));
        assert!(m(r"\w+", "a_Z9") && !m(r"\W", "a") && m("[^-]+", "abc") && !m("[^-]+", "a-b"));
        assert!(m(".*", "") && m("[a-]+", "a-a") && m(r"[\d.]+", "1.2"));
        assert!(m("x*?y", "xxy"), "a lazy quantifier changes nothing");
    }

    #[test]
    fn nested_repeats_stay_linear() {
        let tag = "a".repeat(128);
        assert!(!m("(a*)*b", &tag));
        assert!(m("(a|aa)+", &tag));
    }

    #[test]
    fn refused_expressions_say_why() {
        let err = |re: &str| TagRegex::new(re).unwrap_err();
        assert_eq!(err("(v1"), RegexError::UnclosedGroup);
        assert_eq!(err("v1)"), RegexError::UnmatchedParen);
        assert_eq!(err("[0-9"), RegexError::UnclosedClass);
        assert_eq!(err("[9-0]"), RegexError::BackwardsRange('9', '0'));
        assert_eq!(err("*a"), RegexError::NothingToRepeat('*'));
        assert_eq!(err("a**"), RegexError::NothingToRepeat('*'));
        assert_eq!(
            err(&format!("a{}", "*".repeat(10_000))),
            RegexError::NothingToRepeat('*')
        );
        assert_eq!(err("a{3,1}"), RegexError::BadCount);
        assert_eq!(err("a{101}"), RegexError::BadCount);
        assert_eq!(err("a{"), RegexError::BadCount);
        assert_eq!(err("a\\"), RegexError::TrailingEscape);
        assert!(matches!(err(r"(a)\1"), RegexError::Unsupported(_)));
        assert!(matches!(err("(?=a)"), RegexError::Unsupported(_)));
        assert!(matches!(err("a^b"), RegexError::Unsupported(_)));
        assert_eq!(err("((a{100}){100}){100}"), RegexError::TooLarge);
        let deep = format!("{}a{}", "(".repeat(10_000), ")".repeat(10_000));
        assert_eq!(err(&deep), RegexError::TooLarge, "no stack overflow");
        assert_eq!(TagRegex::new("v.*").unwrap().to_string(), "v.*");
    }
}
