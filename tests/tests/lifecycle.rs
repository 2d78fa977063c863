//! Console lifecycles against the real rig, both backends: enable is
//! idempotent and fast, a node keeps its port across disable/enable (nova
//! resets the console twice per session and compares ports), disable closes
//! the port and leaves no process behind, and a `kill -9` of console-svc
//! followed by a restart leaves no orphaned socat or ipmitool.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use porthole_proto::console::v1::ConsoleState;
use porthole_tests::procs::{self, Proc};
use porthole_tests::session::{self, establish, url_of};
use porthole_tests::{both_backends, node_side, rig_or_skip, viewer, Backend, ConsoleSvc};

both_backends!(
    enable_is_idempotent_and_keeps_the_port,
    disable_closes_the_port_and_stops_every_process,
    restart_after_kill_9_leaves_no_orphans,
);

/// nova waits at most 10 s for each reset; we want far less.
const RESET_BUDGET: Duration = Duration::from_secs(10);

async fn enable_is_idempotent_and_keeps_the_port(backend: Backend) -> Result<()> {
    let rig = rig_or_skip!();
    let bmcs = rig.lease_bmcs(1).await?;
    let svc = ConsoleSvc::start(backend).await?;
    let mut client = svc.client().await?;
    let node = session::node_id("idem");
    let first = session::enable(&mut client, bmcs[0].enable_request(&node)).await?;
    let url = url_of(&first)?;
    let (start, end) = svc.port_range();
    ensure!(
        (start..end).contains(&(first.port as u16)),
        "port {} outside {start}:{end}",
        first.port
    );

    let t = Instant::now();
    let again = session::enable(&mut client, bmcs[0].enable_request(&node)).await?;
    ensure!(
        t.elapsed() < Duration::from_secs(2),
        "a repeated enable took {:?}",
        t.elapsed()
    );
    ensure!(
        url_of(&again)? == url,
        "second enable gave {} instead of {url}",
        again.url
    );

    // nova's reset, twice: disable then enable, same port each time.
    for round in 1..=2 {
        let t = Instant::now();
        let off = session::disable(&mut client, &node).await?;
        ensure!(
            off.state() == ConsoleState::Disabled && off.url.is_empty(),
            "after disable: {off:?}"
        );
        let on = session::enable(&mut client, bmcs[0].enable_request(&node)).await?;
        ensure!(
            t.elapsed() < RESET_BUDGET,
            "reset {round} took {:?}",
            t.elapsed()
        );
        ensure!(
            url_of(&on)? == url,
            "reset {round} moved the console to {}",
            on.url
        );
    }
    // And the console still carries bytes.
    let mut v = viewer(&url).await?;
    let mut n = node_side(&bmcs[0]).await?;
    establish(&mut v, &mut n).await
}

async fn disable_closes_the_port_and_stops_every_process(backend: Backend) -> Result<()> {
    let rig = rig_or_skip!();
    let bmcs = rig.lease_bmcs(1).await?;
    let svc = ConsoleSvc::start(backend).await?;
    let mut client = svc.client().await?;
    let node = session::node_id("off");
    let on = session::enable(&mut client, bmcs[0].enable_request(&node)).await?;
    let url = url_of(&on)?;
    let mut v = viewer(&url).await?;
    let mut n = node_side(&bmcs[0]).await?;
    establish(&mut v, &mut n).await?;
    let before = console_processes(&svc, backend)?;

    let off = session::disable(&mut client, &node).await?;
    ensure!(
        off.state() == ConsoleState::Disabled,
        "after disable: {off:?}"
    );
    v.expect_closed(Duration::from_secs(5)).await?;
    ensure_refused(&url).await?;
    procs::wait_gone(&before, Duration::from_secs(5)).await?;
    let left = procs::recorded(&svc.pid_dir());
    ensure!(
        left.is_empty(),
        "terminal_pid_dir still names live processes: {left:?}"
    );
    let shown = session::get(&mut client, &node).await?;
    ensure!(
        shown.state() == ConsoleState::Disabled && shown.url.is_empty(),
        "GetConsole: {shown:?}"
    );
    Ok(())
}

async fn restart_after_kill_9_leaves_no_orphans(backend: Backend) -> Result<()> {
    let rig = rig_or_skip!();
    let bmcs = rig.lease_bmcs(1).await?;
    let mut svc = ConsoleSvc::start(backend).await?;
    let mut client = svc.client().await?;
    let node = session::node_id("kill9");
    let on = session::enable(&mut client, bmcs[0].enable_request(&node)).await?;
    let mut v = viewer(&url_of(&on)?).await?;
    let mut n = node_side(&bmcs[0]).await?;
    establish(&mut v, &mut n).await?;
    let before = console_processes(&svc, backend)?;

    svc.kill9()?;
    let alive: Vec<String> = before
        .iter()
        .filter(|p| p.alive())
        .map(Proc::to_string)
        .collect();
    eprintln!("after kill -9, still running until the restart: {alive:?}");
    drop(v);
    svc.restart().await?;
    procs::wait_gone(&before, Duration::from_secs(5)).await?;

    // The BMC's SOL payload may still be held by the killed session: the
    // restarted service must take it over cleanly.
    let mut client = svc.client().await?;
    let on = session::enable(&mut client, bmcs[0].enable_request(&node)).await?;
    let mut v = viewer(&url_of(&on)?).await?;
    establish(&mut v, &mut n).await
}

/// The service's processes while a viewer is attached; there must be some
/// (for `rmcp`: none at all, SOL runs inside console-svc).
fn console_processes(svc: &ConsoleSvc, backend: Backend) -> Result<Vec<Proc>> {
    let found = svc.processes();
    let ipmitool = found
        .iter()
        .any(|p| p.what.contains("ipmitool") || p.what.contains("sol-exec"));
    if backend == Backend::Rmcp {
        ensure!(
            found.is_empty(),
            "rmcp started processes for SOL: {found:?}"
        );
        return Ok(found);
    }
    if !ipmitool {
        bail!("no ipmitool among console-svc's processes with a viewer attached: {found:?}");
    }
    Ok(found)
}

/// Connecting to the disabled console's URL must be refused (polled, bounded).
async fn ensure_refused(url: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while viewer(url).await.is_ok() {
        if Instant::now() > deadline {
            bail!("{url} still accepts connections 5 s after disable");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
