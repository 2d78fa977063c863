//! Manager unit tests with an in-memory backend; `ipmitool_path` is `true`
//! or `false` so the BMC probe succeeds or fails without a BMC.

use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use porthole_proto::console::v1 as pb;

use super::*;
use crate::backend::{BackendError, ConsoleContext};
use crate::coordinator::local::LocalCoordinator;
use crate::coordinator::{CoordError, Coordinator, Ownership};
use crate::error::ConsoleError;
use crate::ports::PortError;
use crate::spec::Target;

#[derive(Default)]
struct FakeBackend {
    started: AtomicUsize,
    running: Arc<AtomicUsize>,
    /// The manager's process-table dir: removed when the last holder (the
    /// test or the manager) drops the backend.
    _scratch: Option<tempfile::TempDir>,
}

struct FakeConsole {
    running: Arc<AtomicUsize>,
}

#[async_trait]
impl ConsoleBackend for FakeBackend {
    fn name(&self) -> &'static str {
        "fake"
    }

    async fn start(&self, ctx: ConsoleContext) -> Result<Box<dyn RunningConsole>, BackendError> {
        if ctx.node.as_str() == "port-in-use" {
            return Err(BackendError::PortInUse { addr: ctx.listen });
        }
        self.started.fetch_add(1, Ordering::SeqCst);
        self.running.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(FakeConsole {
            running: self.running.clone(),
        }))
    }
}

#[async_trait]
impl RunningConsole for FakeConsole {
    async fn stop(self: Box<Self>) {
        self.running.fetch_sub(1, Ordering::SeqCst);
    }

    fn log(&self, _max_bytes: usize) -> Option<LogSnapshot> {
        Some(LogSnapshot {
            data: b"hello".to_vec(),
            truncated: false,
        })
    }
}

fn manager(range: &str, ipmitool: &str) -> (ConsoleManager, Arc<FakeBackend>) {
    let coordinator = Arc::new(LocalCoordinator::new("replica-a"));
    build(range, ipmitool, coordinator, Placement::Local)
}

fn build(
    range: &str,
    ipmitool: &str,
    coordinator: Arc<dyn Coordinator>,
    placement: Placement,
) -> (ConsoleManager, Arc<FakeBackend>) {
    let mut config = Config::default();
    config.console.port_range = range.parse().unwrap();
    config.console.ipmitool_path = ipmitool.into();
    // Fresh ports are probed by binding them: on an address of this test
    // process's own, so nothing else on the machine is in the way.
    config.console.socat_address = private_loopback();
    config.console.advertise_host = Some("127.0.0.1".into());
    let dir = tempfile::Builder::new()
        .prefix("porthole-mgr-")
        .tempdir()
        .unwrap();
    let processes = Arc::new(ProcessTable::open(dir.path(), Duration::from_secs(1)).unwrap());
    let backend = Arc::new(FakeBackend {
        _scratch: Some(dir),
        ..FakeBackend::default()
    });
    let backends = Backends {
        serial: backend.clone(),
        vnc: None,
    };
    let m = ConsoleManager::new(
        Arc::new(config),
        backends,
        coordinator,
        processes,
        placement,
        CancellationToken::new(),
    );
    (m, backend)
}

use std::time::Duration;

/// 127.79.x.1, x from the process id: a loopback address no other test
/// process binds.
pub(super) fn private_loopback() -> std::net::IpAddr {
    std::net::Ipv4Addr::new(127, 79, (std::process::id() % 250) as u8 + 1, 1).into()
}

pub(super) fn spec(node: &str, port: u32) -> ConsoleSpec {
    ConsoleSpec::from_request(pb::EnableConsoleRequest {
        node_id: node.into(),
        kind: pb::ConsoleKind::Serial as i32,
        ipmi: Some(pb::IpmiTarget {
            address: "127.0.0.1".into(),
            port: 21100,
            username: "admin".into(),
            password: "pw".into(),
            cipher_suite: Some(3),
            privilege_level: String::new(),
        }),
        port,
        vnc: None,
    })
    .unwrap()
}

