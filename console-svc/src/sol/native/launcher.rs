//! Starting and ending one SOL session, behind [`SolLauncher`] so the hub can
//! be tested with an in-memory launcher.
//!
//! The real launcher, [`IpmiLauncher`], runs `ipmitool ... sol activate` under
//! a raw pty (see [`crate::sol::pty`]), through the `console-svc sol-exec`
//! helper (activate only: the hub deactivated first), which gets its go
//! from this replica's activation gate, asks for it to be held every 200 ms
//! and SIGKILLs ipmitool when the last deadline it was given passes (so a
//! session does not outlive a paused replica's lease; see
//! [`crate::sol::sol_exec`]). It waits for ipmitool's "SOL Session
//! operational" banner: the session is up once it is printed; if ipmitool
//! exits first, its own words become the error ("SOL payload already active
//! on another session", "Unable to establish IPMI v2 / RMCP+ session", ...,
//! or the helper's refusal "[porthole: ...]").
//!
//! ```text
//!  activate ──spawn under pty──▶ banner ──▶ SolSession (io + control)
//!                                 └─ exit / timeout ──▶ SolError (ipmitool's words)
//!  control.end(deactivate=true):  sol deactivate ──▶ SIGTERM group ──▶ SIGKILL after kill_timeout
//!  control.end(deactivate=false): (ipmitool already gone) reap it
//! ```
//!
//! ipmitool keeps running silently after a deactivate, so a session always
//! ends with its process group being terminated.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tracing::{debug, warn};

use crate::process::{ProcessTable, Supervised};
use crate::sol::ipmitool::IpmiTool;
use crate::sol::pty::{self, PtyStream};
use crate::sol::sol_exec::{self, GateRef};
use crate::sol::SolError;

/// What ipmitool prints once the SOL session is up.
const BANNER: &[u8] = b"SOL Session operational";
/// Output kept while waiting for the banner (ipmitool's messages are short).
const MAX_PREAMBLE: usize = 16 * 1024;

/// A byte stream to and from the node's serial port.
pub(crate) trait SolIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> SolIo for T {}

/// A SOL session that is up.
pub(crate) struct SolSession {
    pub(crate) io: Box<dyn SolIo>,
    /// What the launcher said when the session came up (ipmitool's banner),
    /// shown to attached viewers but not part of the node's output.
    pub(crate) greeting: Bytes,
    /// Node output that arrived together with the greeting.
    pub(crate) early_output: Bytes,
    pub(crate) control: Box<dyn SessionControl>,
}

#[async_trait]
pub(crate) trait SessionControl: Send {
    /// End the session: tell the BMC first when `deactivate` (a clean end),
    /// then stop whatever runs it. How the process ended, when known.
    async fn end(self: Box<Self>, deactivate: bool) -> Option<ExitStatus>;

    /// Why the session ended, when the launcher knows better than the
    /// session's last output (the rmcp client's own error).
    fn why(&self) -> Option<String> {
        None
    }
}

#[async_trait]
pub(crate) trait SolLauncher: Send + Sync + 'static {
    /// Free the BMC's SOL payload, whoever holds it.
    async fn deactivate(&self) -> Result<(), SolError>;
    /// Bring a SOL session up.
    async fn activate(&self) -> Result<SolSession, SolError>;
}

/// The `console-svc sol-exec` helper a session runs under, and the gate it
/// asks.
pub(crate) struct Helper {
    pub(crate) program: PathBuf,
    pub(crate) gate: GateRef,
}

/// `ipmitool sol activate` under a pty, through the helper.
pub(crate) struct IpmiLauncher {
    tool: IpmiTool,
    helper: Helper,
    processes: Arc<ProcessTable>,
    timeout: Duration,
}

impl IpmiLauncher {
    pub(crate) fn new(
        tool: IpmiTool,
        helper: Helper,
        processes: Arc<ProcessTable>,
        timeout: Duration,
    ) -> Self {
        Self {
            tool,
            helper,
            processes,
            timeout,
        }
    }

    /// `console-svc sol-exec` for this BMC's `sol activate`: only while the
    /// BMC gate is open, the password at fd 3, dying with console-svc and
    /// refusing to exec past the deadline (as every ipmitool child).
    fn session_command(&self) -> Result<tokio::process::Command, SolError> {
        let permit = self.tool.permit()?;
        let mut cmd = tokio::process::Command::new(&self.helper.program);
        cmd.arg("sol-exec")
            .envs(sol_exec::helper_env(&self.tool, &self.helper.gate, None));
        self.tool.password_fd()?.attach(&mut cmd);
        crate::process::guard_child(cmd.as_std_mut(), permit.until_std());
        Ok(cmd)
    }

    fn bmc(&self) -> String {
        self.tool.target().display_addr()
    }
}

#[async_trait]
impl SolLauncher for IpmiLauncher {
    async fn deactivate(&self) -> Result<(), SolError> {
        self.tool.deactivate().await
    }

