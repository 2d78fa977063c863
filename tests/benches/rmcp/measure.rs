//! What the bench reads from /proc: RSS and PSS (with PSS's anonymous and
//! file-backed parts) of a process and its descendants or of a list of
//! pids (`smaps_rollup`), their CPU time in clock ticks (`stat`), a
//! process's open files (`fd`), the CPU time of this process's threads by
//! name (`task`), the load average and the kernel's UDP receive-buffer
//! drops (`/proc/net/snmp`). Called by
//! `scenario` and `main`.

use std::fs;
use std::time::Duration;

use porthole_tests::procs::{self, Proc};

#[derive(Clone, Copy, Debug, Default)]
pub struct Memory {
    pub rss_kib: u64,
    pub pss_kib: u64,
    /// The part of `pss_kib` in anonymous pages (heap, stacks): what the
    /// process allocated, as against `pss_file_kib`.
    pub pss_anon_kib: u64,
    /// The part of `pss_kib` in file-backed pages: the program's and its
    /// libraries' code and data, paged in as first used.
    pub pss_file_kib: u64,
    pub processes: usize,
}

/// `root` and every live process below it.
fn family(root: u32) -> Vec<Proc> {
    let root = root as i32;
    Proc::of(root)
        .into_iter()
        .chain(procs::descendants(root))
        .collect()
}

pub fn ipmitools(root: u32) -> usize {
    procs::descendants(root as i32)
        .iter()
        .filter(|p| {
            let prog = p.what.split_whitespace().next().unwrap_or("");
            prog.rsplit('/').next() == Some("ipmitool")
        })
        .count()
}

fn field(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn tree_memory(root: u32) -> Memory {
    pids_memory(family(root).iter().map(|p| p.pid as u32))
}

/// RSS and PSS (and PSS's parts) summed over `pids` (those still alive).
pub fn pids_memory(pids: impl IntoIterator<Item = u32>) -> Memory {
    let mut m = Memory::default();
    for pid in pids {
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) else {
            continue;
        };
        m.rss_kib += field(&text, "Rss:");
        m.pss_kib += field(&text, "Pss:");
        m.pss_anon_kib += field(&text, "Pss_Anon:");
        m.pss_file_kib += field(&text, "Pss_File:");
        m.processes += 1;
    }
    m
}

/// The median (by PSS) of three samples half a second apart.
pub async fn memory(root: u32) -> Memory {
    let mut v = Vec::new();
    for i in 0..3 {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        v.push(tree_memory(root));
    }
    v.sort_by_key(|m| m.pss_kib);
    v[1]
}

/// utime + stime in a `/proc/.../stat` file, in clock ticks.
fn stat_ticks(path: &str) -> Option<u64> {
    let s = fs::read_to_string(path).ok()?;
    // Fields after the command (which may hold spaces) in parentheses.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// utime + stime of `root` and its live descendants, in clock ticks.
pub fn cpu_ticks(root: u32) -> u64 {
    pids_ticks(family(root).iter().map(|p| p.pid as u32))
}

/// utime + stime summed over `pids` (those still alive).
pub fn pids_ticks(pids: impl IntoIterator<Item = u32>) -> u64 {
    pids.into_iter()
        .filter_map(|pid| stat_ticks(&format!("/proc/{pid}/stat")))
        .sum()
}

/// utime + stime of this process's threads called `name`.
pub fn thread_ticks(name: &str) -> u64 {
    let Ok(dir) = fs::read_dir("/proc/self/task") else {
        return 0;
    };
    dir.flatten()
        .filter(|t| fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name))
        .filter_map(|t| stat_ticks(&t.path().join("stat").to_string_lossy()))
        .sum()
}

/// Open files of process `pid` (0 when it cannot be read).
pub fn open_files(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|e| format!("({e})"))
}

/// Udp: RcvbufErrors, machine-wide (every process's sockets).
pub fn udp_rcvbuf_errors() -> u64 {
    let Ok(text) = fs::read_to_string("/proc/net/snmp") else {
        return 0;
    };
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}
