//! Issue 11's inspector acceptance: the real ironic-inspector 12.5
//! (`../shared/rig/inspector-up.sh`, its `[ironic]` pointed at a conductor
//! started here) introspects a `redfish` node on sushy-tools (fake system
//! driver, whose power changes land 1–11 s after they are asked for) while
//! the node sits in `manageable`: inspector validates the power interface,
//! sets the boot device, reboots the node through the conductor, takes the
//! inventory this test posts to `/v1/continue` in the ramdisk's place once
//! the machine is really on, PATCHes the node's properties and its port's
//! `pxe_enabled`, and powers the node off at the end.
//!
//! Inspector is called directly; the conductor's `inspector` inspect
//! interface that drives this comes with issue 12. Sushy-tools and
//! inspector run from their rig scripts with state dirs of their own under
//! `CARGO_TARGET_TMPDIR`, on free ports (or `PORTHOLE_REDFISH_PORT` /
//! `PORTHOLE_INSPECTOR_PORT`), and are stopped by pid (the scripts' `down`).
//! Skips with a notice without `PORTHOLE_RIG_JSON` (fails instead with
//! `PORTHOLE_REQUIRE_PEERS`).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use common::{eventually, TestConductor};
use serde_json::{json, Value};

const SYSTEM: &str = "/redfish/v1/Systems/27946b59-9e44-4fa7-8e91-f3527a1ef094";
/// sushy-tools' node-0 NIC (redfish-up.sh).
const MAC: &str = "52:54:00:12:34:56";

fn rig_dir() -> PathBuf {
    std::env::var_os("PORTHOLE_RIG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/rig"))
}