#[tokio::test]
async fn enable_is_idempotent_and_ports_are_sticky() {
    let (m, backend) = manager("12000:12005", "true");
    let a = m.enable(spec("a", 0)).await.unwrap();
    assert_eq!(a.state, ConsoleState::Running);
    assert_eq!(a.endpoint.as_ref().unwrap().url(), "tcp://127.0.0.1:12000");
    assert_eq!(a.owner, "replica-a");
    let again = m.enable(spec("a", 0)).await.unwrap();
    assert_eq!(again.endpoint, a.endpoint);
    assert_eq!(backend.started.load(Ordering::SeqCst), 1, "no restart");

    let b = m.enable(spec("b", 0)).await.unwrap();
    assert_eq!(b.endpoint.unwrap().port, 12001);
    let off = m.disable(&spec("a", 0).node).await.unwrap();
    assert_eq!(off.state, ConsoleState::Disabled);
    assert!(off.endpoint.is_none());
    assert_eq!(backend.running.load(Ordering::SeqCst), 1);
    let back = m.enable(spec("a", 0)).await.unwrap();
    assert_eq!(
        back.endpoint.unwrap().port,
        12000,
        "same port after disable"
    );
}

#[tokio::test]
async fn a_changed_spec_restarts_on_the_same_port() {
    let (m, backend) = manager("12000:12005", "true");
    m.enable(spec("a", 0)).await.unwrap();
    let mut changed = spec("a", 0);
    let Target::Ipmi(ipmi) = &mut changed.target else {
        unreachable!()
    };
    ipmi.cipher_suite = 1;
    let info = m.enable(changed).await.unwrap();
    assert_eq!(info.endpoint.unwrap().port, 12000);
    assert_eq!(backend.started.load(Ordering::SeqCst), 2);
    assert_eq!(backend.running.load(Ordering::SeqCst), 1, "old one stopped");
}

#[tokio::test]
async fn exhaustion_and_bad_ports_are_errors() {
    let (m, _) = manager("12000:12001", "true");
    m.enable(spec("a", 0)).await.unwrap();
    let err = m.enable(spec("b", 0)).await.unwrap_err();
    assert!(
        matches!(err, ConsoleError::Port(PortError::Exhausted { .. })),
        "{err}"
    );
    let status = tonic::Status::from(err);
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(status.message().contains("12000:12001"));
    let err = m.enable(spec("c", 13000)).await.unwrap_err();
    assert_eq!(
        tonic::Status::from(err).code(),
        tonic::Code::InvalidArgument
    );
}

#[tokio::test]
async fn a_start_failure_is_reported_and_recorded() {
    let (m, _) = manager("12000:12005", "true");
    let err = m.enable(spec("port-in-use", 0)).await.unwrap_err();
    assert_eq!(tonic::Status::from(err).code(), tonic::Code::Unavailable);
    let info = m.get(&spec("port-in-use", 0).node).unwrap();
    assert_eq!(info.state, ConsoleState::Failed);
    // The backend's words, as the error's cause; not the error's own frame.
    let last_error = info.last_error.unwrap();
    assert!(last_error.starts_with("port "), "{last_error}");
    assert!(last_error.contains("already in use"), "{last_error}");
}

#[tokio::test]
async fn an_unreachable_bmc_makes_the_console_failed() {
    let (m, _) = manager("12000:12005", "false");
    let mut events = m.subscribe();
    m.enable(spec("a", 0)).await.unwrap();
    let failed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let ev = events.recv().await.unwrap();
            if ev.state == ConsoleState::Failed {
                return ev;
            }
        }
    })
    .await
    .expect("console turns FAILED");
    let why = failed.last_error.unwrap();
    assert!(
        why.contains("BMC 127.0.0.1:21100") && why.contains("retrying"),
        "{why}"
    );
    assert!(
        failed.endpoint.is_some(),
        "the port stays open while retrying"
    );
}

#[tokio::test]
async fn get_list_log_and_shutdown() {
    let (m, backend) = manager("12000:12005", "true");
    m.enable(spec("b", 0)).await.unwrap();
    m.enable(spec("a", 0)).await.unwrap();
    let nodes: Vec<String> = m.list().iter().map(|c| c.node.to_string()).collect();
    assert_eq!(nodes, ["a", "b"]);
    assert_eq!(m.log(&spec("a", 0).node, 0).unwrap().data, b"hello");
    assert!(matches!(
        m.get(&NodeId::parse("zzz").unwrap()),
        Err(ConsoleError::NotFound(_))
    ));
    m.shutdown().await;
    assert_eq!(backend.running.load(Ordering::SeqCst), 0);
    assert!(m.list().iter().all(|c| c.state == ConsoleState::Disabled));
    assert!(matches!(
        m.enable(spec("c", 0)).await,
        Err(ConsoleError::ShuttingDown)
    ));
}

