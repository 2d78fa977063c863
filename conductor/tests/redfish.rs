//! Redfish power, boot devices and verify against sushy-tools (started
//! here with `../shared/rig/redfish-up.sh`, HTTP basic auth on, its own
//! state dir, on `PORTHOLE_TEST_REDFISH_PORT` when set or else a free port, stopped by
//! pid), driven through the openstack CLI: verify reads the power state
//! the emulator really has, a wrong password goes back to enroll.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use common::{eventually, Cli, TestConductor};
use serde_json::Value;

const SYSTEM: &str = "/redfish/v1/Systems/27946b59-9e44-4fa7-8e91-f3527a1ef094";

/// The emulator's account (a test peer's, not a secret).
const USER: &str = "porthole";
const PASSWORD: &str = "Rf-4242-porthole";

/// A sushy-tools emulator, stopped (by its pid) on drop.
struct Sushy {
    pid: i32,
    url: String,
    http: reqwest::Client,
}

impl Sushy {
    async fn start() -> Result<Self> {
        let rig_dir = std::env::var_os("PORTHOLE_RIG_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/rig"));
        let state = Path::new(env!("CARGO_TARGET_TMPDIR")).join("porthole-conductor-sushy");
        // An emulator an interrupted run of this test left in our state dir.
        let _ = tokio::process::Command::new(rig_dir.join("redfish-up.sh"))
            .arg("down")
            .env("RIG_STATE_DIR", &state)
            .output()
            .await;
        let port = match std::env::var("PORTHOLE_TEST_REDFISH_PORT") {
            Ok(p) => p.parse().context("PORTHOLE_TEST_REDFISH_PORT")?,
            Err(_) => std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port(),
        };
        let out = tokio::process::Command::new(rig_dir.join("redfish-up.sh"))
            .arg("up")
            .env("RIG_STATE_DIR", &state)
            .env("REDFISH_PORT", port.to_string())
            .env("REDFISH_USER", USER)
            .env("REDFISH_PASSWORD", PASSWORD)
            .output()
            .await
            .context("running redfish-up.sh")?;
        if !out.status.success() {
            bail!(
                "redfish-up.sh failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let pid: i32 = std::fs::read_to_string(state.join("redfish/sushy.pid"))?
            .trim()
            .parse()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let url = stdout
            .lines()
            .find_map(|l| l.strip_prefix("REDFISH_URL="))
            .map(str::to_owned)
            .with_context(|| format!("redfish-up.sh said: {stdout}"))?;
        Ok(Self {
            pid,
            url,
            http: reqwest::Client::new(),
        })
    }

    async fn system(&self) -> Result<Value> {
        Ok(self
            .http
            .get(format!("{}{SYSTEM}", self.url))
            .basic_auth(USER, Some(PASSWORD))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// Change the power state behind the conductor's back.
    async fn reset(&self, kind: &str) -> Result<()> {
        self.http
            .post(format!("{}{SYSTEM}/Actions/ComputerSystem.Reset", self.url))
            .basic_auth(USER, Some(PASSWORD))
            .json(&serde_json::json!({ "ResetType": kind }))
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }
}

impl Drop for Sushy {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}

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
    let sushy = Sushy::start().await?;
    let mut cond = TestConductor::start("http://127.0.0.1:9").await?;
    let cli = Cli {
        bin,
        url: cond.url.clone(),
    };
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
