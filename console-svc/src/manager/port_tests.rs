//! Console ports another program holds, with real sockets: a fresh choice
//! skips a port with a listener on it or a client connection in TIME_WAIT
//! on it (Ironic's `acquire_port`), and moves on when a port is taken
//! between the look and the bind; a node's sticky or explicit port that is
//! busy fails and says so.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex as StdMutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::net::{TcpListener, TcpSocket};

use super::tests::{private_loopback, spec};
use super::*;
use crate::backend::{BackendError, ConsoleContext};
use crate::coordinator::local::LocalCoordinator;
use crate::ports::PortError;

/// Binds each console's port as the real backends do; `fail_once` ports
/// are reported busy the first time (taken after the manager's look).
#[derive(Default)]
struct BindingBackend {
    fail_once: StdMutex<HashSet<u16>>,
}

struct Bound {
    _listener: TcpListener,
}

#[async_trait]
impl ConsoleBackend for BindingBackend {
    fn name(&self) -> &'static str {
        "binding"
    }

    async fn start(&self, ctx: ConsoleContext) -> Result<Box<dyn RunningConsole>, BackendError> {
        if self.fail_once.lock().unwrap().remove(&ctx.listen.port()) {
            return Err(BackendError::PortInUse { addr: ctx.listen });
        }
        let listener = crate::backend::bind_port(ctx.listen).await?;
        Ok(Box::new(Bound {
            _listener: listener,
        }))
    }
}

#[async_trait]
impl RunningConsole for Bound {
    async fn stop(self: Box<Self>) {}

    fn log(&self, _max_bytes: usize) -> Option<LogSnapshot> {
        None
    }
}

/// A manager on `private_loopback()` with `n` ports from a block that is
/// free there now; the block's first port; the scratch dir of its process
/// table, removed when dropped.
fn manager(n: u16, backend: Arc<BindingBackend>) -> (ConsoleManager, u16, tempfile::TempDir) {
    // Each test its own block: tests run at once in this process.
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let ip = private_loopback();
    let first = (0..50u16)
        .map(|_| 40000 + NEXT.fetch_add(10, std::sync::atomic::Ordering::Relaxed))
        .find(|p| (*p..p + n).all(|q| port_choice::bindable(ip, q)))
        .expect("a free block of ports");
    let mut config = Config::default();
    config.console.port_range = format!("{first}:{}", first + n).parse().unwrap();
    config.console.ipmitool_path = "true".into();
    config.console.socat_address = ip;
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("pids");
    let processes = Arc::new(ProcessTable::open(dir, Duration::from_secs(1)).unwrap());
    let m = ConsoleManager::new(
        Arc::new(config),
        Backends {
            serial: backend,
            vnc: None,
        },
        Arc::new(LocalCoordinator::new("replica-a")),
        processes,
        Placement::Local,
        CancellationToken::new(),
    );
    (m, first, scratch)
}

/// A client connection from `ip:port` that we closed first: its local end
/// sits in TIME_WAIT on that port for a minute.
async fn time_wait_on(ip: IpAddr, port: u16) {
    let server = TcpListener::bind(SocketAddr::new(ip, 0)).await.unwrap();
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(ip, port)).unwrap();
    let client = socket.connect(server.local_addr().unwrap()).await.unwrap();
    let (accepted, _) = server.accept().await.unwrap();
    drop(client);
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(accepted);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !port_choice::bindable(ip, port),
        "{port} should be held by TIME_WAIT"
    );
}

fn port_of(info: &ConsoleInfo) -> u16 {
    info.endpoint.as_ref().expect("running").port
}

