//! A `console-svc serve` process for one test: its own gRPC port, console
//! port range and `terminal_pid_dir`, its stderr captured, stopped by pid.
//!
//! ```text
//!  SvcOptions ──start()──▶ spawned ──health SERVING──▶ ready ──drop──▶ SIGTERM ──15s──▶ SIGKILL
//!                                                        │ kill9()            └─▶ recorded leftovers killed
//!                                                        └─▶ dead ──restart()──▶ ready (same dirs, same ports)
//! ```
//!
//! The binary is `$PORTHOLE_TEST_CONSOLE_SVC_BIN`, else `target/debug/console-svc`
//! beside this crate (scripts/test.sh builds it first).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use porthole_proto::console::v1::console_service_client::ConsoleServiceClient;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::ports::PortSlot;
use crate::procs::{self, Proc};

/// The binary under test, overridable for odd build layouts.
pub const BIN_ENV: &str = "PORTHOLE_TEST_CONSOLE_SVC_BIN";
/// console-svc's gRPC service name, as health and reflection report it.
pub const SERVICE_NAME: &str = "porthole.console.v1.ConsoleService";
/// A directory where each started console-svc leaves `<pid>` (holding its
/// start time) while it runs, so scripts/test.sh can stop what a killed test
/// run left behind.
pub const SVC_PIDS_ENV: &str = "PORTHOLE_TEST_SVC_PIDS";
/// A directory where each console-svc's whole stderr is saved when it is
/// dropped (`<temp dir name>.log`), for reading after a failed run.
pub const LOG_DIR_ENV: &str = "PORTHOLE_TEST_LOG_DIR";
/// How long a start may take before the test fails.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long SIGTERM may take before SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Native,
    Socat,
    /// Native RMCP+ SOL in console-svc (no ipmitool), always on.
    Rmcp,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Native => "native",
            Backend::Socat => "socat",
            Backend::Rmcp => "rmcp",
        }
    }
}

/// What to start: the backend, how many console ports, extra settings.
#[derive(Clone, Debug)]
pub struct SvcOptions {
    pub backend: Backend,
    /// Console ports in the range (1..=PortSlot::MAX_CONSOLE_PORTS).
    pub ports: u16,
    /// `(section, key, TOML literal)` added to the config file.
    pub settings: Vec<(String, String, String)>,
    /// `PORTHOLE_LOG` for the service.
    pub log_filter: String,
    /// Served over TLS: how the harness's own client connects.
    pub tls: Option<HarnessTls>,
}

/// The harness's client side of a TLS console-svc: the CA to trust and,
/// for mutual TLS, the certificate to present.
#[derive(Clone, Debug)]
pub struct HarnessTls {
    pub ca: PathBuf,
    pub identity: Option<crate::pki::Pair>,
}

/// The rmcp backend's `[rmcp] udp` for every test's console-svc
/// (`shared` or `per-console`; unset: console-svc's default), so the rmcp
/// suite runs in either mode.
pub const RMCP_UDP_ENV: &str = "PORTHOLE_TEST_RMCP_UDP";

impl SvcOptions {
    pub fn new(backend: Backend) -> Self {
        let mut settings = vec![(
            "console".into(),
            "retry_max_backoff".into(),
            "\"5s\"".into(),
        )];
        if let (Backend::Rmcp, Ok(mode)) = (backend, std::env::var(RMCP_UDP_ENV)) {
            settings.push(("rmcp".into(), "udp".into(), format!("{mode:?}")));
        }
        Self {
            backend,
            ports: 8,
            settings,
            log_filter: "info,console_svc=debug".into(),
            tls: None,
        }
    }

    /// Serve over TLS with `pki`'s server certificate; `mutual`: clients
    /// need a certificate signed by `pki`'s CA (the harness uses its client).
    pub fn tls(self, pki: &crate::pki::Pki, mutual: bool) -> Self {
        let lit = |p: &Path| format!("{:?}", p.display().to_string());
        let server = pki.server();
        let mut opts = self
            .set("service", "tls_cert_file", &lit(&server.cert))
            .set("service", "tls_key_file", &lit(&server.key));
        if mutual {
            opts = opts.set("service", "tls_client_ca_file", &lit(&pki.ca()));
        }
        opts.tls = Some(HarnessTls {
            ca: pki.ca(),
            identity: mutual.then(|| pki.client()),
        });
        opts
    }

