//! The socat backend's activation gate: a Unix socket in this replica's pid
//! directory (`<terminal_pid_dir>/sol-gate.sock`, mode 0600 in a 0700
//! directory) where the per-connection helper (`console-svc sol-exec`, see
//! [`super::sol_exec`]) asks for a go before every activation and, while
//! its `sol activate` runs, for the go to be held.
//!
//! The protocol, one line each way, over and over on one connection:
//!
//! ```text
//!  helper ─▶ "activate <node> <token>"   (before sol deactivate + sol activate)
//!  helper ─▶ "hold <node> <token>"       (every HOLD_EVERY while the session runs)
//!  replica ◀─ "ok <ms>" | "ok -" | "no <reason>"
//! ```
//!
//! `ok <ms>`: the claim's BMC gate ([`crate::coordinator::Fence::permit`])
//! is open for `ms` more milliseconds (`-`: no deadline, local mode). An
//! activation also needs the console to run here under that claim
//! (`token`) and the claim confirmed by the coordinator within
//! [`CHECK_BOUND`]. A replica that is paused does not answer: the helper
//! treats silence past its bound as a no, and ends its session when the
//! last deadline it was given passes. A replica that died closes the
//! socket: the helper ends its session at once.
//!
//! Both serial backends run their long-lived `sol activate` under that
//! helper: socat per connection, the native hub per SOL session (so an
//! ipmitool already running when its replica is paused is killed at the
//! last deadline it was given, by the helper, not by the stopped replica).
//! Owned by the backend through a [`SharedGate`]: started with its first
//! console, stopped (socket removed) when the backend is dropped.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use super::SolError;
use crate::coordinator::Fence;

/// The socket's file name in the pid directory.
pub const SOCKET_NAME: &str = "sol-gate.sock";
/// How long an activation may wait for the coordinator to confirm the claim.
pub const CHECK_BOUND: Duration = Duration::from_millis(300);
/// Longest request line.
const MAX_LINE: usize = 512;
/// Longest Unix socket path (sun_path minus its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// A request from the helper.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Activate { node: String, token: i64 },
    Hold { node: String, token: i64 },
}

impl Request {
    pub fn parse(line: &str) -> Result<Self, String> {
        let mut words = line.split_whitespace();
        let (verb, node, token) = (words.next(), words.next(), words.next());
        let (Some(verb), Some(node), Some(token), None) = (verb, node, token, words.next()) else {
            return Err("expected '<activate|hold> <node> <token>'".into());
        };
        let token: i64 = token.parse().map_err(|_| format!("bad token {token:?}"))?;
        let node = node.to_owned();
        match verb {
            "activate" => Ok(Self::Activate { node, token }),
            "hold" => Ok(Self::Hold { node, token }),
            other => Err(format!("unknown request {other:?}")),
        }
    }

    pub fn line(&self) -> String {
        match self {
            Self::Activate { node, token } => format!("activate {node} {token}\n"),
            Self::Hold { node, token } => format!("hold {node} {token}\n"),
        }
    }
}

/// The replica's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Go, for this long (None: no deadline).
    Go(Option<Duration>),
    No(String),
}

impl Answer {
    pub fn parse(line: &str) -> Self {
        let line = line.trim_end();
        if let Some(rest) = line.strip_prefix("ok ") {
            if rest == "-" {
                return Self::Go(None);
            }
            if let Ok(ms) = rest.parse::<u64>() {
                return Self::Go(Some(Duration::from_millis(ms)));
            }
        }
        match line.strip_prefix("no ") {
            Some(why) => Self::No(why.to_owned()),
            None => Self::No(format!("unreadable answer {line:?}")),
        }
    }

    pub fn line(&self) -> String {
        match self {
            Self::Go(None) => "ok -\n".into(),
            // Rounded down: the helper never holds a go longer than given.
            Self::Go(Some(d)) => format!("ok {}\n", d.as_millis()),
            Self::No(why) => format!("no {}\n", why.replace(['\r', '\n'], " ")),
        }
    }
}

/// The consoles this replica's socat serves, by node: their claim.
#[derive(Clone, Default)]
pub struct Registry {
    consoles: Arc<Mutex<HashMap<String, Fence>>>,
}

impl Registry {
    /// `fence`'s console runs here now.
    pub fn register(&self, fence: Fence) {
        let node = fence.ownership().node.to_string();
        self.lock().insert(node, fence);
    }

