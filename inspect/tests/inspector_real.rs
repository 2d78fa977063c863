//! The `inspector` interface end to end: the conductor (in-process) moves
//! the node, the inspect service (in-process) drives the REAL
//! ironic-inspector 12.5 (`../shared/rig/inspector-up.sh`), which talks to
//! the conductor's API as its Ironic; a test plays the ramdisk, posting to
//! inspector's `/v1/continue`. Skips with a notice without the rig script
//! or `.venv-inspector` (scripts/venv-inspector.sh); fails then under
//! `PORTHOLE_REQUIRE_PEERS`. `openstack baremetal introspection status`
//! (python-ironic-inspector-client, in `.venv-clients`) shows a finished
//! run and an errored one as inspector's API does.

mod common;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::{Api, Inspector};
use serde_json::Value;
use tokio::net::TcpListener;

/// inspector's own introspection timeout for this run.
const INSPECTOR_TIMEOUT: Duration = Duration::from_secs(25);

/// A property inspector set: it PATCHes strings ("4"), Ironic keeps them.
fn prop(n: &Value, key: &str) -> String {
    match &n["properties"][key] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

async fn inspect_until_waiting(api: &Api, uuid: &str) -> Result<()> {
    let (code, v) = api.provision(uuid, "inspect").await?;
    ensure!(code == 202, "inspect {uuid}: {code} {v}");
    let n = api
        .wait_state_target(uuid, "inspect wait", Duration::from_secs(30))
        .await?;
    ensure!(n["target_provision_state"] == "manageable", "{n}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspection_through_the_real_ironic_inspector() {
    porthole_tests::run(async {
        let Some((script, venv)) = common::peers() else {
            return Ok(());
        };
        let dir = tempfile::tempdir()?;
        let inspect_listener = TcpListener::bind("127.0.0.1:0").await?;
        let inspect_url = format!("http://{}", inspect_listener.local_addr()?);
        let mut conductor = common::conductor(dir.path(), &inspect_url).await?;
        let api = Api::new(&conductor.url);
        let inspector = Inspector::start(&script, &venv, &conductor.url, INSPECTOR_TIMEOUT)?;
        let service_url = format!("{}/v1", inspector.url);
        let metrics = format!("127.0.0.1:{}", common::free_port()?);
        let config = common::inspect_config_with(
            &[
                ("enabled", "true"),
                ("service_url", &service_url),
                ("status_check_period", "1s"),
            ],
            &[("metrics_listen", &metrics)],
        )?;
        let mut inspect = common::serve_inspect(inspect_listener, config)?;
        let mut result = flows(&api, &inspector).await;
        if result.is_ok() {
            result = scraped(&metrics).await;
        }
        if result.is_err() {
            eprintln!("--- ironic-inspector's log ---\n{}", inspector.log());
        }
        inspect.stop().await?;
        conductor.stop().await?;
        result
    })
    .await
}

async fn flows(api: &Api, inspector: &Inspector) -> Result<()> {
    // Left waiting: inspector's timeout ends it (checked last).
    let late = api.create_node("late", "192.0.2.19").await?;
    api.manage(&late).await?;
    inspect_until_waiting(api, &late).await?;

    // The ramdisk reports an error. inspector 12.5 cannot take its own
    // `error` event in state `waiting` (its state machine has no such
    // edge), so it answers 400 and the introspection ends only at
    // inspector's timeout (checked last).
    let bad = api.create_node("bad", "192.0.2.12").await?;
    api.manage(&bad).await?;
    inspect_until_waiting(api, &bad).await?;
    let mut data = common::ramdisk_data("52:54:00:12:34:12", "192.0.2.112", "192.0.2.12");
    data["error"] = "The ramdisk found no disks".into();
    let (code, body) = common::post_continue(&inspector.url, &data).await?;
    ensure!(
        code == 400 && body.contains("Can not transition from state 'waiting' on event 'error'"),
        "continue with an error: {code} {body}"
    );

    good_run(api, inspector).await?;
    aborted_run(api, inspector).await?;
    cli_run(api, inspector).await?;

    // inspector's timeout, for both.
    for uuid in [&late, &bad] {
        let n = api
            .wait_state_target(
                uuid,
                "inspect failed",
                INSPECTOR_TIMEOUT + Duration::from_secs(40),
            )
            .await?;
        ensure!(
            n["last_error"] == "ironic-inspector inspection failed: Introspection timeout",
            "{n}"
        );
        ensure!(
            n["target_provision_state"] == "manageable" && n["inspection_finished_at"].is_null(),
            "{n}"
        );
    }
    // inspector's CLI shows the errored run with its error.
    if let Some(st) = introspection_cli(inspector, &late).await? {
        ensure!(
            st["finished"] == true
                && st["state"] == "error"
                && st["error"] == "Introspection timeout",
            "openstack baremetal introspection status {late}: {st}"
        );
    }

    // A failed node can be inspected again, and this time it finishes.
    inspect_until_waiting(api, &bad).await?;
    let (code, body) = common::post_continue(
        &inspector.url,
        &common::ramdisk_data("52:54:00:12:34:12", "192.0.2.112", "192.0.2.12"),
    )
    .await?;
    ensure!(code == 200, "continue: {code} {body}");
    let n = api
        .wait_state(&bad, "manageable", Duration::from_secs(30))
        .await?;
    ensure!(n["last_error"].is_null() && prop(&n, "cpus") == "4", "{n}");

    Ok(())
}

/// The service's /metrics after the flows: what it asked inspector and
/// how the inspections ended.
async fn scraped(addr: &str) -> Result<()> {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await?
        .text()
        .await?;
    let value = |line_start: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    for (sample, at_least) in [
        (
            r#"porthole_inspect_inspector_requests_total{call="version",outcome="ok"}"#,
            1.0,
        ),
        (
            r#"porthole_inspect_inspector_requests_total{call="start",outcome="ok"}"#,
            6.0,
        ),
        (
            r#"porthole_inspect_inspector_requests_total{call="status",outcome="ok"}"#,
            10.0,
        ),
        (
            r#"porthole_inspect_inspector_requests_total{call="abort",outcome="ok"}"#,
            1.0,
        ),
        (
            r#"porthole_inspect_inspections_ended_total{state="finished"}"#,
            3.0,
        ),
        (
            r#"porthole_inspect_inspections_ended_total{state="failed"}"#,
            2.0,
        ),
        (
            r#"porthole_inspect_inspections_ended_total{state="aborted"}"#,
            1.0,
        ),
    ] {
        ensure!(value(sample) >= at_least, "{sample} < {at_least}:\n{text}");
    }
    ensure!(
        value("porthole_inspect_inspections_waiting ") == 0.0,
        "{text}"
    );
    Ok(())
}

/// The good run: the ramdisk reports, inspector processes against our
/// API (properties PATCH, ports POST, power off), the node ends manageable.
async fn good_run(api: &Api, inspector: &Inspector) -> Result<()> {
    let good = api.create_node("good", "192.0.2.11").await?;
    api.manage(&good).await?;
    inspect_until_waiting(api, &good).await?;
    let n = api.node(&good).await?;
    ensure!(n["inspection_started_at"].is_string(), "{n}");
    let mac = "52:54:00:12:34:11";
    let (code, body) = common::post_continue(
        &inspector.url,
        &common::ramdisk_data(mac, "192.0.2.111", "192.0.2.11"),
    )
    .await?;
    ensure!(code == 200, "continue: {code} {body}");
    let n = api
        .wait_state(&good, "manageable", Duration::from_secs(30))
        .await?;
    ensure!(n["last_error"].is_null(), "{n}");
    ensure!(n["inspection_finished_at"].is_string(), "{n}");
    ensure!(prop(&n, "cpus") == "4", "{n}");
    ensure!(prop(&n, "memory_mb") == "8192", "{n}");
    // 100 GiB disk: local_gb is its size in GiB less one.
    ensure!(prop(&n, "local_gb") == "99", "{n}");
    ensure!(prop(&n, "cpu_arch") == "x86_64", "{n}");
    ensure!(
        n["power_state"] == "power off",
        "inspector powers it off at the end: {n}"
    );
    let (code, ports) = api
        .call(
            reqwest::Method::GET,
            &format!("/v1/nodes/{good}/ports"),
            None,
        )
        .await?;
    ensure!(code == 200, "{ports}");
    let macs: Vec<&str> = ports["ports"]
        .as_array()
        .context("ports")?
        .iter()
        .filter_map(|p| p["address"].as_str())
        .collect();
    ensure!(macs == [mac], "ports {ports}");
    let st = common::introspection_status(&inspector.url, &good).await?;
    ensure!(st["finished"] == true && st["error"].is_null(), "{st}");
    // The same through python-ironic-inspector-client's CLI.
    if let Some(st) = introspection_cli(inspector, &good).await? {
        ensure!(
            st["finished"] == true && st["state"] == "finished" && st["error"].is_null(),
            "openstack baremetal introspection status {good}: {st}"
        );
    }

    Ok(())
}

/// `openstack baremetal introspection status UUID -f json`, noauth,
/// pointed at the rig's inspector (`--inspector-url`); `None` (with a
/// notice) without `.venv-clients`.
async fn introspection_cli(inspector: &Inspector, uuid: &str) -> Result<Option<Value>> {
    let Some(bin) = common::openstack() else {
        return Ok(None);
    };
    let out = tokio::process::Command::new(&bin)
        .args(["--os-auth-type", "none", "--inspector-url", &inspector.url])
        .args(["baremetal", "introspection", "status", uuid, "-f", "json"])
        .env_remove("OS_CLOUD")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), out)
        .await
        .context("openstack baremetal introspection status took too long")??;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    eprintln!("$ openstack baremetal introspection status {uuid}\n{stdout}{stderr}");
    ensure!(
        out.status.success(),
        "openstack baremetal introspection status {uuid}: {stderr}"
    );
    Ok(Some(
        serde_json::from_str(&stdout).with_context(|| format!("not JSON: {stdout}"))?,
    ))
}

