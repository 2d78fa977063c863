//! One scenario: its budgets checked up front, a fresh console-svc, its
//! consoles enabled, then the phases measured one after the other (settle,
//! idle, output, logs, keystrokes) into a [`Row`]. Called by `main`.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::{StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;

use crate::measure::{self, Memory};
use crate::rigcost::RigProcs;
use crate::settings::{self, Settings};
use crate::svc::{Service, Target};
use crate::{farm, load, FARM_PASSWORD, OUTPUT_CHUNK, OUTPUT_EVERY};

/// gRPC calls in flight at once (enable, GetConsoleLog).
const IN_FLIGHT: usize = 32;

/// Where a scenario's BMCs are.
pub enum Bmcs<'a> {
    /// The rigs' ipmi_sim BMCs, their nodes' `host_console`s, and the
    /// rigs' processes (for the BMC side's CPU).
    Rig(&'a [Target], &'a [String], &'a RigProcs),
    Farm(&'a farm::Farm),
}

/// What one scenario runs.
pub struct Case<'a> {
    pub backend: &'static str,
    /// `--rmcp-udp`, when given.
    pub mode: Option<&'a str>,
    pub bmcs: Bmcs<'a>,
    pub n: usize,
}

/// A scenario's name in the tables: "rmcp (udp shared), 1000 farm consoles".
pub fn name(backend: &str, mode: Option<&str>, kind: &str, n: usize) -> String {
    let mode = mode.map_or(String::new(), |m| format!(" (udp {m})"));
    format!("{backend}{mode}, {n} {kind} consoles")
}

impl Case<'_> {
    pub fn name(&self) -> String {
        let kind = if self.is_farm() { "farm" } else { "rig" };
        name(self.backend, self.mode, kind, self.n)
    }

    fn is_farm(&self) -> bool {
        matches!(self.bmcs, Bmcs::Farm(_))
    }

    fn label(&self) -> String {
        let kind = if self.is_farm() { "farm" } else { "rig" };
        let mode = self.mode.map_or(String::new(), |m| format!("-{m}"));
        format!("{}{mode}-{kind}-{}", self.backend, self.n)
    }

    /// CPU ticks of the BMC side: the rigs' processes or the farm thread.
    fn bmc_ticks(&self) -> u64 {
        match self.bmcs {
            Bmcs::Rig(_, _, p) => p.ticks(),
            Bmcs::Farm(_) => measure::thread_ticks(farm::THREAD),
        }
    }
}

pub struct Row {
    pub bmcs: &'static str,
    pub consoles: usize,
    pub active: usize,
    pub enable: Duration,
    pub settle: Duration,
    /// Set when the sessions were not all up within the settle budget.
    pub unsettled: Option<Unsettled>,
    pub base: Memory,
    pub loaded: Memory,
    /// console-svc's open files, sessions up.
    pub fds: usize,
    pub idle_ticks: u64,
    pub load_ticks: u64,
    /// The BMC side's ticks over the idle and output windows.
    pub bmc_ticks: (u64, u64),
    /// Output bytes per console per second offered by the nodes.
    pub offered_bps: f64,
    /// Received by viewers (native), when there are any.
    pub viewer_bps: Option<f64>,
    pub udp_drops: u64,
    /// rmcp: consoles whose log holds the output window's node output
    /// (printed with no viewer attached).
    pub logged: Option<usize>,
    pub echo: load::Echo,
    /// How long the echo waited for console-svc and the BMC side to be as
    /// quiet as in the idle window (None: not within `QUIET_BUDGET`).
    pub echo_quiet: Option<Duration>,
}

/// Refuse what cannot fit before anything starts.
fn budget(s: &Settings, c: &Case) -> Result<()> {
    let n = c.n;
    if n > s.console_port_count {
        bail!(
            "{n} consoles need {n} console ports; PORTHOLE_BENCH_CONSOLE_PORTS ({}) has {}",
            s.console_ports,
            s.console_port_count
        );
    }
    let limit = settings::nofile_limit()?;
    let need = settings::console_svc_fds(c.backend, c.mode, n);
    let why = match (c.backend, c.mode) {
        ("native", _) => "a listener, a viewer and an ipmitool's pipes per console",
        (_, Some("shared")) => "a TCP listener per console, one shared UDP socket",
        (_, Some(_)) => "a TCP listener and a UDP socket per console",
        _ => "a TCP listener and a UDP socket per console: no UDP mode given, counted as per-console; PORTHOLE_BENCH_RMCP_UDP=shared runs the shared mode",
    };
    settings::check_fds("console-svc", need, limit, why)?;
    // The bench: what it holds now (the farm's sockets) and, per console,
    // a viewer (native) or a node connection (rig output window).
    let per = u64::from(c.backend == "native") + u64::from(!c.is_farm());
    let mine = measure::open_files(std::process::id()) as u64 + 100 + per * n as u64;
    settings::check_fds(
        "the bench",
        mine,
        limit,
        "its farm sockets, viewers and node connections",
    )
}

