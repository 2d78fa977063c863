//! VNC relay benchmark (printed, not asserted): one run measures
//!
//! - throughput of a large framebuffer stream (one FramebufferUpdate of
//!   `VNC_BENCH_MIB` MiB, default 256) read by a viewer, and
//! - the round trip of a small (8-byte) message through an echoing upstream
//!   (median and p99 over `VNC_BENCH_PINGS`, default 2000),
//!
//! over a direct connection, through a `socat` TCP relay, and through
//! console-svc's VNC proxy (security None on both sides). The upstream is a
//! synthetic RFB 3.8 server in this process, so the numbers are the relay's.
//!
//! ```sh
//! cargo bench -p console-svc --bench vnc
//! ```
//!
//! Results are kept in `tests/bench-results/vnc.md`.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use console_svc::backend::{ConsoleBackend, ConsoleContext, Health, RunningConsole};
use console_svc::coordinator::local::LocalCoordinator;
use console_svc::coordinator::{Coordinator, Fence};
use console_svc::process::ProcessTable;
use console_svc::spec::{NodeId, Target, VncTarget};
use console_svc::vnc::accept::{Scheme, ViewerSettings};
use console_svc::vnc::upstream::{Method, UpstreamSettings};
use console_svc::vnc::{VncBackend, VncSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const CHUNK: usize = 1 << 20;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A synthetic VNC server (3.8, None). `stream`: after ClientInit one
/// FramebufferUpdate header then `bytes` of pixels; else echo.
async fn source(stream: bool, bytes: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(serve_source(s, stream, bytes));
        }
    });
    addr
}

async fn serve_source(mut s: TcpStream, stream: bool, bytes: usize) -> std::io::Result<()> {
    s.write_all(b"RFB 003.008\n").await?;
    let mut buf = vec![0u8; CHUNK];
    s.read_exact(&mut buf[..12]).await?;
    s.write_all(&[1, 1]).await?;
    s.read_exact(&mut buf[..1]).await?;
    s.write_all(&[0, 0, 0, 0]).await?;
    s.read_exact(&mut buf[..1]).await?; // ClientInit
    let mut init = vec![
        4, 0, 3, 0, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0,
    ];
    init.extend_from_slice(&[0, 0, 0, 5]);
    init.extend_from_slice(b"bench");
    s.write_all(&init).await?;
    if stream {
        buf.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
        let mut left = bytes;
        while left > 0 {
            let n = left.min(CHUNK);
            s.write_all(&buf[..n]).await?;
            left -= n;
        }
        return Ok(());
    }
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        s.write_all(&buf[..n]).await?;
    }
}

/// Viewer: RFB 3.8 None handshake, ClientInit, ServerInit.
async fn viewer(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let mut buf = [0u8; 64];
    s.read_exact(&mut buf[..12]).await.unwrap();
    s.write_all(b"RFB 003.008\n").await.unwrap();
    let n = s.read_u8().await.unwrap() as usize;
    s.read_exact(&mut buf[..n]).await.unwrap();
    s.write_all(&[1]).await.unwrap();
    assert_eq!(s.read_u32().await.unwrap(), 0, "SecurityResult");
    s.write_all(&[1]).await.unwrap();
    s.read_exact(&mut buf[..29]).await.unwrap(); // ServerInit with "bench"
    s
}

async fn throughput(addr: SocketAddr, bytes: usize) -> f64 {
    let mut s = viewer(addr).await;
    let mut buf = vec![0u8; CHUNK];
    let started = Instant::now();
    let mut got = 0;
    while got < bytes {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "stream ended early");
        got += n;
    }
    bytes as f64 / (1 << 20) as f64 / started.elapsed().as_secs_f64()
}

