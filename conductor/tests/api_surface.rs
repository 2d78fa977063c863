//! The API surface through the real clients (python-ironicclient's
//! `openstack baremetal`, and openstacksdk): port create with
//! `--pxe-enabled false`, port PATCH, traits, maintenance, VIFs, volume
//! targets, portgroups, the newer node fields, instance_uuid's 409, and
//! Ironic's refusal of read-only fields. No rig is needed: a
//! `fake-hardware` node and no console.

mod common;

use anyhow::{ensure, Context, Result};
use common::{faultstring, Cli, TestConductor};
use serde_json::{json, Value};

/// Nothing here enables a console.
const NO_CONSOLE_SVC: &str = "http://127.0.0.1:9";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_ports_traits_maintenance_vifs_volume() {
    porthole_tests::run(cli_surface()).await
}

async fn cli_surface() -> Result<()> {
    let Some(bin) = common::clients() else {
        return Ok(());
    };
    let cond = TestConductor::start(NO_CONSOLE_SVC).await?;
    let cli = cond.cli(bin);
    let n = cli
        .json(&[
            "node",
            "create",
            "--driver",
            "fake-hardware",
            "--name",
            "api1",
        ])
        .await?;
    let node = n["uuid"].as_str().context("uuid")?.to_owned();
    for k in [
        "owner",
        "lessee",
        "description",
        "protected",
        "retired",
        "conductor_group",
        "shard",
        "parent_node",
        "network_data",
        "allocation_uuid",
        "boot_mode",
        "secure_boot",
        "fault",
        "traits",
        "conductor",
    ] {
        ensure!(n.get(k).is_some(), "node create shows no {k}: {n}");
    }

    let port = ports(&cli, &node).await?;
    traits(&cli).await?;
    maintenance(&cli).await?;
    vifs(&cli, &port).await?;
    volume_and_portgroups(&cli, &node).await?;
    node_fields(&cli).await
}

/// `port create --pxe-enabled false`, `port set`/`unset`; the port's UUID.
async fn ports(cli: &Cli, node: &str) -> Result<String> {
    // port create --pxe-enabled false stores false (it was stored as true)
    let p = cli
        .json(&[
            "port",
            "create",
            "52:54:00:aa:00:01",
            "--node",
            node,
            "--pxe-enabled",
            "false",
        ])
        .await?;
    ensure!(p["pxe_enabled"] == false, "created: {p}");
    let port = p["uuid"].as_str().context("port uuid")?.to_owned();
    let shown = cli.json(&["port", "show", &port]).await?;
    ensure!(shown["pxe_enabled"] == false, "stored: {shown}");

    // port PATCH through `port set` / `port unset`
    cli.ok(&[
        "port",
        "set",
        &port,
        "--pxe-enabled",
        "--physical-network",
        "physnet1",
        "--local-link-connection",
        "switch_id=aa:bb:cc:dd:ee:ff",
        "--local-link-connection",
        "port_id=Eth1/7",
        "--extra",
        "rack=r1",
        "--address",
        "52:54:00:AA:00:02",
    ])
    .await?;
    let shown = cli.json(&["port", "show", &port]).await?;
    ensure!(
        shown["pxe_enabled"] == true
            && shown["physical_network"] == "physnet1"
            && shown["local_link_connection"]
                == json!({"switch_id": "aa:bb:cc:dd:ee:ff", "port_id": "Eth1/7"})
            && shown["extra"] == json!({"rack": "r1"})
            && shown["address"] == "52:54:00:aa:00:02",
        "after port set: {shown}"
    );
    cli.ok(&[
        "port",
        "unset",
        &port,
        "--extra",
        "rack",
        "--physical-network",
    ])
    .await?;
    let shown = cli.json(&["port", "show", &port]).await?;
    ensure!(
        shown["extra"] == json!({}) && shown["physical_network"].is_null(),
        "after port unset: {shown}"
    );
    // a bad value is refused and nothing changes
    let r = cli
        .run(&["port", "set", &port, "--local-link-connection", "bogus=1"])
        .await?;
    ensure!(
        !r.ok && r.stderr.contains("Invalid local_link_connection"),
        "bad llc: {}",
        r.stderr
    );
    let after = cli.json(&["port", "show", &port]).await?;
    ensure!(after == shown, "a refused PATCH changed the port: {after}");
    Ok(port)
}