pub async fn run(s: &Settings, k: u16, c: Case<'_>) -> Result<Row> {
    budget(s, &c)?;
    let targets: Vec<Target> = match &c.bmcs {
        Bmcs::Rig(t, _, _) => t[..c.n].to_vec(),
        Bmcs::Farm(f) => f.bmcs[..c.n]
            .iter()
            .map(|b| Target {
                host: b.addr.ip().to_string(),
                port: b.addr.port(),
                password: FARM_PASSWORD.into(),
            })
            .collect(),
    };
    let label = c.label();
    let dir = s.work_dir.join(&label);
    let (grpc, metrics) = (s.port_base + 20 + k, s.port_base + 200 + k);
    let svc = Service::start(s, c.backend, c.mode, &dir, grpc, metrics).await?;
    let result = measure_service(s, &c, &svc, &targets).await;
    eprintln!("[{label}] stopping console-svc {}", svc.pid());
    svc.stop().await;
    if let Bmcs::Farm(f) = &c.bmcs {
        f.output(c.n, false);
    }
    result.with_context(|| format!("{label} (logs in {})", dir.display()))
}

/// One gRPC call's wait before the scenario gives up on it.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Enable `bench-00000`.. on `targets`, `IN_FLIGHT` at a time; their ports.
async fn enable_all(svc: &Service, targets: &[Target]) -> Result<Vec<u16>> {
    futures::stream::iter(targets.iter().enumerate())
        .map(|(i, t)| async move {
            let r = tokio::time::timeout(CALL_TIMEOUT, svc.enable(&node(i), t)).await;
            if (i + 1) % 1000 == 0 {
                eprintln!("[enable] {} done", i + 1);
            }
            r.map_err(|_| {
                anyhow::anyhow!("EnableConsole {}: no answer in {CALL_TIMEOUT:?}", node(i))
            })?
        })
        .buffered(IN_FLIGHT)
        .try_collect()
        .await
}

fn node(i: usize) -> String {
    format!("bench-{i:05}")
}

