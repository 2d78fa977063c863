//! High availability end to end: several `console-svc` processes (the
//! built binary) coordinating through the rig's real etcd, serving a rig
//! BMC's serial console.
//!
//! ```sh
//! cargo build -p console-svc && PORTHOLE_RIG_JSON=/tmp/rigrun/rig.json \
//!     cargo test -p console-svc --test ha_rig -- --test-threads 1
//! ```
//!
//! Each replica has its own loopback address (127.0.0.2, .3, .4) for gRPC
//! and console ports, so replicas never collide on a port and the checker
//! can tell who serves: it samples the listening sockets (`ss`) of the
//! console port throughout and fails if two replicas ever listen at once.
//! Each test has its own etcd prefix and console port range, and leases its
//! BMC with the `flock` the other rig tests use.

mod common;

use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::fcntl::Flock;
use pb::console_service_client::ConsoleServiceClient;
use porthole_proto::console::v1 as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TTL: Duration = Duration::from_secs(3);

struct Rig {
    etcd: String,
    bmc: serde_json::Value,
    run_dir: PathBuf,
}

fn rig() -> Option<Rig> {
    let rig = common::rig_json("ha_rig")?;
    Some(Rig {
        etcd: rig["etcd"]["endpoints"][0]
            .as_str()
            .expect("etcd")
            .to_owned(),
        bmc: rig["bmcs"][0].clone(),
        run_dir: rig["run_dir"].as_str().expect("run_dir").into(),
    })
}

/// The BMC for this test alone, shared with the other rig tests' pool.
async fn lease_bmc(rig: &Rig) -> Flock<File> {
    let name = rig.bmc["name"].as_str().expect("bmc name");
    let path = rig
        .run_dir
        .join("porthole-test-locks")
        .join(format!("{name}.lock"));
    common::lease_lock(&path).await
}

/// One console-svc process.
struct Replica {
    id: String,
    ip: String,
    grpc: SocketAddr,
    child: Option<Child>,
}

struct Cluster {
    etcd: String,
    prefix: String,
    dir: PathBuf,
    replicas: Vec<Replica>,
}

impl Cluster {
    fn start(rig: &Rig, test: &str, ports: &str, n: usize) -> Self {
        Self::start_via(rig, test, ports, &vec![rig.etcd.clone(); n])
    }

