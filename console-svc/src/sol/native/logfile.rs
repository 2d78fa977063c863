//! Console log files: `<log_dir>/<node>.log`, rotated to `<node>.log.1` when
//! it reaches `log_file_max_bytes` (one old file kept).
//!
//! One [`LogWriter`] per backend does the disk I/O for all its consoles, on
//! a thread of its own, so a slow disk never stalls a console and an idle
//! console costs no task, no queue and no descriptor: its hub holds a
//! [`LogFile`] (a path and the writer's sender). The writer keeps at most
//! `max_open` files open (least recently written closed first) and closes a
//! file nobody wrote to for `idle_close`: ten thousand consoles fit in the
//! process's descriptors next to their listeners. When the writer falls a
//! queue's worth behind, output is skipped and the gap is marked in the file.
//!
//! ```text
//!  hub: write ──try_send──▶ shared queue ──▶ writer thread: batch by file ──▶ append
//!                                               size ≥ max: rename .log → .log.1, new .log
//!                                               open > max_open or idle: close
//! ```

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::warn;

/// Chunks the writer may fall behind, all consoles together, before output
/// is skipped.
const QUEUE_CHUNKS: usize = 16 * 1024;
/// Log files open at once; the rest are opened again when written.
const MAX_OPEN: usize = 1024;
/// A file nobody wrote to this long is closed.
const IDLE_CLOSE: Duration = Duration::from_secs(30);
/// Chunks taken off the queue in one go (then written file by file).
const BATCH: usize = 512;

struct Chunk {
    path: Arc<Path>,
    data: Bytes,
}

/// The backend's log writer; cheap to clone. Its thread ends once the
/// writer and every [`LogFile`] are dropped, after writing what was queued.
#[derive(Clone)]
pub(crate) struct LogWriter {
    tx: SyncSender<Chunk>,
    open: Arc<AtomicUsize>,
}

impl std::fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogWriter")
            .field("open_files", &self.open_files())
            .finish_non_exhaustive()
    }
}

impl LogWriter {
    pub(crate) fn new(max_bytes: u64) -> io::Result<Self> {
        Self::with_limits(max_bytes, MAX_OPEN, IDLE_CLOSE)
    }

