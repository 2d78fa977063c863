//! The always-on SOL benchmark (issue 16): console-svc's `rmcp` backend
//! with every console's session up, next to `native` (one ipmitool per
//! active session), in one run. Prints markdown on stdout, progress on
//! stderr, asserts nothing; never run in CI. Run as
//! `cargo bench -p porthole-tests --bench rmcp` (see the results file
//! `tests/bench-results/rmcp.md` for a command line).
//!
//! Scenarios, one fresh console-svc each, one after the other
//! (`scenario`):
//! - rig-backed: `PORTHOLE_BENCH_RIG_COUNTS` consoles on the rigs' ipmi_sim
//!   BMCs (one BMC per console; several rigs' BMCs concatenated), `rmcp`
//!   once per UDP mode, then `native`; native gets one viewer per console
//!   so that each has its ipmitool session;
//! - farm-backed: `PORTHOLE_BENCH_FARM_COUNTS` consoles on the BMC farm
//!   (`farm`, load tests only, a fresh farm per count), `rmcp` once per UDP
//!   mode; native cannot run there (the farm answers no Get SOL
//!   Configuration Parameters, which ipmitool asks).
//!
//! Before anything starts, a scenario's console ports and open files
//! (console-svc's and the bench's, `settings`) are checked against its
//! range and the process limit; one that cannot fit is refused with the
//! reason in its row.
//!
//! Per scenario: RSS/PSS of console-svc and its descendants before and
//! after (`measure`), its open files, CPU ticks over an idle window and
//! over a window with every node printing (rig: `OUTPUT_CHUNK` bytes per
//! `OUTPUT_EVERY`, 11.5 KB/s, 115200 baud; farm: the same chunks, at most
//! `PORTHOLE_BENCH_FARM_OFFER` bytes/s over all its BMCs), the BMC side's
//! ticks over both (`rigcost`: ipmi_sim; the farm's thread), then keystroke
//! echo round trips on the first console (`load`). Everything is bounded
//! in count and time; console-svc is stopped by pid (`svc`).
//!
//! Environment (defaults in brackets): `PORTHOLE_BENCH_CONSOLE_SVC`
//! (required), `PORTHOLE_BENCH_RIG_JSON` (comma list of rig.json files; rig
//! scenarios only when set), `PORTHOLE_BENCH_RIG_COUNTS` [100],
//! `PORTHOLE_BENCH_BACKENDS` [rmcp,native: the rig scenarios' backends],
//! `PORTHOLE_BENCH_FARM_COUNTS` [1000,10000], `PORTHOLE_BENCH_RMCP_UDP`
//! (comma list of `--rmcp-udp` modes, per-console and/or shared; unset: no
//! flag, one rmcp scenario), `PORTHOLE_BENCH_PORT_BASE` [12000: gRPC
//! BASE+20+k, metrics BASE+200+k, on the console address],
//! `PORTHOLE_BENCH_CONSOLE_ADDR` [127.0.12.1], `PORTHOLE_BENCH_CONSOLE_PORTS`
//! [16000:26100], `PORTHOLE_BENCH_FARM_PORTS` [16000:26100, on 127.0.12.2
//! and up], `PORTHOLE_BENCH_FARM_OFFER` [11500000], `PORTHOLE_BENCH_IDLE_SECS`
//! [20], `PORTHOLE_BENCH_LOAD_SECS` [10], `PORTHOLE_BENCH_SETTLE_SECS`
//! [180], `PORTHOLE_BENCH_KEYSTROKES` [200], `PORTHOLE_BENCH_SVC_LOG` [warn:
//! console-svc's PORTHOLE_LOG], `PORTHOLE_BENCH_WORK_DIR`
//! [$TMPDIR/porthole-rmcp-bench-PID].

mod farm;
mod load;
mod measure;
mod report;
mod rigcost;
mod scenario;
mod settings;
mod svc;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Result;
use porthole_rmcp::test_bmc::Output;

use rigcost::{RigCost, RigProcs};
use scenario::{Bmcs, Case, Row};
use settings::Settings;
use svc::Target;

/// 184 bytes every 16 ms: 11,500 bytes/s per node.
pub const OUTPUT_CHUNK: usize = 184;
pub const OUTPUT_EVERY: Duration = Duration::from_millis(16);
pub const FARM_PASSWORD: &str = "farm-password";
/// The rigs' quiet window (no console-svc), for what the rigs cost idle.
const RIG_QUIET: Duration = Duration::from_secs(10);

