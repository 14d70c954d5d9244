//! The binary's log: `<dir>/logs/binary.log`, rotated by size.
//!
//! Every line the binary writes to stdout or stderr lands here as it is, one write per line, and
//! so do the agent's lifecycle events (`[flotilla-agent] <time> started version … pid …`). It is
//! rotated by size (`log_file`): `binary.log` becomes `binary.log.1`, and so on up to `keep`.
//!
//! Besides the file, the log keeps the last [`RECENT_LINES`] lines of the current run in memory
//! (for a failed rollout's report) and hands every new line to followers of the `Logs` request
//! through a broadcast channel, so a follower never has to find its place again after a rotation.
//! When the bootstrap names a Loki server, every line is also handed to the `loki` shipper.

use std::collections::VecDeque;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use flotilla_spec::bootstrap::LogRotation;
use tokio::sync::broadcast;

use crate::log_file::RotatingFile;
use crate::loki::LokiShipper;

/// Lines of the current run kept in memory.
pub(crate) const RECENT_LINES: usize = 50;
/// A longer line is cut into pieces of this many bytes.
pub(crate) const MAX_LINE_BYTES: usize = 16 * 1024;
/// Lines a follower may fall behind before it is told that it missed some.
const FOLLOW_BUFFER_LINES: usize = 1024;
/// The most bytes one `Logs` request reads from the files.
const MAX_TAIL_BYTES: u64 = 32 * 1024 * 1024;
/// What agent events start with.
pub(crate) const EVENT_PREFIX: &str = "[flotilla-agent] ";

/// The binary's log. Shared by the supervisor, the capture tasks and the API.
#[derive(Debug)]
pub(crate) struct BinaryLog {
    path: PathBuf,
    inner: Mutex<LogFile>,
    followers: broadcast::Sender<Arc<str>>,
    /// Where lines are shipped besides the file, once set.
    loki: OnceLock<Arc<LokiShipper>>,
}

#[derive(Debug)]
struct LogFile {
    file: RotatingFile,
    recent: VecDeque<String>,
    /// Whether the last write failed: reported once, not for every line.
    failing: bool,
}

/// The files a `Logs` request reads, opened together so that a rotation in between does not
/// skip or repeat lines: newest first, with how far to read the newest.
#[derive(Debug)]
pub(crate) struct LogSnapshot {
    current: Option<(fs_err::File, u64)>,
    rotated: Vec<fs_err::File>,
}

impl BinaryLog {
    /// Opens (appends to) `<logs_dir>/binary.log`.
    pub(crate) fn open(logs_dir: &Path, rotation: &LogRotation) -> io::Result<BinaryLog> {
        let path = logs_dir.join("binary.log");
        let file = RotatingFile::open(path.clone(), rotation.max_bytes, rotation.keep)?;
        let (followers, _) = broadcast::channel(FOLLOW_BUFFER_LINES);
        Ok(BinaryLog {
            path,
            inner: Mutex::new(LogFile { file, recent: VecDeque::new(), failing: false }),
            followers,
            loki: OnceLock::new(),
        })
    }

