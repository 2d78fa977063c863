//! console-svc as the bench's child process: started per scenario in its
//! own process group (with `--rmcp-udp MODE` when the scenario names one,
//! and `terminal_silent_timeout` off in its config file: native's viewers
//! never type, and would be closed 60 s after connecting), enabled over gRPC, its Prometheus metrics read over
//! plain HTTP, stopped by pid (SIGTERM, then SIGKILL to its group).
//! Called by `main`.

use std::fs::{self, File};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use pb::console_service_client::ConsoleServiceClient;
use porthole_proto::console::v1 as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tonic::transport::Channel;

use crate::Settings;

/// Where one console's BMC is.
#[derive(Clone, Debug)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub password: String,
}

pub struct Service {
    child: Child,
    pid: u32,
    client: ConsoleServiceClient<Channel>,
    metrics: String,
}

/// console-svc's command line for one scenario, its output to
/// `dir/console-svc.log`.
fn command(
    s: &Settings,
    backend: &str,
    udp_mode: Option<&str>,
    dir: &Path,
    grpc: u16,
    metrics: u16,
) -> Result<Command> {
    fs::create_dir_all(dir)?;
    let log = File::create(dir.join("console-svc.log"))?;
    let addr = &s.console_addr;
    let config = dir.join("console-svc.toml");
    fs::write(&config, "[native]\nterminal_silent_timeout = \"0s\"\n")?;
    let mut cmd = Command::new(&s.console_svc);
    cmd.arg("serve").arg("--config").arg(&config);
    if let Some(m) = udp_mode {
        cmd.args(["--rmcp-udp", m]);
    }
    cmd.args(["--listen", &format!("{addr}:{grpc}")])
        .args(["--backend", backend])
        .args(["--port-range", &s.console_ports])
        .args(["--socat-address", addr])
        .args(["--metrics-listen", &format!("{addr}:{metrics}")])
        .arg("--terminal-pid-dir")
        .arg(dir.join("pids"))
        .env(
            "PORTHOLE_LOG",
            std::env::var("PORTHOLE_BENCH_SVC_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .kill_on_drop(true);
    Ok(cmd)
}

impl Service {
    pub async fn start(
        s: &Settings,
        backend: &str,
        udp_mode: Option<&str>,
        dir: &Path,
        grpc: u16,
        metrics: u16,
    ) -> Result<Self> {
        let mut child = command(s, backend, udp_mode, dir, grpc, metrics)?
            .spawn()
            .with_context(|| format!("starting {}", s.console_svc.display()))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("console-svc exited at once"))?;
        fs::write(s.work_dir.join("pids"), format!("{pid}\n"))?;
        let addr = &s.console_addr;
        let url = format!("http://{addr}:{grpc}");
        let end = Instant::now() + Duration::from_secs(20);
        let client = loop {
            if let Some(st) = child.try_wait()? {
                bail!("console-svc exited: {st} (log in {})", dir.display());
            }
            if let Ok(c) = ConsoleServiceClient::connect(url.clone()).await {
                break c;
            }
            if Instant::now() > end {
                bail!("console-svc: no gRPC answer on {url} in 20 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Ok(Self {
            child,
            pid,
            client,
            metrics: format!("{addr}:{metrics}"),
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Enable `node` on `t`; the console's TCP port.
    pub async fn enable(&self, node: &str, t: &Target) -> Result<u16> {
        let req = pb::EnableConsoleRequest {
            node_id: node.to_owned(),
            kind: pb::ConsoleKind::Serial as i32,
            ipmi: Some(pb::IpmiTarget {
                address: t.host.clone(),
                port: t.port.into(),
                username: "admin".into(),
                password: t.password.clone(),
                cipher_suite: Some(3),
                privilege_level: String::new(),
            }),
            port: 0,
            vnc: None,
        };
        let c = self
            .client
            .clone()
            .enable_console(req)
            .await
            .with_context(|| format!("enabling {node}"))?
            .into_inner();
        u16::try_from(c.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| anyhow!("{node}: no console port"))
    }

    /// The newest `max` bytes of `node`'s console log.
    pub async fn log(&self, node: &str, max: u32) -> Result<Vec<u8>> {
        let req = pb::GetConsoleLogRequest {
            node_id: node.to_owned(),
            max_bytes: max,
        };
        Ok(self
            .client
            .clone()
            .get_console_log(req)
            .await?
            .into_inner()
            .data)
    }

    /// The consoles' states and `last_error`s (the BMC's address cut off,
    /// so that the same error on many BMCs counts once): each distinct
    /// pair and how many consoles have it, most frequent first
    /// (ListConsoles, every page).
    pub async fn console_states(&self) -> Result<Vec<(String, usize)>> {
        let mut counts: std::collections::HashMap<String, usize> = Default::default();
        let mut token = String::new();
        loop {
            let req = pb::ListConsolesRequest {
                page_size: 1000,
                page_token: token,
            };
            let page = self.client.clone().list_consoles(req).await?.into_inner();
            for c in page
                .consoles
                .into_iter()
                .filter(|c| !c.last_error.is_empty())
            {
                *counts.entry(c.last_error).or_default() += 1;
            }
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        let mut v: Vec<_> = counts.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Ok(v)
    }

    /// A metric's value summed over the lines that name `label`.
    pub async fn metric(&self, name: &str, label: &str) -> Result<f64> {
        let mut s = tokio::net::TcpStream::connect(&self.metrics).await?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")
            .await?;
        let mut text = String::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut text)).await??;
        Ok(text
            .lines()
            .filter(|l| l.starts_with(name) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// SIGTERM (consoles deactivate and close), SIGKILL to the group after 60 s.
    pub async fn stop(mut self) {
        let pid = Pid::from_raw(self.pid as i32);
        let _ = kill(pid, Signal::SIGTERM);
        if tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .is_err()
        {
            eprintln!("console-svc {pid} did not stop in 60 s; killing its group");
            let _ = killpg(pid, Signal::SIGKILL);
            let _ = self.child.wait().await;
        }
        // ipmitool children of the native backend live in its group.
        let _ = killpg(pid, Signal::SIGKILL);
    }
}
