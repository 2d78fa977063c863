//! Serial console benchmark against the real rig (`../shared/rig`): prints
//! figures, asserts nothing. `scripts/bench.sh` starts the rig, builds
//! console-svc in release and runs this as
//! `cargo bench -p porthole-tests --bench serial`.
//!
//! Everything runs in one process, one after the other, on one machine:
//!
//! 1. **Keystroke echo round trip.** The bench plays the node: it connects to
//!    the first BMC's `host_console` and writes back every byte it reads. As
//!    the viewer it sends one byte and waits until that byte comes back, for
//!    `PORTHOLE_BENCH_KEYSTROKES` bytes, through (a) console-svc's native
//!    backend, (b) its socat backend, (c) `ipmitool sol activate` run by the
//!    bench under a pty it opens itself (no bridge). Before measuring, each
//!    path gets a `\r` primer (the rig drops the first SOL packet of a new
//!    session) and is drained until quiet, so banners are not counted.
//! 2. **Enable latency.** From the `EnableConsole` call until the console's
//!    port is in LISTEN state (IPv4, asked of the kernel's sock_diag
//!    netlink interface, as `ss -ltn` does). The listening socket
//!    is checked instead of connecting, because a connection to a socat
//!    console starts an ipmitool session. Measured twice per backend: first
//!    enables of fresh node ids (each disabled again, untimed) and
//!    disable+enable cycles of one node (nova's pattern; the disable is not
//!    timed).
//! 3. **Idle memory per console.** RSS and PSS (`/proc/PID/smaps_rollup`) of
//!    console-svc plus every descendant, with `PORTHOLE_BENCH_CONSOLES`
//!    enabled idle consoles minus a fresh service's baseline with none,
//!    divided by the number of consoles.
//!
//! Environment:
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `PORTHOLE_BENCH_RIG_JSON` | (required) | the rig's `rig.json` |
//! | `PORTHOLE_BENCH_CONSOLE_SVC` | (required) | the `console-svc` binary |
//! | `PORTHOLE_BENCH_WORK_DIR` | `$TMPDIR/porthole-bench-<pid>` | logs, pid dirs, `pids` of started services |
//! | `PORTHOLE_BENCH_KEYSTROKES` | 200 | keystrokes per echo path |
//! | `PORTHOLE_BENCH_ENABLES` | 100 | enables per enable-latency series |
//! | `PORTHOLE_BENCH_CONSOLES` | 100 | idle consoles for the memory figure |
//! | `PORTHOLE_BENCH_PORT_BASE` | 27000 | gRPC on BASE (native), BASE+1 (socat); 250 console ports each from BASE+100, BASE+500 |
//!
//! The default ports (27000..27750) sit between the bench rig's layout
//! (26000..26603) and the test harness's port slots (28000..31999).
//!
//! Only 127.0.0.1 is used. Every wait is bounded, and every process the
//! bench starts is stopped by its pid (the services also by process group).
//! Figures go to stdout as markdown; progress goes to stderr. The results
//! file, `tests/bench-results/serial.md`, is what scripts/bench.sh makes of
//! stdout (with the machine's details on top); the bench writes no file.
//!
//! This file reads the settings, runs the measurements in order and hands
//! the results to `report`. The modules, by seam:
//!
//! - `echo`: keystroke round trips, including bare ipmitool under a pty;
//! - `enable`: enable latency and the sock_diag listening check;
//! - `memory`: RSS/PSS of a service's process tree;
//! - `service`: console-svc as a child process and its gRPC calls;
//! - `stream`: reads with deadlines on sockets and ptys;
//! - `report`: percentiles and the markdown tables.

mod echo;
mod enable;
mod memory;
mod report;
mod service;
mod stream;

use std::fs;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use porthole_tests::rig::Rig;
use porthole_tests::Backend;

use echo::{echo_direct, echo_via_service};
use enable::{enable_cycles, enable_fresh};
use memory::idle_memory;
use report::Report;
use service::Service;

/// ipmitool `-C`: the rig's BMCs need it (no suite probing, which takes 10 s).
const CIPHER_SUITE: u32 = 3;

