//! A live progress line on stderr for long operations (`cache verify`, `cache purge`): count of
//! total, bytes of total, rate and ETA, redrawn in place at most every 100 ms and cleared at the
//! end. Drawn only when stderr is a terminal and the output is for people (not `--json`); a
//! script or a log file sees nothing. Hand-rolled: one line needs no crate.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use crate::maintenance::human;

/// How often the line is redrawn at most.
const EVERY: Duration = Duration::from_millis(100);

/// One operation's progress; the line is cleared when it is dropped.
pub struct Progress {
    label: &'static str,
    total: (u64, u64),
    done: (u64, u64),
    started: Instant,
    drawn: Option<Instant>,
    /// `None`: quiet (not a terminal, or `--json`).
    out: Option<Box<dyn Write>>,
}

impl Progress {
    /// Progress of `objects` objects, `bytes` bytes on stderr, if `allowed` and stderr is a
    /// terminal; quiet otherwise.
    pub fn stderr(label: &'static str, objects: u64, bytes: u64, allowed: bool) -> Self {
        let out: Option<Box<dyn Write>> = (allowed && std::io::stderr().is_terminal())
            .then(|| Box::new(std::io::stderr()) as Box<dyn Write>);
        Self::to(out, label, objects, bytes)
    }

    /// Progress drawn on `out` (`None`: quiet).
    pub fn to(out: Option<Box<dyn Write>>, label: &'static str, objects: u64, bytes: u64) -> Self {
        Self {
            label,
            total: (objects, bytes),
            done: (0, 0),
            started: Instant::now(),
            drawn: None,
            out,
        }
    }

    /// `objects` more done, holding `bytes`.
    pub fn advance(&mut self, objects: u64, bytes: u64) {
        self.done = (self.done.0 + objects, self.done.1 + bytes);
        let due = self.drawn.is_none_or(|at| at.elapsed() >= EVERY);
        if self.out.is_some() && (due || self.done.0 >= self.total.0) {
            let text = line(self.label, self.done, self.total, self.started.elapsed());
            self.write(&format!("\r{text}\x1b[K"));
            self.drawn = Some(Instant::now());
        }
    }

    fn write(&mut self, text: &str) {
        if let Some(out) = &mut self.out {
            // A progress line that cannot be drawn is not worth failing the operation for.
            let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if self.drawn.is_some() {
            self.write("\r\x1b[K");
        }
    }
}

/// `verify: 120/3400 objects, 1.2 GiB/48.0 GiB, 210.3 MiB/s, ETA 3m52s`.
fn line(label: &str, done: (u64, u64), total: (u64, u64), elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(0.001);
    let rate = done.1 as f64 / secs;
    // By bytes when there are any, else by objects.
    let left = match (rate > 0.0, done.0 > 0) {
        (true, _) => Some(total.1.saturating_sub(done.1) as f64 / rate),
        (false, true) => Some(total.0.saturating_sub(done.0) as f64 * secs / done.0 as f64),
        (false, false) => None,
    };
    let eta = left.map_or("?".to_owned(), |s| clock(s.round() as u64));
    format!(
        "{label}: {}/{} objects, {}/{}, {}/s, ETA {eta}",
        done.0,
        total.0,
        human(done.1),
        human(total.1),
        human(rate as u64)
    )
}

/// `45s`, `3m52s`, `2h05m`.
fn clock(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_line_has_count_bytes_rate_and_eta() {
        let text = line("verify", (1, 1 << 20), (4, 4 << 20), Duration::from_secs(2));
        assert_eq!(
            text,
            "verify: 1/4 objects, 1.0 MiB/4.0 MiB, 512.0 KiB/s, ETA 6s"
        );
        let empty = line("purge", (2, 0), (3, 0), Duration::from_secs(90));
        assert!(empty.ends_with("0 B/s, ETA 45s"), "{empty}");
        assert!(line("x", (0, 0), (3, 9), Duration::ZERO).ends_with("ETA ?"));
        assert_eq!((clock(232), clock(7500)), ("3m52s".into(), "2h05m".into()));
    }

    #[test]
    fn drawn_in_place_and_cleared_at_the_end() {
        let out = Shared::default();
        let mut progress = Progress::to(Some(Box::new(out.clone())), "verify", 2, 20);
        progress.advance(1, 10);
        progress.advance(1, 10);
        drop(progress);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(
            text.starts_with("\rverify: 1/2 objects, 10 B/20 B, "),
            "{text:?}"
        );
        assert!(
            text.contains("\rverify: 2/2 objects"),
            "the last step is drawn: {text:?}"
        );
        assert!(text.ends_with("\r\x1b[K"), "{text:?}");
    }

    #[test]
    fn quiet_draws_nothing() {
        let mut progress = Progress::to(None, "verify", 1, 1);
        progress.advance(1, 1);
        assert!(progress.drawn.is_none());
    }
}
