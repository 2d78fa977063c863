//! `console-svc sol-exec`: what socat runs for each console connection
//! (see [`super::socat`]), and what the native hub runs for each SOL session
//! (see `super::native::launcher`, with [`ACTIVATE_ONLY_ENV`]: its hub
//! deactivates first itself). It takes no BMC action without its replica's
//! go:
//!
//! ```text
//!  start: PR_SET_PDEATHSIG=SIGKILL (dies with its socat), parent checked
//!    │
//!    ▼ "activate <node> <token>" on <pid dir>/sol-gate.sock, answer within 500 ms
//!  go(ms) ──────────────────────────────┐ no / silence / no socket:
//!    │ sol deactivate (until the deadline)  one line to the viewer, exit 1,
//!    │ sol activate, as a child:            nothing sent to the BMC
//!    │ stdio = socat's pty, guarded
//!    ▼
//!  holding: "hold" every 200 ms; each go moves the deadline on
//!    ├─ ipmitool exits ─────────────────▶ exit with its status
//!    ├─ "no", or the deadline passes ───▶ SIGKILL ipmitool, tell the viewer, exit 1
//!    └─ the replica closed the socket ──▶ (it died) same
//! ```
//!
//! Every ipmitool child gets [`crate::process::guard_child`]: it dies with
//! this helper and refuses to exec past the deadline. Deadlines are kept on
//! this process's monotonic clock from the moment a request was sent, so
//! they never outlast the replica's own (CLOCK_MONOTONIC is system-wide).
//! ipmitool's argv comes in [`SOL_ARGV_ENV`] (no secret in it), the gate in
//! [`SOL_GATE_ENV`]; the password is the sealed memfd at fd 3 that socat and
//! its children inherit.

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::time::Instant;

mod gate_client;

use self::gate_client::{ask, AskError, GateClient};
use super::activation_gate::{Answer, Request};
use super::ipmitool::IpmiTool;

/// Where the helper finds ipmitool's argv (JSON array, program first,
/// ending in `sol activate`).
pub const SOL_ARGV_ENV: &str = "PORTHOLE_SOL_ARGV";
/// Where the helper finds its replica's activation gate (JSON [`GateRef`]).
pub const SOL_GATE_ENV: &str = "PORTHOLE_SOL_GATE";
/// Set (to `1`) by the native backend, whose hub runs its own gated `sol
/// deactivate` before each activation: the helper activates only.
pub const ACTIVATE_ONLY_ENV: &str = "PORTHOLE_SOL_ACTIVATE_ONLY";
/// Set by the socat backend: the console's listen address, whose accept
/// queue tells a silent viewer's helper that another viewer waits (see
/// [`super::socat_slot`]).
pub const SOL_LISTEN_ENV: &str = "PORTHOLE_SOL_LISTEN";
/// How long the replica has to answer a request.
pub const ANSWER_WITHIN: Duration = Duration::from_millis(500);
/// How often a running session asks for its go to be held.
pub const HOLD_EVERY: Duration = Duration::from_millis(200);

/// The gate and the claim a console's socat serves under.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GateRef {
    pub socket: PathBuf,
    pub node: String,
    pub token: i64,
}

/// The helper's environment for `tool`'s `sol activate` under `gate`:
/// ipmitool's argv (no secret in it) and the gate; for socat
/// (`socat_listen`) the console's address (one viewer slot, see
/// [`super::socat_slot`]), for the native hub "activate only". The password
/// goes separately (`tool.password_fd()`).
pub fn helper_env(
    tool: &IpmiTool,
    gate: &GateRef,
    socat_listen: Option<SocketAddr>,
) -> Vec<(&'static str, String)> {
    let argv: Vec<String> = std::iter::once(tool.program().clone())
        .chain(tool.args(&["sol", "activate"]))
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut env = vec![
        (
            SOL_ARGV_ENV,
            serde_json::to_string(&argv).expect("strings serialize"),
        ),
        (
            SOL_GATE_ENV,
            serde_json::to_string(gate).expect("gate serializes"),
        ),
    ];
    match socat_listen {
        Some(listen) => env.push((SOL_LISTEN_ENV, listen.to_string())),
        None => env.push((ACTIVATE_ONLY_ENV, "1".into())),
    }
    env
}

