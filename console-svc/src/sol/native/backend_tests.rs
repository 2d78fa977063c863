//! The whole backend over TCP with a stand-in `ipmitool` (a shell script that
//! prints ipmitool's banner and then echoes keystrokes, or fails the way
//! ipmitool does): `start`, the pty launcher, health, `stop`. The real BMC is
//! exercised by `tests/native_rig.rs`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{NativeBackend, NativeSettings};
use crate::backend::{BackendError, ConsoleBackend, Health, RunningConsole};
use crate::config::NativeConfig;
use crate::sol::test_context::context;

/// A stand-in for ipmitool: checks the password on fd 3, then acts out
/// `sol deactivate` and `sol activate` (`$1` of the script: ok or busy).
const FAKE_IPMITOOL: &str = r#"#!/bin/sh
mode=MODE
for a in "$@"; do last2="$last1 $a"; last1=$a; done
[ "$(cat /dev/fd/3)" = "pw-123" ] || { echo "Error: bad password" >&2; exit 1; }
case "$last2" in
  "sol deactivate") echo "Info: SOL payload already de-activated" >&2; exit 1 ;;
  "sol activate")
    if [ "$mode" = busy ]; then
      echo "Info: SOL payload already active on another session" >&2; exit 1
    fi
    echo "[SOL Session operational.  Use ~? for help]"
    exec cat ;;
esac
exit 2
"#;

/// A stand-in for `console-svc sol-exec` (the test binary cannot be run as
/// the helper): asks the gate for its go as the helper does, then runs the
/// ipmitool argv it was given (activate only, as the native hub asks).
const FAKE_HELPER: &str = r#"#!/usr/bin/env python3
import json, os, socket, sys
assert sys.argv[1:] == ["sol-exec"], sys.argv
assert os.environ.get("PORTHOLE_SOL_ACTIVATE_ONLY") == "1"
gate = json.loads(os.environ["PORTHOLE_SOL_GATE"])
s = socket.socket(socket.AF_UNIX)
s.connect(gate["socket"])
s.sendall(("activate %s %d\n" % (gate["node"], gate["token"])).encode())
answer = s.makefile().readline()
if not answer.startswith("ok "):
    print("[porthole: no go: %s]" % answer.strip(), flush=True)
    sys.exit(1)
argv = json.loads(os.environ["PORTHOLE_SOL_ARGV"])
os.execv(argv[0], argv)
"#;

fn fake_helper(dir: &Path) -> PathBuf {
    let path = dir.join("sol-exec-helper");
    crate::sol::test_context::write_script(&path, FAKE_HELPER);
    path
}

/// A scratch dir for one test, removed when the returned value drops.
fn scratch(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("porthole-native-{name}-"))
        .tempdir()
        .unwrap()
}

fn fake_ipmitool(dir: &Path, mode: &str) -> PathBuf {
    let path = dir.join("ipmitool");
    crate::sol::test_context::write_script(&path, &FAKE_IPMITOOL.replace("MODE", mode));
    path
}