    pub fn ports(mut self, n: u16) -> Self {
        self.ports = n;
        self
    }

    /// Set `[section] key = literal` (a TOML literal: `"5s"` with quotes, `16`).
    pub fn set(mut self, section: &str, key: &str, literal: &str) -> Self {
        self.settings
            .retain(|(s, k, _)| !(s == section && k == key));
        self.settings
            .push((section.into(), key.into(), literal.into()));
        self
    }

    pub fn log(mut self, filter: &str) -> Self {
        self.log_filter = filter.into();
        self
    }
}

/// A running (or killed) console-svc.
pub struct ConsoleSvc {
    opts: SvcOptions,
    slot: PortSlot,
    dir: tempfile::TempDir,
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
    /// Everything any run of this instance recorded or forked, for cleanup.
    seen: Mutex<Vec<Proc>>,
}

impl ConsoleSvc {
    /// Start a service with default options for `backend`.
    pub async fn start(backend: Backend) -> Result<ConsoleSvc> {
        Self::start_with(SvcOptions::new(backend)).await
    }

    pub async fn start_with(opts: SvcOptions) -> Result<ConsoleSvc> {
        let slot = PortSlot::lease(opts.ports)?;
        let dir = tempfile::Builder::new().prefix("porthole-svc-").tempdir()?;
        let mut svc = ConsoleSvc {
            opts,
            slot,
            dir,
            child: None,
            log: Arc::default(),
            seen: Mutex::default(),
        };
        svc.write_config()?;
        svc.spawn_and_wait().await?;
        Ok(svc)
    }

