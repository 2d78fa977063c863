//! The conductor end to end with real clients and peers: the openstack CLI
//! (python-ironicclient) and openstacksdk against the conductor, console-svc
//! as a process, a simulated IPMI BMC from the rig.
//!
//! CLI → conductor → console-svc → ipmitool → ipmi_sim → the node side,
//! and back; power through ipmitool checked in the BMC's power file; nova's
//! double console reset through openstacksdk; a restart of the conductor
//! (and of console-svc) keeps nodes and brings their consoles back; errors
//! in Ironic's format, readable in the CLI's output.

mod common;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::{eventually, faultstring, power_file, Cli, TestConductor};
use porthole_tests::session::establish;
use porthole_tests::{node_side, rig_or_skip, viewer, Backend, Bmc, ConsoleSvc, Wire};
use serde_json::Value;

const BYTES: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_power_console_restart_and_errors() {
    porthole_tests::run(body()).await
}

async fn body() -> Result<()> {
    let rig = rig_or_skip!();
    let Some(bin) = common::clients() else {
        return Ok(());
    };
    let bmcs = rig.lease_bmcs(1).await?;
    let bmc = &bmcs[0];
    let mut svc = ConsoleSvc::start(Backend::Native).await?;
    let mut cond = TestConductor::start(&svc.grpc_url()).await?;
    let cli = cond.cli(bin);

    let uuid = create_node(&cli, bmc).await?;
    power(&cli, &bmc.name).await?;
    let url = console_round_trip(&cli, bmc).await?;
    nova_double_reset(&cli, &uuid, &url).await?;
    errors(&cli, &cond.url).await?;

    // console-svc restarts under a running conductor: WatchConsoles
    // reconnects and the console comes back without anyone asking.
    svc.stop()?;
    svc.restart().await?;
    let again = eventually(
        Duration::from_secs(60),
        "console restored by the watcher",
        || async {
            let c = console_svc_url(&svc, &uuid).await?;
            let n = cli.json(&["node", "show", "n-accept"]).await?;
            ensure!(n["console_enabled"] == true, "console_enabled flipped: {n}");
            Ok(c.filter(|_| n["last_error"].is_null()))
        },
    )
    .await?;
    type_through(&again, bmc, "after-svc-restart").await?;

    // Restart both: console-svc forgets its consoles, the conductor brings them back.
    cond.stop().await?;
    svc.stop()?;
    svc.restart().await?;
    cond.restart().await?;
    let cli = Cli {
        bin: cli.bin,
        url: cond.url.clone(),
    };
    let nodes = cli.json(&["node", "list"]).await?;
    ensure!(
        nodes.as_array().is_some_and(|n| n.len() == 2),
        "nodes after restart: {nodes}"
    );
    let back = eventually(
        Duration::from_secs(30),
        "console restored after restart",
        || async {
            let c = cli.json(&["node", "console", "show", "n-accept"]).await?;
            Ok(c["console_info"]["url"].as_str().map(str::to_owned))
        },
    )
    .await?;
    type_through(&back, bmc, "after-restart").await?;

    // Delete disables the console first.
    cli.ok(&["node", "delete", "n-accept"]).await?;
    let mut client = svc.client().await?;
    let c = client
        .get_console(porthole_proto::console::v1::GetConsoleRequest {
            node_id: uuid.clone(),
        })
        .await;
    let disabled = match c {
        Ok(c) => c.into_inner().state == porthole_proto::console::v1::ConsoleState::Disabled as i32,
        Err(s) => s.code() == tonic::Code::NotFound,
    };
    ensure!(
        disabled,
        "console-svc still serves the deleted node's console"
    );
    cond.stop().await?;
    Ok(())
}

