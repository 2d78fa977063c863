//! The socat backend against the real `socat` binary, with no BMC and no
//! viewer: its listener has TCP_NODELAY (which accepted connections
//! inherit), a port another program holds is `PortInUse` (so the busy-port
//! retry and the manager's next-port choice run), and any other early exit
//! carries socat's own words. Skipped with a notice when socat is missing.

use std::net::{SocketAddr, TcpStream};
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

use super::{SocatBackend, SocatSettings};
use crate::backend::{BackendError, ConsoleBackend};
use crate::sol::test_context::context;
use crate::sol::SolError;

fn have_socat() -> bool {
    let found = std::process::Command::new("socat")
        .arg("-V")
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok();
    if !found {
        eprintln!("socat is not installed; skipping this socat backend test");
    }
    found
}

/// A scratch dir for one test, removed when the returned value drops.
fn scratch(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("porthole-socat-{name}-"))
        .tempdir()
        .unwrap()
}

fn backend() -> SocatBackend {
    backend_checking_every(Duration::from_millis(50))
}

fn backend_checking_every(checking_interval: Duration) -> SocatBackend {
    SocatBackend::new(SocatSettings {
        socat: "socat".into(),
        ipmitool: "ipmitool".into(),
        // Never run: no viewer connects.
        helper: "/bin/true".into(),
        subprocess_timeout: Duration::from_secs(5),
        checking_interval,
        terminal_timeout: Duration::ZERO,
        retry_max_backoff: Duration::from_secs(5),
    })
    .unwrap()
}

#[tokio::test]
async fn a_port_another_program_holds_is_port_in_use() {
    if !have_socat() {
        return;
    }
    let scratch = scratch("busy");
    let dir = scratch.path();
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap();
    let (ctx, _health) = context(dir, addr).await;
    let started = tokio::time::Instant::now();
    let err = backend().start(ctx).await.err().expect("the port is held");
    assert!(
        matches!(&err, BackendError::PortInUse { addr: a } if *a == addr),
        "{err}"
    );
    // The busy-port retry ran (about a second) before giving up.
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
}

/// `console.subprocess_checking_interval` paces the busy-port retries: one
/// longer than the retry window means one retry, after that interval.
#[tokio::test]
async fn a_busy_port_is_tried_again_every_checking_interval() {
    if !have_socat() {
        return;
    }
    let scratch = scratch("interval");
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap();
    let (ctx, _health) = context(scratch.path(), addr).await;
    let started = tokio::time::Instant::now();
    let err = backend_checking_every(Duration::from_millis(1500))
        .start(ctx)
        .await
        .err()
        .expect("the port is held");
    assert!(matches!(&err, BackendError::PortInUse { .. }), "{err}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[tokio::test]
async fn an_early_exit_says_what_socat_said() {
    if !have_socat() {
        return;
    }
    let scratch = scratch("early");
    let dir = scratch.path();
    // TEST-NET-1: no interface of this host has it.
    let addr: SocketAddr = "192.0.2.1:40999".parse().unwrap();
    let (ctx, _health) = context(dir, addr).await;
    let err = backend().start(ctx).await.err().expect("cannot bind there");
    let Some(SolError::EarlyExit { detail, .. }) = err.downcast_ref::<SolError>() else {
        panic!("{err}");
    };
    assert!(detail.contains("Cannot assign requested address"), "{err}");
}

#[tokio::test]
async fn the_listener_has_tcp_nodelay() {
    if !have_socat() {
        return;
    }
    let scratch = scratch("nodelay");
    let dir = scratch.path();
    let addr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let (ctx, _health) = context(dir, addr).await;
    let console = backend().start(ctx).await.expect("socat listens");
    let pid: i32 = std::fs::read_dir(dir.join("pids"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .next()
        .expect("socat recorded");
    let nodelay = listener_nodelay(pid, addr.port());
    console.stop().await;
    assert_eq!(nodelay, Some(true), "socat's listener on {addr}");
}

/// TCP_NODELAY of the socket process `pid` has bound to `port`, looked at
/// through a copy of its descriptor (`pidfd_getfd`; socat is our child).
#[expect(
    unsafe_code,
    reason = "pidfd_open/pidfd_getfd syscalls and OwnedFd::from_raw_fd of what they return"
)]
fn listener_nodelay(pid: i32, port: u16) -> Option<bool> {
    // SAFETY: plain syscalls with integer arguments; a returned descriptor
    // is new and owned by us.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    assert!(
        pidfd >= 0,
        "pidfd_open: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: pidfd_open returned a new descriptor we own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()? {
        let entry = entry.ok()?;
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        if !target.to_string_lossy().starts_with("socket:") {
            continue;
        }
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        use std::os::fd::AsRawFd as _;
        // SAFETY: as above.
        let copy = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
        if copy < 0 {
            continue;
        }
        // SAFETY: pidfd_getfd returned a new descriptor we own; a TcpStream
        // only reads its options and addresses here.
        let sock = TcpStream::from(unsafe { OwnedFd::from_raw_fd(copy as i32) });
        if sock.local_addr().map(|a| a.port()).ok() == Some(port) {
            return sock.nodelay().ok();
        }
    }
    None
}
