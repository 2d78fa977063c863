//! The collected results ([`Report`], filled by `main`) and their markdown
//! on stdout: one table per measurement, with nearest-rank percentiles.
//! `main` calls [`Report::print`] once every measurement has run;
//! scripts/bench.sh saves what it prints as the results file.

use std::time::Duration;

use anyhow::Result;

use crate::echo::{EchoResult, KEY_TIMEOUT};
use crate::enable::EnableResult;
use crate::memory::MemoryResult;
use crate::Settings;

/// Every measurement's rows, labelled, in the order they are printed.
#[derive(Default)]
pub struct Report {
    pub echo: Vec<(String, Result<EchoResult>)>,
    pub enable: Vec<(String, Result<EnableResult>)>,
    pub memory: Vec<(String, Result<MemoryResult>)>,
}

impl Report {
    /// The three tables: echo, enable latency, idle memory.
    pub fn print(&self, s: &Settings) {
        print_echo(s, &self.echo);
        print_enable(s, &self.enable);
        print_memory(&self.memory);
    }

    /// Rows that failed altogether.
    pub fn failures(&self) -> usize {
        let e = self.echo.iter().filter(|r| r.1.is_err()).count();
        let n = self.enable.iter().filter(|r| r.1.is_err()).count();
        let m = self.memory.iter().filter(|r| r.1.is_err()).count();
        e + n + m
    }
}

fn print_echo(s: &Settings, rows: &[(String, Result<EchoResult>)]) {
    let b = &s.rig.bmcs[0];
    println!("## Keystroke echo round trip\n");
    println!(
        "{} keystrokes of 1 byte per path, one at a time, through {} (UDP {}); the bench plays the node on its \
         host_console (TCP {}) and writes back every byte. Round trip: from writing the byte until it is read back. \
         A keystroke not back within {} ms is lost. \"node bytes\": bytes the node side echoed during the timed \
         keystrokes. \"first echo\": from the viewer's connect (native, socat; the service activates SOL then) or \
         from starting `sol deactivate` + `sol activate` (bare ipmitool) until the first echoed byte, \
         `\\r` primer and its 300 ms drain included.\n",
        s.keystrokes,
        b.name,
        b.port,
        b.host_console.port,
        KEY_TIMEOUT.as_millis()
    );
    println!(
        "| path | echoed | lost | node bytes | p50 ms | p99 ms | min ms | max ms | first echo ms |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (label, r) in rows {
        match r {
            Ok(e) => println!(
                "| {label} | {} | {} | {} | {} | {} |",
                e.rtts.len(),
                e.lost,
                e.node_bytes,
                latency_cells(&e.rtts),
                ms(e.first_echo)
            ),
            Err(e) => println!("| {label} | failed: {e:#} | | | | | | | |"),
        }
    }
    println!();
}

fn print_enable(s: &Settings, rows: &[(String, Result<EnableResult>)]) {
    println!("## Enable latency\n");
    println!(
        "{} enables per row, one at a time. \"listening\": from the EnableConsole call until the port is in \
         LISTEN state, checked right after the reply through sock_diag netlink (as `ss -ltn`; about 30 µs a look), \
         polling every 0.2 ms if it is not yet; no connection is made (on socat one would start ipmitool). \
         \"rpc\": until EnableConsole returned. \"late\": replies after which the port was not listening yet. \
         Fresh node ids: each enable is a node's first, followed by an untimed disable. \
         Cycles: one node, untimed disable then timed enable (nova's reset pattern).\n",
        s.enables
    );
    println!(
        "| backend, series | n | listening p50 ms | listening p99 ms | min ms | max ms | rpc p50 ms | rpc p99 ms | late | failed |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (label, r) in rows {
        match r {
            Ok(e) => {
                let mut rpc = e.rpc.clone();
                rpc.sort();
                println!(
                    "| {label} | {} | {} | {} | {} | {} | {} |",
                    e.listening.len(),
                    latency_cells(&e.listening),
                    ms(percentile(&rpc, 50.0)),
                    ms(percentile(&rpc, 99.0)),
                    e.late,
                    e.failed
                );
            }
            Err(e) => println!("| {label} | failed: {e:#} | | | | | | | | |"),
        }
    }
    println!();
    print_enable_notes(rows);
}

/// The first error of each series where some enables failed.
fn print_enable_notes(rows: &[(String, Result<EnableResult>)]) {
    let notes: Vec<String> = rows
        .iter()
        .filter_map(|(label, r)| {
            let e = r.as_ref().ok()?;
            let why = e.first_error.as_ref()?;
            Some(format!(
                "- {label}: {} enable(s) failed; the first: {why}",
                e.failed
            ))
        })
        .collect();
    if !notes.is_empty() {
        println!("{}\n", notes.join("\n"));
    }
}

fn print_memory(rows: &[(String, Result<MemoryResult>)]) {
    println!("## Idle memory per enabled console\n");
    println!(
        "console-svc plus all its descendants, summed from /proc/PID/smaps_rollup (median of 3 samples); \
         baseline = the same fresh service with 0 consoles. Consoles are spread over the rig's BMCs; \
         measured once every console is RUNNING and its BMC probe has finished.\n"
    );
    println!("| backend | consoles | processes (base → loaded) | RSS KiB (base → loaded) | PSS KiB (base → loaded) | RSS KiB per console | PSS KiB per console |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (label, r) in rows {
        match r {
            Ok(m) => {
                let per = |a: u64, b: u64| (b as f64 - a as f64) / m.consoles as f64;
                println!(
                    "| {label} | {} | {} → {} | {} → {} | {} → {} | {:.1} | {:.1} |",
                    m.consoles,
                    m.baseline.processes,
                    m.loaded.processes,
                    m.baseline.rss_kib,
                    m.loaded.rss_kib,
                    m.baseline.pss_kib,
                    m.loaded.pss_kib,
                    per(m.baseline.rss_kib, m.loaded.rss_kib),
                    per(m.baseline.pss_kib, m.loaded.pss_kib)
                );
                eprintln!(
                    "[{label}] {} consoles settled in {:?}",
                    m.consoles, m.settle
                );
            }
            Err(e) => println!("| {label} | failed: {e:#} | | | | | |"),
        }
    }
    println!();
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// p50, p99, min, max of a series, as table cells.
fn latency_cells(samples: &[Duration]) -> String {
    let mut sorted = samples.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return "- | - | - | -".into();
    }
    format!(
        "{} | {} | {} | {}",
        ms(percentile(&sorted, 50.0)),
        ms(percentile(&sorted, 99.0)),
        ms(sorted[0]),
        ms(sorted[sorted.len() - 1])
    )
}
