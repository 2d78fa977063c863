//! The socat serial backend: Ironic's process layout, supervised.
//!
//! One `socat TCP-LISTEN:P,bind=A,reuseaddr,nodelay,fork,max-children=1
//! EXEC:"console-svc sol-exec",pty,raw,echo=0,stderr` per console
//! (`nodelay`: TCP_NODELAY on the listener, which accepted connections
//! inherit, so keystroke echoes are not held back by Nagle). For each
//! connection socat runs `console-svc sol-exec` ([`super::sol_exec`]), which
//! asks this replica's activation gate ([`super::activation_gate`]) for a go,
//! runs `ipmitool ... sol deactivate` and then `ipmitool ... sol activate`,
//! and keeps asking while the session runs: a replica past its lease's
//! deadline, paused or dead gets no BMC traffic from its socat. socat dies
//! with console-svc (`PR_SET_PDEATHSIG`), the helper with its socat, ipmitool
//! with the helper. ipmitool's argv reaches the helper in `PORTHOLE_SOL_ARGV`
//! (no secret in it), the gate in `PORTHOLE_SOL_GATE`; the password is the
//! sealed memfd at fd 3 that socat and its children inherit.
//!
//! ```text
//!  start ──▶ spawned ──"listening on"──▶ serving ──socat died──▶ FAILED ──backoff──▶ spawned
//!                                           │ stop
//!                                           ▼
//!                       SIGTERM group ─kill_timeout─▶ SIGKILL ─▶ sol deactivate (if used)
//! ```

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{ChildStderr, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use super::activation_gate::{Registry, SharedGate};
use super::ipmitool::IpmiTool;
use super::sol_exec::GateRef;
pub use super::sol_exec::{SOL_ARGV_ENV, SOL_GATE_ENV};
use super::SolError;
use crate::backend::{
    BackendError, ConsoleBackend, ConsoleContext, Health, LogSnapshot, RunningConsole,
};
use crate::backoff::Backoff;
use crate::process::Supervised;

/// socat's TCP-LISTEN options after the port and bind address.
const LISTEN_OPTIONS: &str = "reuseaddr,nodelay,fork,max-children=1";
/// How long to wait for the rest of socat's stderr once it exited: its
/// last words (why it exited) may still be in the pipe.
const LAST_WORDS_WAIT: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct SocatSettings {
    pub socat: PathBuf,
    pub ipmitool: PathBuf,
    /// The `console-svc` binary, run by socat as `console-svc sol-exec`.
    pub helper: PathBuf,
    pub subprocess_timeout: Duration,
    /// `subprocess_checking_interval`: how often a start whose port was
    /// still held is tried again (within a second).
    pub checking_interval: Duration,
    /// socat's `-T`: close an idle connection; zero disables it.
    pub terminal_timeout: Duration,
    pub retry_max_backoff: Duration,
}

pub struct SocatBackend {
    settings: SocatSettings,
    /// Started with the first console, stopped when the backend goes.
    gate: SharedGate,
}

impl SocatBackend {
    pub fn new(settings: SocatSettings) -> Result<Self, SolError> {
        let helper = settings.helper.to_string_lossy();
        // socat splits EXEC's string on spaces and its own separators.
        if helper
            .chars()
            .any(|c| c.is_whitespace() || ",:!'\"\\%".contains(c))
        {
            return Err(SolError::Spawn {
                program: "socat",
                source: std::io::Error::other(format!(
                    "the helper path {helper:?} has a character socat's EXEC cannot carry"
                )),
            });
        }
        Ok(Self {
            settings,
            gate: SharedGate::default(),
        })
    }
}

#[async_trait]
impl ConsoleBackend for SocatBackend {
    fn name(&self) -> &'static str {
        "socat"
    }

    async fn start(&self, ctx: ConsoleContext) -> Result<Box<dyn RunningConsole>, BackendError> {
        let tool = IpmiTool::new(
            self.settings.ipmitool.as_os_str(),
            ctx.ipmi(self.name())?.clone(),
            self.settings.subprocess_timeout,
            ctx.processes.clone(),
            ctx.fence.clone(),
        );
        ctx.fence.check().await?;
        let gate = self.gate.get(ctx.processes.dir())?;
        let gate_ref = GateRef {
            socket: gate.path().to_owned(),
            node: ctx.node.to_string(),
            token: ctx.fence.ownership().token,
        };
        gate.registry().register(ctx.fence.clone());
        let instance = Instance {
            settings: self.settings.clone(),
            tool,
            used: Arc::new(AtomicBool::new(false)),
            gate_ref,
            registry: gate.registry().clone(),
            ctx,
        };
        let first = match instance.spawn_retrying_busy_port().await {
            Ok(first) => first,
            Err(e) => {
                instance.registry.deregister(&instance.ctx.fence);
                return Err(e.into());
            }
        };
        let stop = instance.ctx.cancel.child_token();
        let span = tracing::info_span!(parent: None, "socat", node = %instance.ctx.node, port = instance.ctx.listen.port());
        let task = tokio::spawn(instance.supervise(first, stop.clone()).instrument(span));
        Ok(Box::new(SocatConsole { stop, task }))
    }
}