async fn traits(cli: &Cli) -> Result<()> {
    cli.ok(&[
        "node",
        "add",
        "trait",
        "api1",
        "CUSTOM_GOLD",
        "HW_CPU_X86_AVX2",
    ])
    .await?;
    let traits = cli.json(&["node", "trait", "list", "api1"]).await?;
    let names: Vec<&str> = traits
        .as_array()
        .context("trait list")?
        .iter()
        .filter_map(|t| t["traits"].as_str())
        .collect();
    ensure!(names == ["CUSTOM_GOLD", "HW_CPU_X86_AVX2"], "{traits}");
    let r = cli.run(&["node", "add", "trait", "api1", "gold"]).await?;
    ensure!(
        !r.ok
            && r.stderr
                .contains("Schema error for trait: 'gold' is not valid"),
        "bad trait: {}",
        r.stderr
    );
    cli.ok(&["node", "remove", "trait", "api1", "CUSTOM_GOLD"])
        .await?;
    let shown = cli
        .json(&["node", "show", "api1", "--fields", "traits"])
        .await?;
    ensure!(shown["traits"] == json!(["HW_CPU_X86_AVX2"]), "{shown}");
    let r = cli
        .run(&["node", "remove", "trait", "api1", "CUSTOM_GOLD"])
        .await?;
    ensure!(
        !r.ok && r.stderr.contains("doesn't have a trait 'CUSTOM_GOLD'"),
        "{}",
        r.stderr
    );
    Ok(())
}

async fn maintenance(cli: &Cli) -> Result<()> {
    cli.ok(&[
        "node",
        "maintenance",
        "set",
        "api1",
        "--reason",
        "disk swap",
    ])
    .await?;
    let m = cli
        .json(&[
            "node",
            "show",
            "api1",
            "--fields",
            "maintenance",
            "maintenance_reason",
        ])
        .await?;
    ensure!(
        m["maintenance"] == true && m["maintenance_reason"] == "disk swap",
        "{m}"
    );
    cli.ok(&["node", "maintenance", "unset", "api1"]).await?;
    let m = cli
        .json(&[
            "node",
            "show",
            "api1",
            "--fields",
            "maintenance",
            "maintenance_reason",
        ])
        .await?;
    ensure!(
        m["maintenance"] == false && m["maintenance_reason"].is_null(),
        "{m}"
    );
    Ok(())
}

/// VIF attach / list / detach, kept on the port as Ironic keeps it.
async fn vifs(cli: &Cli, port: &str) -> Result<()> {
    let vif = "0c6a7c8e-1111-4a2b-9c3d-000000000001";
    cli.ok(&["node", "vif", "attach", "api1", vif]).await?;
    let vifs = cli.json(&["node", "vif", "list", "api1"]).await?;
    ensure!(vifs == json!([{"id": vif}]), "vif list: {vifs}");
    let shown = cli
        .json(&["port", "show", port, "--fields", "internal_info"])
        .await?;
    ensure!(
        shown["internal_info"]["tenant_vif_port_id"] == vif,
        "{shown}"
    );
    let r = cli
        .run(&[
            "node",
            "vif",
            "attach",
            "api1",
            "0c6a7c8e-1111-4a2b-9c3d-000000000002",
        ])
        .await?;
    ensure!(
        !r.ok && r.stderr.contains("not enough free physical ports"),
        "second VIF on one port: {}",
        r.stderr
    );
    cli.ok(&["node", "vif", "detach", "api1", vif]).await?;
    let vifs = cli.json(&["node", "vif", "list", "api1"]).await?;
    ensure!(vifs == json!([]), "after detach: {vifs}");
    let r = cli.run(&["node", "vif", "detach", "api1", vif]).await?;
    ensure!(
        !r.ok && r.stderr.contains("not attached to it"),
        "{}",
        r.stderr
    );
    Ok(())
}