/// A local coordinator whose serving verdict the test sets.
struct Switchable {
    local: LocalCoordinator,
    serving: tokio::sync::watch::Sender<bool>,
}

#[async_trait]
impl Coordinator for Switchable {
    fn replica_id(&self) -> &str {
        self.local.replica_id()
    }
    fn serving(&self) -> tokio::sync::watch::Receiver<bool> {
        self.serving.subscribe()
    }
    async fn acquire(&self, node: &NodeId) -> Result<Ownership, CoordError> {
        if !*self.serving.borrow() {
            return Err(CoordError::NotServing("test switch is off".into()));
        }
        self.local.acquire(node).await
    }
    async fn check(&self, ownership: &Ownership) -> Result<(), CoordError> {
        self.local.check(ownership).await
    }
    async fn release(&self, ownership: &Ownership) -> Result<(), CoordError> {
        self.local.release(ownership).await
    }
}

#[tokio::test]
async fn losing_the_lease_stops_every_console_and_regaining_it_resumes_them() {
    let switch = Arc::new(Switchable {
        local: LocalCoordinator::new("replica-a"),
        serving: tokio::sync::watch::Sender::new(true),
    });
    let (m, backend) = build("12000:12005", "true", switch.clone(), Placement::Local);
    let mut events = m.subscribe();
    m.enable(spec("a", 0)).await.unwrap();
    m.enable(spec("b", 0)).await.unwrap();
    m.disable(&spec("b", 0).node).await.unwrap();

    switch.serving.send_replace(false);
    let fenced = next_state(&mut events, ConsoleState::Failed).await;
    assert_eq!(fenced.node.as_str(), "a");
    assert!(fenced.last_error.unwrap().contains("stopped serving"));
    assert_eq!(backend.running.load(Ordering::SeqCst), 0, "nothing served");
    let err = m.enable(spec("c", 0)).await.unwrap_err();
    assert_eq!(tonic::Status::from(err).code(), tonic::Code::Unavailable);

    switch.serving.send_replace(true);
    let back = next_state(&mut events, ConsoleState::Running).await;
    assert_eq!(back.node.as_str(), "a");
    assert_eq!(
        back.endpoint.unwrap().port,
        12000,
        "same port after resuming"
    );
    assert_eq!(
        m.get(&spec("b", 0).node).unwrap().state,
        ConsoleState::Disabled,
        "a disabled console stays disabled"
    );
}

/// A lease lost and a new one granted before the manager looked: the watch
/// shows `true` both times, yet the consoles claimed under the old lease
/// must stop (and come back under the new one).
#[tokio::test]
async fn a_lease_lost_and_regained_unseen_still_restarts_every_console() {
    let switch = Arc::new(Switchable {
        local: LocalCoordinator::new("replica-a"),
        serving: tokio::sync::watch::Sender::new(true),
    });
    let (m, backend) = build("12010:12015", "true", switch.clone(), Placement::Local);
    let mut events = m.subscribe();
    m.enable(spec("a", 0)).await.unwrap();
    // No await in between: the manager's task cannot see the false.
    switch.serving.send_replace(false);
    switch.serving.send_replace(true);
    let fenced = next_state(&mut events, ConsoleState::Failed).await;
    assert!(fenced.last_error.unwrap().contains("stopped serving"));
    let back = next_state(&mut events, ConsoleState::Running).await;
    assert_eq!(back.endpoint.unwrap().port, 12010, "same port");
    assert_eq!(
        backend.started.load(Ordering::SeqCst),
        2,
        "stopped, started again"
    );
}