    pub(crate) fn with_limits(
        max_bytes: u64,
        max_open: usize,
        idle_close: Duration,
    ) -> io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(QUEUE_CHUNKS);
        let open = Arc::new(AtomicUsize::new(0));
        let files = Files {
            max_bytes,
            max_open: max_open.max(1),
            open: open.clone(),
            by_path: HashMap::new(),
        };
        std::thread::Builder::new()
            .name("console-logs".into())
            .spawn(move || files.run(rx, idle_close))?;
        Ok(Self { tx, open })
    }

    /// The hub's end for `path`.
    pub(crate) fn file(&self, path: PathBuf) -> LogFile {
        LogFile {
            tx: self.tx.clone(),
            path: path.into(),
            skipped: 0,
        }
    }

    /// Files the writer holds open now.
    pub(crate) fn open_files(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// One console's end of its log file.
pub(crate) struct LogFile {
    tx: SyncSender<Chunk>,
    path: Arc<Path>,
    skipped: u64,
}

impl LogFile {
    /// Queue `data`; never waits.
    pub(crate) fn write(&mut self, data: Bytes) {
        if self.skipped > 0 {
            let mark = format!("\r\n[porthole: {} bytes not logged]\r\n", self.skipped);
            if !self.send(Bytes::from(mark)) {
                self.skipped += data.len() as u64;
                return;
            }
            self.skipped = 0;
        }
        let len = data.len() as u64;
        if !self.send(data) {
            self.skipped += len;
        }
    }

    fn send(&self, data: Bytes) -> bool {
        let chunk = Chunk {
            path: self.path.clone(),
            data,
        };
        match self.tx.try_send(chunk) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }
}

/// The writer thread's state: every file it has written to.
struct Files {
    max_bytes: u64,
    max_open: usize,
    open: Arc<AtomicUsize>,
    by_path: HashMap<Arc<Path>, Target>,
}

struct Target {
    file: Option<File>,
    size: u64,
    failing: bool,
    last_write: Instant,
}

impl Files {
    fn run(mut self, rx: mpsc::Receiver<Chunk>, idle_close: Duration) {
        let mut batch: Vec<Chunk> = Vec::new();
        // Idle files are looked for this often, not after every batch.
        let sweep_every = idle_close / 2;
        let mut swept = Instant::now();
        loop {
            match rx.recv_timeout(idle_close) {
                Ok(first) => batch.push(first),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            while batch.len() < BATCH {
                let Ok(more) = rx.try_recv() else { break };
                batch.push(more);
            }
            self.write_batch(&mut batch);
            if swept.elapsed() >= sweep_every {
                self.close_idle(idle_close);
                swept = Instant::now();
            }
        }
        self.by_path.clear();
        self.open.store(0, Ordering::Relaxed);
    }

    /// Append the batch, one write per file, in each file's order.
    fn write_batch(&mut self, batch: &mut Vec<Chunk>) {
        let mut order: Vec<Arc<Path>> = Vec::new();
        let mut joined: HashMap<Arc<Path>, Vec<u8>> = HashMap::new();
        for chunk in batch.drain(..) {
            let buf = joined.entry(chunk.path.clone()).or_insert_with(|| {
                order.push(chunk.path.clone());
                Vec::new()
            });
            buf.extend_from_slice(&chunk.data);
        }
        for path in order {
            let data = joined.remove(&path).unwrap_or_default();
            self.append(path, &data);
        }
    }

    fn append(&mut self, path: Arc<Path>, data: &[u8]) {
        if !self.by_path.contains_key(&path) {
            let target = Target {
                file: None,
                size: 0,
                failing: false,
                last_write: Instant::now(),
            };
            self.by_path.insert(path.clone(), target);
        }
        let needs_open = self.by_path.get(&path).is_some_and(|t| t.file.is_none());
        if needs_open {
            self.make_room();
        }
        let max_bytes = self.max_bytes;
        let Some(t) = self.by_path.get_mut(&path) else {
            return;
        };
        let was_open = t.file.is_some();
        match t.append(&path, data, max_bytes) {
            Ok(()) => t.failing = false,
            Err(e) => {
                if !t.failing {
                    warn!(path = %path.display(), error = %e, "cannot write the console log file; output is not logged until it works again");
                }
                t.failing = true;
                t.file = None;
            }
        }
        match (was_open, t.file.is_some()) {
            (false, true) => self.open.fetch_add(1, Ordering::Relaxed),
            (true, false) => self.open.fetch_sub(1, Ordering::Relaxed),
            _ => 0,
        };
    }

    /// Close the least recently written file when `max_open` are open.
    fn make_room(&mut self) {
        if self.open.load(Ordering::Relaxed) < self.max_open {
            return;
        }
        let oldest = self
            .by_path
            .values_mut()
            .filter(|t| t.file.is_some())
            .min_by_key(|t| t.last_write);
        if let Some(t) = oldest {
            t.file = None;
            self.open.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Close files nobody wrote to for `idle`, and forget them.
    fn close_idle(&mut self, idle: Duration) {
        let now = Instant::now();
        let before = self.by_path.len();
        let mut closed = 0;
        self.by_path.retain(|_, t| {
            let keep = now.duration_since(t.last_write) < idle;
            if !keep && t.file.is_some() {
                closed += 1;
            }
            keep
        });
        if before != self.by_path.len() {
            self.open.fetch_sub(closed, Ordering::Relaxed);
        }
    }
}

impl Target {
    fn append(&mut self, path: &Path, data: &[u8], max_bytes: u64) -> io::Result<()> {
        self.last_write = Instant::now();
        if self.file.is_none() {
            let (f, size) = open_append(path)?;
            self.file = Some(f);
            self.size = size;
        }
        if self.size > 0 && self.size + data.len() as u64 > max_bytes {
            self.file = None;
            let mut old = path.to_path_buf().into_os_string();
            old.push(".1");
            std::fs::rename(path, &old)?;
            let (f, size) = open_append(path)?;
            self.file = Some(f);
            self.size = size;
        }
        if let Some(f) = &mut self.file {
            f.write_all(data)?;
        }
        self.size += data.len() as u64;
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<(File, u64)> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)?;
    let size = f.metadata()?.len();
    Ok((f, size))
}

#[cfg(test)]
#[path = "logfile_tests.rs"]
mod tests;