/// Volume targets (nova's cleanup lists them by node), connectors and
/// portgroups.
async fn volume_and_portgroups(cli: &Cli, node: &str) -> Result<()> {
    let t = cli
        .json(&["volume", "target", "list", "--node", node])
        .await?;
    ensure!(t == json!([]), "no targets yet: {t}");
    cli.ok(&[
        "volume",
        "target",
        "create",
        "--node",
        node,
        "--type",
        "iscsi",
        "--boot-index",
        "0",
        "--volume-id",
        "vol-1",
    ])
    .await?;
    let t = cli
        .json(&["volume", "target", "list", "--node", node])
        .await?;
    ensure!(
        t.as_array().map(Vec::len) == Some(1) && t[0]["volume_id"] == "vol-1",
        "{t}"
    );
    let r = cli
        .run(&[
            "volume",
            "target",
            "create",
            "--node",
            node,
            "--type",
            "iscsi",
            "--boot-index",
            "0",
            "--volume-id",
            "vol-2",
        ])
        .await?;
    ensure!(
        !r.ok
            && r.stderr
                .contains("boot index '0' for the same node already exists"),
        "{}",
        r.stderr
    );
    cli.ok(&[
        "volume",
        "connector",
        "create",
        "--node",
        node,
        "--type",
        "iqn",
        "--connector-id",
        "iqn.2010-10.org.openstack:api1",
    ])
    .await?;
    let c = cli
        .json(&["volume", "connector", "list", "--node", node])
        .await?;
    ensure!(c.as_array().map(Vec::len) == Some(1), "{c}");

    // portgroups
    let g = cli
        .json(&[
            "port",
            "group",
            "create",
            "--node",
            node,
            "--name",
            "bond0",
            "--address",
            "52:54:00:aa:00:10",
        ])
        .await?;
    ensure!(g["name"] == "bond0" && g["mode"] == "active-backup", "{g}");
    let gl = cli.json(&["port", "group", "list", "--node", node]).await?;
    ensure!(gl.as_array().map(Vec::len) == Some(1), "{gl}");
    cli.ok(&["port", "group", "delete", "bond0"]).await?;
    Ok(())
}

