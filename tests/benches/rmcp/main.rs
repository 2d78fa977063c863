//! The always-on SOL benchmark (issue 16): console-svc's `rmcp` backend
//! with every console's session up, next to `native` (one ipmitool per
//! active session), in one run. Prints markdown on stdout, progress on
//! stderr, asserts nothing; never run in CI. Run as
//! `cargo bench -p porthole-tests --bench rmcp` (see the results file
//! `tests/bench-results/rmcp.md` for a command line).
//!
//! Scenarios, one fresh console-svc each, one after the other:
//! - rig-backed: `PORTHOLE_BENCH_RIG_COUNTS` consoles on the rig's ipmi_sim
//!   BMCs (one BMC per console), `rmcp` then `native`; native gets one
//!   viewer per console so that each has its ipmitool session;
//! - farm-backed: `PORTHOLE_BENCH_FARM_COUNTS` consoles on the BMC farm
//!   (`farm`, load tests only), `rmcp`; native cannot run there (the farm
//!   answers no Get SOL Configuration Parameters, which ipmitool asks).
//!
//! Per scenario: RSS/PSS of console-svc and its descendants before and
//! after (`measure`), CPU ticks over an idle window and over a window with
//! every node printing at `OUTPUT_CHUNK` bytes per `OUTPUT_EVERY`
//! (11.5 KB/s, 115200 baud), then keystroke echo round trips on the first
//! console (`load`). Everything is bounded in count and time; console-svc
//! is stopped by pid (`svc`).
//!
//! Environment (defaults in brackets): `PORTHOLE_BENCH_CONSOLE_SVC`
//! (required), `PORTHOLE_BENCH_RIG_JSON` (rig scenarios only when set),
//! `PORTHOLE_BENCH_RIG_COUNTS` [100], `PORTHOLE_BENCH_FARM_COUNTS`
//! [1000,10000], `PORTHOLE_BENCH_PORT_BASE` [22000: gRPC BASE+20+k, metrics
//! BASE+40+k], `PORTHOLE_BENCH_CONSOLE_ADDR` [127.0.22.1],
//! `PORTHOLE_BENCH_CONSOLE_PORTS` [22000:24000], `PORTHOLE_BENCH_FARM_PORTS`
//! [22000:24000, on 127.0.22.2 and up], `PORTHOLE_BENCH_IDLE_SECS` [20],
//! `PORTHOLE_BENCH_LOAD_SECS` [10], `PORTHOLE_BENCH_KEYSTROKES` [200],
//! `PORTHOLE_BENCH_WORK_DIR` [$TMPDIR/porthole-rmcp-bench-PID].

mod farm;
mod load;
mod measure;
mod report;
mod svc;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use porthole_rmcp::test_bmc::Output;
use porthole_tests::rig::Rig;
use tokio_util::sync::CancellationToken;

use measure::Memory;
use svc::{Service, Target};

/// 184 bytes every 16 ms: 11,500 bytes/s per node.
pub const OUTPUT_CHUNK: usize = 184;
pub const OUTPUT_EVERY: Duration = Duration::from_millis(16);
const SETTLE_BUDGET: Duration = Duration::from_secs(180);

pub struct Settings {
    pub console_svc: PathBuf,
    pub work_dir: PathBuf,
    rig: Option<Rig>,
    rig_counts: Vec<usize>,
    farm_counts: Vec<usize>,
    port_base: u16,
    pub console_addr: String,
    pub console_ports: String,
    console_port_count: usize,
    farm_ports: (u16, u16),
    idle: Duration,
    load: Duration,
    keys: usize,
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn counts(name: &str, default: &str) -> Result<Vec<usize>> {
    env_or(name, default)
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse()
                .map_err(|_| anyhow!("{name}: {s:?} is not a count"))
        })
        .collect()
}

fn range(name: &str, default: &str) -> Result<(u16, u16)> {
    let v = env_or(name, default);
    let (a, b) = v
        .split_once(':')
        .ok_or_else(|| anyhow!("{name}={v:?}: want START:END"))?;
    let (a, b): (u16, u16) = (a.parse()?, b.parse()?);
    if b <= a {
        bail!("{name}={v:?}: END must be above START");
    }
    Ok((a, b))
}