    /// Hands every line from now on to `shipper` as well (once; a second shipper is ignored).
    pub(crate) fn ship_to(&self, shipper: Arc<LokiShipper>) {
        let _ = self.loki.set(shipper);
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line the binary wrote (without its newline).
    pub(crate) fn binary_line(&self, line: &str) {
        self.append(line);
    }

    /// Appends an agent lifecycle event.
    pub(crate) fn event(&self, message: &str) {
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        tracing::info!("{message}");
        self.append(&format!("{EVENT_PREFIX}{now} {message}"));
    }

    /// Starts a new run: the in-memory tail forgets the previous one.
    pub(crate) fn begin_run(&self) {
        self.lock().recent.clear();
    }

    /// The last lines of the current run, oldest first.
    pub(crate) fn recent_lines(&self) -> Vec<String> {
        self.lock().recent.iter().cloned().collect()
    }

    /// Opens the log files as they are now, and subscribes to new lines when `follow`: the
    /// snapshot ends exactly where the subscription begins.
    pub(crate) fn snapshot(
        &self,
        follow: bool,
    ) -> (LogSnapshot, Option<broadcast::Receiver<Arc<str>>>) {
        let inner = self.lock();
        let receiver = follow.then(|| self.followers.subscribe());
        let current = fs_err::File::open(&self.path).ok().map(|file| (file, inner.file.size()));
        let rotated =
            (1..=inner.file.keep()).map_while(|n| fs_err::File::open(inner.file.rotated(n)).ok());
        let snapshot = LogSnapshot { current, rotated: rotated.collect() };
        drop(inner);
        (snapshot, receiver)
    }

    fn lock(&self) -> MutexGuard<'_, LogFile> {
        // A panic while holding the lock leaves plain data behind; keep logging.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn append(&self, line: &str) {
        // Long lines are cut into pieces at character boundaries.
        let mut rest = line;
        loop {
            let mut end = rest.len().min(MAX_LINE_BYTES);
            while !rest.is_char_boundary(end) {
                end -= 1;
            }
            self.append_piece(&rest[..end]);
            rest = &rest[end..];
            if rest.is_empty() {
                break;
            }
        }
    }

    fn append_piece(&self, line: &str) {
        let mut inner = self.lock();
        let mut buffer = Vec::with_capacity(line.len() + 1);
        buffer.extend_from_slice(line.as_bytes());
        buffer.push(b'\n');
        match inner.file.append(&buffer) {
            Ok(()) => inner.failing = false,
            Err(error) => {
                if !inner.failing {
                    tracing::warn!("could not write to the binary's log: {error}");
                }
                inner.failing = true;
            }
        }
        if inner.recent.len() == RECENT_LINES {
            inner.recent.pop_front();
        }
        inner.recent.push_back(line.to_owned());
        // Under the log's lock, so that Loki gets the lines in the file's order.
        if let Some(shipper) = self.loki.get() {
            shipper.push_line(line);
        }
        drop(inner);
        // No follower is not an error.
        let _ = self.followers.send(Arc::from(line));
    }
}

impl LogSnapshot {
    /// The last `wanted` lines, oldest first, reading into rotated files when the current one
    /// has fewer (at most [`MAX_TAIL_BYTES`] in all). Blocking: call from a blocking thread.
    pub(crate) fn last_lines(self, wanted: usize) -> io::Result<Vec<String>> {
        let mut newest_first: Vec<Vec<String>> = Vec::new();
        let mut found = 0;
        let mut budget = MAX_TAIL_BYTES;
        let files = self.current.into_iter().chain(self.rotated.into_iter().map(|file| {
            let length = file.metadata().map(|m| m.len()).unwrap_or(0);
            (file, length)
        }));
        for (mut file, length) in files {
            if found >= wanted || budget == 0 {
                break;
            }
            let (lines, read) = last_lines_of(&mut file, length, wanted - found, budget)?;
            budget = budget.saturating_sub(read);
            found += lines.len();
            newest_first.push(lines);
        }
        Ok(newest_first.into_iter().rev().flatten().collect())
    }
}

