//! The processes console-svc starts (socat, ipmitool), recorded on disk so a
//! restart after `kill -9` can stop what the previous run left behind.
//!
//! Each child leads its own process group (the caller arranges that with
//! `process_group(0)` or `setsid`), so stopping it stops what it forked too.
//! A record is `<terminal_pid_dir>/<pid>` holding the child's start time
//! (field 22 of `/proc/<pid>/stat`) and a label; a pid is only signalled
//! while it still names the process that was recorded.
//!
//! ```text
//!  spawn ──▶ running ──terminate()──▶ SIGTERM group ──kill_timeout──▶ SIGKILL group ──▶ record removed
//!                 └──── (crash of console-svc) ──▶ sweep() at next start does the same
//! ```
//!
//! [`guard_child`] makes a child die with console-svc (`PR_SET_PDEATHSIG`,
//! checked against a parent that died before the `prctl`) and, for BMC
//! actions, refuse to exec once the lease's fence deadline has passed.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

pub struct ProcessTable {
    dir: PathBuf,
    kill_timeout: Duration,
}

/// A leftover found by [`ProcessTable::sweep`].
#[derive(Debug)]
pub struct Leftover {
    pub pid: i32,
    pub label: String,
    pub killed: bool,
}

impl ProcessTable {
    /// Use (and create, mode 0700) `dir` for records.
    pub fn open(dir: impl Into<PathBuf>, kill_timeout: Duration) -> io::Result<Self> {
        let dir = dir.into();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        Ok(Self { dir, kill_timeout })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn kill_timeout(&self) -> Duration {
        self.kill_timeout
    }

    /// Spawn `cmd` (which must make the child lead its own process group) and
    /// record it.
    pub fn spawn(&self, cmd: &mut Command, label: &str) -> io::Result<Supervised> {
        let child = cmd.spawn()?;
        let pid = child.id().expect("a freshly spawned child has a pid") as i32;
        let record = self.dir.join(pid.to_string());
        let start = start_time(pid).unwrap_or(0);
        fs::write(&record, format!("{start} {label}\n"))?;
        Ok(Supervised {
            child,
            pid,
            record: Some(record),
            kill_timeout: self.kill_timeout,
        })
    }

    /// Stop every process recorded by an earlier run of console-svc that is
    /// still the process that was recorded, and forget all records.
    pub async fn sweep(&self) -> io::Result<Vec<Leftover>> {
        let mut found = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let Some(pid) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            let text = fs::read_to_string(&path).unwrap_or_default();
            let (start, label) = text.trim().split_once(' ').unwrap_or(("0", ""));
            let start: u64 = start.parse().unwrap_or(0);
            let members = group_members(pid, start);
            let killed = !members.is_empty();
            if killed {
                stop_group(pid, &members, self.kill_timeout).await;
            }
            let _ = fs::remove_file(&path);
            found.push(Leftover {
                pid,
                label: label.to_owned(),
                killed,
            });
        }
        Ok(found)
    }
}

/// errno a guarded child exits its pre-exec with when the deadline passed.
const PAST_DEADLINE_ERRNO: i32 = libc::ETIMEDOUT;
/// errno a guarded child exits its pre-exec with when its parent is gone.
const ORPHANED_ERRNO: i32 = libc::ECHILD;

