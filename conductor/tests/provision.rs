//! Provisioning through the real openstack CLI (python-ironicclient): a
//! `fake-hardware` node round the state machine with `--wait` at each
//! step, Ironic's 400 for an invalid transition; an `ipmi` node on a rig
//! BMC verified for real (manageable, showing the power state the BMC was
//! given behind the conductor's back), and with a wrong password back to
//! enroll with last_error.

mod common;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::{eventually, Cli, TestConductor};
use porthole_tests::rig_or_skip;
use serde_json::Value;

/// No console-svc is needed here: nothing enables a console.
const NO_CONSOLE_SVC: &str = "http://127.0.0.1:9";

async fn state(cli: &Cli, node: &str) -> Result<Value> {
    cli.json(&[
        "node",
        "show",
        node,
        "--fields",
        "provision_state",
        "target_provision_state",
        "last_error",
        "reservation",
        "provision_updated_at",
    ])
    .await
}

async fn expect(cli: &Cli, node: &str, want: &str) -> Result<()> {
    let n = state(cli, node).await?;
    ensure!(n["provision_state"] == want, "{node}: want {want}, got {n}");
    ensure!(n["target_provision_state"].is_null(), "target left: {n}");
    ensure!(n["last_error"].is_null(), "last_error: {n}");
    ensure!(n["reservation"].is_null(), "still reserved: {n}");
    ensure!(
        n["provision_updated_at"].is_string(),
        "no provision_updated_at: {n}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_fake_hardware_round_trip() {
    porthole_tests::run(fake_round_trip()).await
}

async fn fake_round_trip() -> Result<()> {
    let Some(bin) = common::clients() else {
        return Ok(());
    };
    let mut cond = TestConductor::start(NO_CONSOLE_SVC).await?;
    let cli = cond.cli(bin);
    let n = cli
        .json(&[
            "node",
            "create",
            "--driver",
            "fake-hardware",
            "--name",
            "fk",
        ])
        .await?;
    ensure!(n["provision_state"] == "enroll", "{n}");
    ensure!(n["deploy_interface"] == "fake", "{n}");

    // Invalid transition: Ironic's message, nothing changes.
    let r = cli.run(&["node", "provide", "fk"]).await?;
    let uuid = n["uuid"].as_str().context("uuid")?;
    let want = format!("The requested action \"provide\" can not be performed on node \"{uuid}\" while it is in state \"enroll\".");
    ensure!(
        !r.ok && r.stderr.contains(&want),
        "provide from enroll: {}",
        r.stderr
    );
    ensure!(r.stderr.contains("HTTP 400"), "not a 400: {}", r.stderr);
    expect_enroll(&cli).await?;

    for (verb, want) in [
        ("manage", "manageable"),
        ("inspect", "manageable"),
        ("provide", "available"),
        ("deploy", "active"),
        ("rebuild", "active"),
        ("undeploy", "available"),
        ("manage", "manageable"),
    ] {
        cli.ok(&["node", verb, "fk", "--wait", "30"]).await?;
        expect(&cli, "fk", want).await?;
    }
    let n = cli.json(&["node", "show", "fk"]).await?;
    ensure!(
        n["inspection_started_at"].is_string() && n["inspection_finished_at"].is_string(),
        "inspection times: {n}"
    );
    // The CLI's power commands on a fake node: the database keeps it.
    cli.ok(&["node", "power", "on", "fk"]).await?;
    let n = cli.json(&["node", "show", "fk"]).await?;
    ensure!(n["power_state"] == "power on", "{n}");
    cond.stop().await?;
    Ok(())
}

async fn expect_enroll(cli: &Cli) -> Result<()> {
    let n = state(cli, "fk").await?;
    ensure!(
        n["provision_state"] == "enroll" && n["provision_updated_at"].is_null(),
        "{n}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_ipmi_verify_on_a_rig_bmc() {
    porthole_tests::run(ipmi_verify()).await
}

async fn ipmi_verify() -> Result<()> {
    let rig = rig_or_skip!();
    let Some(bin) = common::clients() else {
        return Ok(());
    };
    let bmcs = rig.lease_bmcs(1).await?;
    let bmc = &bmcs[0];
    let mut cond = TestConductor::start(NO_CONSOLE_SVC).await?;
    let cli = cond.cli(bin);
    let create = |name: &'static str, password: String| {
        let info = [
            format!("ipmi_address={}", bmc.host),
            format!("ipmi_port={}", bmc.port),
            format!("ipmi_username={}", bmc.username),
            format!("ipmi_password={password}"),
            format!("ipmi_cipher_suite={}", bmc.cipher_suite),
        ];
        let cli = &cli;
        async move {
            let mut cmd = vec!["node", "create", "--driver", "ipmi", "--name", name];
            for a in &info {
                cmd.extend(["--driver-info", a.as_str()]);
            }
            cli.json(&cmd).await
        }
    };
    let good = create("good", bmc.password.clone()).await?;
    // Verify must read the BMC: its power is flipped behind the conductor's
    // back (after the read that follows create), and manage shows the new one.
    let n = eventually(
        Duration::from_secs(30),
        "power read after create",
        || async {
            let n = cli.json(&["node", "show", "good"]).await?;
            Ok(n["power_state"].is_string().then_some(n))
        },
    )
    .await?;
    let info = good["driver_info"].as_object().context("driver_info")?;
    let mut info = info.clone();
    info.insert("ipmi_password".into(), bmc.password.clone().into());
    let settings =
        conductor::power::PowerSettings::new("ipmitool".into(), Duration::from_secs(20))?;
    let direct = conductor::power::ipmi::Ipmi::from_info(&info, &settings)?;
    let flipped = if n["power_state"] == "power on" {
        conductor::power::Power::Off
    } else {
        conductor::power::Power::On
    };
    direct.set_power(flipped).await?;
    eventually(Duration::from_secs(30), "the BMC flipped", || async {
        Ok((direct.power_state().await? == flipped).then_some(()))
    })
    .await?;
    cli.ok(&["node", "manage", "good", "--wait", "60"]).await?;
    expect(&cli, "good", "manageable").await?;
    let n = cli.json(&["node", "show", "good"]).await?;
    ensure!(
        n["power_state"] == flipped.as_ironic() && n["power_interface"] == "ipmitool",
        "verify read the power state {}: {n}",
        flipped.as_ironic()
    );

    let bad = create("bad", format!("{}-wrong", bmc.password)).await?;
    let uuid = bad["uuid"].as_str().context("uuid")?.to_owned();
    cli.ok(&["node", "manage", "bad"]).await?;
    let n = eventually(
        Duration::from_secs(60),
        "bad node back in enroll",
        || async {
            let n = state(&cli, "bad").await?;
            Ok((n["provision_state"] == "enroll" && n["last_error"].is_string()).then_some(n))
        },
    )
    .await?;
    let err = n["last_error"].as_str().unwrap_or_default();
    ensure!(
        err.starts_with(&format!(
            "Failed to get power state for node {uuid}. Error: "
        )),
        "last_error: {err}"
    );
    ensure!(
        !err.contains(&bmc.password),
        "the password leaked into last_error"
    );
    ensure!(
        n["target_provision_state"].is_null() && n["reservation"].is_null(),
        "{n}"
    );
    cond.stop().await?;
    Ok(())
}

/// Status, Location and faultstring of a `PUT .../states/provision`.
async fn put_provision(
    http: &reqwest::Client,
    base: &str,
    node: &str,
    version: &str,
    body: Value,
) -> Result<(u16, Option<String>, String)> {
    let r = http
        .put(format!("{base}/v1/nodes/{node}/states/provision"))
        .header("X-OpenStack-Ironic-API-Version", version)
        .json(&body)
        .send()
        .await?;
    let status = r.status().as_u16();
    let location = r
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = r.text().await?;
    let fault = if text.is_empty() {
        String::new()
    } else {
        common::faultstring(&serde_json::from_str(&text).with_context(|| text.clone())?)?
    };
    Ok((status, location, fault))
}

/// The endpoint over HTTP: 202 with a Location, Ironic's 400/406 wording
/// (nothing recorded), and 409 NodeLocked with `reservation` set while a
/// verify is under way (against a BMC port that never answers), but not
/// while the power sync after create still waits on that BMC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_provision_codes() {
    porthole_tests::run(http_codes()).await
}