    /// One replica per etcd endpoint given (e.g. a proxy each).
    fn start_via(rig: &Rig, test: &str, ports: &str, etcd: &[String]) -> Self {
        let prefix = format!("/porthole-test/{test}-{}/", std::process::id());
        let dir = std::env::temp_dir().join(format!("ha-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("etcd.key"), "ab".repeat(32)).unwrap();
        let replicas = (0..etcd.len())
            .map(|i| {
                let ip = format!("127.0.0.{}", i + 2);
                let grpc = free_addr(&ip);
                let mut r = Replica {
                    id: format!("replica-{i}"),
                    ip,
                    grpc,
                    child: None,
                };
                r.child = Some(spawn(&etcd[i], &r, &prefix, &dir, ports));
                r
            })
            .collect();
        Self {
            etcd: rig.etcd.clone(),
            prefix,
            dir,
            replicas,
        }
    }

    async fn client(&self, i: usize) -> ConsoleServiceClient<tonic::transport::Channel> {
        let url = format!("http://{}", self.replicas[i].grpc);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match ConsoleServiceClient::connect(url.clone()).await {
                Ok(c) => return c,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => panic!("replica {i} gRPC: {e}"),
            }
        }
    }

    fn signal(&mut self, i: usize, sig: nix::sys::signal::Signal) {
        let child = self.replicas[i].child.as_mut().expect("running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, sig).unwrap();
    }

    fn wait(&mut self, i: usize) {
        if let Some(mut c) = self.replicas[i].child.take() {
            let _ = c.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for r in &mut self.replicas {
            if let Some(mut c) = r.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = Command::new("etcdctl")
            .args(["--endpoints", &self.etcd, "del", "--prefix", &self.prefix])
            .env("ETCDCTL_API", "3")
            .stdout(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_addr(ip: &str) -> SocketAddr {
    let l = std::net::TcpListener::bind(format!("{ip}:0")).unwrap();
    l.local_addr().unwrap()
}

fn spawn(etcd: &str, r: &Replica, prefix: &str, dir: &std::path::Path, ports: &str) -> Child {
    let bin = env!("CARGO_BIN_EXE_console-svc");
    let log = File::create(dir.join(format!("{}.log", r.id))).unwrap();
    Command::new(bin)
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("PORTHOLE_LOG", "info,console_svc=debug")
        .env("PORTHOLE_SERVICE_LISTEN", r.grpc.to_string())
        .env("PORTHOLE_SERVICE_REPLICA_ID", &r.id)
        .env("PORTHOLE_CONSOLE_SOCAT_ADDRESS", &r.ip)
        .env("PORTHOLE_CONSOLE_PORT_RANGE", ports)
        .env("PORTHOLE_CONSOLE_TERMINAL_PID_DIR", dir.join(&r.id))
        .env("PORTHOLE_ETCD_ENDPOINTS", etcd)
        .env("PORTHOLE_ETCD_PREFIX", prefix)
        .env("PORTHOLE_ETCD_LEASE_TTL", format!("{}s", TTL.as_secs()))
        .env("PORTHOLE_ETCD_SECRET_KEY_FILE", dir.join("etcd.key"))
        .env("PORTHOLE_ETCD_ENABLE_TIMEOUT", "4s")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("console-svc binary")
}

fn enable_request(rig: &Rig) -> pb::EnableConsoleRequest {
    let b = &rig.bmc;
    let password = std::fs::read_to_string(b["password_file"].as_str().unwrap()).unwrap();
    pb::EnableConsoleRequest {
        node_id: "ha-node".into(),
        kind: pb::ConsoleKind::Serial as i32,
        ipmi: Some(pb::IpmiTarget {
            address: b["host"].as_str().unwrap().into(),
            port: b["port"].as_u64().unwrap() as u32,
            username: b["username"].as_str().unwrap().into(),
            password: password.trim_end().into(),
            cipher_suite: Some(b["cipher_suite"].as_u64().unwrap() as u32),
            privilege_level: String::new(),
        }),
        port: 0,
        vnc: None,
    }
}

/// Samples who listens on the console port; counts overlaps.
struct Checker {
    stop: Arc<AtomicBool>,
    overlaps: Arc<AtomicUsize>,
    samples: Arc<AtomicUsize>,
}

impl Checker {
    fn start(port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let overlaps = Arc::new(AtomicUsize::new(0));
        let samples = Arc::new(AtomicUsize::new(0));
        let (s, o, n) = (stop.clone(), overlaps.clone(), samples.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let listeners = listening(port);
                if listeners.len() > 1 {
                    eprintln!("checker: two replicas serve at once: {listeners:?}");
                    o.fetch_add(1, Ordering::SeqCst);
                }
                n.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Self {
            stop,
            overlaps,
            samples,
        }
    }

    /// Keep sampling a second longer (a replica coming back would show),
    /// then judge.
    async fn finish(self) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.stop.store(true, Ordering::SeqCst);
        let samples = self.samples.load(Ordering::SeqCst);
        assert!(samples >= 10, "checker took only {samples} samples");
        assert_eq!(
            self.overlaps.load(Ordering::SeqCst),
            0,
            "two owners at once"
        );
    }
}

/// Local addresses listening on `port` (any 127.0.0.0/8 address).
fn listening(port: u16) -> Vec<String> {
    let out = Command::new("ss")
        .args(["-Hltn", &format!("sport = :{port}")])
        .output()
        .expect("ss");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_owned))
        .collect()
}

async fn get(c: &mut ConsoleServiceClient<tonic::transport::Channel>) -> Option<pb::Console> {
    let req = pb::GetConsoleRequest {
        node_id: "ha-node".into(),
    };
    c.get_console(req).await.ok().map(|r| r.into_inner())
}

/// Wait until a replica other than `not` serves the console; returns it.
async fn served_elsewhere(
    c: &mut ConsoleServiceClient<tonic::transport::Channel>,
    not: &str,
    within: Duration,
) -> pb::Console {
    let deadline = Instant::now() + within;
    loop {
        if let Some(con) = get(c).await {
            let up = con.state == pb::ConsoleState::Running as i32 && con.owner != not;
            if up && accepts(&con).await {
                return con;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no survivor served within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn accepts(con: &pb::Console) -> bool {
    TcpStream::connect((con.host.as_str(), con.port as u16))
        .await
        .is_ok()
}

/// Type through the console and read it on the node side.
async fn typing_reaches_the_node(rig: &Rig, con: &pb::Console) {
    let hc = &rig.bmc["host_console"];
    let node_addr = format!(
        "{}:{}",
        hc["host"].as_str().unwrap(),
        hc["port"].as_u64().unwrap()
    );
    let mut node = TcpStream::connect(node_addr).await.expect("host console");
    let mut viewer = TcpStream::connect((con.host.as_str(), con.port as u16))
        .await
        .expect("console port");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        viewer.write_all(b"\rha-typed\r").await.unwrap();
        let mut buf = [0u8; 4096];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(500), node.read(&mut buf)).await
        {
            seen.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&seen).contains("ha-typed") {
                return;
            }
        }
    }
    panic!(
        "typing never reached the node: {:?}",
        String::from_utf8_lossy(&seen)
    );
}

async fn etcd_dump(etcd: &str, prefix: &str) -> String {
    let out = tokio::process::Command::new("etcdctl")
        .args(["--endpoints", etcd, "get", "--prefix", prefix])
        .env("ETCDCTL_API", "3")
        .output()
        .await
        .expect("etcdctl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn kill_9_of_the_owner_moves_the_console_to_a_survivor_on_the_same_port() {
    let Some(rig) = rig() else { return };
    let _bmc = lease_bmc(&rig).await;
    let mut cluster = Cluster::start(&rig, "kill9", "31400:31410", 3);
    let mut c0 = cluster.client(0).await;
    let con = c0
        .enable_console(enable_request(&rig))
        .await
        .expect("enable")
        .into_inner();
    assert_eq!(con.state, pb::ConsoleState::Running as i32, "{con:?}");
    let checker = Checker::start(con.port as u16);

    // Any replica answers Get/List consistently.
    for i in 1..3 {
        let mut c = cluster.client(i).await;
        let other = get(&mut c).await.expect("get on another replica");
        assert_eq!(
            (other.owner.as_str(), other.port, other.url.as_str()),
            (con.owner.as_str(), con.port, con.url.as_str())
        );
        let list = c
            .list_consoles(pb::ListConsolesRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(list.consoles.len(), 1);
    }
    let dump = etcd_dump(&cluster.etcd, &cluster.prefix).await;
    let password = std::fs::read_to_string(rig.bmc["password_file"].as_str().unwrap()).unwrap();
    // The rig's password is "password", also a JSON key: look for it as a value.
    let clear = format!(":\"{}\"", password.trim_end());
    assert!(
        dump.contains("\"password\":\"sealed:v1:") && !dump.contains(&clear),
        "password in clear:\n{dump}"
    );

    let owner = cluster
        .replicas
        .iter()
        .position(|r| r.id == con.owner)
        .expect("owner");
    let survivor = (owner + 1) % 3;
    let mut cs = cluster.client(survivor).await;
    let killed_at = Instant::now();
    cluster.signal(owner, nix::sys::signal::Signal::SIGKILL);
    cluster.wait(owner);
    let moved = served_elsewhere(&mut cs, &con.owner, TTL + Duration::from_secs(2)).await;
    eprintln!(
        "kill -9 → accepting on {} after {:?}",
        moved.owner,
        killed_at.elapsed()
    );
    assert_eq!(moved.port, con.port, "same port");
    assert_ne!(moved.host, con.host, "under the survivor's host");
    typing_reaches_the_node(&rig, &moved).await;
    checker.finish().await;
}

#[tokio::test]
async fn sigterm_of_the_owner_hands_over_within_a_second() {
    let Some(rig) = rig() else { return };
    let _bmc = lease_bmc(&rig).await;
    let mut cluster = Cluster::start(&rig, "sigterm", "31420:31430", 2);
    let mut c0 = cluster.client(0).await;
    let con = c0
        .enable_console(enable_request(&rig))
        .await
        .expect("enable")
        .into_inner();
    let checker = Checker::start(con.port as u16);
    let owner = cluster
        .replicas
        .iter()
        .position(|r| r.id == con.owner)
        .expect("owner");
    let mut cs = cluster.client(1 - owner).await;
    let port = con.port as u16;
    let old = cluster.replicas[owner].ip.clone();
    cluster.signal(owner, nix::sys::signal::Signal::SIGTERM);
    // The gap: from the old listener closing to the new one accepting.
    let deadline = Instant::now() + Duration::from_secs(10);
    while listening(port).iter().any(|a| a.starts_with(&old)) {
        assert!(Instant::now() < deadline, "the owner never let go");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let closed_at = Instant::now();
    let moved = served_elsewhere(&mut cs, &con.owner, Duration::from_secs(5)).await;
    let gap = closed_at.elapsed();
    eprintln!("SIGTERM handover gap: {gap:?} (now on {})", moved.owner);
    assert!(gap < Duration::from_secs(1), "gap {gap:?}");
    assert_eq!(moved.port, con.port);
    cluster.wait(owner);
    checker.finish().await;
}

#[path = "support/etcd_proxy.rs"]
mod etcd_proxy;

/// The owner loses etcd (its own proxy cut) while its viewers can still reach
/// it: it stops listening before any other replica starts the console.
#[tokio::test]
async fn a_replica_cut_off_from_etcd_stops_before_another_starts_its_console() {
    let Some(rig) = rig() else { return };
    let _bmc = lease_bmc(&rig).await;
    let proxies = [
        etcd_proxy::Proxy::start(&rig.etcd).await,
        etcd_proxy::Proxy::start(&rig.etcd).await,
    ];
    let via: Vec<String> = proxies.iter().map(|p| p.addr.clone()).collect();
    let cluster = Cluster::start_via(&rig, "cut", "31440:31450", &via);
    let mut c0 = cluster.client(0).await;
    let con = c0
        .enable_console(enable_request(&rig))
        .await
        .expect("enable")
        .into_inner();
    let checker = Checker::start(con.port as u16);
    let owner = cluster
        .replicas
        .iter()
        .position(|r| r.id == con.owner)
        .expect("owner");
    let old = cluster.replicas[owner].ip.clone();
    let port = con.port as u16;

    proxies[owner].set_open(false);
    let cut_at = Instant::now();
    let mut stopped = None;
    let mut started = None;
    while started.is_none() {
        let l = listening(port);
        if stopped.is_none() && !l.iter().any(|a| a.starts_with(&old)) {
            stopped = Some(cut_at.elapsed());
        }
        if l.iter().any(|a| !a.starts_with(&old)) {
            started = Some(cut_at.elapsed());
        }
        assert!(cut_at.elapsed() < TTL * 3, "no takeover after the cut");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (stopped, started) = (stopped.expect("the cut replica stopped"), started.unwrap());
    eprintln!("cut: owner stopped after {stopped:?}, survivor listening after {started:?}");
    assert!(stopped < TTL && stopped < started);
    checker.finish().await;
}

/// `console-svc drain` empties the owner without stopping it; a WatchConsoles
/// stream on the other replica sees the console move.
#[tokio::test]
async fn drain_hands_consoles_over_and_watch_shows_it() {
    let Some(rig) = rig() else { return };
    let _bmc = lease_bmc(&rig).await;
    let cluster = Cluster::start(&rig, "drain", "31460:31470", 2);
    let mut c0 = cluster.client(0).await;
    let con = c0
        .enable_console(enable_request(&rig))
        .await
        .expect("enable")
        .into_inner();
    let checker = Checker::start(con.port as u16);
    let owner = cluster
        .replicas
        .iter()
        .position(|r| r.id == con.owner)
        .expect("owner");
    let mut other = cluster.client(1 - owner).await;
    let mut watch = other
        .watch_consoles(pb::WatchConsolesRequest {})
        .await
        .unwrap()
        .into_inner();

    let out = Command::new(env!("CARGO_BIN_EXE_console-svc"))
        .args([
            "drain",
            "--server",
            &format!("http://{}", cluster.replicas[owner].grpc),
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("released 1"), "{said}");
    let moved = served_elsewhere(&mut other, &con.owner, Duration::from_secs(2)).await;
    assert_eq!(moved.port, con.port);

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ev = tokio::time::timeout_at(deadline.into(), watch.message())
            .await
            .expect("watch saw the move")
            .unwrap()
            .expect("stream open");
        let c = ev.console.unwrap_or_default();
        if c.owner == moved.owner && c.state == pb::ConsoleState::Running as i32 {
            break;
        }
    }
    // The drained replica does not take it back; Get agrees on both.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut drained = cluster.client(owner).await;
    let on_drained = get(&mut drained).await.unwrap();
    let on_other = get(&mut other).await.unwrap();
    assert_eq!(
        (on_drained.owner.as_str(), on_drained.url.as_str()),
        (moved.owner.as_str(), moved.url.as_str())
    );
    assert_eq!(on_other.owner, moved.owner);

    // Disable through the drained replica stops it on the owner.
    let off = drained
        .disable_console(pb::DisableConsoleRequest {
            node_id: "ha-node".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(off.state, pb::ConsoleState::Disabled as i32, "{off:?}");
    assert!(
        listening(con.port as u16).is_empty(),
        "port closed everywhere"
    );
    let list = other
        .list_consoles(pb::ListConsolesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.consoles[0].state, pb::ConsoleState::Disabled as i32);
    checker.finish().await;
}

/// A console no replica can start (its port is taken on every address)
/// ends Enable with DEADLINE_EXCEEDED and the state it is in.
#[tokio::test]
async fn enable_that_nobody_can_serve_is_deadline_exceeded() {
    let Some(rig) = rig() else { return };
    let cluster = Cluster::start(&rig, "deadline", "31480:31490", 2);
    let _squatter = std::net::TcpListener::bind("0.0.0.0:31485").unwrap();
    let mut c0 = cluster.client(0).await;
    let mut req = enable_request(&rig);
    req.node_id = "ha-nowhere".into();
    req.port = 31485;
    let started = Instant::now();
    let err = c0.enable_console(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err}");
    assert!(err.message().contains("ha-nowhere"), "{}", err.message());
    assert!(started.elapsed() < Duration::from_secs(8));
}

/// etcd gone for every replica (all proxies cut, as if every member
/// stopped): each replica stops serving within the TTL; when etcd is back
/// the console is served again without a restart.
#[tokio::test]
async fn without_etcd_nobody_serves_and_service_returns_with_it() {
    let Some(rig) = rig() else { return };
    let _bmc = lease_bmc(&rig).await;
    let proxies = [
        etcd_proxy::Proxy::start(&rig.etcd).await,
        etcd_proxy::Proxy::start(&rig.etcd).await,
    ];
    let via: Vec<String> = proxies.iter().map(|p| p.addr.clone()).collect();
    let cluster = Cluster::start_via(&rig, "alldown", "31500:31510", &via);
    let mut c0 = cluster.client(0).await;
    let con = c0
        .enable_console(enable_request(&rig))
        .await
        .expect("enable")
        .into_inner();
    let checker = Checker::start(con.port as u16);
    let port = con.port as u16;

    for p in &proxies {
        p.set_open(false);
    }
    let cut_at = Instant::now();
    while !listening(port).is_empty() {
        assert!(cut_at.elapsed() < TTL, "still serving without etcd");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("all cut: nobody listens after {:?}", cut_at.elapsed());
    tokio::time::sleep(TTL + Duration::from_secs(1)).await;
    assert!(
        listening(port).is_empty(),
        "nobody serves while etcd is gone"
    );

    for p in &proxies {
        p.set_open(true);
    }
    let back_at = Instant::now();
    let mut any = cluster.client(1).await;
    let again = served_elsewhere(&mut any, "", Duration::from_secs(15)).await;
    eprintln!(
        "etcd back: served by {} after {:?}",
        again.owner,
        back_at.elapsed()
    );
    assert_eq!(again.port, con.port);
    checker.finish().await;
}

/// Benchmark (printed, not asserted): takeover time for many idle consoles
/// and etcd requests per second at steady state. Consoles point at an
/// unreachable BMC: the native backend touches it only when a viewer comes.
///
/// ```sh
/// HA_BENCH_CONSOLES=1000 PORTHOLE_RIG_JSON=/tmp/rigrun/rig.json \
///     cargo test -p console-svc --test ha_rig bench -- --ignored --nocapture
/// ```
#[tokio::test]
#[ignore = "benchmark; run by hand"]
async fn bench_takeover_and_steady_state_etcd_rate() {
    use futures::StreamExt;
    let Some(rig) = rig() else { return };
    let n: usize = std::env::var("HA_BENCH_CONSOLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let mut cluster = Cluster::start(&rig, "bench", "32000:33100", 3);
    let c0 = cluster.client(0).await;
    let t = Instant::now();
    let template = enable_request(&rig);
    let enables = futures::stream::iter(0..n).map(|i| {
        let mut c = c0.clone();
        let mut req = template.clone();
        async move {
            req.node_id = format!("bench-{i}");
            req.ipmi.as_mut().unwrap().address = "127.0.0.1".into();
            req.ipmi.as_mut().unwrap().port = 9;
            c.enable_console(req).await.map(|_| ())
        }
    });
    let failed = enables
        .buffer_unordered(32)
        .filter(|r| futures::future::ready(r.is_err()))
        .count()
        .await;
    println!(
        "enabled {n} consoles in {:?} ({failed} failed)",
        t.elapsed()
    );

    let before = etcd_requests(&rig.etcd).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let rate = (etcd_requests(&rig.etcd).await - before) / 10.0;
    println!("steady state: {rate:.1} etcd requests/s (the whole rig etcd, other tests included)");

    let mut any = cluster.client(1).await;
    let consoles = any
        .list_consoles(pb::ListConsolesRequest {})
        .await
        .unwrap()
        .into_inner()
        .consoles;
    let victim = (0..3)
        .max_by_key(|i| {
            consoles
                .iter()
                .filter(|c| c.owner == cluster.replicas[*i].id)
                .count()
        })
        .unwrap();
    let victim_id = cluster.replicas[victim].id.clone();
    let moving = consoles.iter().filter(|c| c.owner == victim_id).count();
    let mut survivor = cluster.client((victim + 1) % 3).await;
    let killed = Instant::now();
    cluster.signal(victim, nix::sys::signal::Signal::SIGKILL);
    cluster.wait(victim);
    loop {
        let all = survivor
            .list_consoles(pb::ListConsolesRequest {})
            .await
            .unwrap()
            .into_inner()
            .consoles;
        let moved = all
            .iter()
            // RUNNING, or FAILED with the port open (the BMC is unreachable).
            .filter(|c| c.owner != victim_id && c.port != 0 && !c.url.is_empty())
            .count();
        if moved == n {
            let mut accepting = 0;
            for c in &all {
                accepting += usize::from(accepts(c).await);
            }
            if accepting == n {
                break;
            }
        }
        assert!(
            killed.elapsed() < Duration::from_secs(120),
            "takeover incomplete: {moved}/{n}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "kill -9 of {victim_id} ({moving} of {n} consoles): every console accepting on a survivor after {:?} (TTL {TTL:?})",
        killed.elapsed()
    );
}

/// Sum of etcd's `grpc_server_handled_total` (every finished gRPC call).
async fn etcd_requests(endpoint: &str) -> f64 {
    let addr = endpoint.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    body.lines()
        .filter(|l| l.starts_with("grpc_server_handled_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A rig of its own with a 3-member etcd cluster (rig-up.sh with
/// `RIG_ETCD_MEMBERS=3`), stopped by rig-down.sh when dropped.
struct Rig3 {
    script_dir: PathBuf,
    run_dir: PathBuf,
    /// `etcdK` → (pid, start time from /proc/<pid>/stat).
    etcd_pids: Vec<(String, i32, u64)>,
}

const RIG3_BASE_PORT: &str = "33000";

impl Rig3 {
    fn up() -> (Self, Rig) {
        let script_dir = std::env::var_os("PORTHOLE_RIG_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/rig"));
        let run_dir = std::env::temp_dir().join(format!("ha-rig3-{}", std::process::id()));
        let mut guard = Self {
            script_dir,
            run_dir,
            etcd_pids: Vec::new(),
        };
        let out = guard
            .script("rig-up.sh")
            .env("RIG_ETCD_MEMBERS", "3")
            .env("RIG_BMCS", "1")
            .env("RIG_BASE_PORT", RIG3_BASE_PORT)
            .output()
            .expect("rig-up.sh");
        assert!(
            out.status.success(),
            "rig-up.sh: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(guard.run_dir.join("rig.json")).expect("rig.json"),
        )
        .expect("JSON");
        let endpoints: Vec<&str> = json["etcd"]["endpoints"]
            .as_array()
            .expect("endpoints")
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect();
        assert_eq!(endpoints.len(), 3, "{endpoints:?}");
        let pids = std::fs::read_to_string(guard.run_dir.join("pids")).expect("pids");
        for line in pids.lines() {
            let mut w = line.split_whitespace();
            let (Some(name), Some(pid)) = (w.next(), w.next()) else {
                continue;
            };
            if name.starts_with("etcd") {
                let pid: i32 = pid.parse().expect("pid");
                let start = start_time(pid).expect("etcd member running");
                guard.etcd_pids.push((name.to_owned(), pid, start));
            }
        }
        assert_eq!(guard.etcd_pids.len(), 3, "{pids}");
        let rig = Rig {
            etcd: endpoints.join(","),
            bmc: json["bmcs"][0].clone(),
            run_dir: guard.run_dir.clone(),
        };
        (guard, rig)
    }

    fn script(&self, name: &str) -> Command {
        let mut c = Command::new(self.script_dir.join(name));
        c.env("RIG_RUN_DIR", &self.run_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// Signal member `name`'s process group, if its pid is still the
    /// process rig-up.sh started (same start time).
    fn signal(&self, name: &str, sig: nix::sys::signal::Signal) -> bool {
        let (_, pid, start) = self
            .etcd_pids
            .iter()
            .find(|(n, ..)| n == name)
            .expect("member");
        if start_time(*pid) != Some(*start) {
            return false;
        }
        nix::sys::signal::killpg(nix::unistd::Pid::from_raw(*pid), sig).is_ok()
    }
}

impl Drop for Rig3 {
    fn drop(&mut self) {
        // A stopped member would ignore rig-down's SIGTERM until its SIGKILL.
        for (name, ..) in self.etcd_pids.clone() {
            self.signal(&name, nix::sys::signal::Signal::SIGCONT);
        }
        match self.script("rig-down.sh").output() {
            Ok(o) if o.status.success() => {
                let _ = std::fs::remove_dir_all(&self.run_dir);
            }
            Ok(o) => eprintln!(
                "rig-down.sh failed (logs in {}): {}",
                self.run_dir.display(),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("rig-down.sh: {e}"),
        }
    }
}

/// Field 22 of /proc/<pid>/stat (start time in clock ticks).
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count from its ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// The etcd member that leads the cluster now.
fn etcd_leader(endpoints: &str) -> Option<usize> {
    let out = Command::new("etcdctl")
        .args(["--endpoints", endpoints, "endpoint", "status", "-w", "json"])
        .env("ETCDCTL_API", "3")
        .output()
        .ok()?;
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let eps: Vec<&str> = endpoints.split(',').collect();
    status.as_array()?.iter().find_map(|s| {
        let leader = s["Status"]["leader"].as_u64()?;
        let me = s["Status"]["header"]["member_id"].as_u64()?;
        let endpoint = s["Endpoint"].as_str()?;
        (leader == me)
            .then(|| eps.iter().position(|e| *e == endpoint))
            .flatten()
    })
}

/// One node-side connection and one viewer: type a token and wait (bounded)
/// until the node reads it.
async fn type_and_see(
    viewer: &mut TcpStream,
    node: &mut TcpStream,
    seen: &mut Vec<u8>,
    token: &str,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    viewer
        .write_all(format!("{token}\r").as_bytes())
        .await
        .expect("viewer write");
    loop {
        if String::from_utf8_lossy(seen).contains(token) {
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "{token} never reached the node: {:?}",
            String::from_utf8_lossy(seen)
        );
        let mut buf = [0u8; 4096];
        if let Ok(r) = tokio::time::timeout(left, node.read(&mut buf)).await {
            let n = r.expect("node read");
            assert!(n > 0, "node side closed");
            seen.extend_from_slice(&buf[..n]);
        }
    }
}

/// The viewer's connection is still open (no EOF, no error; the console may
/// echo nothing, so a read that times out is fine).
async fn still_open(viewer: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    match tokio::time::timeout(Duration::from_millis(1), viewer.read(&mut buf)).await {
        Err(_) => true,
        Ok(Ok(n)) => n > 0,
        Ok(Err(_)) => false,
    }
}

/// Against a 3-member etcd cluster of its own: (a) one member killed
/// (SIGKILL of the leader) interrupts no console; (b) every member stopped
/// (SIGSTOP) → no replica serves within the TTL; members continued
/// (SIGCONT) → the console is served again on the same port without a
/// restart and typing reaches the node.
#[tokio::test]
#[ignore = "known failure (issue 3): a keep-alive stream on the killed member, or a leader \
            election, ends the replica's lease early, and requests still go to the dead member; \
            run with --ignored to reproduce"]
async fn three_member_cluster_survives_one_member_and_fences_without_quorum() {
    let Some(_shared) = rig() else { return };
    let t0 = Instant::now();
    let (rig3, rig) = Rig3::up();
    eprintln!("rig3 up after {:?}", t0.elapsed());
    let cluster = Cluster::start(&rig, "cluster3", "31520:31530", 2);
    let mut c0 = cluster.client(0).await;
    let con = c0
        .enable_console(enable_request(&rig))
        .await
        .expect("enable")
        .into_inner();
    assert_eq!(con.state, pb::ConsoleState::Running as i32, "{con:?}");
    let port = con.port as u16;
    let checker = Checker::start(port);
    let served_by = listening(port);
    assert_eq!(served_by.len(), 1, "{served_by:?}");

    let hc = &rig.bmc["host_console"];
    let node_addr = format!(
        "{}:{}",
        hc["host"].as_str().unwrap(),
        hc["port"].as_u64().unwrap()
    );
    let mut node = TcpStream::connect(&node_addr).await.expect("host console");
    let mut viewer = TcpStream::connect((con.host.as_str(), port))
        .await
        .expect("console port");
    // The first SOL packet of a new session can be dropped: a "\r" primer,
    // and the first token is typed again until it arrives.
    viewer.write_all(b"\r").await.unwrap();
    let mut seen = Vec::new();
    let primed = Instant::now();
    let mut first = 0;
    loop {
        first += 1;
        let attempt = tokio::time::timeout(
            Duration::from_millis(800),
            type_and_see(
                &mut viewer,
                &mut node,
                &mut seen,
                "c3-first",
                Duration::from_secs(1),
            ),
        )
        .await;
        if attempt.is_ok() {
            break;
        }
        assert!(
            primed.elapsed() < Duration::from_secs(15),
            "typing never reached the node after {first} tries: {:?}",
            String::from_utf8_lossy(&seen)
        );
        viewer.write_all(b"\r").await.unwrap();
    }
    eprintln!("typing reached the node after {:?}", primed.elapsed());

    // (a) Kill the leader (the harder case: an election follows).
    let leader = etcd_leader(&rig.etcd).unwrap_or(0);
    let victim = format!("etcd{leader}");
    let killed_at = Instant::now();
    assert!(
        rig3.signal(&victim, nix::sys::signal::Signal::SIGKILL),
        "{victim} was not the recorded process"
    );
    eprintln!("SIGKILL {victim} (the leader)");
    let mut i = 0;
    while killed_at.elapsed() < Duration::from_secs(5) {
        i += 1;
        let token = format!("c3-a{i}-");
        type_and_see(
            &mut viewer,
            &mut node,
            &mut seen,
            &token,
            Duration::from_secs(3),
        )
        .await;
        assert!(still_open(&mut viewer).await, "viewer disconnected");
        assert_eq!(listening(port), served_by, "the console's listener moved");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "one member killed: {i} keystroke rounds reached the node over {:?}, listener stayed on {served_by:?}",
        killed_at.elapsed()
    );
    let mut c = cluster.client(1).await;
    let now = get(&mut c).await.expect("Get with 2 of 3 members");
    assert_eq!(
        (now.owner.as_str(), now.port),
        (con.owner.as_str(), con.port)
    );

    // (b) Stop the remaining members: no quorum, no leader.
    drop(viewer);
    drop(node);
    let rest: Vec<String> = (0..3)
        .map(|k| format!("etcd{k}"))
        .filter(|n| *n != victim)
        .collect();
    let stopped_at = Instant::now();
    for n in &rest {
        assert!(rig3.signal(n, nix::sys::signal::Signal::SIGSTOP), "{n}");
    }
    while !listening(port).is_empty() {
        assert!(
            stopped_at.elapsed() < TTL,
            "still serving without etcd: {:?}",
            listening(port)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let fenced = stopped_at.elapsed();
    eprintln!("all members stopped: nobody listens after {fenced:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(listening(port).is_empty(), "nobody serves while stopped");

    for n in &rest {
        assert!(rig3.signal(n, nix::sys::signal::Signal::SIGCONT), "{n}");
    }
    let back_at = Instant::now();
    let again = served_elsewhere(&mut c, "", Duration::from_secs(15)).await;
    eprintln!(
        "members continued: served by {} after {:?}",
        again.owner,
        back_at.elapsed()
    );
    assert_eq!(again.port, con.port, "same port");
    typing_reaches_the_node(&rig, &again).await;
    eprintln!(
        "typing reached the node again after {:?}",
        back_at.elapsed()
    );
    checker.finish().await;
    drop(cluster);
    drop(rig3);
    eprintln!("whole test {:?}", t0.elapsed());
}
