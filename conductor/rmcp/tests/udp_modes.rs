//! The two UDP modes measured: what an idle session costs, counted by the
//! heap (a counting allocator adds up what the measuring thread allocates
//! and frees; the BMCs run on another thread and are not counted, so the
//! figures are the client's own), and the client's CPU under steady SOL
//! output. Printed, not timed.
//!
//! - `endpoints_of_a_shared_socket_are_small`: 10,000 endpoints registered
//!   on one [`SharedUdp`]; each must cost well under 1 KiB (issue 16's
//!   whole console is to cost at most 16 KiB).
//! - `idle_sol_sessions_in_both_udp_modes` (ignored: 1000 sessions each way,
//!   run with `--ignored --nocapture`): heap bytes and file descriptors
//!   per always-on SOL session against the in-memory test BMC served on
//!   loopback UDP, per-session sockets next to one shared socket.
//! - `cpu_under_output_in_both_udp_modes` (ignored): 100 sessions each
//!   receiving 11.5 KB/s (115200 baud) for 5 s; the client thread's CPU
//!   time per mode (a debug build unless run with `--release`).
//! - `kernel_memory_per_connected_socket` (ignored): the kernel slab a
//!   connected UDP socket costs (what per-console mode adds per console
//!   outside the process), from /proc/meminfo: machine-wide, so run it on
//!   a quiet machine and read it as an estimate.
//!
//! File descriptors are the process's: for those figures run the tests one
//! at a time (`--test-threads=1`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use porthole_rmcp::shared::{SharedConfig, SharedUdp};
use porthole_rmcp::test_bmc::{self, BmcConfig, Control};
use porthole_rmcp::udp::{UdpMode, UdpPool};
use porthole_rmcp::{Session, SessionConfig, Sol, SolConfig};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

/// The system allocator, counting the net bytes of each thread that asks
/// for it (on its own, so tests running side by side do not mix).
struct Counting;

thread_local! {
    static COUNTED: Cell<bool> = const { Cell::new(false) };
    static NET: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    if COUNTED.try_with(Cell::get).unwrap_or(false) {
        let _ = NET.try_with(|n| n.set(n.get() + delta));
    }
}

#[expect(unsafe_code, reason = "a GlobalAlloc is an unsafe trait")]
// SAFETY: every call is forwarded unchanged to `System`, which upholds the
// GlobalAlloc contract; the counting touches only const-initialised
// thread-locals (no allocation of its own).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        // SAFETY: the caller's layout contract is passed through.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as isize));
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size as isize - layout.size() as isize);
        // SAFETY: as for dealloc and alloc.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Heap bytes the calling thread holds now, net, since counting began.