/// The helper program: `console.sol_exec_helper`, else this executable.
pub fn helper_path(configured: Option<&std::path::Path>) -> PathBuf {
    configured
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::current_exe().unwrap_or_else(|_| "console-svc".into()))
}

/// Run the helper; its exit code.
pub fn run() -> i32 {
    if let Err(why) = die_with_parent() {
        say(&format!("console closed: {why}"));
        return 1;
    }
    let setup = match Setup::from_env() {
        Ok(s) => s,
        Err(why) => {
            say(&format!("console-svc sol-exec: {why}"));
            return 2;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            say(&format!("console-svc sol-exec: {e}"));
            return 2;
        }
    };
    runtime.block_on(session(setup))
}

/// One line to the viewer (the helper's stdout is socat's pty), then a
/// moment for socat to relay it: socat ends the connection as soon as it
/// reaps a child that failed, and what it had not yet read from the pty is
/// lost (seen in about one refusal in six when socat's stderr is slow).
fn say(msg: &str) {
    let mut out = std::io::stdout();
    let _ = write!(out, "\r\n[porthole: {msg}]\r\n");
    let _ = out.flush();
    std::thread::sleep(RELAY_PAUSE);
}

/// How long [`say`] leaves socat to read its line before the helper exits.
const RELAY_PAUSE: Duration = Duration::from_millis(200);

/// SIGKILL when the socat that runs us dies; a socat already gone (we were
/// reparented before the prctl) is caught by comparing the parent.
#[expect(unsafe_code, reason = "prctl(2) PR_SET_PDEATHSIG")]
fn die_with_parent() -> Result<(), String> {
    let before = nix::unistd::getppid();
    // SAFETY: prctl with an int argument; no memory is passed.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if rc < 0 {
        return Err(format!("prctl: {}", std::io::Error::last_os_error()));
    }
    let now = nix::unistd::getppid();
    if now != before || now.as_raw() == 1 {
        return Err("the socat that started this helper is gone".into());
    }
    Ok(())
}

struct Setup {
    program: String,
    activate: Vec<String>,
    /// None: activate only (the native hub deactivated already).
    deactivate: Option<Vec<String>>,
    gate: GateRef,
    /// socat's console address: this connection holds its one viewer slot.
    listen: Option<SocketAddr>,
}

impl Setup {
    fn from_env() -> Result<Self, String> {
        let raw = std::env::var(SOL_ARGV_ENV)
            .map_err(|_| format!("{SOL_ARGV_ENV} is not set: run by console-svc's socat only"))?;
        let argv: Vec<String> =
            serde_json::from_str(&raw).map_err(|e| format!("{SOL_ARGV_ENV}: {e}"))?;
        let Some((program, args)) = argv.split_first() else {
            return Err(format!("{SOL_ARGV_ENV} is empty"));
        };
        if args.last().map(String::as_str) != Some("activate") {
            return Err(format!("{SOL_ARGV_ENV} must end in 'sol activate'"));
        }
        let mut deactivate = args.to_vec();
        *deactivate.last_mut().expect("non-empty") = "deactivate".into();
        let raw = std::env::var(SOL_GATE_ENV).map_err(|_| {
            format!("{SOL_GATE_ENV} is not set: without its replica's go no BMC is touched")
        })?;
        let gate: GateRef =
            serde_json::from_str(&raw).map_err(|e| format!("{SOL_GATE_ENV}: {e}"))?;
        let activate_only = std::env::var_os(ACTIVATE_ONLY_ENV).is_some_and(|v| v == "1");
        let listen = match std::env::var(SOL_LISTEN_ENV) {
            Ok(l) => Some(
                l.parse()
                    .map_err(|_| format!("{SOL_LISTEN_ENV}: {l:?} is not an address"))?,
            ),
            Err(_) => None,
        };
        Ok(Self {
            program: program.clone(),
            activate: args.to_vec(),
            deactivate: (!activate_only).then_some(deactivate),
            gate,
            listen,
        })
    }
}