struct SocatConsole {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

#[async_trait]
impl RunningConsole for SocatConsole {
    async fn stop(self: Box<Self>) {
        self.stop.cancel();
        let _ = self.task.await;
    }

    fn log(&self, _max_bytes: usize) -> Option<LogSnapshot> {
        None
    }
}

/// One console's socat, respawned as long as the console is enabled.
struct Instance {
    settings: SocatSettings,
    tool: IpmiTool,
    /// A connection was accepted since the last `sol deactivate`.
    used: Arc<AtomicBool>,
    /// Where (and under which claim) the helper asks for its go.
    gate_ref: GateRef,
    registry: Registry,
    ctx: ConsoleContext,
}

/// A running socat and what its stderr told us.
struct Spawned {
    child: Supervised,
    last_error: watch::Receiver<String>,
    /// The stderr follower; ends at the pipe's end.
    stderr_done: JoinHandle<()>,
}

impl Instance {
    fn command(&self) -> Result<Command, SolError> {
        let s = &self.settings;
        let listen = self.ctx.listen;
        let mut cmd = Command::new(&s.socat);
        cmd.args(["-d", "-d"]);
        if !s.terminal_timeout.is_zero() {
            cmd.arg(format!("-T{}", s.terminal_timeout.as_secs_f64()));
        }
        let bind = match listen.ip() {
            std::net::IpAddr::V6(v6) => format!("TCP6-LISTEN:{},bind=[{v6}]", listen.port()),
            ip => format!("TCP4-LISTEN:{},bind={ip}", listen.port()),
        };
        cmd.arg(format!("{bind},{LISTEN_OPTIONS}"))
            .arg(format!(
                "EXEC:{} sol-exec,pty,raw,echo=0,stderr",
                s.helper.display()
            ))
            .envs(super::sol_exec::helper_env(
                &self.tool,
                &self.gate_ref,
                Some(listen),
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        self.tool.password_fd()?.attach(&mut cmd);
        // socat goes when console-svc goes (kill -9 included): no listener
        // of a dead replica keeps accepting.
        crate::process::guard_child(cmd.as_std_mut(), None);
        Ok(cmd)
    }

    /// Spawn socat and wait until it listens (or says why it cannot).
    async fn spawn_ready(&self) -> Result<Spawned, SolError> {
        let mut cmd = self.command()?;
        let label = format!("socat console {}", self.ctx.node);
        let mut child = self
            .ctx
            .processes
            .spawn(&mut cmd, &label)
            .map_err(|source| SolError::Spawn {
                program: "socat",
                source,
            })?;
        let stderr = child.child_mut().stderr.take().expect("piped");
        let (ready_tx, mut ready) = watch::channel(false);
        let (error_tx, last_error) = watch::channel(String::new());
        let mut stderr_done = tokio::spawn(
            follow_stderr(stderr, ready_tx, error_tx, self.used.clone()).in_current_span(),
        );
        let waited = tokio::time::timeout(self.settings.subprocess_timeout, async {
            tokio::select! {
                r = ready.wait_for(|r| *r) => Ok(r.is_ok()),
                status = child.wait() => Err(status),
            }
        })
        .await;
        match waited {
            Ok(Ok(true)) => {
                info!(pid = child.pid(), "socat is listening");
                Ok(Spawned {
                    child,
                    last_error,
                    stderr_done,
                })
            }
            Ok(result) => {
                child.terminate().await;
                // socat's exit can be seen before its last stderr line is
                // read: read the pipe to its end (bounded) first.
                let _ = tokio::time::timeout(LAST_WORDS_WAIT, &mut stderr_done).await;
                let detail = last_error.borrow().clone();
                Err(early_exit_error(self.ctx.listen, detail, result.err()))
            }
            Err(_) => {
                child.terminate().await;
                Err(SolError::Timeout {
                    what: format!("socat listening on {}", self.ctx.listen),
                    timeout: self.settings.subprocess_timeout,
                })
            }
        }
    }

    /// Like [`crate::backend::bind_port`]: a port still held for a moment by a
    /// fork of ours is retried for up to a second, every `checking_interval`.
    async fn spawn_retrying_busy_port(&self) -> Result<Spawned, SolError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        loop {
            match self.spawn_ready().await {
                Err(SolError::PortInUse { .. }) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(self.settings.checking_interval).await;
                }
                other => return other,
            }
        }
    }

