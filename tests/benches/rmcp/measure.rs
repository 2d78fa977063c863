//! What the bench reads from /proc: RSS and PSS of a process and its
//! descendants (`smaps_rollup`), their CPU time in clock ticks (`stat`),
//! the load average and the kernel's UDP receive-buffer drops
//! (`/proc/net/snmp`). Called by `main`'s scenarios.

use std::fs;
use std::time::Duration;

use porthole_tests::procs::{self, Proc};

#[derive(Clone, Copy, Debug, Default)]
pub struct Memory {
    pub rss_kib: u64,
    pub pss_kib: u64,
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
    let mut m = Memory::default();
    for p in family(root) {
        let Ok(text) = fs::read_to_string(format!("/proc/{}/smaps_rollup", p.pid)) else {
            continue;
        };
        m.rss_kib += field(&text, "Rss:");
        m.pss_kib += field(&text, "Pss:");
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

/// utime + stime of `root` and its live descendants, in clock ticks.
pub fn cpu_ticks(root: u32) -> u64 {
    family(root)
        .iter()
        .filter_map(|p| {
            let s = fs::read_to_string(format!("/proc/{}/stat", p.pid)).ok()?;
            // Fields after the command (which may hold spaces) in parentheses.
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .sum()
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