/// The newer node fields, stored and patchable; protected and
/// instance_uuid's conflicts.
async fn node_fields(cli: &Cli) -> Result<()> {
    cli.ok(&[
        "node",
        "set",
        "api1",
        "--owner",
        "proj-a",
        "--lessee",
        "proj-b",
        "--description",
        "rack 4",
        "--conductor-group",
        "Group1",
        "--shard",
        "s1",
    ])
    .await?;
    let f = cli.json(&["node", "show", "api1"]).await?;
    ensure!(
        f["owner"] == "proj-a"
            && f["lessee"] == "proj-b"
            && f["description"] == "rack 4"
            && f["conductor_group"] == "group1"
            && f["shard"] == "s1",
        "{f}"
    );
    // protected only in active: Ironic's 409
    let r = cli.run(&["node", "set", "api1", "--protected"]).await?;
    ensure!(
        !r.ok
            && r.stderr
                .contains("can only be made protected in provision states 'active' or 'rescue'"),
        "{}",
        r.stderr
    );

    // instance_uuid: a second instance on a taken node is 409
    let a = "9f0e3c1a-2222-4b5c-8d6e-000000000001";
    let b = "9f0e3c1a-2222-4b5c-8d6e-000000000002";
    cli.ok(&["node", "set", "api1", "--instance-uuid", a])
        .await?;
    let r = cli
        .run(&["node", "set", "api1", "--instance-uuid", b])
        .await?;
    ensure!(
        !r.ok
            && r.stderr
                .contains(&format!("is associated with instance {a}")),
        "{}",
        r.stderr
    );
    ensure!(r.stderr.contains("409"), "not a 409: {}", r.stderr);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openstacksdk_traits_vifs_port_patch_and_volume() {
    porthole_tests::run(sdk_surface()).await
}

const SDK: &str = r#"
import json, sys, openstack
conn = openstack.connect(auth_type='none', baremetal_endpoint_override=sys.argv[1])
bm = conn.baremetal
n = bm.create_node(driver='fake-hardware', name='sdk1')
p = bm.create_port(node_id=n.id, address='52:54:00:bb:00:01', is_pxe_enabled=False)
created_pxe = bm.get_port(p.id).is_pxe_enabled
bm.patch_port(p, [{'op': 'add', 'path': '/extra/a', 'value': 1},
                  {'op': 'replace', 'path': '/pxe_enabled', 'value': True}])
patched = bm.get_port(p.id)
bm.set_node_traits(n, ['CUSTOM_A', 'CUSTOM_B'])
bm.add_node_trait(n, 'CUSTOM_C')
bm.remove_node_trait(n, 'CUSTOM_A')
traits = sorted(bm.get_node(n.id).traits)
bm.attach_vif_to_node(n, 'vif-sdk-1')
vifs = bm.list_node_vifs(n)
bm.detach_vif_from_node(n, 'vif-sdk-1')
vifs_after = bm.list_node_vifs(n)
targets = [t.id for t in bm.volume_targets(node=n.id, details=True)]
bm.set_node_maintenance(n, reason='sdk says')
m = bm.get_node(n.id)
bm.unset_node_maintenance(n)
m2 = bm.get_node(n.id)
# nova's build reservation: the second instance on a taken node is a 409
bm.update_node(n, retry_on_conflict=False, instance_id='9f0e3c1a-3333-4b5c-8d6e-000000000001')
try:
    bm.update_node(bm.get_node(n.id), retry_on_conflict=False, instance_id='9f0e3c1a-3333-4b5c-8d6e-000000000002')
    taken = 'not refused'
except openstack.exceptions.ConflictException as e:
    taken = 'conflict'
held = bm.get_node(n.id).instance_id
print(json.dumps({
    'taken': taken, 'held': held,
    'created_pxe': created_pxe, 'extra': patched.extra, 'pxe': patched.is_pxe_enabled,
    'traits': traits, 'vifs': vifs, 'vifs_after': vifs_after, 'targets': targets,
    'maint': [m.is_maintenance, m.maintenance_reason, m2.is_maintenance, m2.maintenance_reason],
}))
"#;

async fn sdk_surface() -> Result<()> {
    let Some(bin) = common::clients() else {
        return Ok(());
    };
    let cond = TestConductor::start(NO_CONSOLE_SVC).await?;
    let cli = cond.cli(bin);
    let out = cli.python(SDK, &[&cond.url]).await?;
    ensure!(out["created_pxe"] == false, "{out}");
    ensure!(
        out["taken"] == "conflict" && out["held"] == "9f0e3c1a-3333-4b5c-8d6e-000000000001",
        "{out}"
    );
    ensure!(
        out["extra"] == json!({"a": 1}) && out["pxe"] == true,
        "{out}"
    );
    ensure!(out["traits"] == json!(["CUSTOM_B", "CUSTOM_C"]), "{out}");
    ensure!(out["vifs"] == json!(["vif-sdk-1"]), "{out}");
    ensure!(out["vifs_after"] == json!([]), "{out}");
    ensure!(out["targets"] == json!([]), "{out}");
    ensure!(
        out["maint"] == json!([true, "sdk says", false, null]),
        "{out}"
    );
    Ok(())
}

/// Raw PATCHes: read-only fields get Ironic's message, a failing `test`
/// stores nothing, array ops and escapes work, and version gating.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_patch_rules_over_http() {
    porthole_tests::run(raw_patch()).await
}