    /// Start again after [`ConsoleSvc::kill9`] or [`ConsoleSvc::stop`]:
    /// same config, ports and `terminal_pid_dir`.
    pub async fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("console-svc is still running");
        }
        self.spawn_and_wait().await
    }

    pub fn backend(&self) -> Backend {
        self.opts.backend
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// `https://` when served over TLS.
    pub fn grpc_url(&self) -> String {
        let scheme = match self.opts.tls {
            Some(_) => "https",
            None => "http",
        };
        format!("{scheme}://127.0.0.1:{}", self.slot.grpc_port())
    }

    pub fn grpc_port(&self) -> u16 {
        self.slot.grpc_port()
    }

    /// Console ports: `start..end`, end excluded (as configured).
    pub fn port_range(&self) -> (u16, u16) {
        self.slot.console_range(self.opts.ports)
    }

    pub fn pid_dir(&self) -> PathBuf {
        self.dir.path().join("pids")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("console-svc.toml")
    }

    /// A scratch directory that lives as long as this service.
    pub fn work_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Every stderr line so far, all runs.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().expect("log lock").clone()
    }

    pub async fn client(&self) -> Result<ConsoleServiceClient<Channel>> {
        Ok(ConsoleServiceClient::new(self.channel().await?))
    }

    pub async fn channel(&self) -> Result<Channel> {
        self.endpoint()?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .connect()
            .await
            .with_context(|| format!("connecting to console-svc at {}", self.grpc_url()))
    }

    /// The gRPC endpoint, with the harness's TLS settings if any.
    pub fn endpoint(&self) -> Result<Endpoint> {
        let mut ep = Endpoint::from_shared(self.grpc_url())?;
        if let Some(tls) = &self.opts.tls {
            ep = ep.tls_config(crate::pki::client_tls(&tls.ca, tls.identity.as_ref())?)?;
        }
        Ok(ep)
    }

    /// Live descendants of the service and the processes it recorded; also
    /// remembered for cleanup.
    pub fn processes(&self) -> Vec<Proc> {
        let mut all = procs::recorded(&self.pid_dir());
        if self.child.is_some() {
            all.extend(procs::descendants(self.pid()));
        }
        all.sort_by_key(|p| p.pid);
        all.dedup();
        self.seen
            .lock()
            .expect("seen lock")
            .extend(all.iter().cloned());
        all
    }

    /// `kill -9` the service and reap it; its children stay as they are.
    pub fn kill9(&mut self) -> Result<()> {
        let mut child = self.child.take().ok_or_else(|| anyhow!("not running"))?;
        self.processes();
        child.kill().context("kill -9 console-svc")?;
        child.wait()?;
        note_pid(child.id() as i32, false);
        Ok(())
    }

    /// SIGTERM, then SIGKILL after [`STOP_TIMEOUT`]; returns whether the
    /// service exited by itself within the bound, and its exit status.
    pub fn stop(&mut self) -> Result<(bool, std::process::ExitStatus)> {
        let mut child = self.child.take().ok_or_else(|| anyhow!("not running"))?;
        self.processes();
        let _forget = Forget(child.id() as i32);
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = std::time::Instant::now() + STOP_TIMEOUT;
        while std::time::Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                return Ok((true, status));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.kill()?;
        Ok((false, child.wait()?))
    }

    fn write_config(&self) -> Result<()> {
        let (start, end) = self.port_range();
        let pid_dir = self.pid_dir();
        let mut items: Vec<(String, String, String)> = vec![
            (
                "service".into(),
                "listen".into(),
                format!("\"127.0.0.1:{}\"", self.slot.grpc_port()),
            ),
            (
                "service".into(),
                "replica_id".into(),
                format!("\"test-{}\"", self.slot.grpc_port()),
            ),
            (
                "console".into(),
                "backend".into(),
                format!("\"{}\"", self.opts.backend.as_str()),
            ),
            (
                "console".into(),
                "port_range".into(),
                format!("\"{start}:{end}\""),
            ),
            (
                "console".into(),
                "socat_address".into(),
                "\"127.0.0.1\"".into(),
            ),
            (
                "console".into(),
                "terminal_pid_dir".into(),
                format!("{:?}", pid_dir.display().to_string()),
            ),
        ];
        for (s, k, v) in &self.opts.settings {
            items.retain(|(s2, k2, _)| !(s2 == s && k2 == k));
            items.push((s.clone(), k.clone(), v.clone()));
        }
        std::fs::write(self.config_path(), render_toml(&items))?;
        Ok(())
    }

    async fn spawn_and_wait(&mut self) -> Result<()> {
        let child = self.spawn()?;
        note_pid(child.id() as i32, true);
        self.child = Some(child);
        if let Err(e) = self.wait_serving().await {
            let tail = self.log_tail(40);
            return Err(e.context(format!(
                "console-svc did not become healthy; its log:\n{tail}"
            )));
        }
        self.check_rmcp_udp().await
    }

    /// An rmcp service runs the `[rmcp] udp` mode it was given (its log says
    /// which), so a suite meant for one mode cannot test the other.
    async fn check_rmcp_udp(&self) -> Result<()> {
        let Some((_, _, mode)) = self
            .opts
            .settings
            .iter()
            .find(|(s, k, _)| s == "rmcp" && k == "udp")
        else {
            return Ok(());
        };
        // The log is read by a thread of its own: give it a moment.
        let mut said = None;
        for _ in 0..100 {
            said = self
                .log_lines()
                .into_iter()
                .find(|l| l.contains("rmcp backend"));
            if said.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        match said {
            Some(l) if l.contains(&format!("udp={mode}")) => Ok(()),
            other => bail!("console-svc was given rmcp.udp = {mode}; its log says {other:?}"),
        }
    }

    fn spawn(&self) -> Result<Child> {
        let bin = binary()?;
        let mut cmd = Command::new(&bin);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("PORTHOLE_") {
                cmd.env_remove(name);
            }
        }
        cmd.arg("serve")
            .arg("--config")
            .arg(self.config_path())
            .env("PORTHOLE_LOG", &self.opts.log_filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stderr = child.stderr.take().expect("piped");
        let log = self.log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log.lock().expect("log lock").push(line);
            }
        });
        Ok(child)
    }

    async fn wait_serving(&mut self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        let mut last = String::from("not asked yet");
        while tokio::time::Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().expect("spawned").try_wait()? {
                self.child = None;
                bail!("console-svc exited during start: {status}");
            }
            match health_at(self.endpoint()?, "").await {
                Ok(ServingStatus::Serving) => return Ok(()),
                Ok(other) => last = format!("{other:?}"),
                Err(e) => last = format!("{e:#}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("not SERVING within {START_TIMEOUT:?} (last: {last})")
    }

    /// Write the whole log to `$PORTHOLE_TEST_LOG_DIR`, if set.
    fn save_log(&self) {
        let Some(dir) = std::env::var_os(LOG_DIR_ENV).map(PathBuf::from) else {
            return;
        };
        let name = self
            .dir
            .path()
            .file_name()
            .unwrap_or_default()
            .to_string_lossy();
        let file = dir.join(format!("{name}-{}.log", self.opts.backend.as_str()));
        let mut text = self.log_lines().join("\n");
        text.push('\n');
        let _ = std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(file, text));
    }

    fn log_tail(&self, n: usize) -> String {
        let lines = self.log_lines();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for ConsoleSvc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- console-svc ({}) log tail ---\n{}\n---",
                self.opts.backend.as_str(),
                self.log_tail(60)
            );
        }
        if self.child.is_some() {
            if let Ok((false, _)) = self.stop() {
                eprintln!("console-svc did not stop within {STOP_TIMEOUT:?} of SIGTERM; killed");
            }
        }
        let seen = self.seen.lock().expect("seen lock").clone();
        procs::kill_groups(&seen);
        procs::kill_groups(&procs::recorded(&self.pid_dir()));
        self.save_log();
    }
}

