//! Processes as `/proc` shows them, always by pid and start time (never by
//! name): a console-svc's descendants, the records in its
//! `terminal_pid_dir`, liveness checks that survive pid reuse, and scans of
//! every process's command line.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};
use tokio::time::Instant;

/// One process, identified by pid and start time (field 22 of `stat`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Proc {
    pub pid: i32,
    pub start: u64,
    pub what: String,
}

impl fmt::Display for Proc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.pid, self.what)
    }
}

/// The fields of `/proc/<pid>/stat` we use.
#[derive(Clone, Debug)]
pub struct Stat {
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    pub start: u64,
}

pub fn stat(pid: i32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after: Vec<&str> = text
        .get(text.rfind(')')? + 2..)?
        .split_whitespace()
        .collect();
    Some(Stat {
        state: after.first()?.chars().next()?,
        ppid: after.get(1)?.parse().ok()?,
        pgrp: after.get(2)?.parse().ok()?,
        start: after.get(19)?.parse().ok()?,
    })
}

/// Every pid in `/proc`.
pub fn all_pids() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// `/proc/<pid>/cmdline` with NULs shown as spaces.
pub fn cmdline(pid: i32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&raw)
        .replace('\0', " ")
        .trim()
        .to_owned()
}

impl Proc {
    pub fn of(pid: i32) -> Option<Proc> {
        let st = stat(pid)?;
        Some(Proc {
            pid,
            start: st.start,
            what: cmdline(pid),
        })
    }

    /// Still the same process, and not a zombie.
    pub fn alive(&self) -> bool {
        stat(self.pid).is_some_and(|s| s.start == self.start && s.state != 'Z')
    }
}

/// Every live descendant of `root` (children, their children, ...).
pub fn descendants(root: i32) -> Vec<Proc> {
    let table: Vec<(i32, Stat)> = all_pids()
        .into_iter()
        .filter_map(|p| Some((p, stat(p)?)))
        .collect();
    let mut found: Vec<i32> = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            table
                .iter()
                .filter(|(_, s)| s.ppid == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    found[1..]
        .iter()
        .filter_map(|p| Proc::of(*p))
        .filter(|p| p.alive())
        .collect()
}

/// The live processes recorded in a console-svc `terminal_pid_dir`
/// (`<pid>` files holding `<start time> <label>`), with their process
/// groups' live members.
pub fn recorded(pid_dir: &Path) -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir(pid_dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let start: u64 = text
            .split_whitespace()
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if let Some(p) = Proc::of(pid).filter(|p| p.start == start && p.alive()) {
            out.push(p);
        }
        out.extend(group_members(pid).into_iter().filter(|m| m.pid != pid));
    }
    out
}

/// Live members of process group `pgrp`.
pub fn group_members(pgrp: i32) -> Vec<Proc> {
    all_pids()
        .into_iter()
        .filter(|p| stat(*p).is_some_and(|s| s.pgrp == pgrp && s.state != 'Z'))
        .filter_map(Proc::of)
        .collect()
}

/// Wait (bounded) until none of `procs` is alive; the error names survivors.
pub async fn wait_gone(procs: &[Proc], within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let left: Vec<String> = procs
            .iter()
            .filter(|p| p.alive())
            .map(Proc::to_string)
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("still running after {within:?}: {}", left.join("; "));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every process whose command line contains `needle`.
pub fn cmdlines_mentioning(needle: &str) -> Vec<String> {
    all_pids()
        .into_iter()
        .filter(|pid| file_mentions(*pid, "cmdline", needle))
        .map(|pid| format!("{pid}: {}", cmdline(pid)))
        .collect()
}

/// Those of `procs` whose environment contains `needle`.
pub fn environs_mentioning(procs: &[Proc], needle: &str) -> Vec<String> {
    procs
        .iter()
        .filter(|p| p.alive() && file_mentions(p.pid, "environ", needle))
        .map(Proc::to_string)
        .collect()
}

fn file_mentions(pid: i32, file: &str, needle: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/{file}"))
        .is_ok_and(|raw| crate::wire::find(&raw, needle.as_bytes()).is_some())
}

/// SIGKILL the process group of each process still alive (harness cleanup).
pub fn kill_groups(procs: &[Proc]) {
    use nix::sys::signal::{killpg, Signal};
    for p in procs.iter().filter(|p| p.alive()) {
        let pgrp = stat(p.pid).map(|s| s.pgrp).unwrap_or(p.pid);
        if pgrp == p.pid {
            let _ = killpg(nix::unistd::Pid::from_raw(pgrp), Signal::SIGKILL);
        } else {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid), Signal::SIGKILL);
        }
    }
}