async fn latency(addr: SocketAddr, pings: usize) -> (Duration, Duration) {
    let mut s = viewer(addr).await;
    let mut rtts = Vec::with_capacity(pings);
    let mut back = [0u8; 8];
    for i in 0..pings + 50 {
        let msg = (i as u64).to_be_bytes();
        let started = Instant::now();
        s.write_all(&msg).await.unwrap();
        s.read_exact(&mut back).await.unwrap();
        if i >= 50 {
            rtts.push(started.elapsed()); // the first 50 warm up
        }
    }
    rtts.sort();
    (rtts[rtts.len() / 2], rtts[rtts.len() * 99 / 100])
}

/// A socat relay to `to`; killed by pid on drop.
struct Socat(std::process::Child, SocketAddr);

impl Socat {
    fn start(to: SocketAddr) -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = std::process::Command::new("socat")
            .arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork"))
            .arg(format!("TCP:{to},nodelay"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        for _ in 0..100 {
            if std::net::TcpStream::connect(addr).is_ok() {
                return Some(Socat(child, addr));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Socat {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A VNC console of the proxy in front of `to`.
async fn proxy(to: SocketAddr) -> (Box<dyn RunningConsole>, SocketAddr) {
    let settings = VncSettings {
        viewer: ViewerSettings {
            schemes: vec![Scheme::None],
            tls: None,
            handshake_timeout: Duration::from_secs(60),
            max_handshake_bytes: 64 * 1024,
        },
        upstream: UpstreamSettings {
            prefer: vec![Method::None],
            tls: None,
            timeout: Duration::from_secs(10),
        },
        exclusive: false,
        retry_max_backoff: Duration::from_secs(30),
    };
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let pid_dir = std::env::temp_dir().join(format!("porthole-vnc-bench-{}", std::process::id()));
    let processes = Arc::new(ProcessTable::open(&pid_dir, Duration::from_secs(1)).unwrap());
    let node = NodeId::parse("bench").unwrap();
    let coordinator = Arc::new(LocalCoordinator::new("bench"));
    let fence = Fence::new(
        coordinator.clone(),
        coordinator.acquire(&node).await.unwrap(),
    );
    let (health, _) = watch::channel(Health::Ok);
    let ctx = ConsoleContext {
        node,
        target: Target::Vnc(VncTarget {
            host: to.ip().to_string(),
            port: to.port(),
            password: None,
        }),
        listen,
        health,
        cancel: CancellationToken::new(),
        fence,
        processes,
    };
    let running = VncBackend::with_settings(settings)
        .start(ctx)
        .await
        .unwrap();
    (running, listen)
}

#[tokio::main]
async fn main() {
    let mib = env_usize("VNC_BENCH_MIB", 256);
    let pings = env_usize("VNC_BENCH_PINGS", 2000);
    let bytes = mib << 20;
    let stream_src = source(true, bytes).await;
    let echo_src = source(false, 0).await;
    let (stream_proxy, stream_proxy_addr) = proxy(stream_src).await;
    let (echo_proxy, echo_proxy_addr) = proxy(echo_src).await;
    let socats = Socat::start(stream_src).zip(Socat::start(echo_src));
    let mut paths = vec![("direct", stream_src, echo_src)];
    match &socats {
        Some((s, e)) => paths.push(("socat relay", s.1, e.1)),
        None => eprintln!("socat is not installed: its row is skipped"),
    }
    paths.push(("console-svc VNC proxy", stream_proxy_addr, echo_proxy_addr));
    println!("VNC relay benchmark: {mib} MiB framebuffer stream, {pings} 8-byte round trips");
    println!();
    println!("| path | throughput (MiB/s, best of 3) | RTT median (µs) | RTT p99 (µs) |");
    println!("| --- | ---: | ---: | ---: |");
    for (name, stream_addr, echo_addr) in paths {
        let mut best: f64 = 0.0;
        for _ in 0..3 {
            best = best.max(throughput(stream_addr, bytes).await);
        }
        let (median, p99) = latency(echo_addr, pings).await;
        println!(
            "| {name} | {best:.0} | {:.1} | {:.1} |",
            median.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6
        );
    }
    drop(socats);
    stream_proxy.stop().await;
    echo_proxy.stop().await;
}