/// Arrange, between fork and exec of `cmd`'s child: SIGKILL when this
/// process dies (`PR_SET_PDEATHSIG`; a parent that died before the `prctl`
/// is caught by comparing `getppid` with our pid), and when `deadline` is
/// given, no exec at or after it (the BMC gate's last word, on
/// CLOCK_MONOTONIC, which the child shares with us). The death signal
/// follows the *thread* that forks: spawn from long-lived threads (tokio's
/// workers and the main thread are; the blocking pool's are not).
#[expect(
    unsafe_code,
    reason = "Command::pre_exec runs code between fork and exec"
)]
pub fn guard_child(cmd: &mut std::process::Command, deadline: Option<std::time::Instant>) {
    use std::os::unix::process::CommandExt as _;
    let parent = std::process::id() as libc::pid_t;
    // The deadline as CLOCK_MONOTONIC nanoseconds, computed here: the child
    // may only call async-signal-safe functions.
    let deadline_ns = deadline.map(|d| {
        let left = d.saturating_duration_since(std::time::Instant::now());
        monotonic_ns().saturating_add(left.as_nanos().min(i64::MAX as u128) as i64)
    });
    // SAFETY: prctl, getppid and clock_gettime are async-signal-safe, and the
    // error is built from an errno (no allocation) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) < 0
            {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(ORPHANED_ERRNO));
            }
            if let Some(at) = deadline_ns {
                if monotonic_ns() >= at {
                    return Err(io::Error::from_raw_os_error(PAST_DEADLINE_ERRNO));
                }
            }
            Ok(())
        });
    }
}

/// Did a spawn fail because [`guard_child`]'s deadline had passed?
pub fn refused_past_deadline(e: &io::Error) -> bool {
    e.raw_os_error() == Some(PAST_DEADLINE_ERRNO)
}

/// CLOCK_MONOTONIC in nanoseconds (async-signal-safe).
#[expect(
    unsafe_code,
    reason = "clock_gettime(2): libc has no safe wrapper that is async-signal-safe"
)]
fn monotonic_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec)
}

/// A recorded child. Dropping it without [`Supervised::terminate`] kills its
/// group at once.
pub struct Supervised {
    child: Child,
    pid: i32,
    record: Option<PathBuf>,
    kill_timeout: Duration,
}

impl Supervised {
    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Wait for the child to exit on its own (the group may live on).
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// SIGTERM the group, SIGKILL it after `kill_timeout`, reap, forget.
    pub async fn terminate(mut self) -> Option<ExitStatus> {
        let _ = killpg(Pid::from_raw(self.pid), Signal::SIGTERM);
        let status = match tokio::time::timeout(self.kill_timeout, self.child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
                self.child.wait().await.ok()
            }
        };
        // Members that outlived the leader (a socat fork, its ipmitool) go too.
        let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
        self.forget();
        status
    }

    fn forget(&mut self) {
        if let Some(record) = self.record.take() {
            let _ = fs::remove_file(record);
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if self.record.is_some() {
            let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
            let _ = self.child.start_kill();
            self.forget();
        }
    }
}

/// Field 22 of `/proc/<pid>/stat`: start time in clock ticks since boot.
pub fn start_time(pid: i32) -> Option<u64> {
    stat_fields(pid).and_then(|f| f.get(19)?.parse().ok())
}

/// Fields of `/proc/<pid>/stat` after the `(comm)` field, so index 0 is
/// field 3 (state), index 2 is field 5 (pgrp), index 19 is field 22.
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<String> = after.split_whitespace().map(str::to_owned).collect();
    (fields.first()? != "Z").then_some(fields)
}

/// Live processes of the group led by the recorded `leader`: the leader if
/// it still has the recorded start time; nothing if its pid now names another
/// process (Linux does not reuse a pid while it is still a process group id,
/// so the old group is gone); else the members of its group, which it forked
/// before it died.
fn group_members(leader: i32, start: u64) -> Vec<i32> {
    match start_time(leader) {
        Some(t) if t == start => return vec![leader],
        Some(_) => return Vec::new(),
        None => {}
    }
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            stat_fields(*pid).is_some_and(|f| {
                f.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(leader)
                    && f.get(19).and_then(|s| s.parse::<u64>().ok()) >= Some(start)
            })
        })
        .collect()
}

