//! vendor_passthru through the real openstack CLI (python-ironicclient):
//! `node passthru list` shows the fake vendor interface's method, `node
//! passthru call` reaches it and gets Ironic's refusals (no secret for a
//! node that waits for no ramdisk, an unknown method, a driver without a
//! vendor interface), and nothing is recorded. Needs the clients, no rig.

mod common;

use anyhow::{ensure, Result};
use common::TestConductor;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthru_list_and_call_from_the_cli() {
    porthole_tests::run(body()).await
}

async fn body() -> Result<()> {
    let Some(bin) = common::clients() else {
        return Ok(());
    };
    let cond = TestConductor::start("http://127.0.0.1:9").await?;
    let cli = cond.cli(bin);
    cli.ok(&[
        "node",
        "create",
        "--driver",
        "fake-hardware",
        "--name",
        "v1",
    ])
    .await?;
    cli.ok(&["node", "create", "--driver", "ipmi", "--name", "i1"])
        .await?;

    let methods = cli.json(&["node", "passthru", "list", "v1"]).await?;
    let shown = methods.to_string();
    ensure!(
        shown.contains("fake_callback") && shown.contains("POST"),
        "passthru list: {methods}"
    );

    let before = cli.json(&["node", "show", "v1"]).await?;
    let r = cli
        .run(&[
            "node",
            "passthru",
            "call",
            "v1",
            "fake_callback",
            "--arg",
            "key=guess",
        ])
        .await?;
    ensure!(
        !r.ok
            && r.stderr
                .contains("Invalid or missing agent token received."),
        "a call with no secret issued: {}",
        r.stderr
    );
    let r = cli
        .run(&["node", "passthru", "call", "v1", "no_such"])
        .await?;
    ensure!(
        !r.ok && r.stderr.contains("No handler for method no_such"),
        "unknown method: {}",
        r.stderr
    );
    let r = cli
        .run(&[
            "node",
            "passthru",
            "call",
            "--http-method",
            "GET",
            "v1",
            "fake_callback",
        ])
        .await?;
    ensure!(
        !r.ok && r.stderr.contains("does not support HTTP GET"),
        "GET on a POST method: {}",
        r.stderr
    );
    let r = cli.run(&["node", "passthru", "list", "i1"]).await?;
    ensure!(
        !r.ok && r.stderr.contains("does not support vendor interface"),
        "ipmi node: {}",
        r.stderr
    );
    let mut after = cli.json(&["node", "show", "v1"]).await?;
    // The only field that may differ between two shows.
    after["power_state"] = before["power_state"].clone();
    ensure!(
        after == before,
        "a refused call changed the node:\n{before}\n{after}"
    );
    Ok(())
}
