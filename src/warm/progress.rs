//! What `regcache warm` shows while it works: on a terminal, one live line per image (bytes, rate,
//! ETA, a bar), as `docker pull` does; otherwise a plain line per object, for logs.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use crate::maintenance::human;
use crate::sync::Locked;

/// A live line is redrawn at most this often.
const REDRAW: Duration = Duration::from_millis(100);
const BAR: usize = 24;

pub struct Progress {
    /// Live line on stderr (a terminal), else plain lines on stderr; `quiet`: nothing.
    live: bool,
    quiet: bool,
    state: Mutex<State>,
}

struct State {
    image: String,
    total: u64,
    done: u64,
    started: Instant,
    drawn: Option<Instant>,
}

impl Progress {
    /// Live when stderr is a terminal; `quiet` shows nothing (JSON output).
    pub fn new(quiet: bool) -> Self {
        Self {
            live: std::io::stderr().is_terminal(),
            quiet,
            state: Mutex::new(State {
                image: String::new(),
                total: 0,
                done: 0,
                started: Instant::now(),
                drawn: None,
            }),
        }
    }

    /// A new image with `total` bytes of objects to go through.
    pub fn begin(&self, image: &str, total: u64) {
        let mut s = self.state.locked();
        *s = State {
            image: image.to_owned(),
            total,
            done: 0,
            started: Instant::now(),
            drawn: None,
        };
    }

    /// `n` more bytes received.
    pub fn add(&self, n: u64) {
        let mut s = self.state.locked();
        s.done += n;
        let due = s.drawn.is_none_or(|t| t.elapsed() >= REDRAW);
        if self.live && !self.quiet && due {
            s.drawn = Some(Instant::now());
            eprint!("\r{}", line(&s));
            let _ = std::io::stderr().flush();
        }
    }

    /// One object done (plain mode prints it).
    pub fn object(&self, what: &str, bytes: u64, cached: bool) {
        if self.live || self.quiet {
            return;
        }
        let s = self.state.locked();
        let how = if cached { "already cached" } else { "fetched" };
        eprintln!("{}: {what} {} {how}", s.image, human(bytes));
    }

    /// The image is done: the live line is finished with a newline.
    pub fn end(&self) {
        let mut s = self.state.locked();
        if self.live && !self.quiet {
            s.done = s.done.max(s.total);
            eprintln!("\r{}", line(&s));
        }
    }
}

fn line(s: &State) -> String {
    let secs = s.started.elapsed().as_secs_f64().max(0.001);
    let rate = s.done as f64 / secs;
    let left = s.total.saturating_sub(s.done);
    let eta = match rate > 0.0 && left > 0 {
        true => format!("ETA {:.0}s", left as f64 / rate),
        false => "      ".to_owned(),
    };
    let filled = (s.done.min(s.total) as usize * BAR)
        .checked_div(s.total as usize)
        .unwrap_or(BAR);
    format!(
        "{}: [{}{}] {}/{} {}/s {eta}  ",
        s.image,
        "=".repeat(filled),
        " ".repeat(BAR - filled),
        human(s.done),
        human(s.total),
        human(rate as u64)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_lines_read_like_docker_pull() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(3 << 20), "3.0 MiB");
        assert_eq!(human(1536), "1.5 KiB");
        let s = State {
            image: "ghcr.io/acme/tool:v1".into(),
            total: 4 << 20,
            done: 1 << 20,
            started: Instant::now() - Duration::from_secs(1),
            drawn: None,
        };
        let l = line(&s);
        assert!(l.starts_with("ghcr.io/acme/tool:v1: [======      "), "{l}");
        assert!(l.contains("1.0 MiB/4.0 MiB"), "{l}");
        assert!(l.contains("ETA "), "{l}");
    }
}
