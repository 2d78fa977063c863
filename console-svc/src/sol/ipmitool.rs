//! ipmitool invocations: argv built as a vector, the password through a
//! sealed memfd at fd 3 (`-f /dev/fd/3`), never argv or the environment.
//!
//! Every invocation is a BMC action, so every one passes the claim's BMC
//! gate ([`Fence::permit`]) immediately before it is spawned, and again in
//! the child between fork and exec (the deadline on CLOCK_MONOTONIC, see
//! [`crate::process::guard_child`]): a replica paused past its lease's fence
//! deadline sends nothing to the BMC. The child also dies with console-svc
//! (`PR_SET_PDEATHSIG`).
//!
//! Callers: the native backend (deactivate, then `sol activate` under a pty),
//! the socat backend (its end-of-console deactivate; the per-connection
//! helper builds its own commands), the manager's BMC probe.

use std::ffi::OsString;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use tokio::io::AsyncReadExt;
use tokio::process::Command;

use super::SolError;
use crate::coordinator::gate::BmcPermit;
use crate::coordinator::Fence;
use crate::process::ProcessTable;
use crate::secret::Secret;
use crate::spec::IpmiTarget;

/// The fd number ipmitool reads its password from.
pub const PASSWORD_FD: RawFd = 3;

/// One BMC as seen through ipmitool, under one console's claim.
#[derive(Clone)]
pub struct IpmiTool {
    program: OsString,
    target: IpmiTarget,
    timeout: Duration,
    processes: Arc<ProcessTable>,
    fence: Fence,
}

impl IpmiTool {
    pub fn new(
        program: impl Into<OsString>,
        target: IpmiTarget,
        timeout: Duration,
        processes: Arc<ProcessTable>,
        fence: Fence,
    ) -> Self {
        Self {
            program: program.into(),
            target,
            timeout,
            processes,
            fence,
        }
    }

    /// The BMC gate for this claim, now.
    pub fn permit(&self) -> Result<BmcPermit, SolError> {
        Ok(self.fence.permit()?)
    }

    pub fn target(&self) -> &IpmiTarget {
        &self.target
    }

    pub fn program(&self) -> &OsString {
        &self.program
    }

    /// ipmitool's arguments for `command` (e.g. `["sol", "activate"]`),
    /// without the program name. Safe to log: no password in it.
    pub fn args(&self, command: &[&str]) -> Vec<OsString> {
        let t = &self.target;
        let mut args: Vec<OsString> = vec![
            "-I".into(),
            "lanplus".into(),
            "-H".into(),
            t.address.clone().into(),
            "-p".into(),
            t.port.to_string().into(),
            "-C".into(),
            t.cipher_suite.to_string().into(),
            "-L".into(),
            t.privilege.as_ipmitool_arg().into(),
        ];
        if !t.username.is_empty() {
            args.extend(["-U".into(), t.username.clone().into()]);
        }
        if !t.password.is_empty() {
            args.extend(["-f".into(), format!("/dev/fd/{PASSWORD_FD}").into()]);
        }
        args.extend(command.iter().map(OsString::from));
        args
    }

    /// A command for `ipmitool ... <command>` with the password attached at
    /// fd 3, only while the BMC gate is open; the child re-checks the
    /// deadline before exec and dies with console-svc.
    pub fn command(&self, command: &[&str]) -> Result<Command, SolError> {
        self.command_under(&self.permit()?, command)
    }

    fn command_under(&self, permit: &BmcPermit, command: &[&str]) -> Result<Command, SolError> {
        let mut cmd = Command::new(&self.program);
        cmd.args(self.args(command));
        PasswordFd::new(&self.target.password)?.attach(&mut cmd);
        crate::process::guard_child(cmd.as_std_mut(), permit.until_std());
        Ok(cmd)
    }

    /// The password memfd, for a caller that builds its own command (socat).
    pub fn password_fd(&self) -> io::Result<PasswordFd> {
        PasswordFd::new(&self.target.password)
    }

