//! The one ipmitool runner: argv built as a vector (`-I lanplus`, the
//! password through [`PasswordFd`] at fd 3 as `-f /dev/fd/3`, never argv or
//! the environment), a bounded run, and ipmitool's own words summarised into
//! one line when it fails.
//!
//! Callers: console-svc's SOL backends and BMC probe (through their
//! `IpmiTool`, which spawns through its process table) and the conductor's
//! ipmi power driver (through [`Direct`]).

use std::ffi::OsString;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

use crate::{PasswordFd, Secret, PASSWORD_FD};

#[derive(Debug, thiserror::Error)]
pub enum IpmitoolError {
    #[error("cannot start {program}: {source}")]
    Spawn { program: String, source: io::Error },
    #[error("{what} did not finish within {timeout:?}")]
    Timeout { what: String, timeout: Duration },
    /// Still running at the caller's deadline (an HA lease's fence
    /// deadline): killed there at once.
    #[error("{what} was still running at the deadline and was killed")]
    PastDeadline { what: String },
    /// ipmitool talked to (or failed to reach) the BMC; `message` is its own
    /// words, trimmed into one line.
    #[error("BMC {bmc}: {message}")]
    Bmc {
        bmc: String,
        /// `ipmitool <command>`, for callers that name the command.
        what: String,
        message: String,
    },
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// One BMC as ipmitool's lanplus interface reaches it.
#[derive(Clone, Debug)]
pub struct Lanplus {
    pub address: String,
    pub port: u16,
    /// Empty: no `-U`.
    pub username: String,
    /// Empty: no `-f`.
    pub password: Secret,
    pub cipher_suite: String,
    /// ipmitool's `-L` word (ADMINISTRATOR, OPERATOR, USER, CALLBACK).
    pub privilege: String,
}

impl Lanplus {
    /// `address:port` for messages (IPv6 in brackets).
    pub fn display_addr(&self) -> String {
        match self.address.parse::<IpAddr>() {
            Ok(IpAddr::V6(v6)) => format!("[{v6}]:{}", self.port),
            _ => format!("{}:{}", self.address, self.port),
        }
    }

    /// ipmitool's arguments for `command` (e.g. `["sol", "activate"]`),
    /// without the program name. Safe to log: no password in it.
    pub fn args(&self, command: &[&str]) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "-I".into(),
            "lanplus".into(),
            "-H".into(),
            self.address.clone().into(),
            "-p".into(),
            self.port.to_string().into(),
            "-C".into(),
            self.cipher_suite.clone().into(),
            "-L".into(),
            self.privilege.clone().into(),
        ];
        if !self.username.is_empty() {
            args.extend(["-U".into(), self.username.clone().into()]);
        }
        if !self.password.is_empty() {
            args.extend(["-f".into(), format!("/dev/fd/{PASSWORD_FD}").into()]);
        }
        args.extend(command.iter().map(OsString::from));
        args
    }

    /// The password memfd, for a caller that builds its own command (socat).
    pub fn password_fd(&self) -> io::Result<PasswordFd> {
        PasswordFd::new(&self.password)
    }
}

/// How a runner starts its child: console-svc records it in its process
/// table, the conductor starts it directly ([`Direct`]).
pub trait Spawn {
    type Child: Running;
    fn spawn(&self, cmd: &mut Command, what: &str) -> io::Result<Self::Child>;
}

/// A started ipmitool as the runner sees it.
pub trait Running: Send {
    fn child_mut(&mut self) -> &mut Child;
    fn wait(&mut self) -> impl Future<Output = io::Result<ExitStatus>> + Send;
    /// Stop it (if still running) and forget it.
    fn terminate(self) -> impl Future<Output = ()> + Send;
}

/// Spawn with tokio directly; the child is killed when dropped.
pub struct Direct;

impl Spawn for Direct {
    type Child = DirectChild;
    fn spawn(&self, cmd: &mut Command, _what: &str) -> io::Result<DirectChild> {
        cmd.kill_on_drop(true).spawn().map(DirectChild)
    }
}

