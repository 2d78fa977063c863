//! Registry tests: defaults per hardware type, alias expansion, Ironic's
//! refusals (unknown, disabled, incompatible, no default), the checks at
//! start, and what a PATCH keeps, resets or refuses.

use super::*;
use serde_json::json;

fn doc(v: Value) -> Dict {
    match v {
        Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

/// A node created with `body` (driver and interfaces) on `reg`.
fn create(reg: &Registry, body: Value) -> Result<Node, DriverError> {
    let body = doc(body);
    let mut n = Node {
        uuid: "1be26c0b-03f2-4d2e-ae87-c02d7f33c123".into(),
        driver: body["driver"].as_str().unwrap().into(),
        ..Node::default()
    };
    reg.apply(&mut n, &body, None)?;
    Ok(n)
}

/// `node` PATCHed to `changes` (members of the editable document).
fn patch(reg: &Registry, node: &Node, changes: Value) -> Result<Node, DriverError> {
    let mut d = Dict::new();
    for kind in Kind::ALL {
        d.insert(kind.field(), node.interface(kind).into());
    }
    d.extend(doc(changes));
    let mut n = node.clone();
    if let Some(drv) = d.get("driver").and_then(Value::as_str) {
        n.driver = drv.into();
    }
    reg.apply(&mut n, &d, Some(node))?;
    Ok(n)
}

fn cfg(v: Value) -> DriversConfig {
    serde_json::from_value(v).unwrap()
}

#[test]
fn each_hardware_type_gets_its_defaults() {
    let reg = Registry::default();
    let ipmi = create(&reg, json!({"driver": "ipmi"})).unwrap();
    for (kind, want) in [
        (Kind::Power, "ipmitool"),
        (Kind::Management, "ipmitool"),
        (Kind::Boot, "pxe"),
        (Kind::Deploy, "direct"),
        (Kind::Inspect, "no-inspect"),
        (Kind::Console, "ipmitool-socat"),
        (Kind::Vendor, "ipmitool"),
        (Kind::Bios, "no-bios"),
        (Kind::Firmware, "no-firmware"),
        (Kind::Network, "noop"),
        (Kind::Raid, "no-raid"),
        (Kind::Rescue, "no-rescue"),
        (Kind::Storage, "noop"),
    ] {
        assert_eq!(ipmi.interface(kind), want, "ipmi {kind:?}");
    }
    let rf = create(&reg, json!({"driver": "redfish"})).unwrap();
    assert_eq!(rf.interface(Kind::Power), "redfish");
    assert_eq!(rf.interface(Kind::Console), "no-console");
    let fake = create(&reg, json!({"driver": "fake-hardware"})).unwrap();
    for kind in [Kind::Power, Kind::Boot, Kind::Deploy, Kind::Inspect] {
        assert_eq!(fake.interface(kind), "fake", "{kind:?}");
    }
    let ilo = create(&reg, json!({"driver": "ilo"})).unwrap();
    assert_eq!(ilo.interface(Kind::Boot), "ilo-virtual-media");
}

#[test]
fn aliases_expand_to_a_hardware_type_and_interfaces() {
    let reg = Registry::default();
    let cases = [
        (
            "pxe_ipmitool_socat",
            "ipmi",
            &[
                (Kind::Console, "ipmitool-socat"),
                (Kind::Deploy, "iscsi"),
                (Kind::Boot, "pxe"),
            ][..],
        ),
        (
            "agent_ipmitool_socat",
            "ipmi",
            &[(Kind::Console, "ipmitool-socat"), (Kind::Deploy, "direct")][..],
        ),
        (
            "pxe_ipmitool",
            "ipmi",
            &[(Kind::Inspect, "inspector"), (Kind::Deploy, "iscsi")][..],
        ),
        (
            "iscsi_ilo",
            "ilo",
            &[
                (Kind::Deploy, "iscsi"),
                (Kind::Boot, "ilo-virtual-media"),
                (Kind::Power, "ilo"),
            ][..],
        ),
    ];
    for (alias, ht, want) in cases {
        let n = create(&reg, json!({"driver": alias})).unwrap();
        assert_eq!(n.driver, ht, "{alias}");
        for (kind, name) in want {
            assert_eq!(n.interface(*kind), *name, "{alias} {kind:?}");
        }
    }
    // What the request sets wins over the alias.
    let n = create(
        &reg,
        json!({"driver": "pxe_ipmitool_socat", "console_interface": "no-console"}),
    )
    .unwrap();
    assert_eq!(n.interface(Kind::Console), "no-console");
    assert_eq!(n.interface(Kind::Deploy), "iscsi");
    // An alias is listed only when its hardware type is enabled.
    let only_fake =
        Registry::from_config(&cfg(json!({"enabled_hardware_types": "fake-hardware"}))).unwrap();
    assert!(only_fake.aliases().is_empty());
    assert_eq!(Registry::default().aliases().len(), 4);
}

#[test]
fn refusals_have_ironics_words() {
    let reg = Registry::from_config(&cfg(json!({
        "enabled_deploy_interfaces": ["direct", "fake"],
    })))
    .unwrap();
    let e = create(&reg, json!({"driver": "ipmi", "deploy_interface": "bogus"})).unwrap_err();
    assert_eq!(
        e.to_string(),
        "Could not find the following interface in the 'ironic.hardware.interfaces.deploy' entrypoint: bogus. Valid interfaces are ['direct', 'fake']."
    );
    // Known but not enabled: the same refusal.
    let e = create(&reg, json!({"driver": "ipmi", "deploy_interface": "iscsi"})).unwrap_err();
    assert!(matches!(e, DriverError::InterfaceNotFound { .. }), "{e}");
    let e = create(&reg, json!({"driver": "ipmi", "deploy_interface": "fake"})).unwrap_err();
    assert_eq!(
        e.to_string(),
        "deploy interface implementation 'fake' is not supported by hardware type IPMIHardware."
    );
    let e = create(
        &reg,
        json!({"driver": "redfish", "power_interface": "ipmitool"}),
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "power interface implementation 'ipmitool' is not supported by hardware type RedfishHardware."
    );
    // fake-hardware takes any enabled implementation, as Ironic's.
    let n = create(
        &reg,
        json!({"driver": "fake-hardware", "power_interface": "ipmitool"}),
    )
    .unwrap();
    assert_eq!(n.interface(Kind::Power), "ipmitool");
    let e = create(&reg, json!({"driver": "bogus"})).unwrap_err();
    assert_eq!(
        e.to_string(),
        "No valid host was found. Reason: No conductor service registered which supports driver bogus for conductor group \"\"."
    );
    let e = create(&reg, json!({"driver": "ipmi", "boot_interface": 5})).unwrap_err();
    assert_eq!(e.to_string(), "boot_interface must be a string, not 5.");
    // A disabled hardware type is refused like an unknown one.
    let reg = Registry::from_config(&cfg(json!({"enabled_hardware_types": ["ipmi"]}))).unwrap();
    assert!(matches!(
        create(&reg, json!({"driver": "redfish"})),
        Err(DriverError::NoValidHost(_))
    ));
}

#[test]
fn the_config_is_checked_at_start() {
    let err = |v: Value| Registry::from_config(&cfg(v)).unwrap_err().to_string();
    assert_eq!(
        err(json!({"enabled_hardware_types": "ipmi, nope"})),
        "Could not find the following items in the 'ironic.hardware.types' entrypoint: nope."
    );
    assert_eq!(
        err(json!({"enabled_boot_interfaces": ["pxe", "http"]})),
        "Could not find the following items in the 'ironic.hardware.interfaces.boot' entrypoint: http."
    );
    assert!(err(json!({"enabled_hardware_types": ""})).contains("no hardware types"));
    assert_eq!(
        err(json!({"enabled_raid_interfaces": []})),
        "drivers.enabled_raid_interfaces cannot be empty."
    );
    assert_eq!(
        err(json!({"enabled_deploy_interfaces": "direct", "default_deploy_interface": "fake"})),
        "drivers.default_deploy_interface \"fake\" is not in drivers.enabled_deploy_interfaces ['direct']."
    );
    // ipmi has no enabled deploy interface left.
    assert_eq!(
        err(json!({"enabled_deploy_interfaces": "fake"})),
        "For hardware type 'ipmi', no default value found for deploy interface could be determined. Please ensure the interfaces are enabled."
    );
    // ... unless only fake-hardware is enabled.
    Registry::from_config(&cfg(json!({
        "enabled_hardware_types": "fake-hardware", "enabled_deploy_interfaces": "fake"
    })))
    .unwrap();
    // A configured default every hardware type supports wins.
    let reg =
        Registry::from_config(&cfg(json!({"default_console_interface": "no-console"}))).unwrap();
    let n = create(&reg, json!({"driver": "ipmi"})).unwrap();
    assert_eq!(n.interface(Kind::Console), "no-console");
}

#[test]
fn a_patch_keeps_resets_or_refuses() {
    let reg = Registry::default();
    let n = create(&reg, json!({"driver": "ipmi", "deploy_interface": "iscsi"})).unwrap();
    // Setting one interface leaves the others.
    let p = patch(&reg, &n, json!({"inspect_interface": "inspector"})).unwrap();
    assert_eq!(p.interface(Kind::Inspect), "inspector");
    assert_eq!(p.interface(Kind::Deploy), "iscsi");
    // Removing one (null) gives the default back.
    let p = patch(&reg, &p, json!({"deploy_interface": null})).unwrap();
    assert_eq!(p.interface(Kind::Deploy), "direct");
    // A new driver: what it cannot use goes back to its defaults.
    let p = patch(&reg, &n, json!({"driver": "redfish"})).unwrap();
    assert_eq!(p.driver, "redfish");
    assert_eq!(p.interface(Kind::Power), "redfish");
    // redfish supports iscsi (virtual-media deploy): kept.
    assert_eq!(p.interface(Kind::Deploy), "iscsi");
    assert_eq!(p.interface(Kind::Console), "no-console");
    // ... and to an alias: its interfaces.
    let p = patch(&reg, &p, json!({"driver": "pxe_ipmitool_socat"})).unwrap();
    assert_eq!(p.driver, "ipmi");
    assert_eq!(p.interface(Kind::Deploy), "iscsi");
    assert_eq!(p.interface(Kind::Console), "ipmitool-socat");
    // reset_interfaces: everything the PATCH does not set takes the
    // new defaults, compatible or not; only with a driver change.
    let ipxe = patch(&reg, &n, json!({"boot_interface": "ipxe"})).unwrap();
    let mut d = Dict::new();
    for kind in Kind::ALL {
        d.insert(kind.field(), ipxe.interface(kind).into());
    }
    let mut r = ipxe.clone();
    r.driver = "redfish".into();
    reg.apply_with(&mut r, &d, Some(&ipxe), true).unwrap();
    assert_eq!(r.interface(Kind::Boot), "pxe", "reset");
    let mut kept = ipxe.clone();
    kept.driver = "redfish".into();
    reg.apply(&mut kept, &d, Some(&ipxe)).unwrap();
    assert_eq!(kept.interface(Kind::Boot), "ipxe", "kept without reset");
    let mut same = ipxe.clone();
    let e = reg
        .apply_with(&mut same, &d, Some(&ipxe), true)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "The reset_interfaces parameter can be provided only when changing the node's driver."
    );
    // An incompatible value the PATCH sets is refused.
    let e = patch(
        &reg,
        &n,
        json!({"driver": "redfish", "console_interface": "ipmitool-shellinabox"}),
    )
    .unwrap_err();
    assert!(matches!(e, DriverError::Incompatible { .. }), "{e}");
}

#[test]
fn stored_interfaces_round_trip() {
    let reg = Registry::default();
    let n = create(
        &reg,
        json!({"driver": "redfish", "boot_interface": "redfish-virtual-media"}),
    )
    .unwrap();
    let back = InterfaceSet::from_stored("redfish", &n.interfaces.to_stored());
    assert_eq!(back, n.interfaces);
    assert_eq!(n.interfaces.to_stored()["boot"], "redfish-virtual-media");
    assert!(!n.interfaces.to_stored().contains_key("console"));
}

/// Every console name the catalog knows is one console-svc can be asked
/// for (or `no-console`), and every hardware type's lists are known names.
#[test]
fn the_catalog_is_consistent() {
    for name in Kind::Console.known() {
        assert!(
            crate::console::interface_kind(name).is_ok(),
            "{name} unknown to console.rs"
        );
    }
    for ht in catalog::HARDWARE_TYPES {
        for kind in Kind::ALL {
            assert!(!ht.supported(kind).is_empty(), "{} {kind:?}", ht.name);
            for n in ht.supported(kind) {
                assert!(kind.known().contains(n), "{} {kind:?} {n}", ht.name);
            }
        }
    }
    for a in catalog::ALIASES {
        let ht = catalog::hardware_type(a.hardware_type).unwrap();
        for (kind, n) in a.interfaces {
            assert!(ht.supports(*kind, n), "{} {kind:?} {n}", a.name);
        }
    }
}

/// `agent` is the default inspect interface (Ironic's first choice) once
/// the inspect service is configured, for the hardware types that support
/// it; without the service, `no-inspect` stays; a configured default and a
/// disabled `agent` win; fake-hardware keeps `fake`.
#[test]
fn agent_is_the_default_inspect_interface_with_the_inspect_service() {
    let inspect_of = |reg: &Registry, driver: &str| {
        create(reg, json!({ "driver": driver }))
            .unwrap()
            .interface(Kind::Inspect)
            .to_owned()
    };
    let mut reg = Registry::default();
    for d in ["ipmi", "redfish", "ilo"] {
        assert_eq!(inspect_of(&reg, d), "no-inspect", "{d}");
    }
    reg.set_inspect_service(true);
    for d in ["ipmi", "redfish", "ilo"] {
        assert_eq!(inspect_of(&reg, d), "agent", "{d}");
    }
    assert_eq!(inspect_of(&reg, FAKE_HARDWARE), "fake");
    let mut reg = Registry::from_config(&cfg(json!({
        "enabled_inspect_interfaces": ["no-inspect", "inspector", "fake"]
    })))
    .unwrap();
    reg.set_inspect_service(true);
    assert_eq!(inspect_of(&reg, "ipmi"), "no-inspect");
    let mut reg =
        Registry::from_config(&cfg(json!({"default_inspect_interface": "inspector"}))).unwrap();
    reg.set_inspect_service(true);
    assert_eq!(inspect_of(&reg, "ipmi"), "inspector");
}