/// How many SOL sessions are up.
async fn active(svc: &Service, c: &Case<'_>) -> usize {
    match (&c.bmcs, c.backend) {
        (Bmcs::Farm(f), _) => f.active(c.n),
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

/// Wait until every session is up and the service's BMC probes
/// (ipmitool) are done (native's ipmitools are then exactly its
/// sessions), four polls in a row, at most the settle budget; the time
/// taken, and why not when the budget ran out first.
async fn settle(s: &Settings, c: &Case<'_>, svc: &Service) -> (Duration, Option<Unsettled>) {
    let start = Instant::now();
    let probes_done = if c.backend == "native" { c.n } else { 0 };
    let poll = Duration::from_millis(if c.n > 2000 { 1000 } else { 250 });
    let (mut calm, mut said) = (0, Duration::ZERO);
    loop {
        let a = active(svc, c).await;
        let tools = measure::ipmitools(svc.pid());
        calm = if a >= c.n && tools == probes_done {
            calm + 1
        } else {
            0
        };
        let t = start.elapsed();
        if calm >= 4 {
            return (t, None);
        }
        if t > s.settle_budget {
            return (t, Some(unsettled(svc, c.backend, a, tools).await));
        }
        if t >= said + Duration::from_secs(10) {
            eprintln!("[{}] {t:.0?}: {a}/{} up, {tools} ipmitools", c.label(), c.n);
            said = t;
        }
        tokio::time::sleep(poll).await;
    }
}

/// What a scenario that did not settle looked like at the end of the
/// budget.
pub struct Unsettled {
    pub up: usize,
    pub ipmitools: usize,
    /// porthole_console_sol_activations_total and ..._failures_total.
    pub activations: (f64, f64),
    /// The consoles' states and last_errors, most frequent first.
    pub errors: Vec<(String, usize)>,
}

async fn unsettled(svc: &Service, backend: &str, up: usize, ipmitools: usize) -> Unsettled {
    let metric = |m: &'static str| async move { svc.metric(m, backend).await.unwrap_or(f64::NAN) };
    Unsettled {
        up,
        ipmitools,
        activations: (
            metric("porthole_console_sol_activations_total").await,
            metric("porthole_console_sol_activation_failures_total").await,
        ),
        errors: svc
            .console_states()
            .await
            .unwrap_or_else(|e| vec![(format!("ListConsoles: {e:#}"), 0)]),
    }
}

/// console-svc's (with its children) and the BMC side's CPU ticks over
/// the next `window`, with nothing else asked of them: the idle window, and
/// each second of `quiet_down`.
async fn quiet_ticks(c: &Case<'_>, svc: &Service, window: Duration) -> (u64, u64) {
    let (t0, b0) = (measure::cpu_ticks(svc.pid()), c.bmc_ticks());
    tokio::time::sleep(window).await;
    let ticks = measure::cpu_ticks(svc.pid()).saturating_sub(t0);
    (ticks, c.bmc_ticks().saturating_sub(b0))
}

/// Node output for the load window: bytes offered (all consoles) and
/// console-svc's CPU ticks over it.
async fn output_window(s: &Settings, c: &Case<'_>, svc: &Service) -> Result<(u64, u64)> {
    let t0 = measure::cpu_ticks(svc.pid());
    let offered = match &c.bmcs {
        Bmcs::Farm(f) => {
            let b0 = f.output_bytes(c.n);
            f.output_staggered(c.n).await;
            tokio::time::sleep(s.load).await;
            f.output(c.n, false);
            f.output_bytes(c.n) - b0
        }
        Bmcs::Rig(_, nodes, _) => {
            let stop = CancellationToken::new();
            let st = stop.clone();
            let load = s.load;
            tokio::spawn(async move {
                tokio::time::sleep(load).await;
                st.cancel();
            });
            load::node_output(&nodes[..c.n], OUTPUT_CHUNK, OUTPUT_EVERY, stop).await?
        }
    };
    Ok((offered, measure::cpu_ticks(svc.pid()).saturating_sub(t0)))
}

/// rmcp: consoles whose log holds the node output (no viewer attached).
async fn logged(svc: &Service, n: usize) -> Result<usize> {
    let hits: Vec<bool> = futures::stream::iter(0..n)
        .map(|i| async move {
            let log = tokio::time::timeout(CALL_TIMEOUT, svc.log(&node(i), 4096))
                .await
                .map_err(|_| {
                    anyhow::anyhow!("GetConsoleLog {}: no answer in {CALL_TIMEOUT:?}", node(i))
                })??;
            Ok::<_, anyhow::Error>(log.windows(18).any(|w| w == b"output 0123456789\r"))
        })
        .buffered(IN_FLIGHT)
        .try_collect()
        .await?;
    Ok(hits.into_iter().filter(|h| *h).count())
}

/// A console-svc with every console enabled and settled (or the budget
/// spent), memory before and after.
struct Up {
    ports: Vec<u16>,
    viewers: Option<load::Viewers>,
    enable: Duration,
    settle: Duration,
    unsettled: Option<Unsettled>,
    base: Memory,
    loaded: Memory,
    fds: usize,
}

async fn bring_up(s: &Settings, c: &Case<'_>, svc: &Service, targets: &[Target]) -> Result<Up> {
    let name = c.label();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let base = measure::memory(svc.pid()).await;
    eprintln!("[{name}] enabling");
    let t_enable = Instant::now();
    let ports = enable_all(svc, targets).await?;
    let enable = t_enable.elapsed();
    let t_settle = Instant::now();
    let viewers = match c.backend {
        "native" => Some(ramp_viewers(s, c, svc, &ports).await?),
        _ => None,
    };
    let (_, unsettled) = settle(s, c, svc).await;
    let settle = t_settle.elapsed();
    let how = if unsettled.is_some() {
        "not settled"
    } else {
        "settled"
    };
    eprintln!("[{name}] enabled in {enable:?}, {how} after {settle:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    Ok(Up {
        ports,
        viewers,
        enable,
        settle,
        unsettled,
        base,
        loaded: measure::memory(svc.pid()).await,
        fds: measure::open_files(svc.pid()),
    })
}

/// native: a viewer per console starts its ipmitool session. They join
/// `RAMP` at a time, each batch given up to 10 s for its ipmitools to
/// start, so that a thousand sessions are not all asked for at once.
async fn ramp_viewers(
    s: &Settings,
    c: &Case<'_>,
    svc: &Service,
    ports: &[u16],
) -> Result<load::Viewers> {
    const RAMP: usize = 50;
    let mut v = load::Viewers::new();
    for (k, batch) in ports.chunks(RAMP).enumerate() {
        v.add(&s.console_addr, batch).await?;
        let want = (k * RAMP + batch.len()).min(ports.len());
        let end = Instant::now() + Duration::from_secs(10);
        while measure::ipmitools(svc.pid()) < want && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    v.reap();
    eprintln!(
        "[{}] {} of {} viewers connected",
        c.label(),
        v.connected(),
        c.n
    );
    Ok(v)
}

async fn measure_service(
    s: &Settings,
    c: &Case<'_>,
    svc: &Service,
    targets: &[Target],
) -> Result<Row> {
    let (name, n) = (c.label(), c.n);
    let up = bring_up(s, c, svc, targets).await?;
    let viewers = up.viewers;

    eprintln!("[{name}] idle CPU for {:?}", s.idle);
    let (idle_ticks, bmc_idle) = quiet_ticks(c, svc, s.idle).await;
    let active = active(svc, c).await;

    eprintln!("[{name}] output for {:?}", s.load);
    let viewed0 = viewers.as_ref().map(|v| v.received());
    let (drops0, b0) = (measure::udp_rcvbuf_errors(), c.bmc_ticks());
    let (offered, load_ticks) = output_window(s, c, svc).await?;
    let bmc_load = c.bmc_ticks().saturating_sub(b0);
    let udp_drops = measure::udp_rcvbuf_errors().saturating_sub(drops0);
    let per_sec = |bytes: u64| bytes as f64 / s.load.as_secs_f64() / n as f64;
    let viewer_bps = viewers
        .as_ref()
        .zip(viewed0)
        .map(|(v, b0)| per_sec(v.received() - b0));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let logged = match c.backend {
        "rmcp" => Some(logged(svc, n).await?),
        _ => None,
    };

    let echo_quiet = quiet_down(c, svc, s.idle, (idle_ticks, bmc_idle)).await;
    eprintln!(
        "[{name}] {} keystrokes (quiet after {echo_quiet:?})",
        s.keys
    );
    let echo = echo(s, c, up.ports[0]).await;
    if let Some(v) = viewers {
        v.close();
    }
    Ok(Row {
        bmcs: if c.is_farm() { "farm" } else { "rig ipmi_sim" },
        consoles: n,
        active,
        enable: up.enable,
        settle: up.settle,
        unsettled: up.unsettled,
        base: up.base,
        loaded: up.loaded,
        fds: up.fds,
        idle_ticks,
        load_ticks,
        bmc_ticks: (bmc_idle, bmc_load),
        offered_bps: per_sec(offered),
        viewer_bps,
        udp_drops,
        logged,
        echo: echo?,
        echo_quiet,
    })
}

/// How long the echo waits at most for the output window's aftermath.
pub const QUIET_BUDGET: Duration = Duration::from_secs(30);

/// Waits, after the output window, until console-svc (with its children)
/// and the BMC side use no more CPU in a second than they did per second
/// of the idle window, plus 2 ticks: a rig node's output can still be
/// draining through socat, the pty and ipmi_sim, and an echo measured
/// behind it is that queue's, not the console's. The time it took, or None
/// when they were not that quiet within `QUIET_BUDGET`.
async fn quiet_down(
    c: &Case<'_>,
    svc: &Service,
    idle: Duration,
    (svc_idle, bmc_idle): (u64, u64),
) -> Option<Duration> {
    let most = |ticks: u64| ticks as f64 / idle.as_secs_f64() + 2.0;
    let start = Instant::now();
    while start.elapsed() < QUIET_BUDGET {
        let (svc_ticks, bmc_ticks) = quiet_ticks(c, svc, Duration::from_secs(1)).await;
        if svc_ticks as f64 <= most(svc_idle) && bmc_ticks as f64 <= most(bmc_idle) {
            return Some(start.elapsed());
        }
    }
    None
}

/// Keystroke round trips on the first console (a rig node echoes them;
/// the farm BMC echoes by itself).
async fn echo(s: &Settings, c: &Case<'_>, port: u16) -> Result<load::Echo> {
    match &c.bmcs {
        Bmcs::Rig(_, nodes, _) => {
            let node = load::node_echo(&nodes[0]).await?;
            let e = load::echo_rtt(&s.console_addr, port, s.keys).await;
            node.abort();
            e
        }
        Bmcs::Farm(_) => load::echo_rtt(&s.console_addr, port, s.keys).await,
    }
}
