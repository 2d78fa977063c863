//! The console's log file: `<log_dir>/<node>.log`, rotated to `<node>.log.1`
//! when it reaches `log_file_max_bytes` (one old file kept).
//!
//! The hub hands output to a [`LogFile`] without waiting: a task of its own
//! does the disk I/O, so a slow disk never stalls the console. When that task
//! falls behind by more than a queue's worth, output is skipped and the gap
//! is marked in the file.
//!
//! ```text
//!  write ──▶ queue ──▶ append ──size ≥ max──▶ rename .log → .log.1 ──▶ new .log
//! ```

use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tokio::fs::{File, OpenOptions};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tracing::{warn, Instrument};

/// Chunks the writer task may fall behind before output is skipped.
const QUEUE_CHUNKS: usize = 1024;

/// The hub's end of the log file.
pub(crate) struct LogFile {
    tx: mpsc::Sender<Bytes>,
    skipped: u64,
}

impl LogFile {
    /// Start the writer task for `path`; it ends when the `LogFile` drops.
    pub(crate) fn spawn(path: PathBuf, max_bytes: u64) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_CHUNKS);
        let span = tracing::info_span!("log_file", path = %path.display());
        tokio::spawn(write_loop(path, max_bytes, rx).instrument(span));
        Self { tx, skipped: 0 }
    }

    /// Queue `data`; never waits.
    pub(crate) fn write(&mut self, data: Bytes) {
        if self.skipped > 0 {
            let mark = format!("\r\n[porthole: {} bytes not logged]\r\n", self.skipped);
            if self.tx.try_send(Bytes::from(mark)).is_err() {
                self.skipped += data.len() as u64;
                return;
            }
            self.skipped = 0;
        }
        let len = data.len() as u64;
        if self.tx.try_send(data).is_err() {
            self.skipped += len;
        }
    }
}

struct Writer {
    path: PathBuf,
    max_bytes: u64,
    file: Option<File>,
    size: u64,
    failing: bool,
}

async fn write_loop(path: PathBuf, max_bytes: u64, mut rx: mpsc::Receiver<Bytes>) {
    let mut w = Writer {
        path,
        max_bytes,
        file: None,
        size: 0,
        failing: false,
    };
    while let Some(data) = rx.recv().await {
        match w.append(&data).await {
            Ok(()) => w.failing = false,
            Err(e) => {
                if !w.failing {
                    warn!(error = %e, "cannot write the console log file; output is not logged until it works again");
                }
                w.failing = true;
                w.file = None;
            }
        }
    }
    if let Some(mut f) = w.file.take() {
        let _ = f.flush().await;
    }
}

impl Writer {
    async fn append(&mut self, data: &[u8]) -> io::Result<()> {
        if self.file.is_some() && self.size > 0 && self.size + data.len() as u64 > self.max_bytes {
            self.rotate().await?;
        }
        let file = match &mut self.file {
            Some(f) => f,
            None => {
                let (f, size) = open_append(&self.path).await?;
                self.size = size;
                self.file.insert(f)
            }
        };
        file.write_all(data).await?;
        file.flush().await?;
        self.size += data.len() as u64;
        Ok(())
    }

    async fn rotate(&mut self) -> io::Result<()> {
        if let Some(mut f) = self.file.take() {
            f.flush().await?;
        }
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        tokio::fs::rename(&self.path, &old).await?;
        let (f, size) = open_append(&self.path).await?;
        self.file = Some(f);
        self.size = size;
        Ok(())
    }
}

async fn open_append(path: &Path) -> io::Result<(File, u64)> {
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .await?;
    let size = f.metadata().await?.len();
    Ok((f, size))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn appends_and_rotates_at_the_size_cap() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path();
        let path = dir.join("node-1.log");
        std::fs::write(&path, b"old:").unwrap();
        let mut log = LogFile::spawn(path.clone(), 10);
        log.write(Bytes::from_static(b"12345"));
        log.write(Bytes::from_static(b"6789a"));
        log.write(Bytes::from_static(b"bc"));
        drop(log);
        let rotated = dir.join("node-1.log.1");
        for _ in 0..100 {
            if std::fs::read(&path).unwrap_or_default() == b"6789abc" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(std::fs::read(&rotated).unwrap(), b"old:12345");
        assert_eq!(std::fs::read(&path).unwrap(), b"6789abc");
    }
}
