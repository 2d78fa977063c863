//! The native serial backend against a real simulated BMC (OpenIPMI
//! `ipmi_sim` from the shared test rig) and a real `ipmitool`.
//!
//! Runs only when `PORTHOLE_RIG_JSON` names the rig's `rig.json`; uses BMC
//! `PORTHOLE_TEST_BMC` (default 1). Each test starts the backend directly with
//! a `ConsoleContext`, connects viewers to its port with plain TCP and acts as
//! the node's OS on the BMC's `host_console` TCP port.
//!
//! ```sh
//! PORTHOLE_RIG_JSON=/tmp/rigrun/rig.json cargo test -p console-svc --test native_rig
//! ```
//!
//! A BMC allows one SOL session, so each test leases its BMC the way the
//! system tests (`tests/src/pool.rs`) do: an exclusive `flock` on
//! `<run_dir>/porthole-test-locks/<bmc name>.lock`, held for the whole test.
//!
//! Rig quirk: the first SOL packet of a new session may be dropped, so every
//! test sends a `\r` primer from a viewer and drains the node side before it
//! asserts anything about keystrokes.

mod common;

use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use console_svc::backend::{ConsoleBackend, ConsoleContext, Health, RunningConsole};
use console_svc::config::NativeConfig;
use console_svc::coordinator::local::LocalCoordinator;
use console_svc::coordinator::{Coordinator, Fence};
use console_svc::process::ProcessTable;
use console_svc::secret::Secret;
use console_svc::sol::native::{NativeBackend, NativeSettings};
use console_svc::spec::{IpmiTarget, NodeId, PrivilegeLevel};
use nix::fcntl::Flock;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const NODE_ID: &str = "rig-node";

struct Bmc {
    target: IpmiTarget,
    host_console: SocketAddr,
    lock_file: PathBuf,
}

/// The BMC for this test alone: an exclusive `flock` shared with the system
/// tests' BMC pool, released on drop.
async fn lease(bmc: &Bmc) -> Flock<File> {
    common::lease_lock(&bmc.lock_file).await
}

fn rig_bmc() -> Option<Bmc> {
    let rig = common::rig_json("native_rig")?;
    let index: usize = std::env::var("PORTHOLE_TEST_BMC")
        .ok()
        .map_or(1, |v| v.parse().expect("PORTHOLE_TEST_BMC is a number"));
    let b = &rig["bmcs"][index];
    let password = std::fs::read_to_string(b["password_file"].as_str().expect("password_file"))
        .expect("BMC password file readable");
    let hc = &b["host_console"];
    let run_dir = PathBuf::from(rig["run_dir"].as_str().expect("run_dir"));
    let name = b["name"].as_str().expect("bmc name");
    Some(Bmc {
        lock_file: run_dir
            .join("porthole-test-locks")
            .join(format!("{name}.lock")),
        target: IpmiTarget {
            address: b["host"].as_str().expect("host").to_owned(),
            port: b["port"].as_u64().expect("port") as u16,
            username: b["username"].as_str().expect("username").to_owned(),
            password: Secret::new(password.trim_end_matches('\n')),
            cipher_suite: b["cipher_suite"].as_u64().expect("cipher_suite") as u8,
            privilege: PrivilegeLevel::Administrator,
        },
        host_console: format!(
            "{}:{}",
            hc["host"].as_str().expect("host_console.host"),
            hc["port"].as_u64().expect("host_console.port")
        )
        .parse()
        .expect("host_console address"),
    })
}

struct Console {
    running: Box<dyn RunningConsole>,
    addr: SocketAddr,
    health: watch::Receiver<Health>,
    pid_dir: PathBuf,
    host_console: SocketAddr,
    /// Holds `pid_dir`; removed on drop.
    _scratch: tempfile::TempDir,
}

async fn start_console(bmc: Bmc, log_dir: Option<PathBuf>) -> Console {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let scratch = tempfile::Builder::new()
        .prefix("porthole-native-rig-")
        .tempdir()
        .unwrap();
    let pid_dir = scratch.path().join("pids");
    let processes = Arc::new(ProcessTable::open(&pid_dir, Duration::from_secs(1)).unwrap());
    let node = NodeId::parse(NODE_ID).unwrap();
    let coordinator = Arc::new(LocalCoordinator::new("rig-test"));
    let fence = Fence::new(
        coordinator.clone(),
        coordinator.acquire(&node).await.unwrap(),
    );
    let (health_tx, health) = watch::channel(Health::Ok);
    let addr = free_port();
    let backend = NativeBackend::with_settings(NativeSettings {
        native: NativeConfig {
            linger: Duration::from_secs(1),
            log_dir,
            ..NativeConfig::default()
        },
        ipmitool: "ipmitool".into(),
        // The built binary: each session runs under its `sol-exec` helper.
        helper: env!("CARGO_BIN_EXE_console-svc").into(),
        subprocess_timeout: Duration::from_secs(10),
        terminal_timeout: Duration::from_secs(600),
        retry_max_backoff: Duration::from_secs(5),
    });
    let ctx = ConsoleContext {
        node,
        target: console_svc::spec::Target::Ipmi(bmc.target),
        listen: addr,
        health: health_tx,
        cancel: CancellationToken::new(),
        fence,
        processes,
    };
    let running = backend.start(ctx).await.expect("console starts");
    Console {
        running,
        addr,
        health,
        pid_dir,
        _scratch: scratch,
        host_console: bmc.host_console,
    }
}

