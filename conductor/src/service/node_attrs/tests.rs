//! Ironic's node PATCH rules: allowed fields, attribute parsing, the
//! protected/retired/instance_uuid checks.

use super::*;
use serde_json::json;

fn node(state: &str) -> Node {
    Node {
        uuid: "1be26c0b-03f2-4d2e-ae87-c02d7f33c123".into(),
        name: None,
        driver: "fake-hardware".into(),
        driver_info: Dict::new(),
        driver_internal_info: Dict::new(),
        console_interface: "no-console".into(),
        power_state: None,
        target_power_state: None,
        provision_state: state.into(),
        target_provision_state: None,
        maintenance: false,
        maintenance_reason: None,
        console_enabled: false,
        console_info: None,
        properties: Dict::new(),
        instance_info: Dict::new(),
        instance_uuid: None,
        extra: Dict::new(),
        resource_class: None,
        last_error: None,
        created_at: "t".into(),
        updated_at: None,
        provision_updated_at: None,
        inspection_started_at: None,
        inspection_finished_at: None,
        deploy_step: Dict::new(),
        clean_step: Dict::new(),
        automated_clean: None,
        reservation: None,
        attrs: NodeAttrs::default(),
        interfaces: Default::default(),
    }
}

#[test]
fn read_only_fields_get_ironics_message() {
    for path in [
        "/uuid",
        "/power_state",
        "/provision_state",
        "/traits",
        "/conductor",
        "/maintenance_reason",
        "/created_at",
    ] {
        let e = check_paths(&json!([{"op": "replace", "path": path, "value": "x"}]))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("Cannot patch {path}. Only the following can be updated: automated_clean, bios_interface,")),
            "{e}"
        );
    }
    // `from` of a move counts too: moving /uuid away would empty it.
    assert!(
        check_paths(&json!([{"op": "move", "from": "/uuid", "path": "/description"}])).is_err()
    );
    for ok in [
        "/owner",
        "/extra/x",
        "/instance_uuid",
        "/protected",
        "/network_data",
    ] {
        check_paths(&json!([{"op": "add", "path": ok, "value": "x"}])).unwrap();
    }
    let long = "d".repeat(4097);
    let e =
        check_paths(&json!([{"op": "add", "path": "/description", "value": long}])).unwrap_err();
    assert_eq!(
        e.to_string(),
        "Cannot update node with description exceeding 4096 characters"
    );
}

#[test]
fn attributes_parse_as_ironic() {
    let mut a = NodeAttrs::default();
    let doc: Dict = serde_json::from_value(json!({
        "owner": "p1", "lessee": "p2", "description": "d", "protected": "false",
        "retired": "yes", "retired_reason": "old", "conductor_group": "Rack-1.A",
        "shard": "s", "network_data": {"links": []}, "disable_power_off": false,
    }))
    .unwrap();
    read_back(&mut a, &doc).unwrap();
    assert_eq!(a.owner.as_deref(), Some("p1"));
    assert!(!a.protected && a.retired);
    assert_eq!(a.conductor_group, "rack-1.a", "stored lower case");
    for (k, v) in [
        ("conductor_group", json!("bad group!")),
        ("protected", json!("maybe")),
        ("owner", json!(5)),
        ("network_data", json!([1])),
        (
            "chassis_uuid",
            json!("1be26c0b-03f2-4d2e-ae87-c02d7f33c999"),
        ),
    ] {
        let mut doc = Dict::new();
        doc.insert(k.into(), v.clone());
        assert!(
            read_back(&mut NodeAttrs::default(), &doc).is_err(),
            "{k}={v}"
        );
    }
}

#[test]
fn protected_retired_and_instance_rules() {
    let before = node("available");
    let mut n = before.clone();
    n.attrs.protected = true;
    let e = check_update(&before, &mut n).unwrap_err();
    assert!(matches!(e, ServiceError::Conflict(_)), "{e}");
    assert!(e.to_string().contains("can only be made protected in provision states 'active' or 'rescue', the current state is 'available'"), "{e}");

    let before = node("active");
    let mut n = before.clone();
    n.attrs.protected = true;
    n.attrs.protected_reason = Some("prod".into());
    check_update(&before, &mut n).unwrap();
    // unprotecting clears the reason
    let mut m = n.clone();
    m.attrs.protected = false;
    check_update(&n, &mut m).unwrap();
    assert_eq!(m.attrs.protected_reason, None);
    let mut r = before.clone();
    r.attrs.protected_reason = Some("x".into());
    assert!(matches!(
        check_update(&before, &mut r),
        Err(ServiceError::Invalid(_))
    ));

    let before = node("available");
    let mut n = before.clone();
    n.attrs.retired = true;
    assert!(matches!(
        check_update(&before, &mut n),
        Err(ServiceError::Conflict(_))
    ));
    let mut n = before.clone();
    n.attrs.retired_reason = Some("x".into());
    let e = check_update(&before, &mut n).unwrap_err();
    assert_eq!(
        e.to_string(),
        "The retired_reason field can only be set when retired is True"
    );

    // instance_uuid: a node taken by another instance is 409 NodeAssociated
    let mut before = node("available");
    before.instance_uuid = Some("0e7b7b6e-0000-4000-8000-000000000001".into());
    let mut n = before.clone();
    n.instance_uuid = Some("0e7b7b6e-0000-4000-8000-000000000002".into());
    let e = check_update(&before, &mut n).unwrap_err();
    assert!(matches!(e, ServiceError::Conflict(_)));
    assert_eq!(
        e.to_string(),
        format!(
            "Node {} is associated with instance 0e7b7b6e-0000-4000-8000-000000000001.",
            before.uuid
        )
    );
    // the same instance again, or clearing it, is fine
    let mut same = before.clone();
    check_update(&before, &mut same).unwrap();
    let mut cleared = before.clone();
    cleared.instance_uuid = None;
    check_update(&before, &mut cleared).unwrap();
    let mut bad = node("available");
    bad.instance_uuid = Some("not-a-uuid".into());
    assert!(matches!(
        check_update(&node("available"), &mut bad),
        Err(ServiceError::Invalid(_))
    ));
}
