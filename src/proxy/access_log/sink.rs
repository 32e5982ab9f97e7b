//! Where access-log lines go: a buffer written out by a flusher thread within [`FLUSH_DELAY`]
//! (or at once when it is full), to stdout or an appended file that SIGHUP reopens.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use http::StatusCode;

use super::Entry;
use crate::config::{AccessFormat, LogConfig};
use crate::sync::Locked;

/// How long a line may wait in the buffer before it is written out.
pub const FLUSH_DELAY: Duration = Duration::from_millis(100);
/// A buffer this full is written out at once, by the request that filled it.
const FLUSH_BYTES: usize = 64 * 1024;
/// How often an idle flusher thread checks whether its log is still in use.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// Where access-log lines go, and in which format. Cloning shares the sink. Lines are buffered
/// and written out by a flusher thread at most [`FLUSH_DELAY`] after the first of them (or at
/// once when [`FLUSH_BYTES`] are waiting), before a reopen or a reconfiguration, on
/// [`AccessLog::flush`] (shutdown), and when the last clone goes (within the delay, by the
/// flusher, if it holds the log at that moment).
#[derive(Clone)]
pub struct AccessLog {
    shared: Arc<Shared>,
}

struct Shared {
    /// std Mutex, never held across .await: one whole line is appended under the lock.
    sink: Mutex<Sink>,
    /// Wakes the flusher when the first line goes into an empty buffer.
    wake: Condvar,
}

struct Sink {
    writer: Box<dyn Write + Send>,
    /// The file behind `writer`, reopened by [`AccessLog::reopen`]; `None` for stdout.
    path: Option<PathBuf>,
    format: AccessFormat,
    /// Whole lines not yet written; its capacity is kept between flushes.
    buf: Vec<u8>,
    /// Whether a flusher thread runs (else every line is written out at once).
    flusher: bool,
}

impl Sink {
    /// Writes out every buffered line.
    fn write_out(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let written = (self.writer.write_all(&self.buf)).and_then(|()| self.writer.flush());
        if let Err(e) = written {
            tracing::warn!(error = %e, lines = line_count(&self.buf), "cannot write the access log");
        }
        self.buf.clear();
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.write_out();
    }
}

fn line_count(buf: &[u8]) -> usize {
    buf.iter().filter(|&&b| b == b'\n').count()
}

impl AccessLog {
    pub fn stdout() -> Self {
        Self::to_writer(Box::new(std::io::stdout()))
    }

    pub fn to_writer(writer: Box<dyn Write + Send>) -> Self {
        Self::with(writer, None, AccessFormat::Main)
    }

    fn with(writer: Box<dyn Write + Send>, path: Option<PathBuf>, format: AccessFormat) -> Self {
        let sink = Sink {
            writer,
            path,
            format,
            buf: Vec::new(),
            flusher: false,
        };
        let shared = Arc::new(Shared {
            sink: Mutex::new(sink),
            wake: Condvar::new(),
        });
        let weak = Arc::downgrade(&shared);
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || flusher(&weak));
        shared.sink.locked().flusher = spawned.is_ok();
        Self { shared }
    }

    /// The access log `log` asks for: stdout or an appended file, main or JSON.
    pub fn open(log: &LogConfig) -> std::io::Result<Self> {
        let this = Self::stdout();
        this.configure(log)?;
        Ok(this)
    }

    /// Switches format and target (on reload); a file is opened for appending. Lines buffered
    /// until now go to the old target.
    pub fn configure(&self, log: &LogConfig) -> std::io::Result<()> {
        let writer: Box<dyn Write + Send> = match &log.access_file {
            Some(path) => Box::new(append(path)?),
            None => Box::new(std::io::stdout()),
        };
        let mut sink = self.shared.sink.locked();
        sink.write_out();
        sink.writer = writer;
        sink.path = log.access_file.clone();
        sink.format = log.access_format;
        Ok(())
    }

    /// Reopens the file (after logrotate moved it away); nothing for stdout. Lines buffered
    /// until now go to the old file.
    pub fn reopen(&self) -> std::io::Result<()> {
        let mut sink = self.shared.sink.locked();
        if let Some(path) = sink.path.clone() {
            sink.write_out();
            sink.writer = Box::new(append(&path)?);
        }
        Ok(())
    }

    /// Writes out every buffered line now (at shutdown).
    pub fn flush(&self) {
        self.shared.sink.locked().write_out();
    }

    pub(super) fn write(&self, entry: &Entry, status: StatusCode, bytes: u64) {
        let mut sink = self.shared.sink.locked();
        let was_empty = sink.buf.is_empty();
        let format = sink.format;
        let buf = &mut sink.buf;
        match format {
            AccessFormat::Main => entry.write_line(buf, status, bytes),
            AccessFormat::Json => buf.extend_from_slice(entry.json(status, bytes).as_bytes()),
        }
        buf.push(b'\n');
        if !sink.flusher || sink.buf.len() >= FLUSH_BYTES {
            sink.write_out();
        } else if was_empty {
            self.shared.wake.notify_one();
        }
    }
}

