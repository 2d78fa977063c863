//! What only the native hub does (backends `native` and `rmcp`): several viewers on one console see
//! the same output, a viewer that arrives late gets the scrollback first,
//! and GetConsoleLog returns what the node printed. The socat backend keeps
//! no log and says so (UNIMPLEMENTED).

use std::time::Duration;

use anyhow::{ensure, Result};
use porthole_proto::console::v1 as pb;
use porthole_tests::session::{self, establish, url_of};
use porthole_tests::wire::{find, show};
use porthole_tests::{node_side, rig_or_skip, viewer, Backend, ConsoleSvc, SvcOptions};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_share_output_scrollback_and_log() {
    porthole_tests::run(shared_viewers(Backend::Native)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmcp_viewers_share_output_scrollback_and_log() {
    porthole_tests::run(shared_viewers(Backend::Rmcp)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmcp_logs_output_printed_while_nobody_watches() {
    porthole_tests::run(always_on_with_rmcp()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socat_backend_keeps_no_log() {
    porthole_tests::run(no_log_with_socat()).await
}

async fn shared_viewers(backend: Backend) -> Result<()> {
    let rig = rig_or_skip!();
    let bmcs = rig.lease_bmcs(1).await?;
    let svc = ConsoleSvc::start(backend).await?;
    let mut client = svc.client().await?;
    let node = session::node_id("shared");
    let url = url_of(&session::enable(&mut client, bmcs[0].enable_request(&node)).await?)?;
    let mut a = viewer(&url).await?;
    let mut n = node_side(&bmcs[0]).await?;
    establish(&mut a, &mut n).await?;
    let mut b = viewer(&url).await?;
    b.drain(Duration::from_millis(500), Duration::from_secs(5))
        .await?;

    // One line from the node reaches both viewers.
    let line = format!("both-{node}\r\n");
    n.send(line.as_bytes()).await?;
    for v in [&mut a, &mut b] {
        v.expect(line.as_bytes(), WAIT).await?;
    }
    // The second viewer types too.
    b.send(b"from-b\r").await?;
    n.expect(b"from-b\r", WAIT).await?;

    // A late viewer is replayed the scrollback, without the node printing again.
    let mut c = viewer(&url).await?;
    c.expect(line.as_bytes(), Duration::from_secs(5)).await?;

    let log = console_log(&svc, &node, 0).await?;
    ensure!(
        find(&log.data, line.as_bytes()).is_some(),
        "log lacks the line: {}",
        show(&log.data)
    );
    ensure!(!log.truncated, "a short log cannot have lost output");
    let tail = console_log(&svc, &node, 8).await?;
    ensure!(
        tail.data.len() == 8 && log.data.ends_with(&tail.data),
        "max_bytes=8 gave {}",
        show(&tail.data)
    );
    Ok(())
}

/// rmcp is always on: what the node prints before any viewer ever attached
/// is in GetConsoleLog, and a first viewer is replayed it. No process runs,
/// and none is needed: with no ipmitool to be found, the console comes up
/// RUNNING (its BMC probe is RMCP+ too).
async fn always_on_with_rmcp() -> Result<()> {
    let rig = rig_or_skip!();
    let bmcs = rig.lease_bmcs(1).await?;
    let opts = SvcOptions::new(Backend::Rmcp).set(
        "console",
        "ipmitool_path",
        "\"/nonexistent/porthole-test/ipmitool\"",
    );
    let svc = ConsoleSvc::start_with(opts).await?;
    let mut client = svc.client().await?;
    let node = session::node_id("alwayson");
    let url = url_of(&session::enable(&mut client, bmcs[0].enable_request(&node)).await?)?;
    let mut n = node_side(&bmcs[0]).await?;
    let line = format!("unwatched-{node}\r\n");
    let deadline = tokio::time::Instant::now() + WAIT;
    // Printed again until the (viewer-less) session is up and logs it.
    loop {
        n.send(line.as_bytes()).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let log = console_log(&svc, &node, 0).await?;
        if find(&log.data, line.as_bytes()).is_some() {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "no viewer ever attached and the log still lacks the line: {}",
            show(&log.data)
        );
    }
    let procs = svc.processes();
    ensure!(procs.is_empty(), "rmcp runs processes: {procs:?}");
    let c = session::get(&mut client, &node).await?;
    ensure!(
        c.state == pb::ConsoleState::Running as i32,
        "the console is not RUNNING without ipmitool: {c:?}"
    );
    let mut v = viewer(&url).await?;
    v.expect(line.as_bytes(), Duration::from_secs(5)).await?;
    Ok(())
}

async fn no_log_with_socat() -> Result<()> {
    let rig = rig_or_skip!();
    let bmcs = rig.lease_bmcs(1).await?;
    let svc = ConsoleSvc::start(Backend::Socat).await?;
    let mut client = svc.client().await?;
    let node = session::node_id("nolog");
    session::enable(&mut client, bmcs[0].enable_request(&node)).await?;
    let err = console_log(&svc, &node, 0)
        .await
        .expect_err("socat has no log");
    let status = err.downcast_ref::<tonic::Status>().cloned();
    ensure!(
        status.as_ref().map(tonic::Status::code) == Some(Code::Unimplemented),
        "GetConsoleLog on socat: {err:#}"
    );
    Ok(())
}

async fn console_log(
    svc: &ConsoleSvc,
    node: &str,
    max_bytes: u32,
) -> Result<pb::GetConsoleLogResponse> {
    let req = pb::GetConsoleLogRequest {
        node_id: node.into(),
        max_bytes,
    };
    Ok(svc.client().await?.get_console_log(req).await?.into_inner())
}
