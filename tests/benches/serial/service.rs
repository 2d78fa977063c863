//! console-svc as a child process of the bench, and its gRPC API, called
//! synchronously: [`Service`] starts one `console-svc serve` per backend and
//! measurement (from `main::run_backend`), records its pid for
//! scripts/bench.sh, and stops it by pid. `echo`, `enable` and `memory`
//! drive it through [`Service::enable`], [`Service::disable`] and
//! [`Service::list`].

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use pb::console_service_client::ConsoleServiceClient;
use porthole_proto::console::v1 as pb;
use porthole_tests::procs::{self, Proc};
use porthole_tests::rig::Bmc;
use porthole_tests::Backend;
use tonic::transport::Channel;

use crate::{Settings, CIPHER_SUITE};

/// The longest a service may take to answer gRPC after it starts.
const SERVICE_START: Duration = Duration::from_secs(15);
/// The longest a service may take to stop after SIGTERM.
const SERVICE_STOP: Duration = Duration::from_secs(20);

/// (gRPC port, first console port) of `backend`; each backend gets 250
/// console ports.
fn ports(backend: Backend, base: u16) -> (u16, u16) {
    match backend {
        Backend::Native => (base, base + 100),
        Backend::Socat => (base + 1, base + 500),
        Backend::Rmcp => (base + 2, base + 750),
    }
}

/// One `console-svc serve`, stopped (by pid) when dropped.
pub struct Service {
    child: Child,
    client: ConsoleServiceClient<Channel>,
    rt: Arc<tokio::runtime::Runtime>,
    pub backend: Backend,
}

impl Service {
    pub fn start(
        s: &Settings,
        rt: &Arc<tokio::runtime::Runtime>,
        backend: Backend,
        label: &str,
    ) -> Result<Self> {
        let (grpc, first) = ports(backend, s.port_base);
        let dir = s.work_dir.join(format!("{}-{label}", backend.as_str()));
        fs::create_dir_all(&dir)?;
        let mut child = spawn(s, backend, &dir, grpc, first)?;
        record_pid(&s.work_dir, child.id())?;
        let url = format!("http://127.0.0.1:{grpc}");
        match wait_ready(&mut child, rt, &url) {
            Ok(client) => Ok(Self {
                child,
                client,
                rt: rt.clone(),
                backend,
            }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e.context(format!("console-svc ({}) did not start", backend.as_str())))
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn enable(&self, node: &str, bmc: &Bmc) -> Result<pb::Console> {
        let mut req = bmc.enable_request(node);
        if let Some(ipmi) = req.ipmi.as_mut() {
            ipmi.cipher_suite = Some(CIPHER_SUITE);
        }
        let mut client = self.client.clone();
        let reply = self
            .rt
            .block_on(client.enable_console(req))
            .with_context(|| format!("enabling {node}"))?;
        Ok(reply.into_inner())
    }

    pub fn disable(&self, node: &str) -> Result<()> {
        let req = pb::DisableConsoleRequest {
            node_id: node.to_owned(),
        };
        let mut client = self.client.clone();
        self.rt
            .block_on(client.disable_console(req))
            .with_context(|| format!("disabling {node}"))?;
        Ok(())
    }

    pub fn list(&self) -> Result<Vec<pb::Console>> {
        let mut client = self.client.clone();
        let reply = self
            .rt
            .block_on(client.list_consoles(pb::ListConsolesRequest::default()))?;
        Ok(reply.into_inner().consoles)
    }

    /// SIGTERM (the service stops its consoles), then SIGKILL to its group
    /// and to any descendant left behind.
    pub fn stop(&mut self) {
        let pid = Pid::from_raw(self.pid() as i32);
        let children = procs::descendants(self.pid() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        if wait_exit(&mut self.child, SERVICE_STOP).is_none() {
            eprintln!("console-svc {pid} did not stop within {SERVICE_STOP:?}; killing it");
            let _ = killpg(pid, Signal::SIGKILL);
            let _ = self.child.wait();
        }
        let left: Vec<Proc> = children.into_iter().filter(Proc::alive).collect();
        for p in &left {
            eprintln!("killing leftover process {p} of console-svc");
        }
        procs::kill_groups(&left);
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.stop();
        }
    }
}

/// `console-svc serve` in its own process group, logging to
/// `<dir>/console-svc.log`, with 250 console ports from `first`.
fn spawn(s: &Settings, backend: Backend, dir: &Path, grpc: u16, first: u16) -> Result<Child> {
    let log = File::create(dir.join("console-svc.log"))?;
    Command::new(&s.console_svc)
        .arg("serve")
        .args(["--listen", &format!("127.0.0.1:{grpc}")])
        .args(["--backend", backend.as_str()])
        .args(["--port-range", &format!("{first}:{}", first + 250)])
        .arg("--terminal-pid-dir")
        .arg(dir.join("pids"))
        .env("PORTHOLE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", s.console_svc.display()))
}

/// Connect to a starting service's gRPC port, bounded by [`SERVICE_START`].
fn wait_ready(
    child: &mut Child,
    rt: &tokio::runtime::Runtime,
    url: &str,
) -> Result<ConsoleServiceClient<Channel>> {
    let end = Instant::now() + SERVICE_START;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            bail!("it exited: {status}");
        }
        if let Ok(c) = rt.block_on(ConsoleServiceClient::connect(url.to_owned())) {
            return Ok(c);
        }
        if Instant::now() > end {
            bail!("no answer on {url} within {SERVICE_START:?}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// `<work_dir>/pids`: scripts/bench.sh stops whatever is listed and alive.
fn record_pid(work_dir: &Path, pid: u32) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(work_dir.join("pids"))?;
    writeln!(f, "{pid}")?;
    Ok(())
}

pub fn port_of(console: &pb::Console) -> Result<u16> {
    u16::try_from(console.port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| {
            anyhow!(
                "console {} has no port (state {})",
                console.node_id,
                console.state
            )
        })
}

/// Poll a child until it exits or `timeout` passes.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        thread::sleep(Duration::from_millis(20));
    }
    None
}