async fn next_state(
    events: &mut tokio::sync::broadcast::Receiver<ConsoleInfo>,
    want: ConsoleState,
) -> ConsoleInfo {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let ev = events.recv().await.unwrap();
            if ev.state == want {
                return ev;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {want:?} event"))
}

/// In a cluster the spec's port is served as is: a port this replica once
/// served for another node (which has since moved, through another
/// replica) is not "taken".
#[tokio::test]
async fn in_a_cluster_the_specs_port_is_served_whatever_this_replica_saw() {
    let coordinator = Arc::new(LocalCoordinator::new("replica-a"));
    let (m, _) = build("12020:12025", "true", coordinator, Placement::Cluster);
    m.enable(spec("a", 12020)).await.unwrap();
    m.disable(&spec("a", 0).node).await.unwrap();
    // The cluster moved "a" to another port and gave 12020 to "b".
    let b = m
        .enable(spec("b", 12020))
        .await
        .expect("the cluster's port");
    assert_eq!(b.endpoint.unwrap().port, 12020);
    let a = m.enable(spec("a", 12021)).await.unwrap();
    assert_eq!(a.endpoint.unwrap().port, 12021);
}

/// In a cluster a regained lease does not restart what the lost one
/// stopped: placement claims those consoles again, in rank order.
#[tokio::test]
async fn in_a_cluster_a_regained_lease_leaves_fenced_consoles_to_placement() {
    let switch = Arc::new(Switchable {
        local: LocalCoordinator::new("replica-a"),
        serving: tokio::sync::watch::Sender::new(true),
    });
    let (m, backend) = build("12030:12035", "true", switch.clone(), Placement::Cluster);
    let mut events = m.subscribe();
    m.enable(spec("a", 12030)).await.unwrap();
    switch.serving.send_replace(false);
    next_state(&mut events, ConsoleState::Failed).await;
    switch.serving.send_replace(true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        backend.started.load(Ordering::SeqCst),
        1,
        "not resumed here"
    );
    assert_eq!(m.ownership(&spec("a", 0).node), None, "no claim");
    // Placement's claim (when it is this replica's turn) starts it.
    let claimed = m.enable(spec("a", 12030)).await.unwrap();
    assert_eq!(claimed.state, ConsoleState::Running);
    assert_eq!(backend.running.load(Ordering::SeqCst), 1);
}

/// The manager's census (`porthole_console_consoles`) is its own slots,
/// exactly; enable latency and fences go to the process-wide metrics, which
/// other tests bump too, so those are compared as "at least ours".
#[tokio::test]
async fn metrics_follow_consoles_enables_and_fences() {
    use crate::metrics::Census as _;
    let scrape = |series: &str| -> f64 {
        let text = porthole_common::metrics::encode(&crate::metrics::get().registry());
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{series} not in\n{text}"))
            .parse()
            .unwrap()
    };
    let census = |m: &ConsoleManager| {
        let mut c = m.inner.census();
        c.sort();
        c
    };
    let enables = r#"porthole_console_enable_duration_seconds_count{kind="serial",result="ok"}"#;
    let fences = "porthole_console_fences_total";
    let (enables_before, fences_before) = (scrape(enables), scrape(fences));
    let switch = Arc::new(Switchable {
        local: LocalCoordinator::new("replica-a"),
        serving: tokio::sync::watch::Sender::new(true),
    });
    let (m, _) = build("12030:12035", "true", switch.clone(), Placement::Local);
    let mut events = m.subscribe();
    m.enable(spec("a", 0)).await.unwrap();
    m.enable(spec("b", 0)).await.unwrap();
    m.disable(&spec("b", 0).node).await.unwrap();
    assert_eq!(census(&m), [("serial", "disabled"), ("serial", "running")]);
    assert!(scrape(enables) >= enables_before + 2.0);

    switch.serving.send_replace(false);
    next_state(&mut events, ConsoleState::Failed).await;
    assert_eq!(census(&m), [("serial", "disabled"), ("serial", "failed")]);
    assert!(scrape(fences) > fences_before, "the fence is counted");
}

/// The local [`Consoles`](crate::consoles::Consoles) watch: what was there
/// before it in the snapshot, each change after it, Closed at shutdown.
#[tokio::test]
async fn the_local_watch_sees_the_snapshot_changes_and_the_shutdown() {
    use crate::consoles::{Change, Consoles};
    let (m, _backend) = manager("12010:12015", "true");
    m.enable(spec("a", 0)).await.unwrap();
    let mut watch = Consoles::watch(&m);
    let snapshot: Vec<String> = watch
        .snapshot()
        .iter()
        .map(|c| c.node.to_string())
        .collect();
    assert_eq!(snapshot, ["a"]);
    Consoles::disable(&m, &spec("a", 0).node).await.unwrap();
    match watch.next().await {
        Change::Console(info) => {
            assert_eq!(
                (info.node.as_str(), info.state),
                ("a", ConsoleState::Disabled)
            )
        }
        other => panic!("{other:?}"),
    }
    m.shutdown().await;
    assert!(matches!(watch.next().await, Change::Closed));
}
