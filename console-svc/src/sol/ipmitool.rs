//! ipmitool as console-svc's SOL code runs it: porthole-bmc's one runner
//! (argv, password memfd at fd 3 as `-f /dev/fd/3`, timeout, error summary)
//! pointed at a console's [`IpmiTarget`], its children recorded in the
//! [`ProcessTable`] so a crash leaves none behind.
//!
//! Callers: the native backend (deactivate, then `sol activate` under a pty),
//! the socat backend (the EXEC'd helper), the manager's BMC probe.

use std::ffi::OsString;
use std::io;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

pub use porthole_bmc::ipmitool::explain;
use porthole_bmc::ipmitool::{Ipmitool, IpmitoolError, Lanplus, Running, Spawn};
pub use porthole_bmc::{PasswordFd, PASSWORD_FD};
use tokio::process::{Child, Command};

use super::SolError;
use crate::process::{ProcessTable, Supervised};
use crate::spec::IpmiTarget;

/// One BMC as seen through ipmitool.
#[derive(Clone)]
pub struct IpmiTool {
    tool: Ipmitool,
    target: IpmiTarget,
    processes: Arc<ProcessTable>,
}

impl IpmiTool {
    pub fn new(
        program: impl Into<OsString>,
        target: IpmiTarget,
        timeout: Duration,
        processes: Arc<ProcessTable>,
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
        }
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
    /// fd 3 (the caller makes the child lead its own process group).
    pub fn command(&self, command: &[&str]) -> io::Result<Command> {
        self.tool.command(command)
    }

    /// The password memfd, for a caller that builds its own command (socat).
    pub fn password_fd(&self) -> io::Result<PasswordFd> {
        self.tool.lan.password_fd()
    }

    /// Run a short ipmitool command to completion within the timeout; its
    /// stdout on success, its own error text otherwise.
    pub async fn run(&self, command: &[&str]) -> Result<String, SolError> {
        self.tool
            .run(&Recorded(&self.processes), command)
            .await
            .map_err(SolError::from)
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
            IpmitoolError::Spawn { source, .. } => SolError::Spawn {
                program: "ipmitool",
                source,
            },
            IpmitoolError::Timeout { what, timeout } => SolError::Timeout { what, timeout },
            IpmitoolError::Bmc { bmc, message, .. } => SolError::Bmc { bmc, message },
            IpmitoolError::Io(e) => SolError::Io(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use crate::spec::PrivilegeLevel;

    fn tool(dir: &std::path::Path, program: &str) -> IpmiTool {
        IpmiTool::new(
            program,
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
        )
    }

    #[test]
    fn argv_has_the_targets_cipher_suite_privilege_and_no_password() {
        let dir = tempfile::tempdir().unwrap();
        let args: Vec<String> = tool(dir.path(), "ipmitool")
            .args(&["sol", "activate"])
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        let joined = args.join(" ");
        assert!(joined.contains("-C 3 -L ADMINISTRATOR"), "{joined}");
        assert!(joined.contains("-f /dev/fd/3"), "{joined}");
        assert!(joined.ends_with("sol activate"));
        assert!(!joined.contains("s3cret-pw"));
    }

    #[tokio::test]
    async fn runs_are_recorded_then_forgotten_and_errors_keep_their_shape() {
        let dir = tempfile::tempdir().unwrap();
        let procs = dir.path().join("procs");
        std::fs::create_dir(&procs).unwrap();
        let script = dir.path().join("fake-ipmitool");
        // The table writes its record just after the spawn: give it a moment.
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nsleep 0.3; ls {} | wc -l; cat /dev/fd/3\n[ \"$*\" != \"${{*%fail}}\" ] && exit 1; exit 0\n",
                procs.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let t = tool(&procs, script.to_str().unwrap());
        let out = t.run(&["power", "status"]).await.unwrap();
        // While it ran, its record was in the table; after, none is left.
        assert_eq!(out, "1\ns3cret-pw");
        assert_eq!(std::fs::read_dir(&procs).unwrap().count(), 0);
        match t.run(&["fail"]).await {
            Err(SolError::Bmc { bmc, message }) => {
                assert_eq!(bmc, "127.0.0.1:21100");
                assert_eq!(message, "1; s3cret-pw");
            }
            other => panic!("{other:?}"),
        }
    }
}