/// Add (or remove) `pid` in `$PORTHOLE_TEST_SVC_PIDS`, if set (scripts/test.sh
/// stops what a killed run left there).
pub fn note_pid(pid: i32, running: bool) {
    let Some(dir) = std::env::var_os(SVC_PIDS_ENV).map(PathBuf::from) else {
        return;
    };
    let file = dir.join(pid.to_string());
    if running {
        let start = procs::stat(pid).map(|s| s.start).unwrap_or(0);
        let _ =
            std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(file, format!("{start}\n")));
    } else {
        let _ = std::fs::remove_file(file);
    }
}

/// Removes a pid note when dropped (every way out of `stop`).
struct Forget(i32);

impl Drop for Forget {
    fn drop(&mut self) {
        note_pid(self.0, false);
    }
}

/// Ask `grpc.health.v1.Health/Check` about `service` ("" = the server).
pub async fn health_status(url: &str, service: &str) -> Result<ServingStatus> {
    health_at(Endpoint::from_shared(url.to_owned())?, service).await
}

/// [`health_status`] through `endpoint` (TLS settings and all).
pub async fn health_at(endpoint: Endpoint, service: &str) -> Result<ServingStatus> {
    let channel = endpoint
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect()
        .await?;
    let resp = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await?
        .into_inner();
    Ok(resp.status())
}

/// The console-svc binary to test.
pub fn binary() -> Result<PathBuf> {
    let path = match std::env::var_os(BIN_ENV) {
        Some(p) => PathBuf::from(p),
        None => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
            target.join("debug/console-svc")
        }
    };
    if !path.is_file() {
        bail!(
            "{} does not exist: build it (cargo build -p console-svc) or set {BIN_ENV}",
            path.display()
        );
    }
    Ok(path)
}

/// `[section]` tables from `(section, key, literal)` items, in first-seen order.
fn render_toml(items: &[(String, String, String)]) -> String {
    let mut sections: Vec<&str> = Vec::new();
    for (s, _, _) in items {
        if !sections.contains(&s.as_str()) {
            sections.push(s);
        }
    }
    let mut out = String::new();
    for s in sections {
        out.push_str(&format!("[{s}]\n"));
        for (_, k, v) in items.iter().filter(|(s2, _, _)| s2 == s) {
            out.push_str(&format!("{k} = {v}\n"));
        }
        out.push('\n');
    }
    out
}