    async fn activate(&self) -> Result<SolSession, SolError> {
        let cmd = self.session_command()?;
        let (child, mut pty) = pty::spawn(cmd, &self.processes, "sol-exec: ipmitool sol activate")
            .map_err(crate::sol::ipmitool::spawn_error)?;
        debug!(
            pid = child.pid(),
            "ipmitool sol activate started (under sol-exec)"
        );
        let outcome = tokio::time::timeout(self.timeout, read_banner(&mut pty)).await;
        match outcome {
            Ok(Ok(Preamble::Up { greeting, rest })) => Ok(SolSession {
                io: Box::new(pty),
                greeting,
                early_output: rest,
                control: Box::new(IpmiSession {
                    child,
                    tool: self.tool.clone(),
                }),
            }),
            Ok(Ok(Preamble::Exited(output))) => {
                let status = child.terminate().await;
                Err(SolError::Bmc {
                    bmc: self.bmc(),
                    message: last_words(&output, status, true),
                })
            }
            Ok(Err(e)) => {
                child.terminate().await;
                Err(SolError::Io(e))
            }
            Err(_) => {
                child.terminate().await;
                Err(SolError::Timeout {
                    what: format!("ipmitool sol activate on BMC {}", self.bmc()),
                    timeout: self.timeout,
                })
            }
        }
    }
}

struct IpmiSession {
    child: Supervised,
    tool: IpmiTool,
}

#[async_trait]
impl SessionControl for IpmiSession {
    async fn end(self: Box<Self>, deactivate: bool) -> Option<ExitStatus> {
        if deactivate {
            if let Err(e) = self.tool.deactivate().await {
                warn!(error = %e, "sol deactivate failed; the BMC frees the payload when its session times out");
            }
        }
        self.child.terminate().await
    }
}

enum Preamble {
    /// The banner (its whole line, CRLF-terminated) and any output after it.
    Up { greeting: Bytes, rest: Bytes },
    /// ipmitool closed the pty first; everything it printed.
    Exited(Vec<u8>),
}

async fn read_banner(pty: &mut PtyStream) -> std::io::Result<Preamble> {
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = pty.read(&mut chunk).await?;
        if n == 0 {
            return Ok(Preamble::Exited(seen));
        }
        seen.extend_from_slice(&chunk[..n]);
        if let Some(at) = find(&seen, BANNER) {
            let end = seen[at..]
                .iter()
                .position(|b| *b == b'\n')
                .map_or(seen.len(), |p| at + p + 1);
            let rest = Bytes::copy_from_slice(&seen[end..]);
            return Ok(Preamble::Up {
                greeting: crlf(&seen[..end]),
                rest,
            });
        }
        if seen.len() > MAX_PREAMBLE {
            seen.drain(..seen.len() - MAX_PREAMBLE);
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Lone LFs made CRLF (ipmitool's banner goes to a raw terminal).
fn crlf(text: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(text.len() + 2);
    for (i, b) in text.iter().enumerate() {
        if *b == b'\n' && (i == 0 || text[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(*b);
    }
    Bytes::from(out)
}

/// ipmitool's last words as one readable line: every non-empty line of
/// `output` (`all_lines`), or only the last one (after a session, where the
/// output before it is the node's), plus how it exited.
pub(crate) fn last_words(output: &[u8], status: Option<ExitStatus>, all_lines: bool) -> String {
    let text = String::from_utf8_lossy(output);
    let lines: Vec<String> = text
        .lines()
        .map(|l| l.chars().filter(|c| !c.is_control()).collect::<String>())
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    let words = if all_lines {
        lines.join("; ")
    } else {
        lines.last().cloned().unwrap_or_default()
    };
    let words: String = words.chars().take(300).collect();
    let exit = match status {
        Some(s) => format!("ipmitool ended ({s})"),
        None => "ipmitool ended".to_owned(),
    };
    let mut msg = if words.is_empty() {
        format!("{exit} and said nothing")
    } else {
        format!("{words} ({exit})")
    };
    crate::sol::ipmitool::explain(&mut msg);
    msg
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    #[test]
    fn last_words_are_ipmitools_own() {
        let s = last_words(
            b"Info: SOL payload already active on another session\n",
            Some(ExitStatus::from_raw(1 << 8)),
            true,
        );
        assert_eq!(
            s,
            "Info: SOL payload already active on another session (ipmitool ended (exit status: 1))"
        );
        let s = last_words(b"login: \r\n\x1b[0m\r\nbye now\r\n", None, false);
        assert_eq!(s, "bye now (ipmitool ended)");
        assert!(last_words(b"", None, true).contains("said nothing"));
        let s = last_words(
            b"Error: Unable to establish IPMI v2 / RMCP+ session\n",
            None,
            true,
        );
        assert!(s.contains("unreachable"), "{s}");
    }

    #[test]
    fn the_banner_line_gets_crlf() {
        assert_eq!(
            &crlf(b"[SOL Session operational.]\n")[..],
            b"[SOL Session operational.]\r\n"
        );
        assert_eq!(&crlf(b"a\r\nb\n")[..], b"a\r\nb\r\n");
    }
}
