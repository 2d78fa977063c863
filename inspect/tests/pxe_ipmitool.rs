//! A node created with the classic `pxe_ipmitool` driver (hardware type
//! `ipmi`, inspection `inspector`) on a rig BMC (ipmi_sim) is inspected
//! through the inspect service and the REAL ironic-inspector 12.5: the
//! conductor (in-process) verifies it against the BMC, the inspect service
//! (in-process) starts inspector, which sets boot device pxe and reboots
//! the node through the conductor's API, i.e. ipmitool against the BMC; a
//! test plays the ramdisk (found by its port's MAC: inspector ignores a
//! loopback BMC address), inspector PATCHes the properties and powers the
//! node off, and the node ends `manageable`. What reached the BMC is read
//! from the simulated chassis' log (`node_state_dir` in rig.json): boot
//! device pxe, power on, power off, in that order.
//!
//! Needs `PORTHOLE_RIG_JSON` (the rig), `../shared/rig/inspector-up.sh` and
//! `.venv-inspector`; skips with a notice without them, fails instead
//! under `PORTHOLE_REQUIRE_PEERS`.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::{Api, Inspector};
use porthole_tests::rig_or_skip;
use serde_json::{json, Value};
use tokio::net::TcpListener;

const MAC: &str = "52:54:00:12:34:21";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pxe_ipmitool_node_is_inspected_through_the_service() {
    porthole_tests::run(async {
        let rig = rig_or_skip!();
        let Some((script, venv)) = common::peers() else {
            return Ok(());
        };
        let bmcs = rig.lease_bmcs(1).await?;
        let bmc = &bmcs[0];
        let dir = tempfile::tempdir()?;
        let inspect_listener = TcpListener::bind("127.0.0.1:0").await?;
        let inspect_url = format!("http://{}", inspect_listener.local_addr()?);
        let mut conductor = common::conductor(dir.path(), &inspect_url).await?;
        let api = Api::new(&conductor.url);
        let inspector = Inspector::start(&script, &venv, &conductor.url, Duration::from_secs(60))?;
        let config = common::inspect_config(&[
            ("enabled", "true"),
            ("service_url", &format!("{}/v1", inspector.url)),
            ("status_check_period", "1s"),
        ])?;
        let mut inspect = common::serve_inspect(inspect_listener, config)?;
        let info = json!({
            "ipmi_address": bmc.host, "ipmi_port": bmc.port,
            "ipmi_username": bmc.username, "ipmi_password": bmc.password,
            "ipmi_cipher_suite": bmc.cipher_suite,
        });
        let chassis = chassis_log(&bmc.name)?;
        let result = run(&api, &inspector, info, &chassis).await;
        if result.is_err() {
            eprintln!("--- ironic-inspector's log ---\n{}", inspector.log());
        }
        inspect.stop().await?;
        conductor.stop().await?;
        result
    })
    .await
}

/// The chassis log of the rig's BMC `name` (what ipmi_sim was told).
fn chassis_log(name: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PORTHOLE_RIG_JSON").context("PORTHOLE_RIG_JSON")?;
    let rig: Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let dir = rig["bmcs"]
        .as_array()
        .context("bmcs")?
        .iter()
        .find(|b| b["name"] == name)
        .and_then(|b| b["node_state_dir"].as_str())
        .context("node_state_dir")?;
    Ok(PathBuf::from(dir).join("chassis.log"))
}

/// The chassis log's events (`boot=pxe`, `power=1`, ...), oldest first.
fn chassis_events(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_owned))
        .collect()
}

/// Wait (up to 20 s) until the node's power state is `want`, settled.
async fn power_settles(api: &Api, uuid: &str, want: &str) -> Result<Value> {
    let mut n = Value::Null;
    for _ in 0..100 {
        n = api.node(uuid).await?;
        if n["power_state"] == want && n["target_power_state"].is_null() {
            return Ok(n);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!("never {want}: {n}")
}

/// A `pxe_ipmitool` node with a port, validated, verified (manageable),
/// powered off.
async fn classic_node(api: &Api, info: Value) -> Result<String> {
    let uuid = api
        .create_node_with(json!({"name": "classic", "driver": "pxe_ipmitool", "driver_info": info}))
        .await?;
    let n = api.node(&uuid).await?;
    ensure!(
        n["driver"] == "ipmi" && n["inspect_interface"] == "inspector",
        "the alias expands to ipmi with inspector inspection: {n}"
    );
    let (code, port) = api
        .call(
            reqwest::Method::POST,
            "/v1/ports",
            Some(json!({"node_uuid": uuid, "address": MAC})),
        )
        .await?;
    ensure!(code == 201, "port: {code} {port}");
    let (code, v) = api
        .call(
            reqwest::Method::GET,
            &format!("/v1/nodes/{uuid}/validate"),
            None,
        )
        .await?;
    ensure!(
        code == 200 && v["inspect"]["result"] == true && v["power"]["result"] == true,
        "validate: {code} {v}"
    );
    // Verify reads the power state from the BMC for real.
    api.manage(&uuid).await?;
    // Off to begin with (another test may have left the BMC on), so that
    // inspector's reboot is one power on at the BMC.
    let (code, v) = api
        .call(
            reqwest::Method::PUT,
            &format!("/v1/nodes/{uuid}/states/power"),
            Some(json!({"target": "power off"})),
        )
        .await?;
    ensure!(code == 202, "power off: {code} {v}");
    power_settles(api, &uuid, "power off").await?;
    Ok(uuid)
}

async fn run(api: &Api, inspector: &Inspector, info: Value, chassis: &Path) -> Result<()> {
    let uuid = classic_node(api, info).await?;
    let seen_before = chassis_events(chassis).len();
    let (code, body) = api.provision(&uuid, "inspect").await?;
    ensure!(code == 202, "inspect: {code} {body}");
    let n = api
        .wait_state_target(&uuid, "inspect wait", Duration::from_secs(30))
        .await?;
    ensure!(n["target_provision_state"] == "manageable", "{n}");
    // inspector rebooted the node through the conductor: ipmitool on the BMC.
    power_settles(api, &uuid, "power on").await?;
    let data = common::ramdisk_data(MAC, "192.0.2.121", "127.0.0.1");
    let (code, body) = common::post_continue(&inspector.url, &data).await?;
    ensure!(code == 200, "continue: {code} {body}");
    let n = api
        .wait_state(&uuid, "manageable", Duration::from_secs(40))
        .await?;
    ensure!(n["last_error"].is_null(), "{n}");
    ensure!(
        n["properties"]["cpus"] == "4" && n["properties"]["local_gb"] == "99",
        "inspector's PATCH: {}",
        n["properties"]
    );
    // inspector powers it off at the end.
    power_settles(api, &uuid, "power off").await?;
    let events = chassis_events(chassis);
    let new = events.get(seen_before..).unwrap_or_default();
    ensure!(
        new == ["boot=pxe", "power=1", "power=0"],
        "what reached the BMC during the inspection: {new:?} (all: {events:?})"
    );
    let st = common::introspection_status(&inspector.url, &uuid).await?;
    ensure!(
        st["finished"] == true && st["error"].is_null(),
        "inspector's side: {st}"
    );
    Ok(())
}