fn held() -> isize {
    NET.with(Cell::get)
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Runs the future `body` makes on a current-thread runtime, on a thread of
/// its own whose allocations count.
fn counted_runtime<F, Fut>(body: F) -> Fut::Output
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future,
    Fut::Output: Send + 'static,
{
    std::thread::spawn(move || {
        COUNTED.with(|c| c.set(true));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(body())
    })
    .join()
    .expect("measuring thread")
}

/// Each mode twice, alternating, so that neither always runs first.
const MODES: [UdpMode; 4] = [
    UdpMode::PerSession,
    UdpMode::Shared,
    UdpMode::PerSession,
    UdpMode::Shared,
];

#[test]
fn endpoints_of_a_shared_socket_are_small() {
    const N: usize = 10_000;
    let per = counted_runtime(|| async {
        let shared = SharedUdp::bind("127.0.0.1:0".parse().unwrap(), SharedConfig::default())
            .await
            .unwrap();
        let mut held_endpoints = Vec::with_capacity(N);
        let before = held();
        for i in 0..N {
            let peer: SocketAddr = (
                [127, 0, 14, 1 + (i / 60_000) as u8],
                1 + (i % 60_000) as u16,
            )
                .into();
            held_endpoints.push(shared.endpoint(peer).unwrap());
        }
        let grown = held() - before;
        // An endpoint itself lives in its session; count it too.
        let inline = std::mem::size_of_val(&held_endpoints[0]);
        assert_eq!(shared.stats().endpoints, N);
        drop(held_endpoints);
        assert_eq!(shared.stats().endpoints, 0, "all unregistered");
        (grown as f64 / N as f64, inline)
    });
    let (heap, inline) = per;
    println!(
        "shared UDP: {N} idle endpoints: {heap:.0} heap bytes each (table + slot) + {inline} bytes inline in the session"
    );
    assert!(
        heap + (inline as f64) < 1024.0,
        "an idle endpoint costs {heap:.0} + {inline} bytes"
    );
}

/// `n` test BMCs on loopback UDP, served by a runtime on another
/// (uncounted) thread for the rest of the process; `output`: what each
/// prints while its `output_on` is set.
fn bmc_farm(n: usize, output: Option<test_bmc::Output>) -> Vec<(SocketAddr, Arc<Control>)> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut addrs = Vec::with_capacity(n);
            for _ in 0..n {
                let sock = tokio::net::UdpSocket::bind("127.0.14.1:0").await.unwrap();
                let addr = sock.local_addr().unwrap();
                let cfg = BmcConfig {
                    suite: 3,
                    password: b"secret".to_vec(),
                    sol_port: addr.port(),
                    output,
                };
                let ctl = Arc::new(Control::default());
                tokio::spawn(test_bmc::serve(sock, cfg, ctl.clone()));
                addrs.push((addr, ctl));
            }
            tx.send(addrs).unwrap();
            std::future::pending::<()>().await
        })
    });
    rx.recv().expect("the farm's addresses")
}

struct Figures {
    /// Session, SOL state and its task, transport.
    heap_per_session: f64,
    /// The console stream (an idle `tokio::io::duplex`) a SOL task runs over.
    heap_stream: f64,
    fds: isize,
}

async fn idle_sessions(mode: UdpMode, bmcs: &[(SocketAddr, Arc<Control>)]) -> Figures {
    let n = bmcs.len();
    let pool = UdpPool::new(mode);
    let login = SessionConfig::new("admin", b"secret");
    let mut running = Vec::with_capacity(n);
    let mut streams = Vec::with_capacity(n);
    let heap0 = held();
    for _ in 0..n {
        // As console-svc's rmcp backend makes it.
        streams.push(tokio::io::duplex(64 * 1024));
    }
    let heap_stream = (held() - heap0) as f64 / n as f64;
    let (fds0, heap0) = (open_fds() as isize, held());
    for ((bmc, _), (ours, mut theirs)) in bmcs.iter().zip(streams) {
        let bmc = *bmc;
        let session = Session::open(pool.open(bmc).await.unwrap(), &login)
            .await
            .unwrap();
        let cfg = SolConfig {
            session_port: Some(bmc.port()),
            ..SolConfig::default()
        };
        let sol = Sol::activate(session, cfg).await.unwrap();
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let task = tokio::spawn(async move { sol.run(&mut theirs, stop).await });
        running.push((ours, cancel, task));
    }
    // Idle: every session is waiting for the BMC.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(running.iter().all(|r| !r.2.is_finished()), "all still up");
    let figures = Figures {
        heap_per_session: (held() - heap0) as f64 / n as f64,
        heap_stream,
        fds: open_fds() as isize - fds0,
    };
    for (_, cancel, _) in &running {
        cancel.cancel();
    }
    for (_, _, task) in running {
        task.await.unwrap().unwrap();
    }
    figures
}

#[test]
#[ignore = "1000 SOL sessions each way; run with --ignored --nocapture for the figures"]
fn idle_sol_sessions_in_both_udp_modes() {
    const N: usize = 1000;
    let bmcs = bmc_farm(N, None);
    let out = counted_runtime(move || async move {
        let mut out = Vec::new();
        for mode in MODES {
            out.push((mode, idle_sessions(mode, &bmcs).await));
        }
        out
    });
    for (mode, f) in out {
        println!(
            "{N} idle SOL sessions, {mode:?}: {:.0} heap bytes/session (session, SOL task, transport) + {:.0} for its idle console stream; {} fds opened",
            f.heap_per_session, f.heap_stream, f.fds
        );
    }
}

