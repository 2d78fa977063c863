//! Redfish power, boot devices and verify against sushy-tools
//! (`common::sushy`, with HTTP basic auth on), driven through the openstack
//! CLI: verify reads the power state the emulator really has, a wrong
//! password goes back to enroll with last_error.

mod common;

use std::time::Duration;

use anyhow::{ensure, Result};
use common::sushy::{Sushy, SYSTEM};
use common::{eventually, TestConductor};

/// The emulator's account (a test peer's, not a secret).
const USER: &str = "porthole";
const PASSWORD: &str = "Rf-4242-porthole";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redfish_power_and_boot_device() {
    porthole_tests::run(body()).await
}

async fn body() -> Result<()> {
    if std::env::var_os("PORTHOLE_RIG_JSON").is_none() {
        eprintln!("notice: PORTHOLE_RIG_JSON is not set; skipping the Redfish test (scripts/test.sh sets it)");
        assert!(
            std::env::var_os("PORTHOLE_REQUIRE_PEERS").is_none(),
            "a test peer is missing and PORTHOLE_REQUIRE_PEERS is set (CI): see the notice above"
        );
        return Ok(());
    }
    let Some(bin) = common::clients() else {
        return Ok(());
    };
    let sushy = Sushy::start_with(Some((USER, PASSWORD))).await?;
    let mut cond = TestConductor::start("http://127.0.0.1:9").await?;
    let cli = cond.cli(bin);
    let address = format!("redfish_address={}", sushy.url);
    let system = format!("redfish_system_id={SYSTEM}");
    let create = |name: &'static str, password: String| {
        let info = [
            address.clone(),
            system.clone(),
            format!("redfish_username={USER}"),
            format!("redfish_password={password}"),
        ];
        let cli = &cli;
        async move {
            let mut cmd = vec!["node", "create", "--driver", "redfish", "--name", name];
            for a in &info {
                cmd.extend(["--driver-info", a.as_str()]);
            }
            cli.json(&cmd).await
        }
    };
    let rf = create("rf", PASSWORD.to_owned()).await?;
    ensure!(
        rf["power_interface"] == "redfish" && rf["management_interface"] == "redfish",
        "{rf}"
    );
    for (verb, state, rf) in [("on", "power on", "On"), ("off", "power off", "Off")] {
        cli.ok(&["node", "power", verb, "rf"]).await?;
        eventually(
            Duration::from_secs(30),
            &format!("redfish power {verb}"),
            || async {
                let n = cli.json(&["node", "show", "rf"]).await?;
                ensure!(
                    n["last_error"].is_null(),
                    "power {verb}: {}",
                    n["last_error"]
                );
                let bmc = sushy.system().await?;
                Ok((n["power_state"] == state && bmc["PowerState"] == rf).then_some(()))
            },
        )
        .await?;
    }
    cli.ok(&["node", "boot", "device", "set", "rf", "pxe"])
        .await?;
    let sys = sushy.system().await?;
    ensure!(
        sys["Boot"]["BootSourceOverrideTarget"] == "Pxe",
        "boot override: {}",
        sys["Boot"]
    );
    let dev = cli.json(&["node", "boot", "device", "show", "rf"]).await?;
    ensure!(dev["boot_device"] == "pxe", "boot device show: {dev}");
    // Verify (manage from enroll) reads the power state from sushy-tools:
    // turned on behind the conductor's back, the node shows it after.
    let n = cli.json(&["node", "show", "rf"]).await?;
    ensure!(n["power_state"] == "power off", "{n}");
    sushy.reset("On").await?;
    // The fake system takes a while to report it.
    eventually(Duration::from_secs(30), "sushy powered on", || async {
        Ok((sushy.system().await?["PowerState"] == "On").then_some(()))
    })
    .await?;
    cli.ok(&["node", "manage", "rf", "--wait", "60"]).await?;
    let n = cli.json(&["node", "show", "rf"]).await?;
    ensure!(
        n["provision_state"] == "manageable"
            && n["last_error"].is_null()
            && n["power_state"] == "power on",
        "verify: {n}"
    );
    // A wrong password: verify fails at the BMC, back to enroll.
    let bad = create("rf-bad", format!("{PASSWORD}-wrong")).await?;
    cli.ok(&["node", "manage", "rf-bad"]).await?;
    let n = eventually(Duration::from_secs(60), "rf-bad back in enroll", || async {
        let n = cli.json(&["node", "show", "rf-bad"]).await?;
        Ok((n["provision_state"] == "enroll" && n["last_error"].is_string()).then_some(n))
    })
    .await?;
    let err = n["last_error"].as_str().unwrap_or_default();
    ensure!(
        err.starts_with(&format!(
            "Failed to get power state for node {}. Error: ",
            bad["uuid"].as_str().unwrap_or_default()
        )) && err.contains("401"),
        "last_error: {err}"
    );
    ensure!(!err.contains(PASSWORD), "the password leaked: {err}");
    ensure!(
        n["target_provision_state"].is_null() && n["reservation"].is_null(),
        "{n}"
    );
    // A Redfish address nothing listens on: verify fails, back to enroll.
    let gone = cli
        .json(&[
            "node",
            "create",
            "--driver",
            "redfish",
            "--name",
            "rf-gone",
            "--driver-info",
            "redfish_address=http://127.0.0.1:9",
            "--driver-info",
            &system,
        ])
        .await?;
    cli.ok(&["node", "manage", "rf-gone"]).await?;
    let n = eventually(
        Duration::from_secs(60),
        "rf-gone back in enroll",
        || async {
            let n = cli.json(&["node", "show", "rf-gone"]).await?;
            Ok((n["provision_state"] == "enroll" && n["last_error"].is_string()).then_some(n))
        },
    )
    .await?;
    let want = format!(
        "Failed to get power state for node {}. Error: ",
        gone["uuid"].as_str().unwrap_or_default()
    );
    ensure!(
        n["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with(&want)),
        "{n}"
    );
    let r = cli.run(&["node", "console", "enable", "rf"]).await?;
    ensure!(
        !r.ok && r.stderr.contains("no-console") && r.stderr.contains("400"),
        "console on a no-console node: {}",
        r.stderr
    );
    cond.stop().await?;
    Ok(())
}
