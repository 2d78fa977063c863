//! Hardware types, interfaces and drivers through the real openstack CLI
//! (python-ironicclient): `driver list/show/property list`, interfaces set
//! on create and by `node set`/`node unset`, Ironic's 400s for unknown,
//! disabled and incompatible interfaces (nothing stored), the classic
//! aliases, and `node validate` per interface.

mod common;

use anyhow::{ensure, Context, Result};
use common::{Cli, TestConductor};
use conductor::config::Layered as _;

/// No console-svc is needed here: nothing enables a console.
const NO_CONSOLE_SVC: &str = "http://127.0.0.1:9";

/// `node validate -f json` as `{interface: (result, reason)}`.
async fn validate(cli: &Cli, node: &str) -> Result<Vec<(String, bool, String)>> {
    let rows = cli.json(&["node", "validate", node]).await?;
    rows.as_array()
        .context("validate rows")?
        .iter()
        .map(|r| {
            Ok((
                r["Interface"].as_str().context("Interface")?.to_owned(),
                r["Result"].as_bool().context("Result")?,
                r["Reason"].as_str().unwrap_or_default().to_owned(),
            ))
        })
        .collect()
}

fn row<'a>(rows: &'a [(String, bool, String)], iface: &str) -> Result<&'a (String, bool, String)> {
    rows.iter()
        .find(|r| r.0 == iface)
        .with_context(|| format!("no {iface} in {rows:?}"))
}

/// A conductor with only direct and fake deploy enabled (a comma-separated
/// list, as Ironic's ListOpt and an environment variable give it).
async fn start() -> Result<TestConductor> {
    TestConductor::start_with(
        NO_CONSOLE_SVC,
        vec![(
            "drivers",
            "enabled_deploy_interfaces",
            toml::Value::String("direct, fake".into()),
        )],
    )
    .await
}

/// `driver list` (with `--type`, `--long`), `driver show`, `driver
/// property list`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_drivers() {
    porthole_tests::run(drivers()).await
}

async fn drivers() -> Result<()> {
    let Some(bin) = common::clients() else {
        return Ok(());
    };
    let mut cond = start().await?;
    let cli = cond.cli(bin);

    // driver list / show / property list.
    let list = cli.json(&["driver", "list"]).await?;
    let names: Vec<&str> = list
        .as_array()
        .context("driver list")?
        .iter()
        .filter_map(|d| d["name"].as_str())
        .collect();
    for want in [
        "ipmi",
        "redfish",
        "ilo",
        "fake-hardware",
        "agent_ipmitool_socat",
    ] {
        ensure!(names.contains(&want), "{want} not in {names:?}");
    }
    // Aliases whose deploy interface (iscsi) is disabled are not served.
    ensure!(!names.contains(&"pxe_ipmitool_socat"), "{names:?}");
    let dynamic = cli.json(&["driver", "list", "--type", "dynamic"]).await?;
    ensure!(
        dynamic.as_array().map(Vec::len) == Some(4),
        "dynamic: {dynamic}"
    );
    let long = cli.json(&["driver", "list", "--long"]).await?;
    ensure!(long.to_string().contains("ipmitool-socat"), "{long}");
    let ipmi = cli.json(&["driver", "show", "ipmi"]).await?;
    ensure!(
        ipmi["default_power_interface"] == "ipmitool"
            && ipmi["default_deploy_interface"] == "direct"
            && ipmi["enabled_deploy_interfaces"] == "direct"
            && ipmi["type"] == "dynamic",
        "{ipmi}"
    );
    let alias = cli
        .json(&["driver", "show", "agent_ipmitool_socat"])
        .await?;
    ensure!(
        alias["type"] == "classic" && alias["default_console_interface"] == "ipmitool-socat",
        "{alias}"
    );
    let r = cli.run(&["driver", "show", "bogus"]).await?;
    ensure!(
        !r.ok
            && r.stderr
                .contains("Could not find the following driver(s) or hardware type(s): bogus.")
            && r.stderr.contains("404"),
        "{}",
        r.stderr
    );
    let props = cli.json(&["driver", "property", "list", "redfish"]).await?;
    ensure!(props.to_string().contains("redfish_address"), "{props}");
    cond.stop().await?;
    Ok(())
}

