//! What every HA scenario builds on: the rig (etcd and one leased BMC), a
//! cluster of `console-svc` replicas (start, signal, stop), the checker
//! that fails on two listeners at once, and small probes of who serves.

use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::fcntl::Flock;
use nix::sys::signal::Signal;
use pb::console_service_client::ConsoleServiceClient;
use porthole_proto::console::v1 as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common;
use crate::etcd_proxy::Proxy;

pub const TTL: Duration = Duration::from_secs(3);

pub type Client = ConsoleServiceClient<tonic::transport::Channel>;

pub struct Rig {
    pub etcd: String,
    pub bmc: serde_json::Value,
    pub run_dir: PathBuf,
}

pub fn rig() -> Option<Rig> {
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
pub async fn lease_bmc(rig: &Rig) -> Flock<File> {
    let name = rig.bmc["name"].as_str().expect("bmc name");
    let path = rig
        .run_dir
        .join("porthole-test-locks")
        .join(format!("{name}.lock"));
    common::lease_lock(&path).await
}

/// One console-svc process.
pub struct Replica {
    pub id: String,
    pub ip: String,
    pub grpc: SocketAddr,
    child: Option<Child>,
}

pub struct Cluster {
    pub etcd: String,
    /// The replicas' lease TTL.
    pub ttl: Duration,
    pub prefix: String,
    dir: PathBuf,
    pub replicas: Vec<Replica>,
}

impl Cluster {
    pub fn start(rig: &Rig, test: &str, ports: &str, n: usize) -> Self {
        Self::start_via(rig, test, ports, &vec![rig.etcd.clone(); n])
    }

    /// Like [`Self::start`] with a lease TTL other than [`TTL`].
    pub fn start_with_ttl(rig: &Rig, test: &str, ports: &str, n: usize, ttl: Duration) -> Self {
        Self::start_with(rig, test, ports, &vec![rig.etcd.clone(); n], ttl)
    }

    /// One replica per etcd endpoint given (e.g. a proxy each).
    pub fn start_via(rig: &Rig, test: &str, ports: &str, etcd: &[String]) -> Self {
        Self::start_with(rig, test, ports, etcd, TTL)
    }

    fn start_with(rig: &Rig, test: &str, ports: &str, etcd: &[String], ttl: Duration) -> Self {
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
                r.child = Some(spawn(&etcd[i], &r, &prefix, &dir, ports, ttl));
                r
            })
            .collect();
        Self {
            etcd: rig.etcd.clone(),
            ttl,
            prefix,
            dir,
            replicas,
        }
    }

    /// Two replicas, each reaching etcd through a proxy of its own that the
    /// test can cut (`proxies[i]` is replica `i`'s).
    pub async fn start_behind_proxies(rig: &Rig, test: &str, ports: &str) -> ([Proxy; 2], Self) {
        let proxies = [Proxy::start(&rig.etcd).await, Proxy::start(&rig.etcd).await];
        let via: Vec<String> = proxies.iter().map(|p| p.addr.clone()).collect();
        let cluster = Self::start_via(rig, test, ports, &via);
        (proxies, cluster)
    }

    pub async fn client(&self, i: usize) -> Client {
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

    /// The index of the replica that owns `con`.
    pub fn owner_of(&self, con: &pb::Console) -> usize {
        self.replicas
            .iter()
            .position(|r| r.id == con.owner)
            .expect("owner")
    }

    pub fn signal(&mut self, i: usize, sig: Signal) {
        let child = self.replicas[i].child.as_mut().expect("running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, sig).unwrap();
    }

    pub fn wait(&mut self, i: usize) {
        if let Some(mut c) = self.replicas[i].child.take() {
            let _ = c.wait();
        }
    }

    /// kill -9 replica `i` and reap it.
    pub fn kill_9(&mut self, i: usize) {
        self.signal(i, Signal::SIGKILL);
        self.wait(i);
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
        if std::env::var_os("HA_KEEP_LOGS").is_some() {
            eprintln!("replica logs kept in {} (HA_KEEP_LOGS)", self.dir.display());
        } else if std::thread::panicking() {
            // The replicas' logs tell why: keep them, and show them.
            eprintln!("replica logs kept in {}", self.dir.display());
            for r in &self.replicas {
                let log = self.dir.join(format!("{}.log", r.id));
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!("--- last lines of {}:", log.display());
                for line in tail.into_iter().rev() {
                    eprintln!("{line}");
                }
            }
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn free_addr(ip: &str) -> SocketAddr {
    let l = std::net::TcpListener::bind(format!("{ip}:0")).unwrap();
    l.local_addr().unwrap()
}

fn spawn(
    etcd: &str,
    r: &Replica,
    prefix: &str,
    dir: &std::path::Path,
    ports: &str,
    ttl: Duration,
) -> Child {
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
        .env("PORTHOLE_ETCD_LEASE_TTL", format!("{}s", ttl.as_secs()))
        .env("PORTHOLE_ETCD_SECRET_KEY_FILE", dir.join("etcd.key"))
        .env("PORTHOLE_ETCD_ENABLE_TIMEOUT", "4s")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("console-svc binary")
}

pub fn enable_request(rig: &Rig) -> pb::EnableConsoleRequest {
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

/// Enable the rig BMC's console (node `ha-node`) through `c`.
pub async fn enable(c: &mut Client, rig: &Rig) -> pb::Console {
    c.enable_console(enable_request(rig))
        .await
        .expect("enable")
        .into_inner()
}

/// [`enable`], and the console is Running when Enable returns.
pub async fn enable_running(c: &mut Client, rig: &Rig) -> pb::Console {
    let con = enable(c, rig).await;
    assert_eq!(con.state, pb::ConsoleState::Running as i32, "{con:?}");
    con
}

/// Samples who listens on the console port; counts overlaps.
pub struct Checker {
    stop: Arc<AtomicBool>,
    overlaps: Arc<AtomicUsize>,
    samples: Arc<AtomicUsize>,
}

impl Checker {
    pub fn start(port: u16) -> Self {
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
    pub async fn finish(self) {
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
pub fn listening(port: u16) -> Vec<String> {
    let out = Command::new("ss")
        .args(["-Hltn", &format!("sport = :{port}")])
        .output()
        .expect("ss");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_owned))
        .collect()
}

/// Sample [`listening`] every `poll` until `done` holds for the sample;
/// fails with `why` (and who listens) once `within` has passed since
/// `since`.
async fn until_listeners(
    port: u16,
    since: Instant,
    within: Duration,
    poll: Duration,
    done: impl Fn(&[String]) -> bool,
    why: &str,
) {
    loop {
        let listeners = listening(port);
        if done(&listeners) {
            return;
        }
        assert!(since.elapsed() < within, "{why}: {listeners:?}");
        tokio::time::sleep(poll).await;
    }
}

/// Wait (sampling every 5 ms, for the handover gap) until nothing listens
/// on `port` under the address `ip` any more.
pub async fn until_let_go(port: u16, ip: &str, within: Duration) {
    let not_ip = |l: &[String]| !l.iter().any(|a| a.starts_with(ip));
    let poll = Duration::from_millis(5);
    until_listeners(
        port,
        Instant::now(),
        within,
        poll,
        not_ip,
        "the owner never let go",
    )
    .await;
}

/// Wait (sampling every 10 ms) until nobody listens on `port`, which must
/// happen less than `within` after `since` (etcd was lost then).
pub async fn until_nobody_listens(port: u16, since: Instant, within: Duration) {
    let nobody = |l: &[String]| l.is_empty();
    let poll = Duration::from_millis(10);
    until_listeners(
        port,
        since,
        within,
        poll,
        nobody,
        "still serving without etcd",
    )
    .await;
}

/// Wait `quiet`, then nobody listens on `port` still.
pub async fn still_nobody_listens_after(port: u16, quiet: Duration, why: &str) {
    tokio::time::sleep(quiet).await;
    assert!(listening(port).is_empty(), "{why}");
}

pub async fn get(c: &mut Client) -> Option<pb::Console> {
    let req = pb::GetConsoleRequest {
        node_id: "ha-node".into(),
    };
    c.get_console(req).await.ok().map(|r| r.into_inner())
}

/// Every console, as ListConsoles on `c` has them.
pub async fn list(c: &mut Client) -> Vec<pb::Console> {
    c.list_consoles(pb::ListConsolesRequest {})
        .await
        .unwrap()
        .into_inner()
        .consoles
}

/// Wait until a replica other than `not` serves the console; returns it.
pub async fn served_elsewhere(c: &mut Client, not: &str, within: Duration) -> pb::Console {
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

pub async fn accepts(con: &pb::Console) -> bool {
    TcpStream::connect((con.host.as_str(), con.port as u16))
        .await
        .is_ok()
}

/// The node side of the rig BMC's serial line, and a viewer on `con`'s
/// port, connected in that order.
pub async fn connect_node_and_viewer(rig: &Rig, con: &pb::Console) -> (TcpStream, TcpStream) {
    let hc = &rig.bmc["host_console"];
    let node_addr = format!(
        "{}:{}",
        hc["host"].as_str().unwrap(),
        hc["port"].as_u64().unwrap()
    );
    let node = TcpStream::connect(node_addr).await.expect("host console");
    let viewer = TcpStream::connect((con.host.as_str(), con.port as u16))
        .await
        .expect("console port");
    (node, viewer)
}

/// Type through the console and read it on the node side.
pub async fn typing_reaches_the_node(rig: &Rig, con: &pb::Console) {
    let (mut node, mut viewer) = connect_node_and_viewer(rig, con).await;
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

pub async fn etcd_dump(etcd: &str, prefix: &str) -> String {
    let out = tokio::process::Command::new("etcdctl")
        .args(["--endpoints", etcd, "get", "--prefix", prefix])
        .env("ETCDCTL_API", "3")
        .output()
        .await
        .expect("etcdctl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