    async fn supervise(self, first: Spawned, stop: CancellationToken) {
        let mut current = Some(first);
        let mut backoff = Backoff::new(Duration::from_secs(1), self.settings.retry_max_backoff);
        loop {
            let Some(mut running) = current.take() else {
                let wait = backoff.next_delay();
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
                match self.spawn_ready().await {
                    Ok(s) => {
                        let _ = self.ctx.health.send(Health::Ok);
                        current = Some(s);
                    }
                    Err(e) => self.failed(format!("socat could not be restarted: {e}")),
                }
                continue;
            };
            tokio::select! {
                _ = stop.cancelled() => {
                    running.child.terminate().await;
                    break;
                }
                status = running.child.wait() => {
                    running.child.terminate().await;
                    let _ = tokio::time::timeout(LAST_WORDS_WAIT, &mut running.stderr_done).await;
                    let why = running.last_error.borrow().clone();
                    self.failed(format!("socat exited ({}): {why}", fmt_status(status)));
                }
            }
        }
        self.registry.deregister(&self.ctx.fence);
        self.end_session().await;
    }

    fn failed(&self, why: String) {
        warn!(%why, "socat console failed; restarting with backoff");
        let _ = self
            .ctx
            .health
            .send(Health::Failed(format!("{why}; restarting with backoff")));
    }

    /// `sol deactivate` if a connection may have left SOL active (a killed
    /// ipmitool does not end its session), and only while the lease is
    /// valid: past its deadline the BMC is the next owner's.
    async fn end_session(&self) {
        if self.used.swap(false, Ordering::SeqCst) {
            if let Err(e) = self.tool.permit() {
                warn!(reason = %e, "no sol deactivate after stop: only local processes were ended");
                return;
            }
            if let Err(e) = self.tool.deactivate().await {
                warn!(error = %e, "sol deactivate after stop failed");
            }
        }
    }
}

/// Why socat exited before it listened, in its own words when it gave any.
fn early_exit_error(
    listen: std::net::SocketAddr,
    detail: String,
    status: Option<std::io::Result<std::process::ExitStatus>>,
) -> SolError {
    if detail.contains("Address already in use") {
        return SolError::PortInUse { addr: listen };
    }
    let detail = match (detail.is_empty(), status) {
        (false, _) => detail,
        (true, Some(status)) => format!("it said nothing ({})", fmt_status(status)),
        (true, None) => "it said nothing".to_owned(),
    };
    SolError::EarlyExit {
        program: "socat",
        detail,
    }
}

fn fmt_status(status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(s) => s.to_string(),
        Err(e) => e.to_string(),
    }
}

/// Read socat's `-d -d` log: readiness, connections, its last error.
async fn follow_stderr(
    stderr: ChildStderr,
    ready: watch::Sender<bool>,
    last_error: watch::Sender<String>,
    used: Arc<AtomicBool>,
) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        debug!(target: "socat", "{line}");
        if line.contains(" N listening on ") {
            ready.send_replace(true);
        } else if line.contains(" N accepting connection from ") {
            used.store(true, Ordering::SeqCst);
            crate::metrics::get().viewer_connected("serial");
            crate::metrics::get().sol_activation("socat");
        } else if let Some((_, msg)) = line.split_once("] E ") {
            last_error.send_replace(msg.to_owned());
        }
    }
}

#[cfg(test)]
#[path = "socat_tests.rs"]
mod tests;