/// Interfaces as node fields: set on create and by PATCH (`node set`,
/// `node unset`), refused with Ironic's words, expanded from an alias, and
/// `validate` per interface.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_node_interfaces() {
    porthole_tests::run(node_interfaces()).await
}

async fn node_interfaces() -> Result<()> {
    let Some(bin) = common::clients() else {
        return Ok(());
    };
    let mut cond = start().await?;
    let cli = cond.cli(bin);

    // Interfaces on create: defaults for the rest, all of Ironic's fields shown.
    let n = cli
        .json(&[
            "node",
            "create",
            "--driver",
            "ipmi",
            "--name",
            "i1",
            "--inspect-interface",
            "inspector",
            "--driver-info",
            "ipmi_address=127.0.0.1",
        ])
        .await?;
    for (field, want) in [
        ("power_interface", "ipmitool"),
        ("management_interface", "ipmitool"),
        ("boot_interface", "pxe"),
        ("deploy_interface", "direct"),
        ("inspect_interface", "inspector"),
        ("console_interface", "ipmitool-socat"),
        ("vendor_interface", "ipmitool"),
        ("bios_interface", "no-bios"),
        ("firmware_interface", "no-firmware"),
        ("network_interface", "noop"),
        ("raid_interface", "no-raid"),
        ("rescue_interface", "no-rescue"),
        ("storage_interface", "noop"),
    ] {
        ensure!(n[field] == want, "{field}: {}", n[field]);
    }
    let shown = cli.json(&["node", "show", "i1"]).await?;
    ensure!(shown["inspect_interface"] == "inspector", "{shown}");

    // Refusals: Ironic's words, 400, nothing stored.
    let before = cli.json(&["node", "show", "i1"]).await?;
    for (args, want) in [
        (
            vec!["node", "set", "i1", "--deploy-interface", "iscsi"],
            "Could not find the following interface in the 'ironic.hardware.interfaces.deploy' entrypoint: iscsi. Valid interfaces are ['direct', 'fake'].",
        ),
        (
            vec!["node", "set", "i1", "--deploy-interface", "fake"],
            "deploy interface implementation 'fake' is not supported by hardware type IPMIHardware.",
        ),
        (
            vec!["node", "set", "i1", "--power-interface", "redfish"],
            "power interface implementation 'redfish' is not supported by hardware type IPMIHardware.",
        ),
    ] {
        let r = cli.run(&args).await?;
        ensure!(
            !r.ok && r.stderr.contains(want) && r.stderr.contains("HTTP 400"),
            "{args:?}: {}",
            r.stderr
        );
    }
    let after = cli.json(&["node", "show", "i1"]).await?;
    ensure!(
        after["updated_at"] == before["updated_at"] && after == before,
        "a refused PATCH changed the node: {after}"
    );
    let r = cli
        .run(&[
            "node",
            "create",
            "--driver",
            "ipmi",
            "--name",
            "i2",
            "--boot-interface",
            "bogus",
        ])
        .await?;
    ensure!(
        !r.ok
            && r.stderr
                .contains("'ironic.hardware.interfaces.boot' entrypoint: bogus."),
        "{}",
        r.stderr
    );
    let r = cli.run(&["node", "show", "i2"]).await?;
    ensure!(!r.ok, "a refused create stored the node");

    // node set / unset of an interface (the silently dropped PATCH of before).
    cli.ok(&[
        "node",
        "set",
        "i1",
        "--boot-interface",
        "ipxe",
        "--inspect-interface",
        "agent",
    ])
    .await?;
    let n = cli.json(&["node", "show", "i1"]).await?;
    ensure!(
        n["boot_interface"] == "ipxe" && n["inspect_interface"] == "agent",
        "{n}"
    );
    cli.ok(&["node", "unset", "i1", "--inspect-interface"])
        .await?;
    let n = cli.json(&["node", "show", "i1"]).await?;
    ensure!(n["inspect_interface"] == "no-inspect", "{n}");
    // A new driver: what it cannot use goes back to its defaults.
    cli.ok(&[
        "node",
        "set",
        "i1",
        "--driver",
        "redfish",
        "--driver-info",
        "redfish_address=http://127.0.0.1:9",
    ])
    .await?;
    let n = cli.json(&["node", "show", "i1"]).await?;
    ensure!(
        n["driver"] == "redfish"
            && n["power_interface"] == "redfish"
            && n["console_interface"] == "no-console"
            && n["boot_interface"] == "ipxe",
        "{n}"
    );
    // --reset-interfaces: the ones not given take the new defaults too.
    cli.ok(&[
        "node",
        "set",
        "i1",
        "--driver",
        "ipmi",
        "--reset-interfaces",
        "--inspect-interface",
        "agent",
    ])
    .await?;
    let n = cli.json(&["node", "show", "i1"]).await?;
    ensure!(
        n["driver"] == "ipmi"
            && n["boot_interface"] == "pxe"
            && n["inspect_interface"] == "agent"
            && n["console_interface"] == "ipmitool-socat",
        "{n}"
    );

    // An alias expands on create.
    let a = cli
        .json(&[
            "node",
            "create",
            "--driver",
            "agent_ipmitool_socat",
            "--name",
            "a1",
        ])
        .await?;
    ensure!(
        a["driver"] == "ipmi"
            && a["console_interface"] == "ipmitool-socat"
            && a["deploy_interface"] == "direct",
        "{a}"
    );

    // validate: each interface's own answer.
    let v = validate(&cli, "a1").await?;
    let power = row(&v, "power")?;
    ensure!(
        !power.1 && power.2.contains("ipmi_address"),
        "power without ipmi_address: {power:?}"
    );
    let deploy = row(&v, "deploy")?;
    ensure!(
        !deploy.1
            && deploy
                .2
                .contains("deploy interface \"direct\" is not available"),
        "{deploy:?}"
    );
    ensure!(!row(&v, "boot")?.1, "{v:?}");
    for ok in ["network", "storage", "bios", "raid", "rescue", "inspect"] {
        ensure!(row(&v, ok)?.1, "{ok}: {v:?}");
    }
    cli.json(&[
        "node",
        "create",
        "--driver",
        "fake-hardware",
        "--name",
        "f1",
    ])
    .await?;
    let v = validate(&cli, "f1").await?;
    for iface in [
        "power",
        "management",
        "boot",
        "deploy",
        "inspect",
        "console",
    ] {
        ensure!(row(&v, iface)?.1, "fake {iface}: {v:?}");
    }
    let v = validate(&cli, "i1").await?;
    ensure!(row(&v, "power")?.1, "redfish with an address: {v:?}");
    cond.stop().await?;
    Ok(())
}

/// A config that leaves a hardware type without a default is refused at
/// start, with Ironic's words.
#[test]
fn a_config_without_a_default_is_refused() {
    let s = |v: &str| toml::Value::String(v.into());
    let err = conductor::config::Config::load(
        None,
        vec![(
            "PORTHOLE_CONDUCTOR_DRIVERS_ENABLED_DEPLOY_INTERFACES".to_owned(),
            "fake".to_owned(),
        )],
        &[("drivers", "enabled_hardware_types", s("ipmi,fake-hardware"))],
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("For hardware type 'ipmi', no default value found for deploy interface could be determined. Please ensure the interfaces are enabled."),
        "{err}"
    );
    let c = conductor::config::Config::load(
        None,
        vec![(
            "PORTHOLE_CONDUCTOR_DRIVERS_ENABLED_HARDWARE_TYPES".to_owned(),
            "fake-hardware".to_owned(),
        )],
        &[("drivers", "enabled_deploy_interfaces", s("fake"))],
    )
    .unwrap();
    assert_eq!(
        c.drivers.enabled_hardware_types,
        Some(vec!["fake-hardware".to_owned()])
    );
}
