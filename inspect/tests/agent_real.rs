//! Issue 12's built-in `agent` inspection, with real peers: redfish nodes
//! on sushy-tools (fake driver: power lands 1–11 s after it is asked for),
//! the `inspect` binary as its own process, the conductor (in-process, its
//! `[inspect] endpoint` pointed at that binary), and the `openstack` CLI
//! from `.venv-clients`. A task here plays the ramdisk: once the node is in
//! `inspect wait` and the machine really on, it posts an inventory to the
//! conductor's `POST /v1/continue_inspection`.
//!
//! - CLI: `node manage --wait`, `node inspect --wait` (agent is the default
//!   inspect interface with the service), the ramdisk found by the MAC of
//!   its enrolled port (no version header, as an inspector-era ramdisk);
//!   the node ends `manageable` with cpus (already set: kept), memory_mb,
//!   local_gb, cpu_arch, capabilities and the ports add_ports chose, off
//!   at the BMC; `node inventory save` returns the inventory.
//! - API: found by `?node_uuid=` at 1.84 (the lookup-shaped answer); a post
//!   while the node is `manageable`, garbage, a schema error, an oversize
//!   body and an old microversion are refused and change nothing;
//!   `GET /v1/nodes/{node}/inventory` (1.81) and its 404.
//! - A second conductor with `inspect_wait_timeout = 3`: no post, the node
//!   ends `inspect failed` with Ironic's words, powered off at the BMC.
//!
//! Sushy-tools comes from `porthole_tests::peers::Sushy` (or
//! `PORTHOLE_REDFISH_URL`); skips with a notice without the rig or the
//! clients venv (fails instead with `PORTHOLE_REQUIRE_PEERS`).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use common::Api;
use porthole_tests::peers::Sushy;
use serde_json::{json, Value};

/// sushy-tools' NIC of system `i` (redfish-up.sh).
fn sushy_mac(i: usize) -> String {
    format!("52:54:00:12:34:{:02x}", 0x56 + i)
}

/// The `inspect` binary, killed (by its pid) on drop.
struct InspectBin {
    url: String,
    child: Child,
}