pub(super) struct Started {
    pub(super) console: Box<dyn RunningConsole>,
    pub(super) addr: SocketAddr,
    health: watch::Receiver<Health>,
    pids: PathBuf,
    /// The service-wide cancellation the console was started under.
    cancel: CancellationToken,
    /// The fake ipmitool and the pid dir, removed on drop.
    _dir: tempfile::TempDir,
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

fn backend(ipmitool: PathBuf) -> NativeBackend {
    let helper = fake_helper(ipmitool.parent().unwrap_or(Path::new(".")));
    NativeBackend::with_settings(NativeSettings {
        native: NativeConfig::default(),
        ipmitool,
        helper,
        subprocess_timeout: Duration::from_secs(5),
        terminal_timeout: Duration::ZERO,
        retry_max_backoff: Duration::from_secs(5),
    })
}

pub(super) async fn start(name: &str, mode: &str) -> Started {
    let scratch = scratch(name);
    let dir = scratch.path().to_owned();
    let backend = backend(fake_ipmitool(&dir, mode));
    // A child forked elsewhere may briefly hold free_port's probe socket.
    for _ in 0..5 {
        let addr = free_port();
        let (ctx, health) = context(&dir, addr).await;
        let cancel = ctx.cancel.clone();
        match backend.start(ctx).await {
            Ok(console) => {
                return Started {
                    console,
                    addr,
                    health,
                    pids: dir.join("pids"),
                    cancel,
                    _dir: scratch,
                }
            }
            Err(BackendError::PortInUse { .. }) => continue,
            Err(e) => panic!("{e}"),
        }
    }
    panic!("no free port");
}

async fn read_until(s: &mut TcpStream, needle: &[u8]) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while !seen.windows(needle.len()).any(|w| w == needle) {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "EOF; got {:?}", String::from_utf8_lossy(&seen));
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

/// The port refuses connections. A child forked elsewhere in this process
/// keeps a copy of the listener until it execs, so allow a moment for that.
async fn assert_port_closed(addr: SocketAddr) {
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{addr} still accepts connections");
}

fn recorded_pids(dir: &Path) -> Vec<i32> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

#[tokio::test]
async fn a_tcp_viewer_talks_to_the_session_under_a_pty() {
    let s = start("ok", "ok").await;
    let mut viewer = TcpStream::connect(s.addr).await.unwrap();
    let banner = read_until(&mut viewer, b"for help]\r\n").await;
    assert!(
        banner.starts_with(b"[SOL Session operational."),
        "{banner:?}"
    );
    assert_eq!(*s.health.borrow(), Health::Ok);
    viewer.write_all(b"ping\x00\x03\x1b\xff\r").await.unwrap();
    read_until(&mut viewer, b"ping\x00\x03\x1b\xff\r").await;
    let log = s.console.log(0).unwrap();
    assert_eq!(
        log.data, b"ping\x00\x03\x1b\xff\r",
        "the banner is not node output"
    );

    let pids = recorded_pids(&s.pids);
    assert_eq!(pids.len(), 1, "only `sol activate` is still running");
    let stopping = tokio::time::timeout(Duration::from_secs(10), s.console.stop());
    stopping.await.expect("stop is bounded");
    assert!(
        !Path::new(&format!("/proc/{}", pids[0])).exists(),
        "ipmitool reaped"
    );
    assert!(recorded_pids(&s.pids).is_empty());
    let mut rest = Vec::new();
    let _ = viewer.read_to_end(&mut rest).await;
    assert_port_closed(s.addr).await;
}

#[tokio::test]
async fn a_busy_payload_is_reported_in_ipmitools_words() {
    let s = start("busy", "busy").await;
    let mut viewer = TcpStream::connect(s.addr).await.unwrap();
    let got = read_until(&mut viewer, b"retrying in 1s]\r\n").await;
    let text = String::from_utf8_lossy(&got);
    assert_eq!(
        text,
        "\r\n[porthole: SOL session failed: BMC 127.0.0.1:623: Info: SOL payload already active \
         on another session (ipmitool ended (exit status: 1)); retrying in 1s]\r\n"
    );
    match &*s.health.borrow() {
        Health::Failed(m) => assert!(m.contains("SOL payload already active"), "{m}"),
        h => panic!("{h:?}"),
    }
    s.console.stop().await;
    assert!(recorded_pids(&s.pids).is_empty());
}

#[tokio::test]
async fn a_busy_port_is_port_in_use() {
    let scratch = scratch("inuse");
    let dir = scratch.path();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let (ctx, _health) = context(dir, addr).await;
    match backend("ipmitool".into()).start(ctx).await {
        Err(BackendError::PortInUse { addr: a }) => assert_eq!(a, addr),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("started on a busy port"),
    }
}

#[tokio::test]
async fn cancelling_the_service_stops_the_console() {
    let s = start("cancel", "ok").await;
    let mut viewer = TcpStream::connect(s.addr).await.unwrap();
    read_until(&mut viewer, b"for help]").await;
    s.cancel.cancel();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), viewer.read_to_end(&mut rest))
        .await
        .expect("viewer closed")
        .unwrap();
    for _ in 0..100 {
        if recorded_pids(&s.pids).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(recorded_pids(&s.pids).is_empty(), "ipmitool stopped");
    s.console.stop().await;
}