type Rows = Vec<(String, Result<Row>)>;

async fn rig_rows(s: &Settings, k: &mut u16, rows: &mut Rows) -> Option<RigCost> {
    if s.rigs.is_empty() {
        return None;
    }
    let bmcs = s.rig_bmcs();
    let targets: Vec<Target> = bmcs
        .iter()
        .map(|b| Target {
            host: b.host.clone(),
            port: b.port,
            password: b.password.clone(),
        })
        .collect();
    let nodes: Vec<String> = bmcs.iter().map(|b| b.host_console.addr()).collect();
    let procs = RigProcs::of(&s.rigs);
    eprintln!("[rigs] {} BMCs; quiet window {RIG_QUIET:?}", targets.len());
    let cost = RigCost::measure(&procs, RIG_QUIET).await;
    for &n in &s.rig_counts {
        let modes = s.udp_modes.iter().map(|m| ("rmcp", m.as_deref()));
        let all = modes.chain([("native", None)]);
        for (backend, mode) in all.filter(|(b, _)| s.backends.iter().any(|x| x == b)) {
            let c = Case {
                backend,
                mode,
                bmcs: Bmcs::Rig(&targets, &nodes, &procs),
                n,
            };
            let what = c.name();
            let r = if n > targets.len() {
                Err(anyhow::anyhow!(
                    "the rigs have {} BMCs (rig-up.sh takes at most 500 per rig)",
                    targets.len()
                ))
            } else {
                scenario::run(s, *k, c).await
            };
            *k += 1;
            rows.push((what, r));
        }
    }
    Some(cost)
}

/// The farm's output per BMC for `n` BMCs: `OUTPUT_CHUNK` bytes every
/// `OUTPUT_EVERY`, or less often when `n` of them would offer more than
/// `PORTHOLE_BENCH_FARM_OFFER` bytes/s in all.
fn farm_output(s: &Settings, n: usize) -> Output {
    let at_full = n as f64 * OUTPUT_CHUNK as f64 / OUTPUT_EVERY.as_secs_f64();
    let slower = (at_full / s.farm_offer.max(1) as f64).max(1.0);
    Output {
        every: OUTPUT_EVERY.mul_f64(slower),
        bytes: OUTPUT_CHUNK,
    }
}

fn start_farm(s: &Settings, n: usize) -> Result<farm::Farm> {
    let (a, b) = s.farm_ports;
    let limit = settings::nofile_limit()?;
    let need = measure::open_files(std::process::id()) as u64 + 100 + n as u64;
    settings::check_fds("the bench", need, limit, "a UDP socket per farm BMC")?;
    farm::Farm::start(n, a, b - a, FARM_PASSWORD, farm_output(s, n))
}

async fn farm_rows(s: &Settings, k: &mut u16, rows: &mut Rows) {
    for &n in &s.farm_counts {
        let farm = start_farm(s, n);
        for mode in &s.udp_modes {
            let mode = mode.as_deref();
            let r = match &farm {
                Ok(f) => {
                    let c = Case {
                        backend: "rmcp",
                        mode,
                        bmcs: Bmcs::Farm(f),
                        n,
                    };
                    scenario::run(s, *k, c).await
                }
                Err(e) => Err(anyhow::anyhow!("farm of {n} BMCs: {e:#}")),
            };
            *k += 1;
            rows.push((scenario::name("rmcp", mode, "farm", n), r));
        }
    }
}

fn main() -> ExitCode {
    let s = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("rmcp bench: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rmcp bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let started = Instant::now();
    let load_start = measure::loadavg();
    let (rows, rig_cost) = rt.block_on(async {
        let (mut rows, mut k) = (Vec::new(), 0);
        let cost = rig_rows(&s, &mut k, &mut rows).await;
        farm_rows(&s, &mut k, &mut rows).await;
        (rows, cost)
    });
    let load_end = measure::loadavg();
    let ctx = report::Context {
        load: (&load_start, &load_end),
        wall: started.elapsed(),
        rigs: rig_cost.as_ref(),
    };
    report::print(&s, &rows, &ctx);
    if rows.iter().any(|(_, r)| r.is_err()) {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