async fn stop_group(leader: i32, members: &[i32], grace: Duration) {
    let signal_all = |sig| {
        if members == [leader] {
            let _ = killpg(Pid::from_raw(leader), sig);
        } else {
            for pid in members {
                let _ = kill(Pid::from_raw(*pid), sig);
            }
        }
    };
    signal_all(Signal::SIGTERM);
    let deadline = tokio::time::Instant::now() + grace;
    while tokio::time::Instant::now() < deadline {
        if members.iter().all(|p| stat_fields(*p).is_none()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal_all(Signal::SIGKILL);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper() -> Command {
        let mut cmd = Command::new("sleep");
        cmd.arg("300").process_group(0);
        cmd
    }

    #[tokio::test]
    async fn terminate_stops_the_child_and_forgets_it() {
        let (dir, _scratch) = tempdir();
        let table = ProcessTable::open(&dir, Duration::from_secs(1)).unwrap();
        let child = table.spawn(&mut sleeper(), "sleep").unwrap();
        let pid = child.pid();
        assert!(dir.join(pid.to_string()).exists());
        child.terminate().await;
        assert!(stat_fields(pid).is_none());
        assert!(!dir.join(pid.to_string()).exists());
    }

    #[tokio::test]
    async fn sweep_kills_recorded_leftovers_but_not_a_reused_pid() {
        let (dir, _scratch) = tempdir();
        let table = ProcessTable::open(&dir, Duration::from_secs(1)).unwrap();
        let mut child = table.spawn(&mut sleeper(), "sleep").unwrap();
        let pid = child.pid();
        // Pretend console-svc died: keep the record, lose the handle.
        child.record = None;
        fs::write(
            dir.join(pid.to_string()),
            format!("{} sleep\n", start_time(pid).unwrap()),
        )
        .unwrap();
        // A record whose pid now names another process (start time differs).
        let mut other = sleeper().spawn().unwrap();
        let other_pid = other.id().unwrap() as i32;
        fs::write(dir.join(other_pid.to_string()), "1 stale\n").unwrap();

        let leftovers = table.sweep().await.unwrap();
        assert_eq!(leftovers.len(), 2);
        let _ = child.child.wait().await;
        assert!(stat_fields(pid).is_none(), "recorded leftover was stopped");
        assert!(stat_fields(other_pid).is_some(), "reused pid was spared");
        assert!(fs::read_dir(&dir).unwrap().next().is_none());
        other.kill().await.unwrap();
    }

    #[tokio::test]
    async fn a_guarded_child_does_not_exec_past_its_deadline() {
        let past = std::time::Instant::now();
        let mut cmd = std::process::Command::new("true");
        guard_child(&mut cmd, Some(past));
        let err = cmd.status().unwrap_err();
        assert!(refused_past_deadline(&err), "{err}");

        let later = std::time::Instant::now() + Duration::from_secs(30);
        let mut cmd = std::process::Command::new("true");
        guard_child(&mut cmd, Some(later));
        assert!(cmd.status().unwrap().success());
        let mut cmd = std::process::Command::new("true");
        guard_child(&mut cmd, None);
        assert!(cmd.status().unwrap().success());
    }

    /// The death signal is SIGKILL and follows the forking thread: a child
    /// spawned from a thread that then ends is killed at once (which is also
    /// why console-svc spawns only from long-lived threads).
    #[test]
    fn a_guarded_child_is_killed_when_its_parent_goes() {
        use std::os::unix::process::ExitStatusExt as _;
        let mut child = std::thread::spawn(|| {
            let mut cmd = std::process::Command::new("sleep");
            cmd.arg("30");
            guard_child(&mut cmd, None);
            cmd.spawn().unwrap()
        })
        .join()
        .unwrap();
        let since = std::time::Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(
                since.elapsed() < Duration::from_secs(5),
                "child outlived its parent"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    }

    /// A path inside a fresh scratch dir (the table creates it), and the
    /// dir's guard: both gone when the guard drops.
    fn tempdir() -> (PathBuf, tempfile::TempDir) {
        let scratch = tempfile::tempdir().unwrap();
        (scratch.path().join("pids"), scratch)
    }
}
