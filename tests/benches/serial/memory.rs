//! Idle memory per console: RSS and PSS (`/proc/PID/smaps_rollup`) of a
//! console-svc and every descendant, before and after enabling idle
//! consoles ([`idle_memory`], called by `main::run_backend` on a fresh
//! service; printed by `report`). The process tree comes from the harness
//! (`porthole_tests::procs`).

use std::fs;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use porthole_proto::console::v1 as pb;
use porthole_tests::procs::{self, Proc};
use porthole_tests::rig::Bmc;

use crate::service::Service;

/// The longest idle consoles may take to settle (BMC probes done).
const SETTLE_BUDGET: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, Debug, Default)]
pub struct Memory {
    pub rss_kib: u64,
    pub pss_kib: u64,
    pub processes: usize,
}

pub struct MemoryResult {
    pub baseline: Memory,
    pub loaded: Memory,
    pub consoles: usize,
    pub settle: Duration,
}

/// Enable `n` idle consoles on a fresh service and compare with its baseline.
pub fn idle_memory(svc: &Service, bmcs: &[Bmc], n: usize) -> Result<MemoryResult> {
    thread::sleep(Duration::from_secs(1));
    let baseline = sample_memory(svc.pid());
    let nodes: Vec<String> = (0..n).map(|i| format!("bench-idle-{i:03}")).collect();
    for (i, node) in nodes.iter().enumerate() {
        svc.enable(node, &bmcs[i % bmcs.len()])?;
    }
    let settle = wait_settled(svc, n)?;
    thread::sleep(Duration::from_secs(1));
    let loaded = sample_memory(svc.pid());
    for node in &nodes {
        svc.disable(node)?;
    }
    Ok(MemoryResult {
        baseline,
        loaded,
        consoles: n,
        settle,
    })
}

/// Until all `n` consoles are RUNNING and no BMC probe (ipmitool) is left.
fn wait_settled(svc: &Service, n: usize) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let running = svc
            .list()?
            .iter()
            .filter(|c| c.state() == pb::ConsoleState::Running)
            .count();
        let probing = family(svc.pid()).iter().any(is_ipmitool);
        if running == n && !probing {
            return Ok(start.elapsed());
        }
        if start.elapsed() > SETTLE_BUDGET {
            bail!("{running}/{n} consoles running, probes still going, after {SETTLE_BUDGET:?}");
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// `root` and every live process below it.
fn family(root: u32) -> Vec<Proc> {
    let root = root as i32;
    Proc::of(root)
        .into_iter()
        .chain(procs::descendants(root))
        .collect()
}

/// Whether `p` runs ipmitool (a BMC probe, a deactivate, a SOL session).
fn is_ipmitool(p: &Proc) -> bool {
    let program = p.what.split_whitespace().next().unwrap_or("");
    Path::new(program)
        .file_name()
        .is_some_and(|n| n == "ipmitool")
}

/// RSS and PSS summed over `root` and its descendants.
fn tree_memory(root: u32) -> Memory {
    let mut m = Memory::default();
    for p in family(root) {
        let Ok(text) = fs::read_to_string(format!("/proc/{}/smaps_rollup", p.pid)) else {
            continue;
        };
        m.rss_kib += smaps_field(&text, "Rss:");
        m.pss_kib += smaps_field(&text, "Pss:");
        m.processes += 1;
    }
    m
}

fn smaps_field(text: &str, name: &str) -> u64 {
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

/// The median (by PSS) of three samples, half a second apart.
fn sample_memory(root: u32) -> Memory {
    let mut samples: Vec<Memory> = (0..3)
        .map(|i| {
            if i > 0 {
                thread::sleep(Duration::from_millis(500));
            }
            tree_memory(root)
        })
        .collect();
    samples.sort_by_key(|m| m.pss_kib);
    samples[1]
}