/// What the session may do, as the holder last learned it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Verdict {
    /// Go until then (None: no deadline).
    Until(Option<Instant>),
    /// Stop now.
    Stop(String),
}

async fn session(setup: Setup) -> i32 {
    let (child, deadline, client, slot) = match open(&setup).await {
        Ok(opened) => opened,
        Err(why) => {
            say(&why);
            return 1;
        }
    };
    let (verdict_tx, verdict) = watch::channel(Verdict::Until(deadline));
    tokio::spawn(hold(client, setup.gate, verdict_tx));
    supervise(child, verdict, slot).await
}

/// socat's one viewer slot as this connection holds it: the console's
/// address and when the viewer last typed.
struct Slot {
    listen: SocketAddr,
    last_input: watch::Receiver<Instant>,
}

/// `sol activate` for `setup`: on socat's pty (native), or with its stdin
/// on a pty of ours that relays the viewer's keystrokes (socat's slot).
fn start_session(
    setup: &Setup,
    deadline: Option<Instant>,
) -> std::io::Result<(Child, Option<Slot>)> {
    let Some(listen) = setup.listen else {
        let child = spawn(&setup.program, &setup.activate, deadline, Io::Session)?;
        return Ok((child, None));
    };
    let input = super::pty::reopen_stdin()?;
    let (to_ipmitool, stdin) = super::pty::input_pair()?;
    let child = spawn(
        &setup.program,
        &setup.activate,
        deadline,
        Io::InputFrom(stdin),
    )?;
    let (tx, last_input) = watch::channel(Instant::now());
    tokio::spawn(super::socat_slot::relay_input(input, to_ipmitool, tx));
    Ok((child, Some(Slot { listen, last_input })))
}

/// Ask for a go; then free the payload (ours from an earlier connection
/// included) and activate, both only before the deadline the go gave.
/// The running `sol activate`, the deadline, the gate connection and the
/// viewer slot (socat); or what to tell the viewer.
async fn open(setup: &Setup) -> Result<Opened, String> {
    let gate = &setup.gate;
    let activate = Request::Activate {
        node: gate.node.clone(),
        token: gate.token,
    };
    let mut client = None;
    let deadline = match ask(&mut client, gate, &activate).await {
        Ok((sent, Answer::Go(left))) => left.map(|d| sent + d),
        Ok((_, Answer::No(why))) => {
            return Err(format!("this replica may not open the console now: {why}"))
        }
        Err(AskError::Silent) => {
            return Err(format!(
                "this replica did not answer within {ANSWER_WITHIN:?}; the console is not opened"
            ))
        }
        Err(AskError::Gone(why)) => {
            return Err(format!(
                "this replica is gone ({why}); the console is not opened"
            ))
        }
    };
    let not_opened = |e: std::io::Error| format!("the console is not opened: {e}");
    if let Some(deactivate) = &setup.deactivate {
        let mut d = spawn(&setup.program, deactivate, deadline, Io::Null).map_err(not_opened)?;
        if !within(deadline, d.wait()).await {
            let _ = d.start_kill();
        }
    }
    let (child, slot) = start_session(setup, deadline).map_err(not_opened)?;
    Ok((child, deadline, client, slot))
}

type Opened = (Child, Option<Instant>, Option<GateClient>, Option<Slot>);