/// The URL console-svc serves for `node`, when it runs.
async fn console_svc_url(svc: &ConsoleSvc, node: &str) -> Result<Option<String>> {
    use porthole_proto::console::v1 as pb;
    let mut client = svc.client().await?;
    let req = pb::GetConsoleRequest {
        node_id: node.to_owned(),
    };
    Ok(match client.get_console(req).await {
        Ok(c) => {
            let c = c.into_inner();
            (c.state == pb::ConsoleState::Running as i32 && !c.url.is_empty()).then_some(c.url)
        }
        Err(_) => None,
    })
}

async fn create_node(cli: &Cli, bmc: &Bmc) -> Result<String> {
    let info = |k: &str, v: &str| format!("{k}={v}");
    let args = [
        info("ipmi_address", &bmc.host),
        info("ipmi_port", &bmc.port.to_string()),
        info("ipmi_username", &bmc.username),
        info("ipmi_password", &bmc.password),
        info("ipmi_cipher_suite", &bmc.cipher_suite.to_string()),
    ];
    let mut cmd = vec!["node", "create", "--driver", "ipmi", "--name", "n-accept"];
    for a in &args {
        cmd.extend(["--driver-info", a.as_str()]);
    }
    let node = cli.json(&cmd).await?;
    let uuid = node["uuid"].as_str().context("uuid")?.to_owned();
    ensure!(
        node["driver_info"]["ipmi_password"] == "******",
        "password shown: {node}"
    );
    let out = cli.run(&["node", "show", "n-accept", "-f", "json"]).await?;
    let quoted = format!("\"{}\"", bmc.password);
    ensure!(
        !out.stdout.contains(&quoted) && out.stdout.contains("\"******\""),
        "password in node show: {}",
        out.stdout
    );
    let list = cli.json(&["node", "list"]).await?;
    ensure!(list.to_string().contains(&uuid), "node list: {list}");
    cli.ok(&["port", "create", "52:54:00:aa:bb:01", "--node", &uuid])
        .await?;
    let ports = cli.json(&["port", "list", "--node", "n-accept"]).await?;
    ensure!(
        ports.to_string().contains("52:54:00:aa:bb:01"),
        "ports: {ports}"
    );
    Ok(uuid)
}

async fn power(cli: &Cli, bmc: &str) -> Result<()> {
    for (verb, state, file) in [
        ("off", "power off", "0"),
        ("on", "power on", "1"),
        ("off", "power off", "0"),
    ] {
        cli.ok(&["node", "power", verb, "n-accept"]).await?;
        eventually(
            Duration::from_secs(40),
            &format!("power {verb}"),
            || async {
                let n = cli.json(&["node", "show", "n-accept"]).await?;
                ensure!(
                    n["last_error"].is_null(),
                    "power {verb}: {}",
                    n["last_error"]
                );
                let settled = n["power_state"] == state && n["target_power_state"].is_null();
                Ok((settled && power_file(bmc)? == file).then_some(()))
            },
        )
        .await?;
    }
    Ok(())
}

async fn console_url(cli: &Cli) -> Result<String> {
    let c = cli.json(&["node", "console", "show", "n-accept"]).await?;
    ensure!(
        c["console_enabled"] == true && c["console_info"]["type"] == "socat",
        "console show: {c}"
    );
    Ok(c["console_info"]["url"].as_str().context("url")?.to_owned())
}

async fn console_round_trip(cli: &Cli, bmc: &Bmc) -> Result<String> {
    cli.ok(&["node", "console", "enable", "n-accept"]).await?;
    let url = console_url(cli).await?;
    ensure!(url.starts_with("tcp://127.0.0.1:"), "url {url}");
    type_through(&url, bmc, "first").await?;
    cli.ok(&["node", "console", "disable", "n-accept"]).await?;
    let c = cli.json(&["node", "console", "show", "n-accept"]).await?;
    ensure!(
        c["console_enabled"] == false && c["console_info"].is_null(),
        "after disable: {c}"
    );
    cli.ok(&["node", "console", "enable", "n-accept"]).await?;
    ensure!(
        console_url(cli).await? == url,
        "the URL changed across disable/enable"
    );
    Ok(url)
}

