//! The log writer against a scratch directory: appends and rotation, one
//! writer for many consoles within its open-file cap, idle files closed,
//! and a full queue marked in the file.

use std::time::Duration;

use bytes::Bytes;

use super::*;

/// Wait (up to 2 s) until `path` holds `want`.
async fn settles(path: &Path, want: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    for _ in 0..100 {
        got = std::fs::read(path).unwrap_or_default();
        if got == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    got
}

#[tokio::test]
async fn appends_and_rotates_at_the_size_cap() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    let path = dir.join("node-1.log");
    std::fs::write(&path, b"old:").unwrap();
    let writer = LogWriter::new(10).unwrap();
    let mut log = writer.file(path.clone());
    log.write(Bytes::from_static(b"12345"));
    // Rotation happens between chunks, also within one batch.
    assert_eq!(settles(&path, b"old:12345").await, b"old:12345");
    log.write(Bytes::from_static(b"6789a"));
    log.write(Bytes::from_static(b"bc"));
    assert_eq!(settles(&path, b"6789abc").await, b"6789abc");
    assert_eq!(
        std::fs::read(dir.join("node-1.log.1")).unwrap(),
        b"old:12345"
    );
}

#[tokio::test]
async fn many_consoles_share_one_writer_within_its_open_file_cap() {
    let scratch = tempfile::tempdir().unwrap();
    let writer = LogWriter::with_limits(1 << 20, 4, Duration::from_secs(60)).unwrap();
    let mut logs: Vec<LogFile> = (0..10)
        .map(|i| writer.file(scratch.path().join(format!("node-{i}.log"))))
        .collect();
    for round in 0..3 {
        for (i, log) in logs.iter_mut().enumerate() {
            log.write(Bytes::from(format!("n{i}r{round};")));
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(writer.open_files() <= 4, "{} open", writer.open_files());
    }
    for i in 0..10 {
        let want = format!("n{i}r0;n{i}r1;n{i}r2;");
        let path = scratch.path().join(format!("node-{i}.log"));
        assert_eq!(
            String::from_utf8(settles(&path, want.as_bytes()).await).unwrap(),
            want,
            "every console's output in order, though files were closed and opened again"
        );
    }
    assert_eq!(writer.open_files(), 4, "the cap, reached and kept");
}

#[tokio::test]
async fn a_file_nobody_writes_to_is_closed() {
    let scratch = tempfile::tempdir().unwrap();
    let writer = LogWriter::with_limits(1 << 20, 16, Duration::from_millis(100)).unwrap();
    let path = scratch.path().join("node-1.log");
    let mut log = writer.file(path.clone());
    log.write(Bytes::from_static(b"boot\r\n"));
    assert_eq!(settles(&path, b"boot\r\n").await, b"boot\r\n");
    assert_eq!(writer.open_files(), 1);
    let mut open = 1;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        open = writer.open_files();
        if open == 0 {
            break;
        }
    }
    assert_eq!(open, 0, "closed after 100 ms without output");
    log.write(Bytes::from_static(b"later\r\n"));
    assert_eq!(
        settles(&path, b"boot\r\nlater\r\n").await,
        b"boot\r\nlater\r\n",
        "opened again to append"
    );
}

#[test]
fn a_full_queue_skips_output_and_marks_the_gap() {
    // No writer thread drains this queue: it fills at once.
    let (tx, rx) = mpsc::sync_channel(1);
    let mut log = LogFile {
        tx,
        path: Path::new("/nonexistent/node.log").into(),
        skipped: 0,
    };
    log.write(Bytes::from_static(b"first"));
    log.write(Bytes::from_static(b"lost!"));
    assert_eq!(log.skipped, 5);
    assert_eq!(&rx.recv().unwrap().data[..], b"first");
    log.write(Bytes::from_static(b"next"));
    let mark = rx.recv().unwrap().data;
    assert_eq!(&mark[..], b"\r\n[porthole: 5 bytes not logged]\r\n");
    assert_eq!(
        log.skipped, 4,
        "the mark took the place, this chunk is skipped"
    );
}