    /// Run a short ipmitool command to completion within the timeout; its
    /// stdout on success, its own error text otherwise.
    /// A run still going at the lease's fence deadline is killed there (no
    /// ipmitool of this replica talks to the BMC past it).
    pub async fn run(&self, command: &[&str]) -> Result<String, SolError> {
        let permit = self.permit()?;
        let mut cmd = self.command_under(&permit, command)?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let what = format!("ipmitool {}", command.join(" "));
        let mut child = self.processes.spawn(&mut cmd, &what).map_err(spawn_error)?;
        let mut stdout = child.child_mut().stdout.take().expect("piped");
        let mut stderr = child.child_mut().stderr.take().expect("piped");
        let io = async {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let (a, b) = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
            a?;
            b?;
            let status = child.wait().await?;
            Ok::<_, io::Error>((status, out, err))
        };
        let timeout_at = tokio::time::Instant::now() + self.timeout;
        let bound = permit.until().map_or(timeout_at, |d| d.min(timeout_at));
        let (status, out, err) = match tokio::time::timeout_at(bound, io).await {
            Ok(r) => r?,
            Err(_) if bound < timeout_at => {
                // SIGKILL at once (dropped): past the deadline not even
                // ipmitool's own goodbye may reach the BMC.
                drop(child);
                return Err(SolError::Fenced(
                    crate::coordinator::CoordError::PastDeadline(format!(
                        "{what} was still running at the fence deadline and was killed"
                    )),
                ));
            }
            Err(_) => {
                child.terminate().await;
                return Err(SolError::Timeout {
                    what: format!("{what} on BMC {}", self.target.display_addr()),
                    timeout: self.timeout,
                });
            }
        };
        child.terminate().await;
        let out = String::from_utf8_lossy(&out).into_owned();
        let err = String::from_utf8_lossy(&err).into_owned();
        if status.success() {
            Ok(out)
        } else {
            Err(SolError::Bmc {
                bmc: self.target.display_addr(),
                message: summarize(&err, &out, status.code()),
            })
        }
    }

    /// End any SOL session on the BMC (ours from a previous run included).
    /// A payload that is not active is fine.
    pub async fn deactivate(&self) -> Result<(), SolError> {
        match self.run(&["sol", "deactivate"]).await {
            Err(SolError::Bmc { message, .. }) if message.contains("already de-activated") => {
                Ok(())
            }
            other => other.map(drop),
        }
    }

    /// Is the BMC there and does it accept our credentials? Never touches SOL.
    pub async fn probe(&self) -> Result<(), SolError> {
        // One-second timeout, two retries: an answer in ~2 s either way
        // (ipmitool's defaults take far longer to give up).
        self.run(&["-N", "1", "-R", "2", "chassis", "power", "status"])
            .await
            .map(drop)
    }
}

/// A failed ipmitool spawn; the child's own refusal at the fence deadline
/// (see [`crate::process::guard_child`]) is the gate's.
pub fn spawn_error(source: io::Error) -> SolError {
    if crate::process::refused_past_deadline(&source) {
        return SolError::Fenced(crate::coordinator::CoordError::PastDeadline(
            "the deadline passed between the check and the exec".into(),
        ));
    }
    SolError::Spawn {
        program: "ipmitool",
        source,
    }
}

/// ipmitool's messages made into one readable line.
fn summarize(stderr: &str, stdout: &str, code: Option<i32>) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .chain(stdout.lines())
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let mut msg = if lines.is_empty() {
        format!("ipmitool exited with status {code:?} and said nothing")
    } else {
        lines.join("; ")
    };
    explain(&mut msg);
    msg
}

/// Add what ipmitool's terse session error usually means.
pub fn explain(msg: &mut String) {
    if msg.contains("Unable to establish IPMI v2 / RMCP+ session") {
        msg.push_str("; the BMC is unreachable, or it rejected the credentials or cipher suite");
    }
}

/// A password in an anonymous, sealed memory file. The child sees it as
/// `/dev/fd/3`; opening that path re-reads the file from the start, so a
/// socat that forks one ipmitool per connection can hand the same fd to each.
pub struct PasswordFd(OwnedFd);

impl PasswordFd {
    pub fn new(password: &Secret) -> io::Result<Self> {
        let fd = memfd_create(
            "porthole-bmc-password",
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )?;
        let mut file = std::fs::File::from(fd);
        file.write_all(password.expose().as_bytes())?;
        let fd = OwnedFd::from(file);
        fcntl(
            &fd,
            FcntlArg::F_ADD_SEALS(
                SealFlag::F_SEAL_WRITE
                    | SealFlag::F_SEAL_GROW
                    | SealFlag::F_SEAL_SHRINK
                    | SealFlag::F_SEAL_SEAL,
            ),
        )?;
        Ok(Self(fd))
    }

