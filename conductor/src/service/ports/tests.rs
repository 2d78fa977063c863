//! Port parsing and PATCH: booleans as Ironic reads them, local link
//! connection rules, all-or-nothing patches.

use super::*;
use serde_json::json;

fn port() -> Port {
    Port {
        uuid: "5e4c2a7e-0000-4000-8000-000000000001".into(),
        address: "52:54:00:00:00:01".into(),
        node_uuid: "1be26c0b-03f2-4d2e-ae87-c02d7f33c123".into(),
        extra: Dict::new(),
        pxe_enabled: true,
        created_at: "t".into(),
        updated_at: None,
        internal_info: Dict::new(),
        local_link_connection: Dict::new(),
        physical_network: None,
        portgroup_uuid: None,
        is_smartnic: false,
        name: None,
    }
}

#[test]
fn pxe_enabled_strings_are_booleans() {
    for (v, want) in [
        (json!("false"), false),
        (json!("False"), false),
        (json!("0"), false),
        (json!("true"), true),
        (json!(false), false),
    ] {
        let mut p = port();
        let mut doc = editable(&p);
        doc.insert("pxe_enabled".into(), v.clone());
        read_back(&mut p, &doc).unwrap();
        assert_eq!(p.pxe_enabled, want, "{v}");
    }
    let mut p = port();
    let mut doc = editable(&p);
    doc.insert("pxe_enabled".into(), json!("maybe"));
    let e = read_back(&mut p, &doc).unwrap_err().to_string();
    assert!(
        e.starts_with("Invalid pxe_enabled: Unrecognized value 'maybe'"),
        "{e}"
    );
}

#[test]
fn patch_applies_all_or_nothing() {
    let mut p = port();
    apply_patch(
        &mut p,
        &json!([
            {"op": "replace", "path": "/pxe_enabled", "value": "false"},
            {"op": "add", "path": "/physical_network", "value": "physnet1"},
            {"op": "add", "path": "/local_link_connection", "value": {"switch_id": "aa:bb:cc:dd:ee:ff", "port_id": "Eth1/1", "switch_info": "sw1"}},
            {"op": "add", "path": "/extra/k", "value": "v"},
            {"op": "replace", "path": "/address", "value": "52:54:00:AA:BB:CC"},
        ]),
    )
    .unwrap();
    assert!(!p.pxe_enabled);
    assert_eq!(p.physical_network.as_deref(), Some("physnet1"));
    assert_eq!(p.local_link_connection["port_id"], "Eth1/1");
    assert_eq!(p.extra["k"], "v");
    assert_eq!(p.address, "52:54:00:aa:bb:cc");
    let before = p.clone();
    let mut q = p.clone();
    for bad in [
        json!([{"op": "add", "path": "/extra/x", "value": 1}, {"op": "replace", "path": "/address", "value": "nope"}]),
        json!([{"op": "add", "path": "/local_link_connection", "value": {"port_id": "x"}}]),
        json!([{"op": "add", "path": "/local_link_connection", "value": {"port_id": "x", "switch_id": "y", "bogus": "z"}}]),
        json!([{"op": "add", "path": "/physical_network", "value": ""}]),
        json!([{"op": "add", "path": "/physical_network", "value": "p".repeat(65)}]),
        json!([{"op": "remove", "path": "/address"}]),
        json!([{"op": "replace", "path": "/node_uuid", "value": "a-node-name"}]),
    ] {
        assert!(apply_patch(&mut q, &bad).is_err(), "{bad}");
        q = before.clone();
    }
    // unmanaged links need no switch
    apply_patch(&mut q, &json!([{"op": "add", "path": "/local_link_connection", "value": {"network_type": "unmanaged"}}])).unwrap();
    // smart NICs need port_id and hostname
    let e = apply_patch(
        &mut q,
        &json!([{"op": "replace", "path": "/is_smartnic", "value": true}, {"op": "replace", "path": "/local_link_connection", "value": {"port_id": "p", "switch_id": "s"}}]),
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "Invalid local_link_connection: 'hostname' is a required property"
    );
}