/// Keystrokes through the console URL reach the node; node output comes back.
async fn type_through(url: &str, bmc: &Bmc, tag: &str) -> Result<()> {
    let addr = url.trim_start_matches("tcp://").to_owned();
    let mut v = eventually(Duration::from_secs(20), "console port accepts", || async {
        Ok(viewer(&format!("tcp://{addr}")).await.ok())
    })
    .await?;
    let mut n: Wire = node_side(bmc).await?;
    establish(&mut v, &mut n).await?;
    let typed = format!("typed-{tag}\r");
    v.send(typed.as_bytes()).await?;
    n.expect(format!("typed-{tag}").as_bytes(), BYTES).await?;
    n.send(format!("printed-{tag}\r\n").as_bytes()).await?;
    v.expect(format!("printed-{tag}").as_bytes(), BYTES).await?;
    Ok(())
}

const SDK: &str = r#"
import json, sys, time, openstack
conn = openstack.connect(auth_type='none', baremetal_endpoint_override=sys.argv[1], baremetal_api_version='1')
node = sys.argv[2]
urls = []
for _ in range(2):
    # nova's ironic driver: disable, enable, wait for console_enabled, read the URL
    conn.baremetal.disable_node_console(node)
    conn.baremetal.enable_node_console(node)
    for _ in range(100):
        c = conn.baremetal.get_node_console(node)
        if c['console_enabled']:
            break
        time.sleep(0.1)
    info = c['console_info']
    assert info['type'] == 'socat', info
    urls.append(info['url'])
    time.sleep(1)
print(json.dumps({"urls": urls}))
"#;

async fn nova_double_reset(cli: &Cli, uuid: &str, url: &str) -> Result<()> {
    let out = cli.python(SDK, &[&cli.url, uuid]).await?;
    let urls: Vec<&str> = out["urls"]
        .as_array()
        .context("urls")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    ensure!(
        urls == [url, url],
        "nova's double reset gave {urls:?}, not {url} twice"
    );
    Ok(())
}

async fn errors(cli: &Cli, base: &str) -> Result<()> {
    let r = cli.run(&["node", "show", "no-such-node"]).await?;
    ensure!(
        !r.ok
            && r.stderr.contains("Node no-such-node could not be found")
            && r.stderr.contains("404"),
        "unknown node: {}",
        r.stderr
    );
    let r = cli
        .run(&["node", "set", "n-accept", "--driver", "redfish"])
        .await?;
    ensure!(
        !r.ok && r.stderr.contains("disable the console") && r.stderr.contains("409"),
        "PATCH driver with console on: {}",
        r.stderr
    );
    cli.ok(&[
        "node",
        "create",
        "--driver",
        "ipmi",
        "--name",
        "n-nocreds",
        "--driver-info",
        "ipmi_address=127.0.0.1",
    ])
    .await?;
    let r = cli.run(&["node", "console", "enable", "n-nocreds"]).await?;
    ensure!(
        !r.ok
            && r.stderr.contains("missing ipmi_username, ipmi_password")
            && r.stderr.contains("400"),
        "no credentials: {}",
        r.stderr
    );
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("{base}/v1/nodes"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await?;
    ensure!(resp.status() == 400, "bad JSON: {}", resp.status());
    ensure!(
        resp.headers()
            .contains_key("x-openstack-ironic-api-maximum-version"),
        "no version headers"
    );
    let f = faultstring(&resp.json().await?)?;
    ensure!(f.contains("Invalid JSON"), "bad JSON faultstring: {f}");
    let resp = http
        .get(format!("{base}/v1/nodes"))
        .header("X-OpenStack-Ironic-API-Version", "1.999")
        .send()
        .await?;
    ensure!(
        resp.status() == 406,
        "unsupported version: {}",
        resp.status()
    );
    Ok(())
}