/// The flusher thread: waits for a first line, lets more come for [`FLUSH_DELAY`], writes them
/// out; ends once the log is dropped (holding it only while it waits or writes).
fn flusher(weak: &Weak<Shared>) {
    while let Some(shared) = weak.upgrade() {
        let sink = shared.sink.locked();
        let waited = (shared.wake).wait_timeout_while(sink, IDLE_CHECK, |s| s.buf.is_empty());
        let (sink, _) = waited.unwrap_or_else(|e| e.into_inner());
        let idle = sink.buf.is_empty();
        drop(sink);
        if !idle {
            std::thread::sleep(FLUSH_DELAY);
            shared.sink.locked().write_out();
        }
    }
}

fn append(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, Method, Version};

    /// A writer the test reads back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.locked().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn lines(&self) -> usize {
            line_count(&self.0.locked())
        }
    }

    fn entry(path: &str) -> Entry {
        let uri = path.parse().unwrap();
        let headers = HeaderMap::new();
        Entry::new(
            [127, 0, 0, 1].into(),
            &Method::GET,
            &uri,
            Version::HTTP_11,
            &headers,
            "ghcr.io",
        )
    }

    #[test]
    fn lines_are_buffered_and_written_out_within_the_delay() {
        let out = Shared::default();
        let log = AccessLog::to_writer(Box::new(out.clone()));
        let t0 = std::time::Instant::now();
        log.write(&entry("/v2/a"), StatusCode::OK, 1);
        log.write(&entry("/v2/b"), StatusCode::OK, 2);
        // Bounded wait: the flusher writes both lines out FLUSH_DELAY after the first.
        while out.lines() < 2 && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let waited = t0.elapsed();
        assert_eq!(out.lines(), 2);
        // The bound, with room for a loaded machine's scheduling.
        assert!(waited < FLUSH_DELAY * 4, "written out after {waited:?}");
        let text = String::from_utf8(out.0.locked().clone()).unwrap();
        assert!(text.contains("\"GET /v2/a HTTP/1.1\" 200 1 ") && text.ends_with("\"ghcr.io\"\n"));
    }

    #[test]
    fn flush_drop_and_a_full_buffer_write_out_at_once() {
        let out = Shared::default();
        let log = AccessLog::to_writer(Box::new(out.clone()));
        log.write(&entry("/v2/a"), StatusCode::OK, 1);
        log.flush();
        assert_eq!(out.lines(), 1, "flush writes out at once");
        // A full buffer is written out by the request that filled it.
        let line = entry("/v2/b").line(StatusCode::OK, 1).len() + 1;
        for _ in 0..FLUSH_BYTES.div_ceil(line) {
            log.write(&entry("/v2/b"), StatusCode::OK, 1);
        }
        assert_eq!(out.lines(), 1 + FLUSH_BYTES.div_ceil(line));
        log.write(&entry("/v2/c"), StatusCode::OK, 1);
        // Dropped: written out at once, or by the flusher that holds the log while it waits.
        drop(log);
        let t0 = std::time::Instant::now();
        while out.lines() < 2 + FLUSH_BYTES.div_ceil(line) && t0.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(out.lines(), 2 + FLUSH_BYTES.div_ceil(line));
        assert!(t0.elapsed() < FLUSH_DELAY * 4, "{:?}", t0.elapsed());
    }

    #[test]
    fn reopen_writes_buffered_lines_to_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let config = LogConfig {
            access_file: Some(path.clone()),
            ..LogConfig::default()
        };
        let log = AccessLog::open(&config).unwrap();
        log.write(&entry("/v2/old"), StatusCode::OK, 1);
        std::fs::rename(&path, dir.path().join("access.log.1")).unwrap();
        log.reopen().unwrap();
        log.write(&entry("/v2/new"), StatusCode::OK, 1);
        log.flush();
        let old = std::fs::read_to_string(dir.path().join("access.log.1")).unwrap();
        let new = std::fs::read_to_string(&path).unwrap();
        assert!(old.contains("/v2/old") && !old.contains("/v2/new"), "{old}");
        assert!(new.contains("/v2/new") && !new.contains("/v2/old"), "{new}");
    }
}