/// The last `wanted` lines of the first `length` bytes of `file`, reading backwards in chunks
/// and at most `budget` bytes; also the number of bytes read.
fn last_lines_of(
    file: &mut fs_err::File,
    length: u64,
    wanted: usize,
    budget: u64,
) -> io::Result<(Vec<String>, u64)> {
    const CHUNK: u64 = 64 * 1024;
    let mut start = length;
    let mut tail: Vec<u8> = Vec::new();
    let lowest = length.saturating_sub(budget);
    // The text ends with a newline; a line is complete once the newline before it is found.
    while start > lowest {
        let newlines = tail.iter().filter(|&&b| b == b'\n').count();
        let ends_with_newline = tail.last() == Some(&b'\n');
        let complete_lines = newlines.saturating_sub(usize::from(ends_with_newline));
        if complete_lines >= wanted {
            break;
        }
        let chunk_start = start.saturating_sub(CHUNK).max(lowest);
        let mut chunk = vec![0; (start - chunk_start) as usize];
        file.seek(SeekFrom::Start(chunk_start))?;
        file.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&tail);
        tail = chunk;
        start = chunk_start;
    }
    let read = length - start;
    let text = String::from_utf8_lossy(&tail);
    let mut lines: Vec<&str> = text.split('\n').collect();
    if lines.last() == Some(&"") {
        lines.pop();
    }
    // The first piece may be the end of a line that began before what was read.
    if start > 0 && !lines.is_empty() {
        lines.remove(0);
    }
    let skip = lines.len().saturating_sub(wanted);
    Ok((lines[skip..].iter().map(|line| (*line).to_owned()).collect(), read))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn log(dir: &Path, max_bytes: u64, keep: u32) -> BinaryLog {
        BinaryLog::open(dir, &LogRotation { max_bytes, keep, agent_log: None }).unwrap()
    }

    #[test]
    fn rotates_by_size_and_keeps_the_newest_files() {
        let temp = tempfile::tempdir().unwrap();
        let log = log(temp.path(), 4096, 2);
        // 100 lines of 100 bytes (with newline): 10 000 bytes, 40 lines per file.
        for n in 0..100 {
            log.binary_line(&format!("{n:03} {}", "x".repeat(95)));
        }
        let current = fs_err::read_to_string(temp.path().join("binary.log")).unwrap();
        let first = fs_err::read_to_string(temp.path().join("binary.log.1")).unwrap();
        let second = fs_err::read_to_string(temp.path().join("binary.log.2")).unwrap();
        assert!(!temp.path().join("binary.log.3").exists());
        assert!(current.len() <= 4096 && first.len() <= 4096 && second.len() <= 4096);
        assert!(current.starts_with("080 "), "{}", &current[..10]);
        assert!(first.starts_with("040 "));
        assert!(second.starts_with("000 "));
        let mode = fs_err::metadata(temp.path().join("binary.log.1")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn last_lines_read_across_rotated_files() {
        let temp = tempfile::tempdir().unwrap();
        let log = log(temp.path(), 4096, 3);
        for n in 0..100 {
            log.binary_line(&format!("{n:03} {}", "x".repeat(95)));
        }
        let (snapshot, _) = log.snapshot(false);
        let lines = snapshot.last_lines(50).unwrap();
        assert_eq!(lines.len(), 50);
        assert!(lines[0].starts_with("050 "), "{}", lines[0]);
        assert!(lines[49].starts_with("099 "));
        let (snapshot, _) = log.snapshot(false);
        assert_eq!(snapshot.last_lines(1000).unwrap().len(), 100);
        let (snapshot, _) = log.snapshot(false);
        assert!(snapshot.last_lines(0).unwrap().is_empty());
    }

    #[test]
    fn keeps_the_recent_lines_of_the_run_and_cuts_long_lines() {
        let temp = tempfile::tempdir().unwrap();
        let log = log(temp.path(), 1 << 20, 1);
        for n in 0..60 {
            log.binary_line(&format!("line {n}"));
        }
        let recent = log.recent_lines();
        assert_eq!(recent.len(), RECENT_LINES);
        assert_eq!(recent[0], "line 10");
        log.begin_run();
        log.event("started");
        let recent = log.recent_lines();
        assert_eq!(recent.len(), 1);
        assert!(recent[0].starts_with(EVENT_PREFIX) && recent[0].ends_with(" started"));
        log.binary_line(&"é".repeat(MAX_LINE_BYTES));
        assert_eq!(log.recent_lines().len(), 3);
        log.binary_line("");
        assert_eq!(log.recent_lines().last().unwrap(), "");
    }

    #[tokio::test]
    async fn followers_get_new_lines() {
        let temp = tempfile::tempdir().unwrap();
        let log = log(temp.path(), 1 << 20, 1);
        log.binary_line("before");
        let (snapshot, receiver) = log.snapshot(true);
        let mut receiver = receiver.unwrap();
        log.binary_line("after");
        assert_eq!(snapshot.last_lines(10).unwrap(), vec!["before".to_owned()]);
        assert_eq!(&*receiver.recv().await.unwrap(), "after");
    }
}
