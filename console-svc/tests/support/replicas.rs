//! `console-svc` replica processes (the built binary) against the rig's
//! etcd, for the multi-replica suites (`ha_rig`, `cluster_api`): the rig
//! (etcd and its BMCs, leased with the shared `flock`), a [`Cluster`] of
//! replicas on loopback addresses of their own as [`Options`] says (start,
//! through proxies, signal, stop; logs kept when a test fails), gRPC and
//! health clients, Enable/Get requests and etcdctl under the cluster's
//! prefix. Console ports are leased free ([`PortLease`]); every BMC action
//! is recorded and judged ([`crate::bmc_recorder`]) when the cluster is
//! dropped: a test fails if a replica took one past its lease deadline.
//! Included by tests with `#[path]`, beside `common`, `etcd_proxy` and
//! `bmc_recorder` at the crate root.
#![allow(dead_code)]

use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::Flock;
use nix::sys::signal::Signal;
use pb::console_service_client::ConsoleServiceClient;
use porthole_proto::console::v1 as pb;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::bmc_recorder::{BmcAction, Mark, PortLease, Recorder};
use crate::common;
use crate::etcd_proxy::Proxy;

pub type Client = ConsoleServiceClient<tonic::transport::Channel>;

/// The rig: its etcd endpoint(s) and BMCs.
pub struct Rig {
    /// etcd client URL(s), comma-separated.
    pub etcd: String,
    pub bmcs: Vec<serde_json::Value>,
    pub run_dir: PathBuf,
}

impl Rig {
    /// The rig of `PORTHOLE_RIG_JSON` (its first etcd member); `None` skips
    /// the test (see [`common::rig_json`]).
    pub fn load(suite: &str) -> Option<Self> {
        let rig = common::rig_json(suite)?;
        Some(Self {
            etcd: rig["etcd"]["endpoints"][0]
                .as_str()
                .expect("etcd")
                .to_owned(),
            bmcs: rig["bmcs"].as_array().expect("bmcs").clone(),
            run_dir: rig["run_dir"].as_str().expect("run_dir").into(),
        })
    }

    /// BMC `i` (the last one when the rig has fewer).
    pub fn bmc(&self, i: usize) -> &serde_json::Value {
        &self.bmcs[i.min(self.bmcs.len() - 1)]
    }

    /// BMC `i` for this test alone, shared with the other rig tests' pool.
    pub async fn lease_bmc(&self, i: usize) -> Flock<File> {
        let name = self.bmc(i)["name"].as_str().expect("bmc name");
        let path = self
            .run_dir
            .join("porthole-test-locks")
            .join(format!("{name}.lock"));
        common::lease_lock(&path).await
    }
}

/// The console ports of a scenario.
#[derive(Clone, Copy, Debug)]
pub enum Ports {
    /// This many, leased free (see [`PortLease`]).
    Free(u16),
    /// A fixed `[start, end)` (the benchmark's thousand).
    Fixed(u16, u16),
}

/// How the replicas of one scenario run. Each suite has its own defaults.
pub struct Options {
    /// The cluster-wide console port range (`PORTHOLE_CONSOLE_SVC_CONSOLE_PORT_RANGE`).
    pub ports: Ports,
    /// The serial backend: `native` or `socat`.
    pub backend: &'static str,
    /// The replicas' lease TTL.
    pub ttl: Duration,
    /// Claim delay per placement rank.
    pub claim_step: Duration,
    /// How long Enable waits for a replica to serve.
    pub enable_timeout: Duration,
    /// Replica `i` listens (gRPC and consoles) on 127.0.0.`first_ip + i`.
    pub first_ip: u8,
    /// The etcd prefix is `/porthole-test/{etcd_tag}{test}-{pid}/`.
    pub etcd_tag: &'static str,
    /// The replicas' logs go to `$TMPDIR/{dir_tag}{test}-{pid}`.
    pub dir_tag: &'static str,
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
    /// The console port range, leased for the cluster's life.
    pub ports: PortLease,
    /// Every BMC action, judged on drop.
    pub recorder: Recorder,
    bmc_password: String,
}

impl Cluster {
    /// `n` replicas on the rig's etcd.
    pub fn start(rig: &Rig, test: &str, opts: &Options, n: usize) -> Self {
        Self::start_via(rig, test, opts, &vec![rig.etcd.clone(); n])
    }

