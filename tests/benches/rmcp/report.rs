//! The markdown `main` prints: settings and what the rigs cost, then
//! memory, CPU and echo tables, one row per scenario (a failed or refused
//! scenario prints its error instead).

use std::time::Duration;

use anyhow::Result;

use crate::rigcost::RigCost;
use crate::scenario::QUIET_BUDGET;
use crate::{Row, Settings, OUTPUT_CHUNK, OUTPUT_EVERY};

/// What the run saw besides its rows.
pub struct Context<'a> {
    /// Load averages at the start and at the end.
    pub load: (&'a str, &'a str),
    pub wall: Duration,
    pub rigs: Option<&'a RigCost>,
}

fn clk_tck() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

fn pct(p: f64, v: &[f64]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    format!("{:.2}", v[i])
}

pub fn print(s: &Settings, rows: &[(String, Result<Row>)], ctx: &Context) {
    let tck = clk_tck();
    let (l0, l1) = ctx.load;
    println!("- Load average (1, 5, 15 min): {l0} at the start, {l1} at the end");
    println!(
        "- Windows: idle {} s, output {} s ({OUTPUT_CHUNK} bytes every {} ms per rig node = {:.0} bytes/s; the farm at most {} bytes/s over all its BMCs), {} keystrokes; clock ticks of {tck} Hz",
        s.idle.as_secs(),
        s.load.as_secs(),
        OUTPUT_EVERY.as_millis(),
        OUTPUT_CHUNK as f64 / OUTPUT_EVERY.as_secs_f64(),
        s.farm_offer,
        s.keys
    );
    if let Some(r) = ctx.rigs {
        rig_cost(r, tck);
    }
    memory_table(rows);
    unsettled(s, rows);
    cpu_table(s, rows, tck);
    echo_table(rows);
    println!();
    println!("Bench wall time: {:.1} s.", ctx.wall.as_secs_f64());
}

fn rig_cost(r: &RigCost, tck: f64) {
    println!();
    println!("## What the rigs cost (no console-svc running)");
    println!();
    println!("| processes | count | RSS KiB | PSS KiB | PSS KiB each |");
    println!("| --- | --- | --- | --- | --- |");
    for (kind, count, m) in &r.memory {
        println!(
            "| {kind} | {count} | {} | {} | {:.1} |",
            m.rss_kib,
            m.pss_kib,
            m.pss_kib as f64 / (*count).max(1) as f64
        );
    }
    println!();
    println!(
        "ipmi_sim CPU over a quiet {} s window: {} ticks ({:.1} % of one core).",
        r.quiet.as_secs(),
        r.quiet_ticks,
        r.quiet_ticks as f64 / tck / r.quiet.as_secs_f64() * 100.0
    );
}

