//! What the rigs themselves cost: the processes `rig-up.sh` recorded in
//! each rig's `pids` file (ipmi_sim per BMC, socat per node serial line,
//! etcd, Xvnc), grouped by kind, with their memory and the BMCs' CPU
//! ticks. Called
//! by `main` (a quiet window before any scenario) and `scenario` (the
//! BMC side's CPU over a scenario's windows).

use std::collections::HashMap;
use std::fs;

use porthole_tests::procs;
use porthole_tests::rig::Rig;

use crate::measure::{self, Memory};

/// The rigs' live processes by kind ("ipmi_sim", "socat", "other").
pub struct RigProcs {
    pub kinds: Vec<(&'static str, Vec<u32>)>,
}

fn kind(name: &str) -> &'static str {
    match name.strip_prefix("bmc") {
        Some(rest) if rest.ends_with("-console") => "socat",
        Some(rest) if rest.ends_with("-bridge") => "other",
        Some(rest) if rest.chars().all(|c| c.is_ascii_digit()) => "ipmi_sim",
        _ => "other",
    }
}

impl RigProcs {
    /// The processes `rigs` recorded (not socat's per-connection forks).
    pub fn of(rigs: &[Rig]) -> Self {
        let mut by_kind: HashMap<&'static str, Vec<u32>> = HashMap::new();
        for rig in rigs {
            let text = fs::read_to_string(rig.run_dir.join("pids")).unwrap_or_default();
            for line in text.lines() {
                let Some((name, pid)) = line.split_once(' ') else {
                    continue;
                };
                let Ok(pid) = pid.trim().parse::<i32>() else {
                    continue;
                };
                if procs::stat(pid).is_some() {
                    by_kind.entry(kind(name)).or_default().push(pid as u32);
                }
            }
        }
        let mut kinds: Vec<_> = by_kind.into_iter().collect();
        kinds.sort_by_key(|(k, _)| *k);
        Self { kinds }
    }

    pub fn memory(&self) -> Vec<(&'static str, Memory)> {
        self.kinds
            .iter()
            .map(|(k, p)| (*k, measure::pids_memory(p.iter().copied())))
            .collect()
    }

    /// CPU ticks of the BMCs proper (the ipmi_sim processes).
    pub fn ticks(&self) -> u64 {
        self.kinds
            .iter()
            .filter(|(k, _)| *k == "ipmi_sim")
            .map(|(_, p)| measure::pids_ticks(p.iter().copied()))
            .sum()
    }
}

/// The rigs' memory by kind and their BMCs' CPU over a quiet window
/// (no console-svc running), measured once before the scenarios.
pub struct RigCost {
    pub memory: Vec<(&'static str, usize, Memory)>,
    pub quiet: std::time::Duration,
    pub quiet_ticks: u64,
}

impl RigCost {
    pub async fn measure(p: &RigProcs, quiet: std::time::Duration) -> Self {
        let memory = p
            .memory()
            .into_iter()
            .zip(&p.kinds)
            .map(|((k, m), (_, pids))| (k, pids.len(), m))
            .collect();
        let t0 = p.ticks();
        tokio::time::sleep(quiet).await;
        Self {
            memory,
            quiet,
            quiet_ticks: p.ticks().saturating_sub(t0),
        }
    }
}
