//! The conductor killed (kill -9) in the middle of a console enable:
//! console-svc has started the console, the conductor has not yet recorded
//! `console_enabled = true`. After a restart, reconcile must disable that
//! console (the node does not want one), instead of leaving it served for
//! ever.
//!
//! The window is widened without any hook in the product: the test holds
//! SQLite's write lock on the conductor's database (`BEGIN IMMEDIATE`), so
//! the conductor's write of `console_enabled` waits (SQLite's busy timeout,
//! 5 s) after console-svc has answered. Real console-svc process, real
//! simulated BMC from the rig, the conductor binary as a process.

mod common;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::{eventually, ConductorProc};
use porthole_proto::console::v1 as pb;
use porthole_tests::{rig_or_skip, Backend, ConsoleSvc};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_enable_leaves_no_unwanted_console() {
    porthole_tests::run(body()).await
}

/// The console console-svc has for `node`, unless it has none (or a disabled one).
async fn live_console(svc: &ConsoleSvc, node: &str) -> Result<Option<pb::Console>> {
    let mut client = svc.client().await?;
    let req = pb::GetConsoleRequest {
        node_id: node.to_owned(),
    };
    Ok(match client.get_console(req).await {
        Ok(c) => Some(c.into_inner()).filter(|c| c.state != pb::ConsoleState::Disabled as i32),
        Err(s) if s.code() == tonic::Code::NotFound => None,
        Err(s) => return Err(s.into()),
    })
}

async fn body() -> Result<()> {
    let rig = rig_or_skip!();
    let bmcs = rig.lease_bmcs(1).await?;
    let bmc = &bmcs[0];
    let svc = ConsoleSvc::start(Backend::Native).await?;
    let mut cond = ConductorProc::start(&svc.grpc_url()).await?;
    let http = reqwest::Client::new();

    let created: Value = http
        .post(format!("{}/v1/nodes", cond.url))
        .json(&json!({
            "driver": "ipmi",
            "name": "n-kill",
            "driver_info": {
                "ipmi_address": bmc.host,
                "ipmi_port": bmc.port.to_string(),
                "ipmi_username": bmc.username,
                "ipmi_password": bmc.password,
                "ipmi_cipher_suite": bmc.cipher_suite.to_string(),
            },
        }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let uuid = created["uuid"].as_str().context("uuid")?.to_owned();
    // Let the power sync after create write its result before the lock.
    eventually(
        Duration::from_secs(30),
        "power sync after create",
        || async {
            let n: Value = http
                .get(format!("{}/v1/nodes/{uuid}", cond.url))
                .send()
                .await?
                .json()
                .await?;
            Ok((!n["power_state"].is_null()).then_some(()))
        },
    )
    .await?;

    // Hold the database's write lock: the conductor's record of
    // console_enabled waits behind it.
    let lock = rusqlite::Connection::open(cond.db_path())?;
    lock.execute_batch("BEGIN IMMEDIATE")?;
    let put = tokio::spawn({
        let (http, url) = (http.clone(), cond.url.clone());
        let uuid = uuid.clone();
        async move {
            http.put(format!("{url}/v1/nodes/{uuid}/states/console"))
                .json(&json!({"enabled": true}))
                .send()
                .await
        }
    });
    let running = eventually(
        Duration::from_secs(4),
        "console-svc runs the console",
        || async {
            Ok(live_console(&svc, &uuid)
                .await?
                .filter(|c| c.state == pb::ConsoleState::Running as i32))
        },
    )
    .await?;
    // The enable call has returned to the conductor by now (the console is
    // running); its write waits on our lock. Kill it there.
    tokio::time::sleep(Duration::from_millis(300)).await;
    ensure!(!put.is_finished(), "the enable answered before the kill");
    cond.kill9()?;
    let _ = put.await;
    lock.execute_batch("ROLLBACK")?;
    drop(lock);
    let wanted: bool = rusqlite::Connection::open(cond.db_path())?.query_row(
        "SELECT console_enabled FROM nodes WHERE uuid = ?1",
        [&uuid],
        |r| r.get(0),
    )?;
    ensure!(
        !wanted,
        "the kill came too late: console_enabled was recorded"
    );
    eprintln!("killed in the window: console-svc runs {}", running.url);

    cond.restart().await?;
    eventually(
        Duration::from_secs(30),
        "the restarted conductor reconciles",
        || async {
            Ok(cond
                .log_lines()
                .iter()
                .any(|l| l.contains("consoles reconciled"))
                .then_some(()))
        },
    )
    .await?;
    let left = eventually(
        Duration::from_secs(10),
        "console-svc drops the unwanted console",
        || async { Ok(live_console(&svc, &uuid).await?.is_none().then_some(())) },
    )
    .await;
    ensure!(
        left.is_ok(),
        "after the restart console-svc still serves a console the conductor has as disabled: {:?}",
        live_console(&svc, &uuid).await?
    );
    let n: Value = http
        .get(format!("{}/v1/nodes/{uuid}/states/console", cond.url))
        .send()
        .await?
        .json()
        .await?;
    ensure!(n["console_enabled"] == false, "console state: {n}");

    // The node can still have its console when asked.
    let r = http
        .put(format!("{}/v1/nodes/{uuid}/states/console", cond.url))
        .json(&json!({"enabled": true}))
        .send()
        .await?;
    ensure!(r.status() == 202, "enable after restart: {}", r.status());
    ensure!(
        live_console(&svc, &uuid).await?.is_some(),
        "no console after a real enable"
    );
    let r = http
        .put(format!("{}/v1/nodes/{uuid}/states/console", cond.url))
        .json(&json!({"enabled": false}))
        .send()
        .await?;
    ensure!(r.status() == 202, "disable: {}", r.status());
    cond.terminate(Duration::from_secs(15))?;
    Ok(())
}