/// Abort from inspect wait: inspector is told, the node fails as Ironic
/// words it.
async fn aborted_run(api: &Api, inspector: &Inspector) -> Result<()> {
    let aborted = api.create_node("aborted", "192.0.2.13").await?;
    api.manage(&aborted).await?;
    inspect_until_waiting(api, &aborted).await?;
    let (code, v) = api.provision(&aborted, "abort").await?;
    ensure!(code == 202, "abort: {code} {v}");
    let n = api
        .wait_state_target(&aborted, "inspect failed", Duration::from_secs(10))
        .await?;
    ensure!(
        n["last_error"] == "Inspection was aborted by request." || n["last_error"].is_null(),
        "{n}"
    );
    // inspector aborts in the background ("aborting", then finished).
    let mut st = Value::Null;
    for _ in 0..50 {
        st = common::introspection_status(&inspector.url, &aborted).await?;
        if st["finished"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ensure!(
        st["finished"] == true
            && st["error"]
                .as_str()
                .unwrap_or_default()
                .contains("Canceled"),
        "inspector saw the abort: {st}"
    );
    // The result of the aborted run changes nothing afterwards. inspector
    // forces the node off after an abort; a power action clears
    // last_error (as in Ironic), so the abort's message stays only when
    // that power-off came first (or met the node locked).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let n = api.node(&aborted).await?;
    ensure!(n["provision_state"] == "inspect failed", "{n}");
    ensure!(
        n["last_error"] == "Inspection was aborted by request."
            || (n["last_error"].is_null() && n["power_state"] == "power off"),
        "{n}"
    );

    Ok(())
}

/// The same run through the OpenStack CLI: `node manage --wait`, then
/// `node inspect --wait` while the "ramdisk" reports once the node waits.
async fn cli_run(api: &Api, inspector: &Inspector) -> Result<()> {
    let Some(bin) = common::openstack() else {
        return Ok(());
    };
    let cli = api.create_node("cli", "192.0.2.14").await?;
    let (ok, out) =
        common::baremetal(&bin, &api.url, &["node", "manage", &cli, "--wait", "30"]).await?;
    ensure!(ok, "node manage --wait: {out}");
    let ramdisk = {
        let (api, inspector_url, cli) = (api.clone(), inspector.url.clone(), cli.clone());
        tokio::spawn(async move {
            api.wait_state_target(&cli, "inspect wait", Duration::from_secs(60))
                .await?;
            let data = common::ramdisk_data("52:54:00:12:34:14", "192.0.2.114", "192.0.2.14");
            common::post_continue(&inspector_url, &data).await
        })
    };
    let (ok, out) =
        common::baremetal(&bin, &api.url, &["node", "inspect", &cli, "--wait", "60"]).await?;
    let (code, body) = ramdisk.await??;
    ensure!(code == 200, "continue: {code} {body}");
    ensure!(ok, "node inspect --wait: {out}");
    let n = api.node(&cli).await?;
    ensure!(
        n["provision_state"] == "manageable" && prop(&n, "local_gb") == "99",
        "{n}"
    );
    Ok(())
}