    /// One replica per etcd endpoint given (e.g. a proxy each).
    pub fn start_via(rig: &Rig, test: &str, opts: &Options, etcd: &[String]) -> Self {
        let pid = std::process::id();
        let prefix = format!("/porthole-test/{}{test}-{pid}/", opts.etcd_tag);
        let dir = std::env::temp_dir().join(format!("{}{test}-{pid}", opts.dir_tag));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("etcd.key"), "ab".repeat(32)).unwrap();
        let ips: Vec<String> = (0..etcd.len())
            .map(|i| format!("127.0.0.{}", usize::from(opts.first_ip) + i))
            .collect();
        let ports = match opts.ports {
            Ports::Free(n) => PortLease::free(n, &ips),
            Ports::Fixed(start, end) => PortLease::fixed(start, end),
        };
        let recorder = Recorder::start(&dir, &rig.etcd, &prefix, opts.ttl);
        let bmc_password = rig.bmc(0)["password_file"]
            .as_str()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|p| p.trim_end().to_owned())
            .unwrap_or_default();
        let mut cluster = Self {
            etcd: rig.etcd.clone(),
            ttl: opts.ttl,
            prefix,
            dir,
            replicas: Vec::new(),
            ports,
            recorder,
            bmc_password,
        };
        for (i, endpoint) in etcd.iter().enumerate() {
            let ip = ips[i].clone();
            let grpc = free_addr(&ip);
            let mut r = Replica {
                id: format!("replica-{i}"),
                ip,
                grpc,
                child: None,
            };
            cluster
                .recorder
                .replica_log(&r.id, cluster.dir.join(format!("{}.log", r.id)));
            r.child = Some(spawn(endpoint, &r, &cluster, opts));
            cluster.replicas.push(r);
        }
        cluster
    }

    /// `n` replicas, each reaching etcd through a proxy of its own that the
    /// test can cut (`proxies[i]` is replica `i`'s).
    pub async fn start_behind_proxies(
        rig: &Rig,
        test: &str,
        opts: &Options,
        n: usize,
    ) -> (Vec<Proxy>, Self) {
        let mut proxies = Vec::new();
        for _ in 0..n {
            proxies.push(Proxy::start(&rig.etcd).await);
        }
        let via: Vec<String> = proxies.iter().map(|p| p.addr.clone()).collect();
        (proxies, Self::start_via(rig, test, opts, &via))
    }

    /// The console API of replica `i` (waits up to 20 s for it to listen).
    pub async fn client(&self, i: usize) -> Client {
        ConsoleServiceClient::new(self.channel(i).await)
    }

    /// grpc.health.v1 of replica `i` for the console service.
    pub async fn health(&self, i: usize) -> ServingStatus {
        let mut health = HealthClient::new(self.channel(i).await);
        let req = HealthCheckRequest {
            service: "porthole.console.v1.ConsoleService".into(),
        };
        match health.check(req).await {
            Ok(r) => r.into_inner().status(),
            Err(_) => ServingStatus::Unknown,
        }
    }

    /// Wait until replica `i` reports `want` (within 10 s).
    pub async fn until_health(&self, i: usize, want: ServingStatus) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = self.health(i).await;
            if now == want {
                return;
            }
            assert!(Instant::now() < deadline, "replica {i} stays {now:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn channel(&self, i: usize) -> tonic::transport::Channel {
        let url = format!("http://{}", self.replicas[i].grpc);
        let endpoint = tonic::transport::Endpoint::from_shared(url).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match endpoint.connect().await {
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
            .unwrap_or_else(|| panic!("no replica {:?}", con.owner))
    }

    /// Replica `i`'s process id.
    pub fn pid(&self, i: usize) -> i32 {
        self.replicas[i].child.as_ref().expect("running").id() as i32
    }

    pub fn signal(&self, i: usize, sig: Signal) {
        let child = self.replicas[i].child.as_ref().expect("running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let mark = match sig {
            Signal::SIGSTOP => Some(Mark::Paused),
            Signal::SIGCONT => Some(Mark::Continued),
            Signal::SIGKILL => Some(Mark::Killed),
            _ => None,
        };
        // Noted before a pause or kill (it may take effect at once), after
        // a continue.
        if let Some(m @ (Mark::Paused | Mark::Killed)) = mark {
            self.recorder.mark(&self.replicas[i].id, m);
        }
        nix::sys::signal::kill(pid, sig).unwrap();
        if mark == Some(Mark::Continued) {
            self.recorder.mark(&self.replicas[i].id, Mark::Continued);
        }
    }

    /// Cut (`open` false) or restore replica `i`'s way to etcd, its proxy.
    pub fn set_etcd_open(&self, proxy: &Proxy, i: usize, open: bool) {
        let id = &self.replicas[i].id;
        if !open {
            self.recorder.mark(id, Mark::Cut);
        }
        proxy.set_open(open);
        if open {
            self.recorder.mark(id, Mark::Restored);
        }
    }

    /// Addresses of this cluster's replicas listening on `port` (other
    /// programs' listeners, on any address, are not counted).
    pub fn listeners(&self, port: u16) -> Vec<String> {
        let out = Command::new("ss")
            .args(["-Hltn", &format!("sport = :{port}")])
            .output()
            .expect("ss");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().nth(3).map(str::to_owned))
            .filter(|a| {
                self.replicas
                    .iter()
                    .any(|r| a == &format!("{}:{port}", r.ip))
            })
            .collect()
    }

    /// The cluster's BMC actions so far, judged: fails the test if any was
    /// taken by a replica past its lease deadline (see [`Recorder`]).
    pub fn assert_bmc_actions_safe(&self) -> Vec<BmcAction> {
        match self.recorder.judge(&self.bmc_password, true) {
            Ok(actions) => actions,
            Err(e) => panic!("{e}"),
        }
    }

    /// The pids a replica's process table records (socat, ipmitool).
    pub fn recorded_children(&self, i: usize) -> Vec<i32> {
        let dir = self.dir.join(&self.replicas[i].id);
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect()
    }

    /// Reap replica `i` (after a signal that ends it).
    pub fn wait(&mut self, i: usize) {
        if let Some(mut c) = self.replicas[i].child.take() {
            let _ = c.wait();
        }
    }

    /// Until replica `i` has exited (after a SIGTERM), polling so the test's
    /// runtime keeps running (its gRPC connections must answer the server's
    /// GOAWAY for a graceful shutdown to finish); bounded.
    pub async fn exited(&mut self, i: usize, within: std::time::Duration) {
        let Some(mut child) = self.replicas[i].child.take() else {
            return;
        };
        let since = std::time::Instant::now();
        while child.try_wait().expect("try_wait").is_none() {
            if since.elapsed() > within {
                let _ = child.kill();
                let _ = child.wait();
                panic!("replica {i} did not exit within {within:?} of its SIGTERM");
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// kill -9 replica `i` and reap it.
    pub fn kill_9(&mut self, i: usize) {
        self.signal(i, Signal::SIGKILL);
        self.wait(i);
    }

    /// `etcdctl put` under this cluster's prefix.
    pub fn etcd_put(&self, key: &str, value: &str) {
        let key = format!("{}{key}", self.prefix);
        etcdctl(&self.etcd, &["put", &key, value]);
    }

    /// `etcdctl get` under this cluster's prefix: the value, if any.
    pub fn etcd_get(&self, key: &str) -> Option<String> {
        let key = format!("{}{key}", self.prefix);
        let out = etcdctl(&self.etcd, &["get", "--print-value-only", &key]);
        let value = out.trim_end_matches('\n');
        (!value.is_empty()).then(|| value.to_owned())
    }

    /// Every key and value under this cluster's prefix, as etcdctl prints
    /// them.
    pub fn etcd_dump(&self) -> String {
        etcdctl(&self.etcd, &["get", "--prefix", &self.prefix])
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for r in &mut self.replicas {
            if let Some(mut c) = r.child.take() {
                // A stopped replica dies of SIGKILL too; continue it anyway.
                let pid = nix::unistd::Pid::from_raw(c.id() as i32);
                let _ = nix::sys::signal::kill(pid, Signal::SIGCONT);
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        // Every scenario: no BMC action by a replica past its deadline
        // (judged, and shown, even when the test failed for another reason).
        let judged = self.recorder.judge(&self.bmc_password, false);
        if let (Err(e), true) = (&judged, std::thread::panicking()) {
            eprintln!("{e}");
        }
        etcdctl(&self.etcd, &["del", "--prefix", &self.prefix]);
        if judged.is_err() || std::env::var_os("HA_KEEP_LOGS").is_some() {
            eprintln!(
                "replica logs and bmc-actions.log kept in {} (HA_KEEP_LOGS, or a BMC action past a deadline)",
                self.dir.display()
            );
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
        if let (Err(e), false) = (judged, std::thread::panicking()) {
            panic!("{e}");
        }
    }
}

/// etcdctl (API v3) on `endpoint` with `args`: its stdout.
fn etcdctl(endpoint: &str, args: &[&str]) -> String {
    let out = Command::new("etcdctl")
        .args(["--endpoints", endpoint])
        .args(args)
        .env("ETCDCTL_API", "3")
        .stderr(Stdio::null())
        .output()
        .expect("etcdctl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn free_addr(ip: &str) -> SocketAddr {
    let l = std::net::TcpListener::bind(format!("{ip}:0")).unwrap();
    l.local_addr().unwrap()
}

fn spawn(etcd: &str, r: &Replica, cluster: &Cluster, opts: &Options) -> Child {
    // PORTHOLE_TEST_CONSOLE_SVC_BIN: another build (e.g. one without a fix).
    let bin = std::env::var_os("PORTHOLE_TEST_CONSOLE_SVC_BIN")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_console-svc").into());
    let dir = &cluster.dir;
    let log = File::create(dir.join(format!("{}.log", r.id))).unwrap();
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("PORTHOLE_LOG", "info,console_svc=debug")
        .env("PORTHOLE_CONSOLE_SVC_SERVICE_LISTEN", r.grpc.to_string())
        .env("PORTHOLE_CONSOLE_SVC_SERVICE_REPLICA_ID", &r.id)
        .env("PORTHOLE_CONSOLE_SVC_CONSOLE_SOCAT_ADDRESS", &r.ip)
        .env(
            "PORTHOLE_CONSOLE_SVC_CONSOLE_PORT_RANGE",
            cluster.ports.range(),
        )
        .env("PORTHOLE_CONSOLE_SVC_CONSOLE_BACKEND", opts.backend)
        .env(
            "PORTHOLE_CONSOLE_SVC_CONSOLE_IPMITOOL_PATH",
            cluster.recorder.wrapper(dir, &r.id),
        )
        .env(
            "PORTHOLE_CONSOLE_SVC_CONSOLE_TERMINAL_PID_DIR",
            dir.join(&r.id),
        )
        .env("PORTHOLE_CONSOLE_SVC_ETCD_ENDPOINTS", etcd)
        .env("PORTHOLE_CONSOLE_SVC_ETCD_PREFIX", &cluster.prefix)
        .env("PORTHOLE_CONSOLE_SVC_ETCD_LEASE_TTL", ms(opts.ttl))
        .env("PORTHOLE_CONSOLE_SVC_ETCD_CLAIM_STEP", ms(opts.claim_step))
        .env(
            "PORTHOLE_CONSOLE_SVC_ETCD_SECRET_KEY_FILE",
            dir.join("etcd.key"),
        )
        .env(
            "PORTHOLE_CONSOLE_SVC_ETCD_ENABLE_TIMEOUT",
            ms(opts.enable_timeout),
        )
        .stdout(Stdio::null())
        .stderr(log);
    // The rmcp backend's UDP mode for a run of the suite (shared or per-console).
    if let Some(mode) = std::env::var_os("PORTHOLE_TEST_RMCP_UDP") {
        cmd.env("PORTHOLE_CONSOLE_SVC_RMCP_UDP", mode);
    }
    cmd.spawn().expect("console-svc binary")
}

/// Enable `node`'s serial console on rig BMC `bmc`.
pub fn enable_request(rig: &Rig, bmc: usize, node: &str) -> pb::EnableConsoleRequest {
    let b = rig.bmc(bmc);
    let password = std::fs::read_to_string(b["password_file"].as_str().unwrap()).unwrap();
    pb::EnableConsoleRequest {
        node_id: node.into(),
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

/// GetConsole for `node`.
pub async fn get(c: &mut Client, node: &str) -> Result<pb::Console, tonic::Status> {
    let req = pb::GetConsoleRequest {
        node_id: node.into(),
    };
    c.get_console(req).await.map(|r| r.into_inner())
}
