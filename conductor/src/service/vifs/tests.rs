//! VIF attach/detach choices: free port-like objects, portgroups first,
//! PXE ports first, Ironic's errors.

use super::*;
use serde_json::json;

fn port(n: u8, pxe: bool) -> Port {
    Port {
        uuid: format!("5e4c2a7e-0000-4000-8000-00000000000{n}"),
        address: format!("52:54:00:00:00:0{n}"),
        node_uuid: "node".into(),
        extra: Dict::new(),
        pxe_enabled: pxe,
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

fn req(id: &str) -> VifAttach {
    VifAttach {
        id: id.into(),
        port_uuid: None,
        portgroup_uuid: None,
    }
}

#[test]
fn attach_picks_pxe_ports_first_and_refuses_twice() {
    let mut ports = vec![port(1, false), port(2, true)];
    attach(&mut ports, &mut [], &req("vif-a")).unwrap();
    assert_eq!(
        ports[1].internal_info[VIF_KEY], "vif-a",
        "the PXE port first"
    );
    let e = attach(&mut ports, &mut [], &req("vif-a")).unwrap_err();
    assert!(matches!(e, ServiceError::Conflict(_)));
    assert_eq!(
        e.to_string(),
        format!(
            "Unable to attach VIF because VIF vif-a is already attached to Ironic Port {}",
            ports[1].uuid
        )
    );
    attach(&mut ports, &mut [], &req("vif-b")).unwrap();
    assert_eq!(ports[0].internal_info[VIF_KEY], "vif-b");
    let e = attach(&mut ports, &mut [], &req("vif-c")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "Unable to attach VIF vif-c, not enough free physical ports."
    );
    assert!(matches!(e, ServiceError::Invalid(_)));
}

#[test]
fn requests_parse() {
    let body = |v: serde_json::Value| -> Dict { serde_json::from_value(v).unwrap() };
    assert!(VifAttach::parse(&body(json!({}))).is_err());
    assert!(VifAttach::parse(&body(json!({"id": 5}))).is_err());
    let e = VifAttach::parse(&body(json!({
        "id": "v", "port_uuid": "5e4c2a7e-0000-4000-8000-000000000001",
        "portgroup_uuid": "5e4c2a7e-0000-4000-8000-000000000002"
    })))
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "Cannot specify both port_uuid and portgroup_uuid"
    );
    let mut ports = vec![port(1, true), port(2, true)];
    let mut r = req("v");
    r.port_uuid = Some(ports[1].uuid.clone());
    attach(&mut ports, &mut [], &r).unwrap();
    assert!(ports[0].internal_info.is_empty() && ports[1].internal_info[VIF_KEY] == "v");
}

#[test]
fn tear_down_clears_every_vif() {
    let mut ports = vec![port(1, true), port(2, false)];
    attach(&mut ports, &mut [], &req("a")).unwrap();
    attach(&mut ports, &mut [], &req("b")).unwrap();
    ports[0].internal_info.insert("other".into(), json!(1));
    clear_all(&mut ports, &mut []);
    assert!(ports.iter().all(|p| !p.internal_info.contains_key(VIF_KEY)));
    assert_eq!(ports[0].internal_info["other"], 1, "only the VIF goes");
}