impl InspectBin {
    async fn start(env: &[(&str, &str)]) -> Result<Self> {
        let port = common::free_port()?;
        let child = Command::new(env!("CARGO_BIN_EXE_inspect"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .spawn()
            .context("starting the inspect binary")?;
        let this = Self {
            url: format!("http://127.0.0.1:{port}"),
            child,
        };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(this);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("the inspect binary never listened on {port}")
    }
}

impl Drop for InspectBin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A redfish node on sushy system `i`, with `properties`.
async fn redfish_node(api: &Api, sushy: &Sushy, i: usize, properties: Value) -> Result<String> {
    api.create_node_with(json!({
        "name": format!("agent-{i}"),
        "driver": "redfish",
        "driver_info": {"redfish_address": sushy.url, "redfish_system_id": Sushy::system(i)},
        "properties": properties,
    }))
    .await
}

/// What IPA would post: the machine's NIC (it PXE booted from it), a
/// second NIC without an address, 2 CPUs with vmx, 4 GiB, a 20 GiB disk
/// and a 2 GiB one, the BMC's (loopback: never used for lookup) address.
fn inventory(i: usize) -> Value {
    let mac = sushy_mac(i);
    let second = format!("52:54:00:ee:00:{i:02x}");
    json!({
        "inventory": {
            "interfaces": [
                {"name": "eth0", "mac_address": mac, "ipv4_address": "192.0.2.10", "has_carrier": true},
                {"name": "eth1", "mac_address": second, "ipv4_address": null},
            ],
            "cpu": {"count": 2, "architecture": "x86_64", "flags": ["fpu", "vmx"]},
            "memory": {"total": 4294967296u64, "physical_mb": 4096},
            "disks": [
                {"name": "/dev/sdb", "size": 2147483648u64, "rotational": false},
                {"name": "/dev/sda", "size": 21474836480u64, "rotational": true, "serial": "porthole-sda"},
            ],
            "bmc_address": "127.0.0.1",
            "boot": {"current_boot_mode": "bios", "pxe_interface": mac},
        },
        "root_disk": {"name": "/dev/sda", "size": 21474836480u64},
        "logs": "H4sIAAAAAAAAAwMAAAAAAAAAAAA=",
    })
}

/// POST /v1/continue_inspection as a ramdisk: no credentials, `version`
/// header when given; status and body.
async fn post(
    conductor: &str,
    query: &str,
    version: Option<&str>,
    body: Vec<u8>,
) -> Result<(u16, Value)> {
    let mut req = reqwest::Client::new()
        .post(format!("{conductor}/v1/continue_inspection{query}"))
        .header("Content-Type", "application/json")
        .body(body);
    if let Some(v) = version {
        req = req.header("X-OpenStack-Ironic-API-Version", v);
    }
    let resp = req.send().await?;
    let code = resp.status().as_u16();
    let text = resp.text().await?;
    Ok((
        code,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

fn fault(v: &Value) -> String {
    v["error_message"]
        .as_str()
        .and_then(|s| serde_json::from_str::<Value>(s).ok())
        .map(|e| e["faultstring"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_else(|| v.to_string())
}

/// sushy's PowerState of system `i`.
async fn power_of(sushy: &Sushy, i: usize) -> Result<String> {
    let sys: Value = reqwest::get(format!("{}{}", sushy.url, Sushy::system(i)))
        .await?
        .json()
        .await?;
    Ok(sys["PowerState"].as_str().unwrap_or_default().to_owned())
}

/// The ramdisk: once `uuid` waits and system `i` is on, post `body`.
async fn ramdisk(
    api: Api,
    sushy_url: String,
    i: usize,
    uuid: String,
    query: String,
    version: Option<&'static str>,
    body: Value,
) -> Result<(u16, Value)> {
    api.wait_state_target(&uuid, "inspect wait", Duration::from_secs(90))
        .await?;
    let sys_url = format!("{sushy_url}{}", Sushy::system(i));
    let end = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let sys: Value = reqwest::get(&sys_url).await?.json().await?;
        if sys["PowerState"] == "On" {
            ensure!(
                sys["Boot"]["BootSourceOverrideTarget"] == "Pxe",
                "the node was not set to boot from PXE: {}",
                sys["Boot"]
            );
            break;
        }
        ensure!(
            tokio::time::Instant::now() < end,
            "system {i} never on: {sys}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    post(&api.url, &query, version, body.to_string().into_bytes()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_inspection_with_real_peers() {
    porthole_tests::run(async {
        let state = tempfile::Builder::new()
            .prefix("porthole-agent-")
            .tempdir()?;
        let Some(sushy) = Sushy::get(state.path(), 3) else {
            return Ok(());
        };
        let Some(cli) = common::openstack() else {
            return Ok(());
        };
        let inspect = InspectBin::start(&[("PORTHOLE_INSPECT_AGENT_ADD_PORTS", "all")]).await?;
        let dir = tempfile::tempdir()?;
        let mut conductor = common::conductor(dir.path(), &inspect.url).await?;
        let api = Api::new(&conductor.url);
        let r = async {
            cli_flow(&api, &sushy, &cli).await?;
            api_flow(&api, &sushy).await
        }
        .await;
        conductor.stop().await?;
        r?;
        timeout_flow(&sushy, &inspect).await
    })
    .await
}

/// The CLI run: manage, inspect --wait, the ramdisk found by its port's
/// MAC, the result, the inventory.
async fn cli_flow(api: &Api, sushy: &Sushy, cli: &std::path::Path) -> Result<()> {
    let mac = sushy_mac(0);
    let uuid = redfish_node(api, sushy, 0, json!({"cpus": 16})).await?;
    let n = api.node(&uuid).await?;
    ensure!(
        n["inspect_interface"] == "agent",
        "agent is not the default: {n}"
    );
    let (ok, out) = common::baremetal(
        cli,
        &api.url,
        &[
            "port",
            "create",
            &mac,
            "--node",
            &uuid,
            "--pxe-enabled",
            "false",
        ],
    )
    .await?;
    ensure!(ok, "port create: {out}");
    let (ok, out) =
        common::baremetal(cli, &api.url, &["node", "manage", &uuid, "--wait", "60"]).await?;
    ensure!(ok, "node manage --wait: {out}");
    let posted = tokio::spawn(ramdisk(
        api.clone(),
        sushy.url.clone(),
        0,
        uuid.clone(),
        String::new(),
        None,
        inventory(0),
    ));
    let (ok, out) =
        common::baremetal(cli, &api.url, &["node", "inspect", &uuid, "--wait", "120"]).await?;
    let (code, body) = posted.await??;
    ensure!(
        code == 202 && body == json!({"uuid": uuid}),
        "continue_inspection: {code} {body}"
    );
    ensure!(ok, "node inspect --wait: {out}");

    let n = api
        .wait_state(&uuid, "manageable", Duration::from_secs(60))
        .await?;
    let p = &n["properties"];
    ensure!(
        p["cpus"] == 16
            && p["memory_mb"] == 4096
            && p["cpu_arch"] == "x86_64"
            && p["local_gb"] == 19
            && p["capabilities"] == "cpu_vt:true,boot_mode:bios",
        "properties after inspection: {p}"
    );
    ensure!(
        n["last_error"].is_null() && n["power_state"] == "power off",
        "node after inspection: {n}"
    );
    ensure!(
        power_of(sushy, 0).await? == "Off",
        "the machine was left on"
    );
    let (code, ports) = api
        .call(
            reqwest::Method::GET,
            &format!("/v1/ports/detail?node={uuid}"),
            None,
        )
        .await?;
    ensure!(code == 200, "ports: {code} {ports}");
    let mut got: Vec<(String, bool)> = ports["ports"]
        .as_array()
        .context("ports")?
        .iter()
        .map(|p| {
            (
                p["address"].as_str().unwrap_or_default().to_owned(),
                p["pxe_enabled"] == true,
            )
        })
        .collect();
    got.sort();
    ensure!(
        got == vec![(mac.clone(), true), ("52:54:00:ee:00:00".to_owned(), false)],
        "ports after inspection (add_ports = all, pxe_enabled updated): {got:?}"
    );
    let (ok, out) = common::baremetal(cli, &api.url, &["node", "inventory", "save", &uuid]).await?;
    ensure!(ok, "node inventory save: {out}");
    let start = out.find('{').context("no JSON in the output")?;
    let saved: Value = serde_json::Deserializer::from_str(&out[start..])
        .into_iter::<Value>()
        .next()
        .context("no JSON")??;
    ensure!(
        saved["inventory"]["memory"]["physical_mb"] == 4096
            && saved["plugin_data"]["root_disk"]["name"] == "/dev/sda"
            && saved["plugin_data"].get("logs").is_none(),
        "saved inventory: {saved}"
    );
    Ok(())
}

/// A post that must be refused: query, version header, body, status, the
/// start of the faultstring.
type Refusal<'a> = (&'a str, Option<&'a str>, Vec<u8>, u16, String);

/// The API run: refusals that change nothing, the 1.84 lookup by UUID,
/// the stored inventory.
async fn api_flow(api: &Api, sushy: &Sushy) -> Result<()> {
    let uuid = redfish_node(api, sushy, 1, json!({})).await?;
    let (code, v) = api
        .call(
            reqwest::Method::GET,
            &format!("/v1/nodes/{uuid}/inventory"),
            None,
        )
        .await?;
    ensure!(
        code == 404
            && fault(&v) == format!("Node inventory record for node {uuid} could not be found."),
        "inventory before inspection: {code} {v}"
    );
    api.manage(&uuid).await?;
    let before = api.node(&uuid).await?;
    let good = inventory(1).to_string().into_bytes();
    let by_uuid = format!("?node_uuid={uuid}");
    let mut oversize =
        br#"{"inventory": {"interfaces": [{"mac_address": "52:54:00:12:34:57"}]}, "pad": ""#
            .to_vec();
    oversize.extend(std::iter::repeat_n(b'x', 1_200_000));
    oversize.extend(b"\"}");
    let refusals: Vec<Refusal> = vec![
        // Manageable, not in inspect wait.
        (
            &by_uuid,
            Some("1.84"),
            good.clone(),
            404,
            "Resource could not be found.".into(),
        ),
        (
            "",
            None,
            good.clone(),
            404,
            "Resource could not be found.".into(),
        ),
        (
            "",
            Some("1.84"),
            b"not json".to_vec(),
            400,
            "Invalid JSON in the request body".into(),
        ),
        (
            "",
            Some("1.84"),
            br#"{"inventory": {"interfaces": []}}"#.to_vec(),
            400,
            "Schema error for data: [] should be non-empty".into(),
        ),
        (
            "",
            Some("1.84"),
            oversize,
            413,
            "Request is too large".into(),
        ),
        (
            &by_uuid,
            Some("1.50"),
            good.clone(),
            404,
            "API version 1.84 or newer is required".into(),
        ),
    ];
    for (query, version, body, want, says) in refusals {
        let (code, v) = post(&api.url, query, version, body).await?;
        ensure!(
            code == want && fault(&v).starts_with(&says),
            "{query} {version:?}: {code} {v} (wanted {want} {says})"
        );
        let now = api.node(&uuid).await?;
        ensure!(
            now == before,
            "a refused post changed the node: {before} → {now}"
        );
    }

    let (code, v) = api.provision(&uuid, "inspect").await?;
    ensure!(code == 202, "inspect: {code} {v}");
    let (code, body) = ramdisk(
        api.clone(),
        sushy.url.clone(),
        1,
        uuid.clone(),
        by_uuid.clone(),
        Some("1.84"),
        inventory(1),
    )
    .await?;
    let posted = std::time::Instant::now();
    ensure!(
        code == 202 && body["node"]["uuid"] == uuid.as_str() && body["config"].is_object(),
        "continue_inspection at 1.84: {code} {body}"
    );
    let n = api
        .wait_state(&uuid, "manageable", Duration::from_secs(60))
        .await?;
    // Most of it is sushy's power off landing (1-11 s after it is asked).
    eprintln!(
        "continue_inspection answered; manageable {:?} later",
        posted.elapsed()
    );
    ensure!(
        n["properties"]["cpus"] == 2 && n["properties"]["local_gb"] == 19,
        "{n}"
    );
    // Before 1.81 the resource does not exist.
    let old = reqwest::Client::new()
        .get(format!("{}/v1/nodes/{uuid}/inventory", api.url))
        .header("X-OpenStack-Ironic-API-Version", "1.80")
        .send()
        .await?
        .status();
    ensure!(old == 404, "inventory at 1.80: {old}");
    let (code, v) = api
        .call(
            reqwest::Method::GET,
            &format!("/v1/nodes/{uuid}/inventory"),
            None,
        )
        .await?;
    ensure!(
        code == 200
            && v["inventory"]["cpu"]["count"] == 2
            && v["plugin_data"]["macs"]
                .as_array()
                .is_some_and(|m| m.len() == 2),
        "inventory: {code} {v}"
    );
    // Again now that it is manageable: refused, nothing changes.
    let after = api.node(&uuid).await?;
    let (code, v) = post(&api.url, &by_uuid, Some("1.84"), good).await?;
    ensure!(code == 404, "a post after the inspection: {code} {v}");
    ensure!(
        api.node(&uuid).await? == after,
        "the refused post changed the node"
    );
    Ok(())
}

/// No ramdisk ever posts: the conductor's inspect_wait_timeout fails it.
async fn timeout_flow(sushy: &Sushy, inspect: &InspectBin) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let int = |v: i64| toml::Value::Integer(v);
    let mut conductor = common::conductor_with(
        dir.path(),
        &inspect.url,
        vec![
            ("conductor", "inspect_wait_timeout", int(3)),
            ("conductor", "check_provision_state_interval", int(1)),
        ],
    )
    .await?;
    let api = Api::new(&conductor.url);
    let r = async {
        let uuid = redfish_node(&api, sushy, 2, json!({})).await?;
        api.manage(&uuid).await?;
        let (code, v) = api.provision(&uuid, "inspect").await?;
        ensure!(code == 202, "inspect: {code} {v}");
        let n = api
            .wait_state_target(&uuid, "inspect failed", Duration::from_secs(90))
            .await?;
        ensure!(
            n["last_error"] == "timeout reached while inspecting the node",
            "{n}"
        );
        // As Ironic's abort on timeout: the machine is powered off.
        let end = tokio::time::Instant::now() + Duration::from_secs(60);
        while power_of(sushy, 2).await? != "Off" {
            ensure!(
                tokio::time::Instant::now() < end,
                "left on after the timeout"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let n = api
            .wait_state_target(&uuid, "inspect failed", Duration::from_secs(30))
            .await?;
        ensure!(n["power_state"] == "power off", "{n}");
        Ok(())
    }
    .await;
    conductor.stop().await?;
    r
}