async fn raw_patch() -> Result<()> {
    let cond = TestConductor::start(NO_CONSOLE_SVC).await?;
    let http = reqwest::Client::new();
    let v = latest;
    let n = create_node(
        &http,
        &cond.url,
        json!({"driver": "fake-hardware", "name": "raw1", "extra": {"l": [1, 2]}}),
    )
    .await?;
    let url = format!(
        "{}/v1/nodes/{}",
        cond.url,
        n["uuid"].as_str().context("uuid")?
    );
    let patch = |body: Value| {
        let r = v(http.patch(&url)).json(&body);
        async move {
            let r = r.send().await?;
            let status = r.status().as_u16();
            Ok::<_, anyhow::Error>((status, r.json::<Value>().await?))
        }
    };
    let (status, body) =
        patch(json!([{"op": "replace", "path": "/provision_state", "value": "active"}])).await?;
    let f = faultstring(&body)?;
    ensure!(
        status == 400 && f.starts_with("Cannot patch /provision_state. Only the following can be updated: automated_clean,"),
        "{status} {f}"
    );
    let (status, body) = patch(json!([
        {"op": "add", "path": "/description", "value": "changed"},
        {"op": "test", "path": "/extra/l/0", "value": 9},
    ]))
    .await?;
    let f = faultstring(&body)?;
    ensure!(
        status == 400 && f.contains("is not equal to tested value 9"),
        "{status} {f}"
    );
    let shown: Value = v(http.get(&url)).send().await?.json().await?;
    ensure!(
        shown["description"].is_null(),
        "a failed patch stored: {shown}"
    );
    let (status, body) = patch(json!([
        {"op": "test", "path": "/extra/l/0", "value": 1},
        {"op": "add", "path": "/extra/l/-", "value": 3},
        {"op": "move", "from": "/extra/l/0", "path": "/extra/first"},
        {"op": "add", "path": "/extra/a~1b", "value": "slash"},
        {"op": "copy", "from": "/extra/a~1b", "path": "/description"},
    ]))
    .await?;
    ensure!(status == 200, "{status} {body}");
    ensure!(
        body["extra"] == json!({"l": [2, 3], "first": 1, "a/b": "slash"})
            && body["description"] == "slash",
        "{body}"
    );
    // the newer fields filter lists as Ironic's
    let (status, _) = patch(json!([{"op": "add", "path": "/owner", "value": "proj-x"}])).await?;
    ensure!(status == 200, "owner: {status}");
    for (q, want) in [
        ("owner=proj-x", 1),
        ("owner=proj-y", 0),
        ("description_contains=las", 1),
        ("maintenance=False", 1),
        ("maintenance=1", 0),
        ("associated=no", 1),
    ] {
        let l: Value = v(http.get(format!("{}/v1/nodes?{q}", cond.url)))
            .send()
            .await?
            .json()
            .await?;
        ensure!(
            l["nodes"].as_array().map(Vec::len) == Some(want),
            "?{q}: {l}"
        );
    }
    let r = v(http.get(format!("{}/v1/nodes?maintenance=maybe", cond.url)))
        .send()
        .await?;
    ensure!(
        r.status().as_u16() == 400,
        "maintenance=maybe: {}",
        r.status()
    );
    // a field newer than the request's version: 406, and hidden
    let r = http
        .patch(&url)
        .header("X-OpenStack-Ironic-API-Version", "1.49")
        .json(&json!([{"op": "add", "path": "/owner", "value": "p"}]))
        .send()
        .await?;
    ensure!(r.status().as_u16() == 406, "owner at 1.49: {}", r.status());
    let old: Value = http
        .get(&url)
        .header("X-OpenStack-Ironic-API-Version", "1.49")
        .send()
        .await?
        .json()
        .await?;
    ensure!(
        old.get("owner").is_none() && old.get("protected").is_some(),
        "{old}"
    );
    let r = http
        .get(format!("{url}/traits"))
        .header("X-OpenStack-Ironic-API-Version", "1.36")
        .send()
        .await?;
    ensure!(r.status().as_u16() == 404, "traits at 1.36: {}", r.status());
    Ok(())
}

/// `protected` over HTTP: refused outside `active` (409), and an active
/// protected node refuses undeploy, rebuild and delete with Ironic's 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protected_node_refuses_undeploy_rebuild_and_delete() {
    porthole_tests::run(protected()).await
}

