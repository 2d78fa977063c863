//! The traffic of a scenario: viewers that connect to consoles and read
//! whatever comes ([`Viewers`]), the rig nodes' steady output written to
//! their `host_console` ([`node_output`]), the rig node that echoes
//! keystrokes ([`node_echo`]) and the keystroke round trips
//! ([`echo_rtt`]). Called by `main`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// One byte's wait before it counts as lost.
const KEY_TIMEOUT: Duration = Duration::from_secs(2);

/// Viewers that read and count what their consoles print.
pub struct Viewers {
    bytes: Arc<AtomicU64>,
    tasks: JoinSet<()>,
}

impl Viewers {
    pub fn new() -> Self {
        Self {
            bytes: Arc::new(AtomicU64::new(0)),
            tasks: JoinSet::new(),
        }
    }

    /// One more viewer on each of `ports`.
    pub async fn add(&mut self, host: &str, ports: &[u16]) -> Result<()> {
        for &p in ports {
            let mut s = TcpStream::connect((host, p))
                .await
                .with_context(|| format!("viewer to {host}:{p}"))?;
            let b = self.bytes.clone();
            self.tasks.spawn(async move {
                let mut buf = vec![0u8; 8192];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    b.fetch_add(n as u64, Ordering::Relaxed);
                }
            });
        }
        Ok(())
    }

    /// Viewers still connected (their console has not closed them).
    pub fn connected(&self) -> usize {
        self.tasks.len()
    }

    /// Bytes received so far, all viewers.
    pub fn received(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn close(mut self) {
        self.tasks.abort_all();
    }

    /// Reap the tasks of viewers whose console closed them.
    pub fn reap(&mut self) {
        while self.tasks.try_join_next().is_some() {}
    }
}

/// Write `chunk` bytes every `every` to each rig node's serial line until
/// `stop`; the bytes written.
pub async fn node_output(
    consoles: &[String],
    chunk: usize,
    every: Duration,
    stop: CancellationToken,
) -> Result<u64> {
    let written = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for addr in consoles {
        let mut s = TcpStream::connect(addr.as_str())
            .await
            .with_context(|| format!("host_console {addr}"))?;
        let (w, stop) = (written.clone(), stop.clone());
        tasks.spawn(async move {
            let line: Vec<u8> = (0..chunk)
                .map(|i| b"node output 0123456789\r\n"[i % 24])
                .collect();
            let mut t = tokio::time::interval(every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = t.tick() => {
                        if s.write_all(&line).await.is_err() { break; }
                        w.fetch_add(chunk as u64, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    Ok(written.load(Ordering::Relaxed))
}

/// The rig node on `addr` writes back every byte it reads, until dropped.
pub async fn node_echo(addr: &str) -> Result<tokio::task::JoinHandle<()>> {
    let mut s = TcpStream::connect(addr)
        .await
        .with_context(|| format!("host_console {addr}"))?;
    s.set_nodelay(true)?;
    Ok(tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    }))
}

pub struct Echo {
    pub sent: usize,
    pub lost: usize,
    /// Round trips of the keystrokes that came back, sorted, in ms.
    pub rtt_ms: Vec<f64>,
}

/// Read until nothing comes for `quiet`, at most `budget`.
async fn drain(s: &mut TcpStream, quiet: Duration, budget: Duration) {
    let end = Instant::now() + budget;
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        match tokio::time::timeout(quiet, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
    }
}

/// `keys` one-byte keystrokes through the console at `host:port`, one at a
/// time, each timed until it is read back.
pub async fn echo_rtt(host: &str, port: u16, keys: usize) -> Result<Echo> {
    let mut s = TcpStream::connect((host, port)).await?;
    s.set_nodelay(true)?;
    drain(&mut s, Duration::from_millis(300), Duration::from_secs(5)).await;
    // A primer: the rig drops the first SOL packet of a session.
    s.write_all(b"\r").await?;
    drain(&mut s, Duration::from_millis(300), Duration::from_secs(5)).await;
    let mut rtt = Vec::with_capacity(keys);
    let mut lost = 0;
    let mut buf = [0u8; 256];
    for i in 0..keys {
        let key = b'a' + (i % 26) as u8;
        let t0 = Instant::now();
        s.write_all(&[key]).await?;
        let end = t0 + KEY_TIMEOUT;
        let mut back = false;
        while !back {
            match tokio::time::timeout_at(end.into(), s.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => back = buf[..n].contains(&key),
                _ => break,
            }
        }
        if back {
            rtt.push(t0.elapsed().as_secs_f64() * 1000.0);
        } else {
            lost += 1;
            eprintln!(
                "keystroke {i} ({:?}) not back in {KEY_TIMEOUT:?}",
                key as char
            );
            drain(&mut s, Duration::from_millis(100), Duration::from_secs(1)).await;
        }
    }
    rtt.sort_by(f64::total_cmp);
    Ok(Echo {
        sent: keys,
        lost,
        rtt_ms: rtt,
    })
}