/// CPU time of the calling thread (user + system), from /proc.
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    // Fields after the command's closing parenthesis: utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

/// (client CPU time, bytes received, datagrams the shared socket dropped).
async fn cpu_under_output(
    mode: UdpMode,
    bmcs: &[(SocketAddr, Arc<Control>)],
) -> (Duration, u64, u64) {
    let pool = UdpPool::new(mode);
    let login = SessionConfig::new("admin", b"secret");
    let mut running = Vec::new();
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    for (bmc, _) in bmcs {
        let session = Session::open(pool.open(*bmc).await.unwrap(), &login)
            .await
            .unwrap();
        let cfg = SolConfig {
            session_port: Some(bmc.port()),
            ..SolConfig::default()
        };
        let sol = Sol::activate(session, cfg).await.unwrap();
        let (mut ours, mut theirs) = tokio::io::duplex(64 * 1024);
        let got = received.clone();
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = ours.read(&mut buf).await {
                got.fetch_add(n as u64, Ordering::Relaxed);
            }
        });
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let task = tokio::spawn(async move { sol.run(&mut theirs, stop).await });
        running.push((reader, cancel, task));
    }
    for (_, ctl) in bmcs {
        ctl.output_on.send_replace(true);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (cpu0, got0) = (thread_cpu(), received.load(Ordering::Relaxed));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let dropped = pool.stats().0.map_or(0, |st| st.overflow + st.unknown_peer);
    let figures = (
        thread_cpu() - cpu0,
        received.load(Ordering::Relaxed) - got0,
        dropped,
    );
    for (_, ctl) in bmcs {
        ctl.output_on.send_replace(false);
    }
    for (_, cancel, _) in &running {
        cancel.cancel();
    }
    for (_, _, task) in running {
        let _ = task.await.unwrap();
    }
    figures
}

#[test]
#[ignore = "100 SOL sessions at 11.5 KB/s for 5 s each way; run with --ignored --nocapture"]
fn cpu_under_output_in_both_udp_modes() {
    const N: usize = 100;
    // 115200 baud: 11.5 KB/s, as 230 bytes every 20 ms.
    let output = test_bmc::Output {
        every: Duration::from_millis(20),
        bytes: 230,
    };
    let bmcs = bmc_farm(N, Some(output));
    let out = counted_runtime(move || async move {
        let mut out = Vec::new();
        for mode in MODES {
            out.push((mode, cpu_under_output(mode, &bmcs).await));
        }
        out
    });
    for (mode, (cpu, bytes, dropped)) in out {
        println!(
            "{N} SOL sessions under output, {mode:?}: client thread CPU {:.1}% of a core over 5 s, {:.1} KB/s received per session, {:.1} ms CPU per MB, {dropped} datagrams dropped by the shared socket",
            cpu.as_secs_f64() / 5.0 * 100.0,
            bytes as f64 / 5.0 / 1000.0 / N as f64,
            cpu.as_secs_f64() * 1000.0 / (bytes as f64 / 1e6),
        );
    }
}

fn slab_kib() -> i64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Slab:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
#[ignore = "machine-wide estimate; run with --ignored --nocapture on a quiet machine"]
fn kernel_memory_per_connected_socket() {
    const N: usize = 5000;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for round in 0..3 {
            let before = slab_kib();
            let mut socks = Vec::with_capacity(N);
            for i in 0..N {
                let bmc: SocketAddr = ([127, 0, 14, 1], 20_000 + i as u16).into();
                socks.push(porthole_rmcp::transport::udp(bmc).await.unwrap());
            }
            let grown = slab_kib() - before;
            drop(socks);
            println!(
                "round {round}: {N} connected UDP sockets: kernel slab +{} bytes each",
                grown * 1024 / N as i64
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
}