fn secs(name: &str, default: u64) -> Result<Duration> {
    Ok(Duration::from_secs(
        env_or(name, &default.to_string()).parse()?,
    ))
}

impl Settings {
    fn from_env() -> Result<Self> {
        let console_svc = PathBuf::from(
            std::env::var_os("PORTHOLE_BENCH_CONSOLE_SVC")
                .ok_or_else(|| anyhow!("PORTHOLE_BENCH_CONSOLE_SVC is not set"))?,
        );
        let rig = match std::env::var_os("PORTHOLE_BENCH_RIG_JSON") {
            Some(p) => Some(Rig::load(&PathBuf::from(p))?),
            None => None,
        };
        let work_dir = std::env::var_os("PORTHOLE_BENCH_WORK_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                std::env::temp_dir().join(format!("porthole-rmcp-bench-{}", std::process::id()))
            });
        std::fs::create_dir_all(&work_dir)?;
        let console_ports = env_or("PORTHOLE_BENCH_CONSOLE_PORTS", "22000:24000");
        let (a, b) = range("PORTHOLE_BENCH_CONSOLE_PORTS", "22000:24000")?;
        Ok(Self {
            console_svc,
            work_dir,
            rig,
            rig_counts: counts("PORTHOLE_BENCH_RIG_COUNTS", "100")?,
            farm_counts: counts("PORTHOLE_BENCH_FARM_COUNTS", "1000,10000")?,
            port_base: env_or("PORTHOLE_BENCH_PORT_BASE", "22000").parse()?,
            console_addr: env_or("PORTHOLE_BENCH_CONSOLE_ADDR", "127.0.22.1"),
            console_ports,
            console_port_count: usize::from(b - a),
            farm_ports: range("PORTHOLE_BENCH_FARM_PORTS", "22000:24000")?,
            idle: secs("PORTHOLE_BENCH_IDLE_SECS", 20)?,
            load: secs("PORTHOLE_BENCH_LOAD_SECS", 10)?,
            keys: env_or("PORTHOLE_BENCH_KEYSTROKES", "200").parse()?,
        })
    }
}

/// Where a scenario's BMCs are.
enum Bmcs<'a> {
    /// The rig's ipmi_sim BMCs and their nodes' `host_console`s.
    Rig(Vec<Target>, Vec<String>),
    Farm(&'a farm::Farm),
}

pub struct Row {
    pub backend: &'static str,
    pub bmcs: &'static str,
    pub consoles: usize,
    pub active: usize,
    pub settle: Duration,
    pub base: Memory,
    pub loaded: Memory,
    pub idle_ticks: u64,
    pub load_ticks: u64,
    /// Output bytes per console per second offered by the nodes.
    pub offered_bps: f64,
    /// Received by viewers (native), when there are any.
    pub viewer_bps: Option<f64>,
    pub udp_drops: u64,
    /// rmcp: consoles whose log holds the output window's node output
    /// (printed with no viewer attached).
    pub logged: Option<usize>,
    pub echo: Option<load::Echo>,
}

/// How many SOL sessions are up.
async fn active(svc: &Service, backend: &str, bmcs: &Bmcs<'_>, n: usize) -> usize {
    match (bmcs, backend) {
        (Bmcs::Farm(f), _) => f.active(n),
        (_, "native") => measure::ipmitools(svc.pid()),
        _ => {
            let ok = svc
                .metric("porthole_console_sol_activations_total", "rmcp")
                .await
                .unwrap_or(0.0);
            let failed = svc
                .metric("porthole_console_sol_activation_failures_total", "rmcp")
                .await
                .unwrap_or(0.0);
            (ok - failed).max(0.0) as usize
        }
    }
}

