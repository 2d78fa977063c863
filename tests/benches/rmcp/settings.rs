//! The bench's settings, read once from the environment (`main`'s module
//! doc lists the variables), and the up-front budgets a scenario must fit:
//! console ports, farm ports and open files. Called by `main` and
//! `scenario`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use porthole_tests::rig::Rig;

pub struct Settings {
    pub console_svc: PathBuf,
    pub work_dir: PathBuf,
    /// Every rig named in `PORTHOLE_BENCH_RIG_JSON`, in order.
    pub rigs: Vec<Rig>,
    pub rig_counts: Vec<usize>,
    pub farm_counts: Vec<usize>,
    /// Backends of the rig scenarios (rmcp, native).
    pub backends: Vec<String>,
    /// `--rmcp-udp` values, one rmcp scenario each; `None`: no flag.
    pub udp_modes: Vec<Option<String>>,
    pub port_base: u16,
    pub console_addr: String,
    pub console_ports: String,
    pub console_port_count: usize,
    pub farm_ports: (u16, u16),
    /// Aggregate farm output, bytes/s, over all of a row's BMCs.
    pub farm_offer: u64,
    pub idle: Duration,
    pub load: Duration,
    pub settle_budget: Duration,
    pub keys: usize,
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn list(name: &str, default: &str) -> Vec<String> {
    env_or(name, default)
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

fn counts(name: &str, default: &str) -> Result<Vec<usize>> {
    list(name, default)
        .iter()
        .map(|s| {
            s.parse()
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

fn udp_modes() -> Result<Vec<Option<String>>> {
    if std::env::var_os("PORTHOLE_BENCH_RMCP_UDP").is_none() {
        return Ok(vec![None]);
    }
    let modes = list("PORTHOLE_BENCH_RMCP_UDP", "");
    for m in &modes {
        if m != "per-console" && m != "shared" {
            bail!("PORTHOLE_BENCH_RMCP_UDP: {m:?} is not per-console or shared");
        }
    }
    if modes.is_empty() {
        bail!("PORTHOLE_BENCH_RMCP_UDP is set but names no mode");
    }
    Ok(modes.into_iter().map(Some).collect())
}

/// Whether `console_svc serve` takes `--rmcp-udp` (built with the
/// shared-UDP mode).
fn has_udp_flag(console_svc: &std::path::Path) -> Result<bool> {
    let out = std::process::Command::new(console_svc)
        .args(["serve", "--help"])
        .output()
        .map_err(|e| anyhow!("{} serve --help: {e}", console_svc.display()))?;
    Ok(String::from_utf8_lossy(&out.stdout).contains("--rmcp-udp"))
}

impl Settings {
    pub fn from_env() -> Result<Self> {
        let console_svc = PathBuf::from(
            std::env::var_os("PORTHOLE_BENCH_CONSOLE_SVC")
                .ok_or_else(|| anyhow!("PORTHOLE_BENCH_CONSOLE_SVC is not set"))?,
        );
        let udp_modes = udp_modes()?;
        if udp_modes.iter().any(Option::is_some) && !has_udp_flag(&console_svc)? {
            bail!(
                "PORTHOLE_BENCH_RMCP_UDP names UDP modes but {} serve has no --rmcp-udp \
                 (built before the shared-UDP mode)",
                console_svc.display()
            );
        }
        let rigs = list("PORTHOLE_BENCH_RIG_JSON", "")
            .iter()
            .map(|p| Rig::load(&PathBuf::from(p)))
            .collect::<Result<Vec<_>>>()?;
        let work_dir = std::env::var_os("PORTHOLE_BENCH_WORK_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                std::env::temp_dir().join(format!("porthole-rmcp-bench-{}", std::process::id()))
            });
        std::fs::create_dir_all(&work_dir)?;
        const PORTS: &str = "16000:26100";
        let console_ports = env_or("PORTHOLE_BENCH_CONSOLE_PORTS", PORTS);
        let (a, b) = range("PORTHOLE_BENCH_CONSOLE_PORTS", PORTS)?;
        Ok(Self {
            console_svc,
            work_dir,
            rigs,
            rig_counts: counts("PORTHOLE_BENCH_RIG_COUNTS", "100")?,
            farm_counts: counts("PORTHOLE_BENCH_FARM_COUNTS", "1000,10000")?,
            backends: list("PORTHOLE_BENCH_BACKENDS", "rmcp,native"),
            udp_modes,
            port_base: env_or("PORTHOLE_BENCH_PORT_BASE", "12000").parse()?,
            console_addr: env_or("PORTHOLE_BENCH_CONSOLE_ADDR", "127.0.12.1"),
            console_ports,
            console_port_count: usize::from(b - a),
            farm_ports: range("PORTHOLE_BENCH_FARM_PORTS", PORTS)?,
            farm_offer: env_or("PORTHOLE_BENCH_FARM_OFFER", "11500000").parse()?,
            idle: secs("PORTHOLE_BENCH_IDLE_SECS", 20)?,
            load: secs("PORTHOLE_BENCH_LOAD_SECS", 10)?,
            settle_budget: secs("PORTHOLE_BENCH_SETTLE_SECS", 180)?,
            keys: env_or("PORTHOLE_BENCH_KEYSTROKES", "200").parse()?,
        })
    }

    /// The rigs' BMCs, concatenated in `PORTHOLE_BENCH_RIG_JSON` order.
    pub fn rig_bmcs(&self) -> Vec<&porthole_tests::rig::Bmc> {
        self.rigs.iter().flat_map(|r| r.bmcs.iter()).collect()
    }
}

/// This process's open-file limit (soft; console-svc, its child, inherits
/// it and does not raise it).
pub fn nofile_limit() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/self/limits")?;
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .ok_or_else(|| anyhow!("/proc/self/limits has no Max open files"))?;
    let soft = line
        .split_whitespace()
        .nth(3)
        .ok_or_else(|| anyhow!("/proc/self/limits: {line:?}"))?;
    Ok(soft.parse().unwrap_or(u64::MAX))
}

/// Files a process holds whatever its console count (runtime, log,
/// gRPC, metrics): console-svc held 34 with 10 rmcp consoles and 214 with
/// 100 (2 per console and 14 more), 65 with 10 native ones; taken at 200.
const FD_MARGIN: u64 = 200;

/// Open files console-svc needs for `n` consoles: a TCP listener each; the
/// rmcp backend a UDP socket each in per-console mode (one in all when
/// shared); native a viewer connection and an ipmitool's three pipes each.
/// No mode given (console-svc's default, which the bench does not see)
/// counts as per-console.
pub fn console_svc_fds(backend: &str, mode: Option<&str>, n: usize) -> u64 {
    let per = match (backend, mode) {
        ("native", _) => 1 + 1 + 3,
        (_, Some("shared")) => 1,
        _ => 2,
    };
    FD_MARGIN + per * n as u64
}

/// Refuse a scenario that cannot fit, before anything starts: `need`
/// files in a process whose limit is `limit`.
pub fn check_fds(who: &str, need: u64, limit: u64, why: &str) -> Result<()> {
    if need > limit {
        bail!(
            "{who} would need about {need} open files ({why}) and its limit is {limit} \
             (RLIMIT_NOFILE, hard limit on this machine): not run"
        );
    }
    Ok(())
}