pub struct DirectChild(Child);

impl Running for DirectChild {
    fn child_mut(&mut self) -> &mut Child {
        &mut self.0
    }
    async fn wait(&mut self) -> io::Result<ExitStatus> {
        self.0.wait().await
    }
    async fn terminate(mut self) {
        let _ = self.0.start_kill();
        let _ = self.0.wait().await;
    }
}

/// ipmitool pointed at one BMC, with a time bound for short commands.
#[derive(Clone, Debug)]
pub struct Ipmitool {
    pub program: OsString,
    pub lan: Lanplus,
    pub timeout: Duration,
}

impl Ipmitool {
    pub fn new(program: impl Into<OsString>, lan: Lanplus, timeout: Duration) -> Self {
        Self {
            program: program.into(),
            lan,
            timeout,
        }
    }

    /// A command for `ipmitool ... <command>` with the password attached at
    /// fd 3 (when there is one).
    pub fn command(&self, command: &[&str]) -> io::Result<Command> {
        let mut cmd = Command::new(&self.program);
        cmd.args(self.lan.args(command));
        if !self.lan.password.is_empty() {
            self.lan.password_fd()?.attach(&mut cmd);
        }
        Ok(cmd)
    }

    /// Run a short ipmitool command to completion within the timeout, the
    /// child leading its own process group; its stdout on success, its own
    /// error text otherwise.
    pub async fn run<S: Spawn>(
        &self,
        spawner: &S,
        command: &[&str],
    ) -> Result<String, IpmitoolError> {
        let cmd = self.command(command)?;
        self.run_command(spawner, cmd, command, None).await
    }

    /// [`Ipmitool::run`] for a command the caller prepared (from
    /// [`Ipmitool::command`], plus its own pre-exec checks), killed at once
    /// if still running at `deadline`.
    pub async fn run_command<S: Spawn>(
        &self,
        spawner: &S,
        mut cmd: Command,
        command: &[&str],
        deadline: Option<tokio::time::Instant>,
    ) -> Result<String, IpmitoolError> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let what = format!("ipmitool {}", command.join(" "));
        let mut child = spawner
            .spawn(&mut cmd, &what)
            .map_err(|source| IpmitoolError::Spawn {
                program: self.program.to_string_lossy().into_owned(),
                source,
            })?;
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
        let bound = deadline.map_or(timeout_at, |d| d.min(timeout_at));
        let (status, out, err) = match tokio::time::timeout_at(bound, io).await {
            Ok(r) => {
                child.terminate().await;
                r?
            }
            Err(_) if bound < timeout_at => {
                // Killed at once (dropped): past the deadline not even
                // ipmitool's own goodbye may reach the BMC.
                drop(child);
                return Err(IpmitoolError::PastDeadline { what });
            }
            Err(_) => {
                child.terminate().await;
                return Err(IpmitoolError::Timeout {
                    what: format!("{what} on BMC {}", self.lan.display_addr()),
                    timeout: self.timeout,
                });
            }
        };
        let out = String::from_utf8_lossy(&out).into_owned();
        let err = String::from_utf8_lossy(&err).into_owned();
        if status.success() {
            Ok(out)
        } else {
            Err(IpmitoolError::Bmc {
                bmc: self.lan.display_addr(),
                what,
                message: summarize(&err, &out, status.code()),
            })
        }
    }
}