/// What the environment asks for (see the table above).
struct Settings {
    rig: Rig,
    console_svc: PathBuf,
    work_dir: PathBuf,
    keystrokes: usize,
    enables: usize,
    consoles: usize,
    port_base: u16,
}

impl Settings {
    fn from_env() -> Result<Self> {
        let rig_json = required_path("PORTHOLE_BENCH_RIG_JSON")?;
        let work_dir = std::env::var_os("PORTHOLE_BENCH_WORK_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                std::env::temp_dir().join(format!("porthole-bench-{}", std::process::id()))
            });
        fs::create_dir_all(&work_dir)
            .with_context(|| format!("creating {}", work_dir.display()))?;
        Ok(Self {
            rig: Rig::load(&rig_json)?,
            console_svc: required_path("PORTHOLE_BENCH_CONSOLE_SVC")?,
            work_dir,
            keystrokes: env_number("PORTHOLE_BENCH_KEYSTROKES", 200)?,
            enables: env_number("PORTHOLE_BENCH_ENABLES", 100)?,
            consoles: env_number("PORTHOLE_BENCH_CONSOLES", 100)?,
            port_base: env_number("PORTHOLE_BENCH_PORT_BASE", 27000)?,
        })
    }
}

fn required_path(name: &str) -> Result<PathBuf> {
    let path = PathBuf::from(
        std::env::var_os(name)
            .ok_or_else(|| anyhow!("{name} is not set (see scripts/bench.sh)"))?,
    );
    if !path.exists() {
        bail!("{name}: {} does not exist", path.display());
    }
    Ok(path)
}

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> Result<T> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map_err(|_| anyhow!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

/// Idle memory on one fresh service, then enable latency and keystroke
/// echo on another, for `backend`.
fn run_backend(
    s: &Settings,
    rt: &Arc<tokio::runtime::Runtime>,
    backend: Backend,
    report: &mut Report,
) {
    let name = backend.as_str();
    let bmcs = &s.rig.bmcs;
    eprintln!("[{name}] idle memory with {} consoles", s.consoles);
    let memory = Service::start(s, rt, backend, "memory")
        .and_then(|svc| idle_memory(&svc, bmcs, s.consoles));
    report.memory.push((name.into(), memory));

    let mut svc = match Service::start(s, rt, backend, "latency") {
        Ok(svc) => svc,
        Err(e) => {
            let msg = format!("{e:#}");
            report
                .enable
                .push((format!("{name}, fresh node ids"), Err(anyhow!("{msg}"))));
            report
                .echo
                .push((format!("{name} backend"), Err(anyhow!("{msg}"))));
            return;
        }
    };
    eprintln!("[{name}] {} enables of fresh node ids", s.enables);
    report.enable.push((
        format!("{name}, fresh node ids"),
        enable_fresh(&svc, bmcs, s.enables),
    ));
    eprintln!("[{name}] {} disable+enable cycles", s.enables);
    report.enable.push((
        format!("{name}, disable+enable cycles"),
        enable_cycles(&svc, &bmcs[0], s.enables),
    ));
    eprintln!("[{name}] {} keystrokes", s.keystrokes);
    report.echo.push((
        format!("{name} backend"),
        echo_via_service(&svc, &bmcs[0], s.keystrokes),
    ));
    svc.stop();
}

fn main() -> ExitCode {
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("serial bench: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => Arc::new(rt),
        Err(e) => {
            eprintln!("serial bench: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let started = Instant::now();
    let mut report = Report::default();
    run_backend(&settings, &rt, Backend::Native, &mut report);
    run_backend(&settings, &rt, Backend::Socat, &mut report);
    eprintln!("[direct] {} keystrokes", settings.keystrokes);
    report.echo.push((
        "ipmitool under the bench's pty (no bridge)".into(),
        echo_direct(&settings.rig.bmcs[0], settings.keystrokes),
    ));
    report.print(&settings);
    println!("Bench wall time: {:.1} s.", started.elapsed().as_secs_f64());
    if report.failures() > 0 {
        eprintln!("serial bench: {} measurement(s) failed", report.failures());
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