    /// The console of `fence`'s claim stopped (a newer claim stays).
    pub fn deregister(&self, fence: &Fence) {
        let node = fence.ownership().node.to_string();
        let mut consoles = self.lock();
        if consoles
            .get(&node)
            .is_some_and(|f| f.ownership().token == fence.ownership().token)
        {
            consoles.remove(&node);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Fence>> {
        self.consoles.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The answer to one request.
    pub async fn answer(&self, request: &Request) -> Answer {
        let (node, token, activate) = match request {
            Request::Activate { node, token } => (node, *token, true),
            Request::Hold { node, token } => (node, *token, false),
        };
        let fence = match self.lock().get(node) {
            Some(f) if f.ownership().token == token => f.clone(),
            Some(_) => return Answer::No(format!("the console of {node} was claimed again")),
            None => return Answer::No(format!("this replica does not serve {node} any more")),
        };
        if let Err(e) = fence.permit() {
            return Answer::No(e.to_string());
        }
        if activate {
            match tokio::time::timeout(CHECK_BOUND, fence.check()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Answer::No(e.to_string()),
                Err(_) => {
                    return Answer::No(format!(
                        "the claim could not be confirmed within {CHECK_BOUND:?}"
                    ))
                }
            }
        }
        // Again: the check may have taken a while.
        match fence.permit() {
            Ok(p) => Answer::Go(p.remaining()),
            Err(e) => Answer::No(e.to_string()),
        }
    }
}

/// Answer requests on one connection until it closes.
pub async fn serve_connection<S>(stream: S, registry: &Registry)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (read, mut write) = tokio::io::split(stream);
    let mut reader = BufReader::new(read);
    let mut line = String::new();
    loop {
        line.clear();
        let mut limited = (&mut reader).take(MAX_LINE as u64);
        match limited.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let answer = match Request::parse(&line) {
            Ok(request) => {
                let a = registry.answer(&request).await;
                debug!(
                    request = line.trim_end(),
                    answer = a.line().trim_end(),
                    "activation gate"
                );
                if let (Request::Activate { node, .. }, Answer::No(why)) = (&request, &a) {
                    info!(%node, %why, "socat activation refused");
                }
                a
            }
            Err(why) => Answer::No(why),
        };
        if write.write_all(answer.line().as_bytes()).await.is_err() {
            return;
        }
    }
}

/// A backend's gate, started on first use (it needs the pid directory and
/// a runtime) and stopped with the backend.
#[derive(Default)]
pub struct SharedGate {
    gate: Mutex<Option<Arc<ActivationGate>>>,
}

impl SharedGate {
    /// The gate, started in `dir` on first use.
    pub fn get(&self, dir: &Path) -> Result<Arc<ActivationGate>, SolError> {
        let mut gate = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(g) = gate.as_ref() {
            return Ok(g.clone());
        }
        let g = Arc::new(ActivationGate::start(dir)?);
        *gate = Some(g.clone());
        Ok(g)
    }
}

/// The listening gate; stops (and removes its socket) when dropped.
pub struct ActivationGate {
    path: PathBuf,
    registry: Registry,
    stop: CancellationToken,
}

impl ActivationGate {
    /// Listen on `<dir>/sol-gate.sock` (a leftover of an earlier run is
    /// replaced: the directory is this replica's, mode 0700).
    pub fn start(dir: &Path) -> Result<Self, SolError> {
        let path = dir.join(SOCKET_NAME);
        if path.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(SolError::Io(std::io::Error::other(format!(
                "the activation gate's socket path {} is longer than a Unix socket allows \
                 ({MAX_SOCKET_PATH} bytes): choose a shorter console.terminal_pid_dir",
                path.display()
            ))));
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(SolError::Io(e)),
        }
        let listener = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        let registry = Registry::default();
        let stop = CancellationToken::new();
        let span = tracing::info_span!(parent: None, "sol-gate");
        tokio::spawn(accept_loop(listener, registry.clone(), stop.clone()).instrument(span));
        info!(path = %path.display(), "socat activation gate listening");
        Ok(Self {
            path,
            registry,
            stop,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

impl Drop for ActivationGate {
    fn drop(&mut self) {
        self.stop.cancel();
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn accept_loop(listener: UnixListener, registry: Registry, stop: CancellationToken) {
    let uid = nix::unistd::getuid().as_raw();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, _)) => {
                // The socket is 0600 already; a peer of another user is
                // refused all the same.
                match stream.peer_cred() {
                    Ok(c) if c.uid() == uid => {}
                    other => {
                        warn!(peer = ?other, "activation gate: peer of another user refused");
                        continue;
                    }
                }
                let registry = registry.clone();
                let stop = stop.clone();
                tokio::spawn(
                    async move {
                        tokio::select! {
                            _ = stop.cancelled() => {}
                            _ = serve_connection(stream, &registry) => {}
                        }
                    }
                    .in_current_span(),
                );
            }
            Err(e) => {
                warn!(error = %e, "activation gate: cannot accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordinator::gate::testing::Gated;
    use crate::coordinator::gate::LeaseState;
    use crate::coordinator::Coordinator;
    use crate::spec::NodeId;
    use tokio::io::{duplex, AsyncBufReadExt};
    use tokio::sync::watch;
    use tokio::time::Instant;

    async fn registered(
        valid_for: Duration,
        slow_check: bool,
    ) -> (Registry, Fence, watch::Sender<Option<LeaseState>>) {
        let (mut c, tx) = Gated::new(5, valid_for);
        if slow_check {
            c.check_takes = Duration::from_secs(2);
        }
        let c = Arc::new(c);
        let node = NodeId::parse("n1").unwrap();
        let fence = Fence::new(c.clone(), c.acquire(&node).await.unwrap());
        let registry = Registry::default();
        registry.register(fence.clone());
        (registry, fence, tx)
    }

    fn activate(token: i64) -> Request {
        Request::Activate {
            node: "n1".into(),
            token,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_go_carries_the_time_left_and_is_refused_past_the_deadline() {
        let (registry, fence, _tx) = registered(Duration::from_secs(2), false).await;
        let token = fence.ownership().token;
        assert_eq!(
            registry.answer(&activate(token)).await,
            Answer::Go(Some(Duration::from_secs(2)))
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let hold = Request::Hold {
            node: "n1".into(),
            token,
        };
        assert_eq!(
            registry.answer(&hold).await,
            Answer::Go(Some(Duration::from_millis(500)))
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        for r in [activate(token), hold] {
            match registry.answer(&r).await {
                Answer::No(why) => assert!(why.contains("fence deadline"), "{why}"),
                a => panic!("{a:?}"),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_consoles_stale_claims_and_slow_confirmations_are_refused() {
        let (registry, fence, _tx) = registered(Duration::from_secs(60), true).await;
        let token = fence.ownership().token;
        assert!(
            matches!(registry.answer(&activate(token + 1)).await, Answer::No(w) if w.contains("claimed again"))
        );
        let other = Request::Activate {
            node: "n2".into(),
            token,
        };
        assert!(
            matches!(registry.answer(&other).await, Answer::No(w) if w.contains("does not serve"))
        );
        // The coordinator takes 2 s to confirm: refused after CHECK_BOUND.
        let asked = Instant::now();
        assert!(
            matches!(registry.answer(&activate(token)).await, Answer::No(w) if w.contains("confirmed"))
        );
        assert_eq!(asked.elapsed(), CHECK_BOUND);
        // A hold needs no confirmation.
        let hold = Request::Hold {
            node: "n1".into(),
            token,
        };
        assert!(matches!(registry.answer(&hold).await, Answer::Go(Some(_))));
        registry.deregister(&fence);
        assert!(matches!(registry.answer(&hold).await, Answer::No(_)));
    }

    #[tokio::test]
    async fn the_line_protocol_answers_each_request_in_turn() {
        let (registry, fence, _tx) = registered(Duration::from_secs(60), false).await;
        let token = fence.ownership().token;
        let (ours, theirs) = duplex(4096);
        let server = tokio::spawn(async move { serve_connection(theirs, &registry).await });
        let (r, mut w) = tokio::io::split(ours);
        let mut lines = tokio::io::BufReader::new(r).lines();
        w.write_all(activate(token).line().as_bytes())
            .await
            .unwrap();
        let a = Answer::parse(&lines.next_line().await.unwrap().unwrap());
        assert!(matches!(a, Answer::Go(Some(_))), "{a:?}");
        w.write_all(b"bogus\n").await.unwrap();
        let a = Answer::parse(&lines.next_line().await.unwrap().unwrap());
        assert!(
            matches!(a, Answer::No(ref w) if w.contains("expected")),
            "{a:?}"
        );
        drop(w);
        drop(lines);
        server.await.unwrap();
    }

    #[test]
    fn answers_round_trip() {
        for a in [
            Answer::Go(None),
            Answer::Go(Some(Duration::from_millis(1750))),
            Answer::No("lease lost".into()),
        ] {
            assert_eq!(Answer::parse(&a.line()), a);
        }
        assert!(matches!(Answer::parse("garbage"), Answer::No(_)));
        assert_eq!(Request::parse(&activate(3).line()).unwrap(), activate(3));
    }
}