    /// Make the file the child's fd 3 (and only the child's: the original
    /// stays close-on-exec).
    #[expect(
        unsafe_code,
        reason = "Command::pre_exec runs code between fork and exec"
    )]
    pub fn attach(self, cmd: &mut Command) {
        let fd = self.0;
        // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let raw = fd.as_raw_fd();
                if raw == PASSWORD_FD {
                    if libc::fcntl(raw, libc::F_SETFD, 0) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                } else if libc::dup2(raw, PASSWORD_FD) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

#[expect(unsafe_code, reason = "FromRawFd is an unsafe trait method")]
impl FromRawFd for PasswordFd {
    unsafe fn from_raw_fd(fd: RawFd) -> Self {
        // SAFETY: the caller guarantees `fd` is open and owned by nobody
        // else (FromRawFd's contract); that ownership passes to the OwnedFd.
        Self(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::PrivilegeLevel;

    /// The tool, and the scratch dir of its process table (removed on drop).
    fn tool() -> (IpmiTool, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let coordinator = Arc::new(crate::coordinator::local::LocalCoordinator::new("t"));
        let ownership = crate::coordinator::Ownership {
            node: crate::spec::NodeId::parse("n").unwrap(),
            token: 1,
            lease: 0,
        };
        let tool = IpmiTool::new(
            "ipmitool",
            IpmiTarget {
                address: "127.0.0.1".into(),
                port: 21100,
                username: "admin".into(),
                password: Secret::new("s3cret-pw"),
                cipher_suite: 3,
                privilege: PrivilegeLevel::Administrator,
            },
            Duration::from_secs(5),
            Arc::new(ProcessTable::open(dir.path(), Duration::from_secs(1)).unwrap()),
            Fence::new(coordinator, ownership),
        );
        (tool, dir)
    }

    #[test]
    fn argv_has_the_cipher_suite_and_no_password() {
        let args: Vec<String> = tool()
            .0
            .args(&["sol", "activate"])
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        let joined = args.join(" ");
        assert!(joined.contains("-C 3"), "{joined}");
        assert!(joined.contains("-f /dev/fd/3"), "{joined}");
        assert!(joined.ends_with("sol activate"));
        assert!(!joined.contains("s3cret-pw"));
        assert!(!args.iter().any(|a| a == "-P" || a == "-E"));
    }

    #[tokio::test]
    async fn the_child_reads_the_password_from_fd_3_every_time() {
        // `cat /dev/fd/3` twice stands in for two ipmitool runs under one socat.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "cat /dev/fd/3; echo; cat /dev/fd/3"]);
        let (tool, _dir) = tool();
        tool.password_fd().unwrap().attach(&mut cmd);
        let out = cmd.output().await.unwrap();
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            "s3cret-pw\ns3cret-pw"
        );
    }

    /// An ipmitool (here a shell that would sleep 30 s) still running at
    /// the fence deadline is killed there; one asked for after it is never
    /// started.
    #[tokio::test]
    async fn a_run_does_not_outlive_the_fence_deadline() {
        use crate::coordinator::gate::testing::Gated;
        use crate::coordinator::Coordinator;
        let (base, scratch) = tool();
        let dir = scratch.path().join("dl");
        let (gated, _state) = Gated::new(9, Duration::from_millis(400));
        let gated = Arc::new(gated);
        let ownership = gated
            .acquire(&crate::spec::NodeId::parse("n").unwrap())
            .await
            .unwrap();
        let script = dir.join("slow-ipmitool");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&script, "#!/bin/sh\nexec sleep 30\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        let slow = IpmiTool {
            program: script.into_os_string(),
            fence: Fence::new(gated, ownership),
            ..base
        };
        let started = tokio::time::Instant::now();
        let err = slow.run(&["sol", "deactivate"]).await.unwrap_err();
        let took = started.elapsed();
        assert!(matches!(err, SolError::Fenced(_)), "{err}");
        assert!(err.to_string().contains("killed"), "{err}");
        assert!(took < Duration::from_secs(2), "killed after {took:?}");
        let err = slow.run(&["sol", "deactivate"]).await.unwrap_err();
        assert!(err.to_string().contains("fence deadline"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn summaries_explain_session_failures() {
        let s = summarize(
            "Error: Unable to establish IPMI v2 / RMCP+ session\n",
            "",
            Some(1),
        );
        assert!(s.contains("unreachable"), "{s}");
        assert!(summarize("", "", Some(1)).contains("said nothing"));
    }
}