fn port_from(var: &str) -> Result<u16> {
    if let Some(p) = std::env::var_os(var) {
        return Ok(p.to_string_lossy().parse()?);
    }
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A rig script's peer (`redfish-up.sh`, `inspector-up.sh`) in its own
/// state dir; `down` (which stops it by its pid file) on drop.
struct Peer {
    script: PathBuf,
    state: PathBuf,
    env: Vec<(String, String)>,
    stdout: String,
}

impl Peer {
    async fn up(script: &str, state: &str, env: &[(&str, String)]) -> Result<Self> {
        let mut p = Self {
            script: rig_dir().join(script),
            state: Path::new(env!("CARGO_TARGET_TMPDIR")).join(state),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            stdout: String::new(),
        };
        p.down(); // one an interrupted run left behind
        let out = tokio::process::Command::new(&p.script)
            .arg("up")
            .env("RIG_STATE_DIR", &p.state)
            .envs(p.env.iter().cloned())
            .output()
            .await
            .with_context(|| format!("running {script}"))?;
        if !out.status.success() {
            bail!(
                "{script} up failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        p.stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        Ok(p)
    }

    /// `KEY=value` from the script's output.
    fn said(&self, key: &str) -> Result<String> {
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(|v| v.split_whitespace().next().unwrap_or("").to_owned())
            .with_context(|| format!("{:?} said: {}", self.script, self.stdout))
    }

    fn down(&self) {
        let _ = std::process::Command::new(&self.script)
            .arg("down")
            .env("RIG_STATE_DIR", &self.state)
            .envs(self.env.iter().cloned())
            .output();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.down();
    }
}

struct Http {
    http: reqwest::Client,
}

impl Http {
    async fn call(&self, method: &str, url: &str, body: Option<Value>) -> Result<(u16, Value)> {
        let mut req = self
            .http
            .request(method.parse()?, url)
            .header("X-OpenStack-Ironic-API-Version", "1.99");
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    async fn ok(&self, method: &str, url: &str, body: Option<Value>) -> Result<Value> {
        let (status, v) = self.call(method, url, body.clone()).await?;
        ensure!(
            (200..300).contains(&status),
            "{method} {url} {body:?} → {status} {v}"
        );
        Ok(v)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspector_introspects_a_redfish_node() {
    porthole_tests::run(introspection()).await
}

async fn introspection() -> Result<()> {
    if std::env::var_os("PORTHOLE_RIG_JSON").is_none() {
        eprintln!("notice: PORTHOLE_RIG_JSON is not set; skipping the inspector test (scripts/test.sh sets it)");
        assert!(
            std::env::var_os("PORTHOLE_REQUIRE_PEERS").is_none(),
            "a test peer is missing and PORTHOLE_REQUIRE_PEERS is set (CI): see the notice above"
        );
        return Ok(());
    }
    let sushy = Peer::up(
        "redfish-up.sh",
        "porthole-conductor-inspector-sushy",
        &[(
            "REDFISH_PORT",
            port_from("PORTHOLE_REDFISH_PORT")?.to_string(),
        )],
    )
    .await?;
    let redfish = sushy.said("REDFISH_URL")?;
    let cond = TestConductor::start("http://127.0.0.1:9").await?;
    let inspector = Peer::up(
        "inspector-up.sh",
        "porthole-conductor-inspector",
        &[
            ("IRONIC_URL", cond.url.clone()),
            (
                "INSPECTOR_PORT",
                port_from("PORTHOLE_INSPECTOR_PORT")?.to_string(),
            ),
            ("INSPECTOR_TIMEOUT", "300".into()),
        ],
    )
    .await?;
    let inspector_url = inspector.said("INSPECTOR_URL")?;
    let log = inspector.state.join("inspector/inspector.log");
    let result = flow(&cond.url, &redfish, &inspector_url).await;
    if result.is_err() {
        // inspector's side of what went wrong (its calls to the conductor)
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        eprintln!(
            "--- inspector's errors and warnings ({}) ---",
            log.display()
        );
        for l in text.lines().filter(|l| {
            (l.contains(" ERROR ") || l.contains(" WARNING "))
                && !l.contains("coordination backend does not support")
                && !l.contains("    ") // a traceback's body
                && !l.contains("^^^")
        }) {
            eprintln!("{l}");
        }
    }
    result
}

async fn flow(conductor: &str, redfish: &str, inspector: &str) -> Result<()> {
    let h = Http {
        http: reqwest::Client::new(),
    };
    let power_of_system = || async {
        let sys = h.ok("GET", &format!("{redfish}{SYSTEM}"), None).await?;
        Ok::<_, anyhow::Error>(sys["PowerState"].as_str().unwrap_or("").to_owned())
    };
    let node = h
        .ok(
            "POST",
            &format!("{conductor}/v1/nodes"),
            Some(json!({
                "driver": "redfish",
                "name": "inspected-1",
                "driver_info": {"redfish_address": redfish, "redfish_system_id": SYSTEM},
            })),
        )
        .await?;
    let uuid = node["uuid"].as_str().context("uuid")?.to_owned();
    let node_url = format!("{conductor}/v1/nodes/{uuid}");
    // pxe_enabled false: inspector's validate_interfaces hook PATCHes it to
    // true for the interface the ramdisk booted from.
    let port = h
        .ok(
            "POST",
            &format!("{conductor}/v1/ports"),
            Some(json!({"node_uuid": uuid, "address": MAC, "pxe_enabled": false})),
        )
        .await?;
    let port_url = format!(
        "{conductor}/v1/ports/{}",
        port["uuid"].as_str().context("port uuid")?
    );
    ensure!(port["pxe_enabled"] == false, "port created as {port}");

    h.ok(
        "PUT",
        &format!("{node_url}/states/provision"),
        Some(json!({"target": "manage"})),
    )
    .await?;
    let n = eventually(Duration::from_secs(60), "manageable", || async {
        let n = h.ok("GET", &node_url, None).await?;
        Ok((n["provision_state"] == "manageable" && n["reservation"].is_null()).then_some(n))
    })
    .await?;
    ensure!(
        n["last_error"].is_null() && n["power_state"] == "power off",
        "verify against sushy-tools: {n}"
    );

    // Introspection starts: validate (power), boot device pxe, reboot.
    let (status, body) = h
        .call(
            "POST",
            &format!("{inspector}/v1/introspection/{uuid}"),
            None,
        )
        .await?;
    ensure!(
        status == 202,
        "POST {inspector}/v1/introspection/{uuid} → {status} {body}"
    );
    let status_url = format!("{inspector}/v1/introspection/{uuid}");
    let t0 = std::time::Instant::now();
    // The ramdisk runs only once the machine is on: sushy applies the
    // reboot 1–11 s after it was asked for.
    eventually(
        Duration::from_secs(60),
        "inspector waiting and the machine on",
        || async {
            let s = h.ok("GET", &status_url, None).await?;
            ensure!(s["error"].is_null(), "introspection failed early: {s}");
            let on = power_of_system().await? == "On";
            Ok((s["state"] == "waiting" && on).then_some(()))
        },
    )
    .await?;
    eprintln!(
        "introspection started; the machine on after {:?}",
        t0.elapsed()
    );
    let sys = h.ok("GET", &format!("{redfish}{SYSTEM}"), None).await?;
    ensure!(
        sys["Boot"]["BootSourceOverrideTarget"] == "Pxe",
        "inspector's boot device pxe did not reach the BMC: {}",
        sys["Boot"]
    );
    let n = eventually(
        Duration::from_secs(30),
        "conductor sees power on",
        || async {
            let n = h.ok("GET", &node_url, None).await?;
            Ok((n["power_state"] == "power on" && n["target_power_state"].is_null()).then_some(n))
        },
    )
    .await?;
    ensure!(n["provision_state"] == "manageable", "{n}");

    // The ramdisk's report.
    let data = json!({
        "inventory": {
            "interfaces": [{"name": "eth0", "mac_address": MAC, "ipv4_address": "192.0.2.10", "has_carrier": true}],
            "cpu": {"count": 2, "architecture": "x86_64", "model_name": "QEMU Virtual CPU", "frequency": "2000"},
            "memory": {"total": 4294967296u64, "physical_mb": 4096},
            "disks": [{"name": "/dev/sda", "model": "QEMU HARDDISK", "size": 21474836480u64, "rotational": true, "serial": "porthole-sda"}],
            "bmc_address": "127.0.0.1",
            "system_vendor": {"product_name": "sushy-fake", "serial_number": "porthole-1", "manufacturer": "sushy-tools"},
            "boot": {"current_boot_mode": "bios", "pxe_interface": MAC},
        },
        "boot_interface": MAC,
        // IPA's choice of root disk (no root device hints on the node)
        "root_disk": {"name": "/dev/sda", "size": 21474836480u64, "rotational": true, "serial": "porthole-sda"},
    });
    let (status, body) = h
        .call("POST", &format!("{inspector}/v1/continue"), Some(data))
        .await?;
    ensure!(
        status == 200 && body["uuid"] == uuid.as_str(),
        "POST {inspector}/v1/continue → {status} {body}"
    );
    let t1 = std::time::Instant::now();
    let s = eventually(
        Duration::from_secs(60),
        "introspection finished",
        || async {
            let s = h.ok("GET", &status_url, None).await?;
            Ok((s["finished"] == true).then_some(s))
        },
    )
    .await?;
    ensure!(
        s["error"].is_null() && s["state"] == "finished",
        "introspection: {s}"
    );

    // Processing's results on the conductor: properties, the port PATCH,
    // and the final power off, really at the BMC.
    let n = eventually(Duration::from_secs(40), "final power off", || async {
        let n = h.ok("GET", &node_url, None).await?;
        let off = power_of_system().await? == "Off";
        Ok(
            (n["power_state"] == "power off" && n["target_power_state"].is_null() && off)
                .then_some(n),
        )
    })
    .await?;
    eprintln!(
        "processing done and the machine off {:?} after /v1/continue",
        t1.elapsed()
    );
    let p = &n["properties"];
    ensure!(
        p["cpus"] == "2"
            && p["memory_mb"] == "4096"
            && p["cpu_arch"] == "x86_64"
            && p["local_gb"] == "19",
        "properties after processing: {p}"
    );
    ensure!(
        n["provision_state"] == "manageable" && n["last_error"].is_null(),
        "node after introspection: {n}"
    );
    let port = h.ok("GET", &port_url, None).await?;
    ensure!(
        port["pxe_enabled"] == true,
        "inspector's port PATCH (pxe_enabled true) did not land: {port}"
    );
    Ok(())
}