async fn http_codes() -> Result<()> {
    let mut cond = TestConductor::start(NO_CONSOLE_SVC).await?;
    let base = cond.url.clone();
    let http = reqwest::Client::new();
    let silent = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let port = silent.local_addr()?.port();
    let node: Value = http
        .post(format!("{base}/v1/nodes"))
        .json(&serde_json::json!({"driver": "ipmi", "name": "slow",
            "driver_info": {"ipmi_address": "127.0.0.1", "ipmi_port": port,
                            "ipmi_username": "u", "ipmi_password": "p"}}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let uuid = node["uuid"].as_str().context("uuid")?.to_owned();
    let show = || async {
        let v: Value = http
            .get(format!("{base}/v1/nodes/slow"))
            .send()
            .await?
            .json()
            .await?;
        anyhow::Ok(v)
    };
    let before = show().await?;
    for (version, body, code, want) in [
        ("1.3", serde_json::json!({"target": "manage"}), 406, "Request not acceptable.".to_owned()),
        ("1.99", serde_json::json!({"target": "provide"}), 400,
         format!("The requested action \"provide\" can not be performed on node \"{uuid}\" while it is in state \"enroll\".")),
        ("1.99", serde_json::json!({"target": "manage", "bogus": 1}), 400, "Unknown argument: \"bogus\"".to_owned()),
        ("1.99", serde_json::json!({"configdrive": "x"}), 400, "Missing argument: \"target\"".to_owned()),
        ("1.99", serde_json::json!({"target": "manage", "clean_steps": []}), 400,
         "\"clean_steps\" is not supported by the Porthole conductor yet.".to_owned()),
    ] {
        let (status, _, fault) = put_provision(&http, &base, "slow", version, body.clone()).await?;
        ensure!(status == code && fault == want, "{body}: {status} {fault}");
    }
    let after = show().await?;
    ensure!(
        after["updated_at"] == before["updated_at"],
        "a refusal changed the node: {after}"
    );

    // The power sync after create (still waiting on the silent BMC) holds
    // no lock: manage is accepted at once.
    let (status, location, fault) = put_provision(
        &http,
        &base,
        "slow",
        "1.99",
        serde_json::json!({"target": "manage"}),
    )
    .await?;
    ensure!(status == 202, "manage: {status} {fault}");
    let location = location.context("no Location")?;
    ensure!(
        location == format!("{base}/v1/nodes/{uuid}/states"),
        "Location {location}"
    );
    let (status, _, fault) = put_provision(
        &http,
        &base,
        "slow",
        "1.99",
        serde_json::json!({"target": "manage"}),
    )
    .await?;
    ensure!(
        status == 409,
        "second action while verifying: {status} {fault}"
    );
    ensure!(
        fault == format!("Node {uuid} is locked by host porthole-conductor, please retry after the current operation is completed."),
        "{fault}"
    );
    let n = show().await?;
    ensure!(
        n["provision_state"] == "verifying"
            && n["target_provision_state"] == "manageable"
            && n["reservation"] == "porthole-conductor",
        "while verifying: {n}"
    );
    let n = eventually(Duration::from_secs(90), "verify gives up", || async {
        let n = show().await?;
        Ok((n["provision_state"] == "enroll").then_some(n))
    })
    .await?;
    ensure!(
        n["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("Failed to get power state")),
        "{n}"
    );
    ensure!(n["reservation"].is_null(), "{n}");
    drop(silent);
    cond.stop().await?;
    Ok(())
}