fn memory_table(rows: &[(String, Result<Row>)]) {
    println!();
    println!("## Idle memory per always-on console");
    println!();
    println!("PSS is split into its anonymous part (what the processes allocated: heap, stacks) and its file-backed part (the programs' and libraries' code and data, paged in when first used).");
    println!();
    println!("| scenario | BMCs | sessions up | enable s | settle s | console-svc open files | processes (base → loaded) | RSS KiB (base → loaded) | PSS KiB (base → loaded) | PSS anon KiB (base → loaded) | PSS file KiB (base → loaded) | RSS KiB per console | PSS KiB per console | PSS anon KiB per console |");
    println!(
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for (what, r) in rows {
        match r {
            Ok(r) => {
                let n = r.consoles as f64;
                let settled = if r.unsettled.is_some() {
                    " (not settled)"
                } else {
                    ""
                };
                println!(
                    "| {what} | {} | {}/{} | {:.1} | {:.1}{settled} | {} | {} → {} | {} → {} | {} → {} | {} → {} | {} → {} | {:.1} | {:.1} | {:.1} |",
                    r.bmcs,
                    r.active,
                    r.consoles,
                    r.enable.as_secs_f64(),
                    r.settle.as_secs_f64(),
                    r.fds,
                    r.base.processes,
                    r.loaded.processes,
                    r.base.rss_kib,
                    r.loaded.rss_kib,
                    r.base.pss_kib,
                    r.loaded.pss_kib,
                    r.base.pss_anon_kib,
                    r.loaded.pss_anon_kib,
                    r.base.pss_file_kib,
                    r.loaded.pss_file_kib,
                    (r.loaded.rss_kib as f64 - r.base.rss_kib as f64) / n,
                    (r.loaded.pss_kib as f64 - r.base.pss_kib as f64) / n,
                    (r.loaded.pss_anon_kib as f64 - r.base.pss_anon_kib as f64) / n,
                );
            }
            Err(e) => println!(
                "| {what} | failed: {} |",
                format!("{e:#}").replace('|', "/")
            ),
        }
    }
}

/// Scenarios whose sessions were not all up within the settle budget:
/// what they looked like then, and why (the consoles' states and
/// last_errors).
fn unsettled(s: &Settings, rows: &[(String, Result<Row>)]) {
    let mut first = true;
    for (what, r) in rows {
        let Ok(Row {
            unsettled: Some(u),
            consoles,
            ..
        }) = r
        else {
            continue;
        };
        if first {
            println!();
            println!("## Not settled in {} s", s.settle_budget.as_secs());
            first = false;
        }
        println!();
        println!(
            "- {what}: {}/{consoles} sessions up and {} ipmitools at the end of the budget; SOL activations {} started, {} failed (console-svc's counters)",
            u.up, u.ipmitools, u.activations.0, u.activations.1
        );
        for (e, k) in u.errors.iter().take(4) {
            let e: String = e.replace('|', "/").chars().take(300).collect();
            println!("  - {k} consoles: {e}");
        }
    }
}

fn cpu_table(s: &Settings, rows: &[(String, Result<Row>)], tck: f64) {
    println!();
    println!("## CPU per console");
    println!();
    println!("CPU: utime+stime of console-svc and its descendants (native: the ipmitools) over the window, as % of one core per console. BMC side: ticks of the rigs' ipmi_sim processes or of the farm's thread over the same windows. Offered: bytes per second per console the nodes printed (rig: written to host_console; farm: sent by the farm BMCs). Viewers: what native's viewers received. Logged: rmcp consoles (no viewer attached) whose GetConsoleLog holds the window's node output. UDP drops: the machine's Udp RcvbufErrors over the output window (any process).");
    println!();
    println!("| scenario | idle ticks | idle % of a core per console | output ticks | output % of a core per console | BMC side ticks (idle, output) | offered B/s per console | viewers B/s per console | logged | UDP drops |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (what, r) in rows {
        let Ok(r) = r else { continue };
        let n = r.consoles as f64;
        let per = |ticks: u64, d: Duration| ticks as f64 / tck / d.as_secs_f64() / n * 100.0;
        println!(
            "| {what} | {} | {:.4} | {} | {:.4} | {}, {} | {:.0} | {} | {} | {} |",
            r.idle_ticks,
            per(r.idle_ticks, s.idle),
            r.load_ticks,
            per(r.load_ticks, s.load),
            r.bmc_ticks.0,
            r.bmc_ticks.1,
            r.offered_bps,
            r.viewer_bps.map_or("-".into(), |b| format!("{b:.0}")),
            r.logged
                .map_or("-".into(), |k| format!("{k}/{}", r.consoles)),
            r.udp_drops,
        );
    }
}

fn echo_table(rows: &[(String, Result<Row>)]) {
    println!();
    println!("## Keystroke echo round trip (first console, after the output window)");
    println!();
    println!("The keystrokes start once console-svc and the BMC side use no more CPU in a second than per second of the idle window (plus 2 ticks), at most {} s after the output window: \"quiet after\" says how long that took.", QUIET_BUDGET.as_secs());
    println!();
    println!("| scenario | quiet after s | sent | lost | p50 ms | p99 ms | min ms | max ms |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (what, r) in rows {
        let Ok(Row {
            echo: e,
            echo_quiet,
            ..
        }) = r
        else {
            continue;
        };
        let quiet = echo_quiet.map_or(format!("not quiet in {}", QUIET_BUDGET.as_secs()), |d| {
            format!("{:.0}", d.as_secs_f64())
        });
        println!(
            "| {what} | {quiet} | {} | {} | {} | {} | {} | {} |",
            e.sent,
            e.lost,
            pct(50.0, &e.rtt_ms),
            pct(99.0, &e.rtt_ms),
            e.rtt_ms.first().map_or("-".into(), |v| format!("{v:.2}")),
            e.rtt_ms.last().map_or("-".into(), |v| format!("{v:.2}")),
        );
    }
}