async fn scenario(
    s: &Settings,
    backend: &'static str,
    k: u16,
    bmcs: Bmcs<'_>,
    n: usize,
) -> Result<Row> {
    if n > s.console_port_count {
        bail!(
            "{n} consoles need {n} console ports; PORTHOLE_BENCH_CONSOLE_PORTS ({}) has {}",
            s.console_ports,
            s.console_port_count
        );
    }
    let targets: Vec<Target> = match &bmcs {
        Bmcs::Rig(t, _) => t[..n].to_vec(),
        Bmcs::Farm(f) => f.bmcs[..n]
            .iter()
            .map(|b| Target {
                host: b.addr.ip().to_string(),
                port: b.addr.port(),
                password: FARM_PASSWORD.into(),
            })
            .collect(),
    };
    let label = format!(
        "{backend}-{}-{n}",
        if matches!(bmcs, Bmcs::Farm(_)) {
            "farm"
        } else {
            "rig"
        }
    );
    let dir = s.work_dir.join(&label);
    let svc = Service::start(s, backend, &dir, s.port_base + 20 + k, s.port_base + 40 + k).await?;
    let result = measure_service(s, backend, &svc, &bmcs, &targets, n).await;
    eprintln!("[{label}] stopping console-svc {}", svc.pid());
    svc.stop().await;
    if let Bmcs::Farm(f) = &bmcs {
        f.output(n, false);
    }
    result.with_context(|| format!("{label} (logs in {})", dir.display()))
}