/// ipmitool's messages made into one readable line.
pub fn summarize(stderr: &str, stdout: &str, code: Option<i32>) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn lan(password: &str) -> Lanplus {
        Lanplus {
            address: "127.0.0.1".into(),
            port: 21100,
            username: "admin".into(),
            password: Secret::new(password),
            cipher_suite: "3".into(),
            privilege: "ADMINISTRATOR".into(),
        }
    }

    fn strings(args: Vec<OsString>) -> Vec<String> {
        args.into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    #[test]
    fn argv_has_the_cipher_suite_and_no_password() {
        let args = strings(lan("s3cret-pw").args(&["sol", "activate"]));
        let joined = args.join(" ");
        assert!(joined.contains("-C 3"), "{joined}");
        assert!(joined.contains("-f /dev/fd/3"), "{joined}");
        assert!(joined.ends_with("sol activate"));
        assert!(!joined.contains("s3cret-pw"));
        assert!(!args.iter().any(|a| a == "-P" || a == "-E"));
    }

    #[test]
    fn no_password_no_fd_flag_and_ipv6_in_brackets() {
        let mut l = lan("");
        l.username.clear();
        let joined = strings(l.args(&["power", "status"])).join(" ");
        assert!(!joined.contains("-f") && !joined.contains("-U"), "{joined}");
        l.address = "::1".into();
        assert_eq!(l.display_addr(), "[::1]:21100");
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

    /// A stand-in ipmitool: a shell script that sees ipmitool's argv.
    ///
    /// A child `sh` writes it: a write fd opened in this process can be
    /// inherited by another test's fork before its exec, and the script's
    /// own exec then fails with ETXTBSY ("Text file busy"; seen in CI).
    fn tool(script: &str, timeout: Duration) -> (tempfile::TempDir, Ipmitool) {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fake-ipmitool");
        let mut sh = std::process::Command::new("sh")
            .args(["-c", "cat > \"$0\" && chmod 755 \"$0\""])
            .arg(&path)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = sh.stdin.take().unwrap();
        stdin
            .write_all(format!("#!/bin/sh\n{script}\n").as_bytes())
            .unwrap();
        drop(stdin);
        assert!(sh.wait().unwrap().success(), "writing {}", path.display());
        (dir, Ipmitool::new(path, lan("pw-at-fd3"), timeout))
    }

    #[tokio::test]
    async fn run_returns_stdout_and_the_child_reads_fd_3() {
        let (_dir, t) = tool("cat /dev/fd/3; echo \" $*\"", Duration::from_secs(5));
        let out = t.run(&Direct, &["power", "status"]).await.unwrap();
        assert!(out.starts_with("pw-at-fd3 -I lanplus"), "{out}");
        assert!(out.trim_end().ends_with("power status"), "{out}");
    }

    #[tokio::test]
    async fn failures_are_summarised_with_the_bmc() {
        let (_dir, t) = tool(
            "echo 'Error: Unable to establish IPMI v2 / RMCP+ session' >&2; exit 1",
            Duration::from_secs(5),
        );
        match t.run(&Direct, &["power", "on"]).await {
            Err(IpmitoolError::Bmc { bmc, what, message }) => {
                assert_eq!(bmc, "127.0.0.1:21100");
                assert_eq!(what, "ipmitool power on");
                assert!(message.contains("unreachable"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_hanging_ipmitool_times_out() {
        let (_dir, t) = tool("exec sleep 30", Duration::from_millis(200));
        let started = std::time::Instant::now();
        let err = t.run(&Direct, &["power", "status"]).await.unwrap_err();
        assert!(
            matches!(&err, IpmitoolError::Timeout { what, .. } if what.contains("on BMC 127.0.0.1:21100")),
            "{err:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_missing_program_is_a_spawn_error() {
        let t = Ipmitool::new("/nonexistent/ipmitool", lan(""), Duration::from_secs(1));
        let err = t.run(&Direct, &["power", "status"]).await.unwrap_err();
        assert!(matches!(err, IpmitoolError::Spawn { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn a_run_past_its_deadline_is_killed_there() {
        let (_dir, t) = tool("exec sleep 30", Duration::from_secs(20));
        let started = std::time::Instant::now();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
        let cmd = t.command(&["sol", "deactivate"]).unwrap();
        let err = t
            .run_command(&Direct, cmd, &["sol", "deactivate"], Some(deadline))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, IpmitoolError::PastDeadline { what } if what == "ipmitool sol deactivate"),
            "{err:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