/// A port on a loopback address of this test's own (127.77.x.y), so no
/// other test can be listening there once the console has closed it.
fn free_port() -> SocketAddr {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let ip = std::net::Ipv4Addr::new(127, 77, (std::process::id() % 250) as u8 + 1, n as u8);
    let l = std::net::TcpListener::bind((ip, 0)).unwrap();
    l.local_addr().unwrap()
}

/// Read until `needle` arrives (panics after `secs`); everything read.
async fn read_until(s: &mut TcpStream, needle: &[u8], secs: u64) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let found = tokio::time::timeout(Duration::from_secs(secs), async {
        while !seen.windows(needle.len()).any(|w| w == needle) {
            let n = s.read(&mut buf).await.expect("read");
            assert!(
                n > 0,
                "EOF before {needle:?}: {:?}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(
        found.is_ok(),
        "no {needle:?} in {:?}",
        String::from_utf8_lossy(&seen)
    );
    seen
}

/// Whatever arrives within `ms`.
async fn drain(s: &mut TcpStream, ms: u64) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(ms), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    seen
}

impl Console {
    /// A viewer on an active session, primed (see the module doc), and the
    /// node side, drained.
    async fn attach_primed(&self) -> (TcpStream, TcpStream) {
        let mut viewer = TcpStream::connect(self.addr).await.unwrap();
        read_until(&mut viewer, b"SOL Session operational", 20).await;
        let mut node = TcpStream::connect(self.host_console).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        viewer.write_all(b"\r").await.unwrap();
        drain(&mut node, 1000).await;
        drain(&mut viewer, 200).await;
        (viewer, node)
    }

    /// The pid of the recorded `ipmitool sol activate`.
    fn activate_pid(&self) -> i32 {
        let mut pids = Vec::new();
        for e in std::fs::read_dir(&self.pid_dir).unwrap() {
            let e = e.unwrap();
            let label = std::fs::read_to_string(e.path()).unwrap_or_default();
            if label.contains("sol activate") {
                pids.push(e.file_name().to_string_lossy().parse::<i32>().unwrap());
            }
        }
        assert_eq!(
            pids.len(),
            1,
            "one recorded ipmitool sol activate: {pids:?}"
        );
        pids[0]
    }

    async fn stop_and_check_nothing_left(self, pid: i32) {
        let started = Instant::now();
        self.running.stop().await;
        let took = started.elapsed();
        assert!(took < Duration::from_secs(15), "stop took {took:?}");
        assert!(!alive(pid), "ipmitool {pid} is gone after stop");
        assert!(group_members(pid).is_empty(), "nothing left in its group");
        assert!(
            !self.pid_dir.join(pid.to_string()).exists(),
            "record removed"
        );
        // A child forked elsewhere keeps a copy of the listener until it
        // execs: allow a moment for that.
        let mut closed = false;
        for _ in 0..100 {
            closed = TcpStream::connect(self.addr).await.is_err();
            if closed {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(closed, "port closed");
    }
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s[s.rfind(')').unwrap() + 2..].starts_with('Z'))
}

fn group_members(pgid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                let f: Vec<&str> = s[s.rfind(')').unwrap() + 2..].split(' ').collect();
                f[0] != "Z" && f[2] == pgid.to_string()
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_pass_both_ways_eight_bit_clean() {
    let Some(bmc) = rig_bmc() else { return };
    let _lease = lease(&bmc).await;
    let console = start_console(bmc, None).await;
    let (mut viewer, mut node) = console.attach_primed().await;
    assert_eq!(*console.health.borrow(), Health::Ok);

    node.write_all(b"node-says-hello\r\n").await.unwrap();
    read_until(&mut viewer, b"node-says-hello\r\n", 10).await;
    node.write_all(b"<\x00\x03\x1b\xff>").await.unwrap();
    read_until(&mut viewer, b"<\x00\x03\x1b\xff>", 10).await;

    viewer.write_all(b"typed-by-viewer\r").await.unwrap();
    read_until(&mut node, b"typed-by-viewer\r", 10).await;
    viewer.write_all(b"[\x00\x03\x1b\xff]").await.unwrap();
    read_until(&mut node, b"[\x00\x03\x1b\xff]", 10).await;

    let pid = console.activate_pid();
    console.stop_and_check_nothing_left(pid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_share_output_a_late_one_gets_scrollback_and_the_log_keeps_it() {
    let Some(bmc) = rig_bmc() else { return };
    let _lease = lease(&bmc).await;
    let logs = tempfile::Builder::new()
        .prefix("porthole-native-rig-log-")
        .tempdir()
        .unwrap();
    let log_dir = logs.path().to_owned();
    let console = start_console(bmc, Some(log_dir.clone())).await;
    let (mut a, mut node) = console.attach_primed().await;
    let mut b = TcpStream::connect(console.addr).await.unwrap();
    drain(&mut b, 300).await; // its scrollback so far

    node.write_all(b"shared-line-1\r\n").await.unwrap();
    read_until(&mut a, b"shared-line-1\r\n", 10).await;
    read_until(&mut b, b"shared-line-1\r\n", 10).await;

    b.write_all(b"from-b\r").await.unwrap();
    read_until(&mut node, b"from-b\r", 10).await;
    a.write_all(b"from-a\r").await.unwrap();
    read_until(&mut node, b"from-a\r", 10).await;

    let mut late = TcpStream::connect(console.addr).await.unwrap();
    read_until(&mut late, b"shared-line-1\r\n", 10).await;

    let log = console
        .running
        .log(0)
        .expect("the native backend keeps a log");
    let text = String::from_utf8_lossy(&log.data);
    assert!(text.contains("shared-line-1\r\n"), "{text:?}");
    assert!(
        !text.contains("SOL Session operational"),
        "ipmitool's banner is not node output"
    );
    // The hub hands output to the log file's own writer task without
    // waiting for it: give the write a moment (bounded).
    let path = log_dir.join(format!("{NODE_ID}.log"));
    let written = Instant::now();
    loop {
        let file = std::fs::read(&path).unwrap_or_default();
        if String::from_utf8_lossy(&file).contains("shared-line-1") {
            break;
        }
        assert!(
            written.elapsed() < Duration::from_secs(5),
            "log file {}: {:?}",
            path.display(),
            String::from_utf8_lossy(&file)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let pid = console.activate_pid();
    console.stop_and_check_nothing_left(pid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_ends_cleanly_after_linger_and_comes_back() {
    let Some(bmc) = rig_bmc() else { return };
    let _lease = lease(&bmc).await;
    let console = start_console(bmc, None).await;
    let (viewer, node) = console.attach_primed().await;
    let first = console.activate_pid();
    drop(viewer);
    drop(node);
    // linger is 1 s; then sol deactivate and the process group goes.
    let deadline = Instant::now() + Duration::from_secs(15);
    while alive(first) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!alive(first), "ipmitool ended after linger");
    // A new viewer gets a new session at once: the payload was freed.
    let (mut viewer, mut node) = console.attach_primed().await;
    assert_ne!(console.activate_pid(), first);
    node.write_all(b"second-session\r\n").await.unwrap();
    read_until(&mut viewer, b"second-session\r\n", 10).await;
    let pid = console.activate_pid();
    console.stop_and_check_nothing_left(pid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bmc_that_refuses_us_is_reported_in_ipmitools_words_and_retried() {
    let Some(mut bmc) = rig_bmc() else { return };
    let _lease = lease(&bmc).await;
    bmc.target.password = Secret::new("not-the-password");
    let console = start_console(bmc, None).await;
    let mut viewer = TcpStream::connect(console.addr).await.unwrap();
    let first = read_until(&mut viewer, b"; retrying in 1s]\r\n", 30).await;
    let text = String::from_utf8_lossy(&first);
    assert!(
        text.contains("[porthole: SOL session failed: BMC 127.0.0.1:"),
        "{text}"
    );
    let health = console.health.borrow().clone();
    match health {
        Health::Failed(m) => assert!(m.contains("Error"), "ipmitool's own words: {m}"),
        h => panic!("{h:?}"),
    }
    read_until(&mut viewer, b"; retrying in 2s]\r\n", 30).await;
    console.running.stop().await;
    let left: Vec<_> = std::fs::read_dir(&console.pid_dir).unwrap().collect();
    assert!(left.is_empty(), "no ipmitool left: {left:?}");
}