/// Run the session until ipmitool exits (its status), or kill it (locally)
/// when the holder says stop, the last deadline passes, or (socat's slot)
/// the viewer has been silent while another one waits (1).
async fn supervise(
    mut child: Child,
    mut verdict: watch::Receiver<Verdict>,
    slot: Option<Slot>,
) -> i32 {
    let mut check = tokio::time::interval(super::socat_slot::CHECK_EVERY);
    loop {
        let until = match &*verdict.borrow_and_update() {
            Verdict::Until(t) => *t,
            Verdict::Stop(why) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                say(&format!("console closed: {why}"));
                return 1;
            }
        };
        tokio::select! {
            status = child.wait() => {
                return status.ok().and_then(|s| s.code()).unwrap_or(1);
            }
            _ = sleep_until(until) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                say("console closed: this replica's lease passed its deadline without renewal");
                return 1;
            }
            changed = verdict.changed() => if changed.is_err() {
                // The holder ended without a verdict: treat as a stop.
                let _ = child.start_kill();
                return 1;
            },
            _ = check.tick(), if slot.is_some() => {
                let Some(slot) = &slot else { continue };
                if super::socat_slot::should_yield(*slot.last_input.borrow(), slot.listen) {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    say(&format!(
                        "console closed: another viewer is waiting and this one has sent \
                         nothing for {:?}",
                        super::socat_slot::YIELD_AFTER
                    ));
                    return 1;
                }
            }
        }
    }
}

/// Ask for the go to be held every [`HOLD_EVERY`]; publish each verdict.
/// Silence keeps the last deadline (which then runs out on its own).
async fn hold(mut client: Option<GateClient>, gate: GateRef, verdict: watch::Sender<Verdict>) {
    let request = Request::Hold {
        node: gate.node.clone(),
        token: gate.token,
    };
    loop {
        tokio::time::sleep(HOLD_EVERY).await;
        match ask(&mut client, &gate, &request).await {
            Ok((sent, Answer::Go(left))) => {
                verdict.send_replace(Verdict::Until(left.map(|d| sent + d)));
            }
            Ok((_, Answer::No(why))) => {
                verdict.send_replace(Verdict::Stop(why));
                return;
            }
            Err(AskError::Silent) => {}
            Err(AskError::Gone(why)) => {
                verdict.send_replace(Verdict::Stop(format!("this replica is gone ({why})")));
                return;
            }
        }
    }
}

/// What an ipmitool child's stdio is.
enum Io {
    /// Nothing (a deactivate).
    Null,
    /// Ours: socat's or the native hub's pty (a session).
    Session,
    /// A session reading its keystrokes from this (a pty we relay to),
    /// writing to ours.
    InputFrom(OwnedFd),
}

/// ipmitool with `args`: guarded (dies with us, no exec past `deadline`),
/// its stdio as `io` says.
fn spawn(
    program: &str,
    args: &[String],
    deadline: Option<Instant>,
    io: Io,
) -> std::io::Result<Child> {
    if deadline.is_some_and(|d| Instant::now() >= d) {
        return Err(std::io::Error::other(
            "this replica's lease passed its deadline",
        ));
    }
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_remove(SOL_ARGV_ENV)
        .env_remove(SOL_GATE_ENV)
        .env_remove(ACTIVATE_ONLY_ENV)
        .env_remove(SOL_LISTEN_ENV);
    match io {
        Io::Null => {
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
        }
        Io::Session => {}
        Io::InputFrom(fd) => {
            cmd.stdin(Stdio::from(fd));
        }
    }
    crate::process::guard_child(cmd.as_std_mut(), deadline.map(Instant::into_std));
    cmd.kill_on_drop(true).spawn().map_err(|e| {
        if crate::process::refused_past_deadline(&e) {
            std::io::Error::other("this replica's lease passed its deadline")
        } else {
            e
        }
    })
}

/// Whether `fut` finished before `deadline` (no deadline: it always does).
async fn within<F: std::future::Future>(deadline: Option<Instant>, fut: F) -> bool {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, fut).await.is_ok(),
        None => {
            fut.await;
            true
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
#[path = "sol_exec_tests.rs"]
mod tests;
