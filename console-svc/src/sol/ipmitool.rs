//! ipmitool invocations through porthole-bmc's one runner: argv built as a
//! vector, the password through its sealed memfd at fd 3 (`-f /dev/fd/3`),
//! never argv or the environment, the timeout and the error summary; the
//! children recorded in the [`ProcessTable`].
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
use std::io;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

pub use porthole_bmc::ipmitool::{explain, summarize};
use porthole_bmc::ipmitool::{Ipmitool, IpmitoolError, Lanplus, Running, Spawn};
pub use porthole_bmc::{PasswordFd, PASSWORD_FD};
use tokio::process::{Child, Command};

use super::SolError;
use crate::coordinator::gate::BmcPermit;
use crate::coordinator::Fence;
use crate::process::{ProcessTable, Supervised};
use crate::spec::IpmiTarget;

/// One BMC as seen through ipmitool, under one console's claim.
#[derive(Clone)]
pub struct IpmiTool {
    tool: Ipmitool,
    target: IpmiTarget,
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
        let lan = Lanplus {
            address: target.address.clone(),
            port: target.port,
            username: target.username.clone(),
            password: target.password.clone(),
            cipher_suite: target.cipher_suite.to_string(),
            privilege: target.privilege.as_ipmitool_arg().to_owned(),
        };
        Self {
            tool: Ipmitool::new(program, lan, timeout),
            target,
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
        &self.tool.program
    }

    /// ipmitool's arguments for `command` (e.g. `["sol", "activate"]`),
    /// without the program name. Safe to log: no password in it.
    pub fn args(&self, command: &[&str]) -> Vec<OsString> {
        self.tool.lan.args(command)
    }

    /// A command for `ipmitool ... <command>` with the password attached at
    /// fd 3, only while the BMC gate is open; the child re-checks the
    /// deadline before exec and dies with console-svc.
    pub fn command(&self, command: &[&str]) -> Result<Command, SolError> {
        self.command_under(&self.permit()?, command)
    }

    fn command_under(&self, permit: &BmcPermit, command: &[&str]) -> Result<Command, SolError> {
        let mut cmd = self.tool.command(command)?;
        crate::process::guard_child(cmd.as_std_mut(), permit.until_std());
        Ok(cmd)
    }

    /// The password memfd, for a caller that builds its own command (socat).
    pub fn password_fd(&self) -> io::Result<PasswordFd> {
        self.tool.lan.password_fd()
    }

    /// Run a short ipmitool command to completion within the timeout; its
    /// stdout on success, its own error text otherwise.
    /// A run still going at the lease's fence deadline is killed there (no
    /// ipmitool of this replica talks to the BMC past it).
    pub async fn run(&self, command: &[&str]) -> Result<String, SolError> {
        let permit = self.permit()?;
        let cmd = self.command_under(&permit, command)?;
        let run = self
            .tool
            .run_command(&Recorded(&self.processes), cmd, command, permit.until())
            .await;
        run.map_err(|e| match e {
            IpmitoolError::Spawn { source, .. } => spawn_error(source),
            IpmitoolError::PastDeadline { what } => {
                SolError::Fenced(crate::coordinator::CoordError::PastDeadline(format!(
                    "{what} was still running at the fence deadline and was killed"
                )))
            }
            other => SolError::from(other),
        })
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

/// Children spawned through the process table.
struct Recorded<'a>(&'a ProcessTable);

impl Spawn for Recorded<'_> {
    type Child = Supervised;
    fn spawn(&self, cmd: &mut Command, what: &str) -> io::Result<Supervised> {
        self.0.spawn(cmd, what)
    }
}

impl Running for Supervised {
    fn child_mut(&mut self) -> &mut Child {
        Supervised::child_mut(self)
    }
    async fn wait(&mut self) -> io::Result<ExitStatus> {
        Supervised::wait(self).await
    }
    async fn terminate(self) {
        Supervised::terminate(self).await;
    }
}

impl From<IpmitoolError> for SolError {
    fn from(e: IpmitoolError) -> Self {
        match e {
            IpmitoolError::Spawn { source, .. } => spawn_error(source),
            IpmitoolError::Timeout { what, timeout } => SolError::Timeout { what, timeout },
            IpmitoolError::PastDeadline { what } => {
                SolError::Fenced(crate::coordinator::CoordError::PastDeadline(format!(
                    "{what} was still running at the fence deadline and was killed"
                )))
            }
            IpmitoolError::Bmc { bmc, message, .. } => SolError::Bmc { bmc, message },
            IpmitoolError::Io(e) => SolError::Io(e),
        }
    }
}

#[async_trait::async_trait]
impl crate::backend::BmcProbe for IpmiTool {
    async fn probe(&self) -> Result<(), crate::backend::BackendError> {
        IpmiTool::probe(self).await.map_err(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use crate::spec::PrivilegeLevel;

    /// A tool whose process table lives in a scratch dir, removed when the
    /// returned guard drops.
    fn tool() -> (IpmiTool, tempfile::TempDir) {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().join("pids");
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
            Arc::new(ProcessTable::open(dir, Duration::from_secs(1)).unwrap()),
            Fence::new(coordinator, ownership),
        );
        (tool, scratch)
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
        tool().0.password_fd().unwrap().attach(&mut cmd);
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
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().to_path_buf();
        let (gated, _state) = Gated::new(9, Duration::from_millis(400));
        let gated = Arc::new(gated);
        let ownership = gated
            .acquire(&crate::spec::NodeId::parse("n").unwrap())
            .await
            .unwrap();
        let script = dir.join("slow-ipmitool");
        std::fs::create_dir_all(&dir).unwrap();
        crate::sol::test_context::write_script(&script, "#!/bin/sh\nexec sleep 30\n");
        let (base, _base_dir) = tool();
        let slow = IpmiTool::new(
            script.into_os_string(),
            base.target.clone(),
            Duration::from_secs(5),
            base.processes.clone(),
            Fence::new(gated, ownership),
        );
        let started = tokio::time::Instant::now();
        let err = slow.run(&["sol", "deactivate"]).await.unwrap_err();
        let took = started.elapsed();
        assert!(matches!(err, SolError::Fenced(_)), "{err}");
        assert!(err.to_string().contains("killed"), "{err}");
        assert!(took < Duration::from_secs(2), "killed after {took:?}");
        let err = slow.run(&["sol", "deactivate"]).await.unwrap_err();
        assert!(err.to_string().contains("fence deadline"), "{err}");
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
