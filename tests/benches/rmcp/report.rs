//! The markdown `main` prints: settings, then memory, CPU and echo tables,
//! one row per scenario (a failed scenario prints its error instead).

use std::time::Duration;

use anyhow::Result;

use crate::{Row, Settings, OUTPUT_CHUNK, OUTPUT_EVERY};

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

pub fn print(
    s: &Settings,
    rows: &[(String, Result<Row>)],
    load0: &str,
    load1: &str,
    wall: Duration,
) {
    let tck = clk_tck();
    println!("- Load average (1, 5, 15 min): {load0} at the start, {load1} at the end");
    println!(
        "- Windows: idle {} s, output {} s ({OUTPUT_CHUNK} bytes every {} ms per node = {:.0} bytes/s), {} keystrokes; clock ticks of {tck} Hz",
        s.idle.as_secs(),
        s.load.as_secs(),
        OUTPUT_EVERY.as_millis(),
        OUTPUT_CHUNK as f64 / OUTPUT_EVERY.as_secs_f64(),
        s.keys
    );
    println!();
    println!("## Idle memory per always-on console");
    println!();
    println!("| scenario | BMCs | sessions up | settle s | processes (base → loaded) | RSS KiB (base → loaded) | PSS KiB (base → loaded) | RSS KiB per console | PSS KiB per console |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (what, r) in rows {
        match r {
            Ok(r) => {
                let n = r.consoles as f64;
                println!(
                    "| {what} | {} | {}/{} | {:.1} | {} → {} | {} → {} | {} → {} | {:.1} | {:.1} |",
                    r.bmcs,
                    r.active,
                    r.consoles,
                    r.settle.as_secs_f64(),
                    r.base.processes,
                    r.loaded.processes,
                    r.base.rss_kib,
                    r.loaded.rss_kib,
                    r.base.pss_kib,
                    r.loaded.pss_kib,
                    (r.loaded.rss_kib as f64 - r.base.rss_kib as f64) / n,
                    (r.loaded.pss_kib as f64 - r.base.pss_kib as f64) / n,
                );
            }
            Err(e) => println!(
                "| {what} | failed: {} |",
                format!("{e:#}").replace('|', "/")
            ),
        }
    }
    println!();
    println!("## CPU per console");
    println!();
    println!("CPU: utime+stime of console-svc and its descendants (native: the ipmitools) over the window, as % of one core per console. Offered: bytes per second per console the nodes printed (rig: written to host_console; farm: sent by the farm BMCs). Viewers: what native's viewers received. Logged: rmcp consoles (no viewer attached) whose GetConsoleLog holds the window's node output. UDP drops: the machine's Udp RcvbufErrors over the output window (any process).");
    println!();
    println!("| scenario | idle ticks | idle % of a core per console | output ticks | output % of a core per console | offered B/s per console | viewers B/s per console | logged | UDP drops |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (what, r) in rows {
        if let Ok(r) = r {
            let n = r.consoles as f64;
            let per = |ticks: u64, d: Duration| ticks as f64 / tck / d.as_secs_f64() / n * 100.0;
            println!(
                "| {what} | {} | {:.4} | {} | {:.4} | {:.0} | {} | {} | {} |",
                r.idle_ticks,
                per(r.idle_ticks, s.idle),
                r.load_ticks,
                per(r.load_ticks, s.load),
                r.offered_bps,
                r.viewer_bps.map_or("-".into(), |b| format!("{b:.0}")),
                r.logged
                    .map_or("-".into(), |k| format!("{k}/{}", r.consoles)),
                r.udp_drops,
            );
        }
    }
    println!();
    println!("## Keystroke echo round trip (first console, after the output window)");
    println!();
    println!("| scenario | sent | lost | p50 ms | p99 ms | min ms | max ms |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (what, r) in rows {
        if let Ok(Row { echo: Some(e), .. }) = r {
            println!(
                "| {what} | {} | {} | {} | {} | {} | {} |",
                e.sent,
                e.lost,
                pct(50.0, &e.rtt_ms),
                pct(99.0, &e.rtt_ms),
                e.rtt_ms.first().map_or("-".into(), |v| format!("{v:.2}")),
                e.rtt_ms.last().map_or("-".into(), |v| format!("{v:.2}")),
            );
        }
    }
    println!();
    println!("Bench wall time: {:.1} s.", wall.as_secs_f64());
}