#[tokio::test]
async fn a_fresh_port_skips_a_listener_and_a_time_wait() {
    let (m, first, _scratch) = manager(4, Arc::default());
    let ip = private_loopback();
    let _listener = std::net::TcpListener::bind((ip, first)).unwrap();
    time_wait_on(ip, first + 1).await;
    let a = m.enable(spec("a", 0)).await.expect("a free port remains");
    assert_eq!(port_of(&a), first + 2);
    // The skipped ports were not given to anyone: once free, they are used.
    let b = m.enable(spec("b", 0)).await.unwrap();
    assert_eq!(port_of(&b), first + 3);
    let err = m.enable(spec("c", 0)).await.unwrap_err();
    assert!(
        matches!(err, ConsoleError::Port(PortError::AllBusy { busy: 2, .. })),
        "{err}"
    );
    assert_eq!(
        tonic::Status::from(err).code(),
        tonic::Code::ResourceExhausted
    );
    assert!(m.get(&spec("c", 0).node).is_err(), "nothing recorded for c");
}

#[tokio::test]
async fn a_port_taken_after_the_look_moves_a_fresh_choice_on() {
    let backend = Arc::new(BindingBackend::default());
    let (m, first, _scratch) = manager(4, backend.clone());
    backend.fail_once.lock().unwrap().insert(first);
    let a = m.enable(spec("a", 0)).await.expect("moved on");
    assert_eq!(port_of(&a), first + 1);
    let b = m.enable(spec("b", 0)).await.unwrap();
    assert_eq!(port_of(&b), first, "the port a gave up is free again");
}

#[tokio::test]
async fn a_busy_sticky_or_explicit_port_fails_and_says_so() {
    let (m, first, _scratch) = manager(4, Arc::default());
    let ip = private_loopback();
    let a = m.enable(spec("a", 0)).await.unwrap();
    assert_eq!(port_of(&a), first);
    m.disable(&spec("a", 0).node).await.unwrap();
    let _holder = std::net::TcpListener::bind((ip, first)).unwrap();
    // a's port is sticky: it is not moved, the start fails.
    let err = m.enable(spec("a", 0)).await.unwrap_err();
    let status = tonic::Status::from(err);
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(
        status.message().contains(&format!("{first}")) && status.message().contains("in use"),
        "{status:?}"
    );
    // An explicit port is not moved either.
    let err = m.enable(spec("b", u32::from(first))).await.unwrap_err();
    assert!(
        matches!(err, ConsoleError::Port(PortError::Taken { .. })),
        "a's port: {err}"
    );
    time_wait_on(ip, first + 2).await;
    let err = m.enable(spec("c", u32::from(first + 2))).await.unwrap_err();
    let status = tonic::Status::from(err);
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(status.message().contains("in use"), "{status:?}");
}

/// Refused enables (ports outside the range, another node's port) record
/// nothing: no console in STARTING, no slot kept, no port held.
#[tokio::test]
async fn refused_enables_record_nothing() {
    let (m, first, _scratch) = manager(4, Arc::default());
    m.enable(spec("holder", u32::from(first))).await.unwrap();
    for i in 0..2000 {
        let node = format!("refused-{i}");
        let port = match i % 2 {
            0 => u32::from(first) + 100, // outside the range
            _ => u32::from(first),       // the holder's
        };
        let err = m.enable(spec(&node, port)).await.unwrap_err();
        assert!(matches!(err, ConsoleError::Port(_)), "{err}");
    }
    let nodes: Vec<String> = m.list().iter().map(|c| c.node.to_string()).collect();
    assert_eq!(
        nodes.len(),
        1,
        "listed: {:?}...",
        &nodes[..nodes.len().min(3)]
    );
    assert_eq!(nodes[0], "holder");
    assert_eq!(m.inner.slots.lock().unwrap().len(), 1, "no slot kept");
    assert!(matches!(
        m.get(&NodeId::parse("refused-1").unwrap()),
        Err(ConsoleError::NotFound(_))
    ));
    // No port was held for them: the other three are still free.
    for n in ["x", "y", "z"] {
        m.enable(spec(n, 0)).await.unwrap();
    }
    // A refused request for a known node leaves its console as it was.
    let err = m.enable(spec("x", u32::from(first))).await.unwrap_err();
    assert!(matches!(err, ConsoleError::Port(PortError::Taken { .. })));
    let x = m.get(&NodeId::parse("x").unwrap()).unwrap();
    assert_eq!(x.state, ConsoleState::Running);
}