async fn protected() -> Result<()> {
    let cond = TestConductor::start(NO_CONSOLE_SVC).await?;
    let http = reqwest::Client::new();
    let v = latest;
    let n = create_node(
        &http,
        &cond.url,
        json!({"driver": "fake-hardware", "name": "prot1"}),
    )
    .await?;
    let url = format!(
        "{}/v1/nodes/{}",
        cond.url,
        n["uuid"].as_str().context("uuid")?
    );
    let status_of = |r: reqwest::RequestBuilder| async move {
        let r = r.send().await?;
        let s = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        Ok::<_, anyhow::Error>((s, body))
    };
    let set_protected = |on: bool| {
        v(http.patch(&url)).json(&json!([{"op": "replace", "path": "/protected", "value": on}]))
    };
    let (s, body) = status_of(set_protected(true)).await?;
    ensure!(
        s == 409 && faultstring(&body)?.contains("can only be made protected in provision states 'active' or 'rescue', the current state is 'enroll'"),
        "{s} {body}"
    );
    // a port and a VIF, as nova attaches before deploying
    let (s, body) = status_of(v(http.post(format!("{}/v1/ports", cond.url))).json(&json!({
        "node_uuid": n["uuid"], "address": "52:54:00:dd:00:01"
    })))
    .await?;
    ensure!(s == 201, "port: {s} {body}");
    let (s, _) =
        status_of(v(http.post(format!("{url}/vifs"))).json(&json!({"id": "vif-prot"}))).await?;
    ensure!(s == 204, "vif attach: {s}");
    for (verb, want) in [
        ("manage", "manageable"),
        ("provide", "available"),
        ("active", "active"),
    ] {
        let (s, body) = status_of(
            v(http.put(format!("{url}/states/provision"))).json(&json!({"target": verb})),
        )
        .await?;
        ensure!(s == 202, "{verb}: {s} {body}");
        common::eventually(std::time::Duration::from_secs(30), want, || {
            let r = v(http.get(&url));
            async move {
                let n: Value = r.send().await?.json().await?;
                Ok((n["provision_state"] == want
                    && n["target_provision_state"].is_null()
                    && n["reservation"].is_null())
                .then_some(()))
            }
        })
        .await?;
    }
    let (s, body) = status_of(v(http.patch(&url)).json(&json!([
        {"op": "replace", "path": "/protected", "value": true},
        {"op": "replace", "path": "/protected_reason", "value": "prod db"},
    ])))
    .await?;
    ensure!(
        s == 200 && body["protected"] == true && body["protected_reason"] == "prod db",
        "{s} {body}"
    );
    let refused = format!(
        "Node {} is protected and cannot be undeployed, rebuilt or deleted",
        n["uuid"].as_str().context("uuid")?
    );
    for verb in ["deleted", "rebuild"] {
        let (s, body) = status_of(
            v(http.put(format!("{url}/states/provision"))).json(&json!({"target": verb})),
        )
        .await?;
        ensure!(
            s == 403 && faultstring(&body)? == refused,
            "{verb}: {s} {body}"
        );
    }
    // delete needs maintenance in active; protection still refuses it
    let (s, _) = status_of(v(http.put(format!("{url}/maintenance")))).await?;
    ensure!(s == 202, "maintenance: {s}");
    let (s, body) = status_of(v(http.delete(&url))).await?;
    ensure!(
        s == 403 && faultstring(&body)? == refused,
        "delete: {s} {body}"
    );
    let (s, _) = status_of(v(http.delete(format!("{url}/maintenance")))).await?;
    ensure!(s == 202, "maintenance off: {s}");
    // unprotecting clears the reason; undeploy then proceeds
    let (s, body) = status_of(set_protected(false)).await?;
    ensure!(s == 200 && body["protected_reason"].is_null(), "{s} {body}");
    let (s, body) = status_of(
        v(http.put(format!("{url}/states/provision"))).json(&json!({"target": "deleted"})),
    )
    .await?;
    ensure!(s == 202, "undeploy after unprotect: {s} {body}");
    // tear down detaches the VIFs, as Ironic's remove_vifs_from_node
    common::eventually(std::time::Duration::from_secs(30), "available", || {
        let r = v(http.get(&url));
        async move {
            let n: Value = r.send().await?.json().await?;
            Ok((n["provision_state"] == "available" && n["reservation"].is_null()).then_some(()))
        }
    })
    .await?;
    let (s, body) = status_of(v(http.get(format!("{url}/vifs")))).await?;
    ensure!(
        s == 200 && body["vifs"] == json!([]),
        "vifs after tear down: {s} {body}"
    );
    Ok(())
}

/// A raw request at the newest API version this conductor speaks.
fn latest(r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    r.header("X-OpenStack-Ironic-API-Version", "1.99")
}

/// `POST /v1/nodes` with `body` at [`latest`]: the node as returned.
async fn create_node(http: &reqwest::Client, url: &str, body: Value) -> Result<Value> {
    let created = latest(http.post(format!("{url}/v1/nodes")))
        .json(&body)
        .send()
        .await?;
    Ok(created.json().await?)
}