async fn measure_service(
    s: &Settings,
    backend: &'static str,
    svc: &Service,
    bmcs: &Bmcs<'_>,
    targets: &[Target],
    n: usize,
) -> Result<Row> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let base = measure::memory(svc.pid()).await;
    eprintln!("[{backend} {n}] enabling");
    let mut ports = Vec::with_capacity(n);
    for (i, t) in targets.iter().enumerate() {
        ports.push(svc.enable(&format!("bench-{i:05}"), t).await?);
    }
    let start = Instant::now();
    // native: a viewer per console starts its ipmitool session.
    let viewers = if backend == "native" {
        Some(load::Viewers::connect(&s.console_addr, &ports).await?)
    } else {
        None
    };
    // Settled: every session up and the service's BMC probes (ipmitool)
    // done; native's ipmitools are then exactly its sessions.
    let probes_done = if backend == "native" { n } else { 0 };
    let mut calm = 0;
    let active_now = loop {
        let a = active(svc, backend, bmcs, n).await;
        calm = if a >= n && measure::ipmitools(svc.pid()) == probes_done {
            calm + 1
        } else {
            0
        };
        if calm >= 4 || start.elapsed() > SETTLE_BUDGET {
            break a;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let settle = start.elapsed();
    eprintln!("[{backend} {n}] {active_now}/{n} sessions up after {settle:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let loaded = measure::memory(svc.pid()).await;

    eprintln!("[{backend} {n}] idle CPU for {:?}", s.idle);
    let t0 = measure::cpu_ticks(svc.pid());
    tokio::time::sleep(s.idle).await;
    let idle_ticks = measure::cpu_ticks(svc.pid()) - t0;
    let active = active(svc, backend, bmcs, n).await;

    eprintln!("[{backend} {n}] output for {:?}", s.load);
    let viewer_before = viewers
        .as_ref()
        .map(|v| v.bytes.load(std::sync::atomic::Ordering::Relaxed));
    let drops0 = measure::udp_rcvbuf_errors();
    let t0 = measure::cpu_ticks(svc.pid());
    let offered = match bmcs {
        Bmcs::Farm(f) => {
            let b0 = f.output_bytes(n);
            f.output(n, true);
            tokio::time::sleep(s.load).await;
            f.output(n, false);
            f.output_bytes(n) - b0
        }
        Bmcs::Rig(_, nodes) => {
            let stop = CancellationToken::new();
            let st = stop.clone();
            let load = s.load;
            tokio::spawn(async move {
                tokio::time::sleep(load).await;
                st.cancel();
            });
            load::node_output(&nodes[..n], OUTPUT_CHUNK, OUTPUT_EVERY, stop).await?
        }
    };
    let load_ticks = measure::cpu_ticks(svc.pid()) - t0;
    let udp_drops = measure::udp_rcvbuf_errors() - drops0;
    let secs = s.load.as_secs_f64();
    let viewer_bps = match (&viewers, viewer_before) {
        (Some(v), Some(b0)) => {
            Some((v.bytes.load(std::sync::atomic::Ordering::Relaxed) - b0) as f64 / secs / n as f64)
        }
        _ => None,
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let logged = if backend == "rmcp" {
        let mut k = 0;
        for i in 0..n {
            let log = svc.log(&format!("bench-{i:05}"), 4096).await?;
            k += usize::from(log.windows(18).any(|w| w == b"output 0123456789\r"));
        }
        Some(k)
    } else {
        None
    };

    eprintln!("[{backend} {n}] {} keystrokes", s.keys);
    let echo = match bmcs {
        Bmcs::Rig(_, nodes) => {
            let node = load::node_echo(&nodes[0]).await?;
            let e = load::echo_rtt(&s.console_addr, ports[0], s.keys).await;
            node.abort();
            e
        }
        Bmcs::Farm(_) => load::echo_rtt(&s.console_addr, ports[0], s.keys).await,
    };
    if let Some(v) = viewers {
        v.close();
    }
    Ok(Row {
        backend,
        bmcs: if matches!(bmcs, Bmcs::Farm(_)) {
            "farm"
        } else {
            "rig ipmi_sim"
        },
        consoles: n,
        active,
        settle,
        base,
        loaded,
        idle_ticks,
        load_ticks,
        offered_bps: offered as f64 / secs / n as f64,
        viewer_bps,
        udp_drops,
        logged,
        echo: Some(echo?),
    })
}

const FARM_PASSWORD: &str = "farm-password";

async fn run(s: &Settings) -> Vec<(String, Result<Row>)> {
    let mut rows = Vec::new();
    let mut k = 0;
    if let Some(rig) = &s.rig {
        let targets: Vec<Target> = rig
            .bmcs
            .iter()
            .map(|b| Target {
                host: b.host.clone(),
                port: b.port,
                password: b.password.clone(),
            })
            .collect();
        let nodes: Vec<String> = rig.bmcs.iter().map(|b| b.host_console.addr()).collect();
        for &n in &s.rig_counts {
            for backend in ["rmcp", "native"] {
                let what = format!("{backend}, {n} rig consoles");
                let r = if n > targets.len() {
                    Err(anyhow!(
                        "the rig has {} BMCs (rig-up.sh takes at most 500)",
                        targets.len()
                    ))
                } else {
                    scenario(s, backend, k, Bmcs::Rig(targets.clone(), nodes.clone()), n).await
                };
                k += 1;
                rows.push((what, r));
            }
        }
    }
    let max = s
        .farm_counts
        .iter()
        .copied()
        .max()
        .unwrap_or(0)
        .min(s.console_port_count);
    if max > 0 {
        let (a, b) = s.farm_ports;
        let output = Output {
            every: OUTPUT_EVERY,
            bytes: OUTPUT_CHUNK,
        };
        match farm::Farm::start(max, a, b - a, FARM_PASSWORD, output) {
            Ok(f) => {
                for &n in &s.farm_counts {
                    let what = format!("rmcp, {n} farm consoles");
                    let r = if n > f.bmcs.len() {
                        Err(anyhow!(
                            "{n} consoles need {n} console ports; PORTHOLE_BENCH_CONSOLE_PORTS ({}) has {}",
                            s.console_ports,
                            s.console_port_count
                        ))
                    } else {
                        scenario(s, "rmcp", k, Bmcs::Farm(&f), n).await
                    };
                    k += 1;
                    rows.push((what, r));
                }
            }
            Err(e) => rows.push(("farm".into(), Err(e))),
        }
    }
    rows
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
    let rows = rt.block_on(run(&s));
    let load_end = measure::loadavg();
    report::print(&s, &rows, &load_start, &load_end, started.elapsed());
    if rows.iter().any(|(_, r)| r.is_err()) {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
