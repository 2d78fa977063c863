//! The `agent` interface's conductor side (`service::continue_inspection`)
//! against the in-memory inspect service: the start (lookup addresses,
//! power), the lookup by BMC address, MAC or UUID, the answer applied
//! (properties, ports, inventory, power off, `manageable`), and every
//! refusal leaving the node and the service untouched.

use super::*;
use crate::service::continue_inspection::{bmc_addresses, parse_body, LOOKUP_CACHE_KEY};

const MAC: &str = "52:54:00:aa:00:01";

fn body(v: Value) -> crate::service::continue_inspection::RamdiskData {
    parse_body(v).unwrap()
}

fn inventory(bmc: &str, mac: &str) -> Value {
    json!({
        "inventory": {
            "interfaces": [{"name": "eth0", "mac_address": mac}],
            "cpu": {"count": 2, "architecture": "x86_64"},
            "memory": {"physical_mb": 4096},
            "bmc_address": bmc,
        },
        "root_disk": {"name": "/dev/vda"},
    })
}

fn finished(uuid: &str) -> pb::ContinueInspectionResponse {
    let mut i = inspection(uuid, pb::InspectionState::Finished, "");
    i.interface = "agent".into();
    pb::ContinueInspectionResponse {
        inspection: Some(i),
        properties_json: r#"{"memory_mb": 4096, "cpu_arch": "x86_64", "local_gb": 9}"#.into(),
        add_ports: vec![pb::AgentPort {
            address: MAC.into(),
            pxe_enabled: true,
            client_id: String::new(),
        }],
        delete_ports: vec!["52:54:00:ff:ff:ff".into()],
        update_ports: vec![],
        plugin_data_json: r#"{"macs": ["52:54:00:aa:00:01"]}"#.into(),
    }
}

/// An `agent` node with a BMC at 192.0.2.10, in `inspect wait`.
async fn waiting_agent_node(r: &Rig) -> String {
    let uuid = manageable_node_with(
        &r.c,
        json!({"driver": "fake-hardware", "inspect_interface": "agent",
               "driver_info": {"ipmi_address": "192.0.2.10"},
               "properties": {"cpus": 1}}),
    )
    .await;
    r.c.set_provision_state(&uuid, "inspect", None)
        .await
        .unwrap();
    settles(&r.c, &uuid, "inspect wait").await;
    uuid
}

fn continues(r: &Rig) -> usize {
    r.fake.answers.lock().unwrap().continued.len()
}

#[test]
fn bodies_that_are_not_ironics_inventory_are_refused_with_its_words() {
    for (bad, says) in [
        (json!([1]), "[1] is not of type 'object'"),
        (json!({"x": 1}), "'inventory' is a required property"),
        (json!({"inventory": "x"}), "\"x\" is not of type 'object'"),
        (
            json!({"inventory": {}}),
            "'interfaces' is a required property",
        ),
        (
            json!({"inventory": {"interfaces": []}}),
            "[] should be non-empty",
        ),
        (
            json!({"inventory": {"interfaces": [{}]}}),
            "'mac_address' is a required property",
        ),
        (
            json!({"inventory": {"interfaces": [{"mac_address": 1}]}}),
            "1 is not of type 'string'",
        ),
        (
            json!({"inventory": {"interfaces": [{"mac_address": "x"}], "bmc_address": 5}}),
            "5 is not of type 'string', 'null'",
        ),
    ] {
        let e = parse_body(bad.clone()).unwrap_err().to_string();
        assert_eq!(e, format!("Schema error for data: {says}"), "{bad}");
    }
    let d = body(inventory("192.0.2.10", MAC));
    assert_eq!(d.plugin_data["root_disk"]["name"], "/dev/vda");
    assert!(!d.plugin_data.contains_key("inventory"));
}

#[test]
fn bmc_lookup_addresses_leave_loopback_out() {
    let node = |info: Value| Node {
        driver_info: info.as_object().unwrap().clone(),
        ..Node::default()
    };
    assert_eq!(
        bmc_addresses(&node(
            json!({"ipmi_address": "192.0.2.10", "ipmi_username": "u"})
        )),
        ["192.0.2.10"]
    );
    assert_eq!(
        bmc_addresses(&node(
            json!({"redfish_address": "https://192.0.2.20:8000/redfish/v1"})
        )),
        ["192.0.2.20"]
    );
    assert_eq!(
        bmc_addresses(&node(
            json!({"redfish_address": "http://[2001:db8::1]:8000"})
        )),
        ["2001:db8::1"]
    );
    for lo in [
        "http://127.0.0.1:8000",
        "127.0.0.2",
        "localhost",
        "http://[::1]:80",
    ] {
        assert!(
            bmc_addresses(&node(json!({ "redfish_address": lo }))).is_empty(),
            "{lo}"
        );
    }
}

/// The whole path: started with the lookup cache and power on, found by
/// its BMC address, the service's answer applied, powered off,
/// `manageable`; a second post is refused and changes nothing.
#[tokio::test]
async fn the_ramdisks_data_ends_the_inspection_with_the_services_answer() {
    let r = rig().await;
    let c = &r.c;
    let uuid = waiting_agent_node(&r).await;
    let n = c.store.get_node(&uuid).await.unwrap();
    assert_eq!(
        n.driver_internal_info[LOOKUP_CACHE_KEY],
        json!(["192.0.2.10"])
    );
    assert_eq!(n.power_state.as_deref(), Some("power on"));
    // A port the answer deletes (keep_ports), on this node.
    let stale = c
        .create_port(
            json!({"address": "52:54:00:ff:ff:ff", "node_uuid": uuid})
                .as_object()
                .unwrap(),
        )
        .await
        .unwrap();
    r.fake.answers.lock().unwrap().continue_answer = Some(Ok(finished(&uuid)));

    let found = c
        .continue_inspection(body(inventory("192.0.2.10", MAC)), None)
        .await
        .unwrap();
    assert_eq!(found.uuid, uuid);
    let n = settles(c, &uuid, "manageable").await;
    assert_eq!(n.last_error, None);
    assert_eq!(n.properties["cpus"], 1);
    assert_eq!(n.properties["memory_mb"], 4096);
    assert_eq!(n.properties["cpu_arch"], "x86_64");
    assert_eq!(n.properties["local_gb"], 9);
    assert_eq!(n.power_state.as_deref(), Some("power off"));
    assert!(n.inspection_finished_at.is_some());
    assert!(!n.driver_internal_info.contains_key(LOOKUP_CACHE_KEY));
    let ports = c.store.list_ports(Some(&uuid)).await.unwrap();
    assert_eq!(ports.len(), 1, "{ports:?}");
    assert_eq!(ports[0].address, MAC);
    assert!(ports[0].pxe_enabled);
    assert!(c.store.get_port(&stale.uuid).await.is_err());
    let inv = c.store.inventory(&uuid).await.unwrap().unwrap();
    assert_eq!(inv.inventory["memory"]["physical_mb"], 4096);
    assert_eq!(inv.plugin_data["macs"], json!([MAC]));
    // What the service was given: the node's properties and ports now.
    let sent = r.fake.answers.lock().unwrap().continued[0].clone();
    assert_eq!(sent.node_uuid, uuid);
    let props: Value = serde_json::from_str(&sent.properties_json).unwrap();
    assert_eq!(props["cpus"], 1);
    assert_eq!(sent.ports.len(), 1);
    let pd: Value = serde_json::from_str(&sent.plugin_data_json).unwrap();
    assert_eq!(pd["root_disk"]["name"], "/dev/vda");

    let before = c.store.get_node(&uuid).await.unwrap();
    let e = c
        .continue_inspection(body(inventory("192.0.2.10", MAC)), None)
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::NotFound), "{e}");
    assert_eq!(continues(&r), 1, "the service was not asked again");
    assert_eq!(c.store.get_node(&uuid).await.unwrap(), before);
}

/// Refusals cost nothing: no node, another node's MAC, a node not
/// waiting, another inspect interface, no lookup data; the service down
/// (503) leaves the node waiting for a retry.
#[tokio::test]
async fn posts_for_nodes_not_waiting_for_them_are_refused_and_change_nothing() {
    let r = rig().await;
    let c = &r.c;
    let waiting = waiting_agent_node(&r).await;
    let idle = manageable_node_with(
        c,
        json!({"driver": "fake-hardware", "inspect_interface": "agent",
               "driver_info": {"ipmi_address": "192.0.2.30"}}),
    )
    .await;
    c.create_port(
        json!({"address": "52:54:00:bb:00:01", "node_uuid": idle})
            .as_object()
            .unwrap(),
    )
    .await
    .unwrap();
    let inspector = manageable_node(c).await;
    c.set_provision_state(&inspector, "inspect", None)
        .await
        .unwrap();
    settles(c, &inspector, "inspect wait").await;
    let snapshot = |c: Arc<Conductor>| async move {
        let mut all = c.store.list_nodes().await.unwrap();
        all.sort_by(|a, b| a.uuid.cmp(&b.uuid));
        (all, c.store.list_ports(None).await.unwrap().len())
    };
    let before = snapshot(c.clone()).await;
    r.fake.answers.lock().unwrap().continue_answer = Some(Ok(finished(&waiting)));

    for (data, uuid) in [
        // Nobody has this MAC or BMC.
        (inventory("192.0.2.99", "52:54:00:cc:00:01"), None),
        // The idle node's MAC: it is not in inspect wait.
        (inventory("", "52:54:00:bb:00:01"), None),
        // The idle node by UUID.
        (inventory("", "52:54:00:cc:00:01"), Some(idle.as_str())),
        // The waiting node's BMC, but the idle node's MAC.
        (inventory("192.0.2.10", "52:54:00:bb:00:01"), None),
        // A node inspected through ironic-inspector.
        (inventory("", "52:54:00:cc:00:01"), Some(inspector.as_str())),
        // A UUID no node has.
        (
            inventory("", "52:54:00:cc:00:01"),
            Some("3be26c0b-03f2-4d2e-ae87-c02d7f33c123"),
        ),
    ] {
        let e = c
            .continue_inspection(body(data.clone()), uuid)
            .await
            .unwrap_err();
        assert!(matches!(e, ServiceError::NotFound), "{data} {uuid:?}: {e}");
    }
    let e = c
        .continue_inspection(body(inventory("", "nope")), None)
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "No lookup information provided");
    assert_eq!(continues(&r), 0);
    assert_eq!(snapshot(c.clone()).await, before);

    r.fake.answers.lock().unwrap().continue_answer = None;
    let e = c
        .continue_inspection(body(inventory("192.0.2.10", MAC)), None)
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::Unavailable(_)), "{e}");
    assert_eq!(snapshot(c.clone()).await, before);
    assert!(!c.is_busy(&waiting));
}

/// The service's FAILED answer (e.g. the ramdisk reported an error) ends
/// the node in `inspect failed` with the reason; nothing is applied.
#[tokio::test]
async fn a_failed_processing_fails_the_inspection_with_the_reason() {
    let r = rig().await;
    let c = &r.c;
    let uuid = waiting_agent_node(&r).await;
    let mut i = inspection(
        &uuid,
        pb::InspectionState::Failed,
        "Ramdisk reported error: boom",
    );
    i.interface = "agent".into();
    r.fake.answers.lock().unwrap().continue_answer = Some(Ok(pb::ContinueInspectionResponse {
        inspection: Some(i),
        ..Default::default()
    }));
    c.continue_inspection(body(inventory("192.0.2.10", MAC)), Some(&uuid))
        .await
        .unwrap();
    let n = settles(c, &uuid, "inspect failed").await;
    assert_eq!(
        n.last_error.as_deref(),
        Some("Failed to finish inspection: Ramdisk reported error: boom")
    );
    assert!(c.store.list_ports(Some(&uuid)).await.unwrap().is_empty());
    assert!(c.store.inventory(&uuid).await.unwrap().is_none());
    assert!(!n.properties.contains_key("memory_mb"));
}

/// A FINISHED agent inspection on the stream does not end the node: the
/// data's own path applies the result (else the node would reach
/// `manageable` without its properties).
#[tokio::test]
async fn the_streamed_finish_of_an_agent_inspection_is_not_applied() {
    let r = rig().await;
    let c = &r.c;
    let uuid = waiting_agent_node(&r).await;
    let mut i = inspection(&uuid, pb::InspectionState::Finished, "");
    i.interface = "agent".into();
    r.fake.events.send(i).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let n = c.store.get_node(&uuid).await.unwrap();
    assert_eq!(n.provision_state, "inspect wait");
}

/// Wait (up to 5 s) until `uuid`'s lock is free again.
async fn unlocked(c: &Conductor, uuid: &str) {
    for _ in 0..500 {
        if !c.is_busy(uuid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{uuid} still locked");
}

/// An abort from `inspect wait` and the inspect_wait_timeout both end an
/// `agent` inspection as Ironic's abort does: the service's record
/// aborted, the lookup addresses gone, the node powered off.
#[tokio::test]
async fn abort_and_timeout_power_the_node_off() {
    let r = rig().await;
    let c = &r.c;
    let aborted = waiting_agent_node(&r).await;
    c.set_provision_state(&aborted, "abort", None)
        .await
        .unwrap();
    unlocked(c, &aborted).await;
    let n = c.store.get_node(&aborted).await.unwrap();
    assert_eq!(n.provision_state, "inspect failed");
    assert_eq!(n.power_state.as_deref(), Some("power off"));
    assert!(!n.driver_internal_info.contains_key(LOOKUP_CACHE_KEY));

    let late = waiting_agent_node(&r).await;
    let t = crate::periodic::Timeouts {
        deploy_callback: None,
        inspect_wait: Some(Duration::from_secs(60)),
        clean_callback: None,
        interval: Some(Duration::from_secs(1)),
    };
    let later = std::time::SystemTime::now() + Duration::from_secs(61);
    let failed = crate::periodic::check_once(c, &t, later).await.unwrap();
    assert!(failed.contains(&late), "{failed:?}");
    unlocked(c, &late).await;
    let n = c.store.get_node(&late).await.unwrap();
    assert_eq!(n.provision_state, "inspect failed");
    assert_eq!(
        n.last_error.as_deref(),
        Some("timeout reached while inspecting the node")
    );
    assert_eq!(n.power_state.as_deref(), Some("power off"));
    assert!(!n.driver_internal_info.contains_key(LOOKUP_CACHE_KEY));
    let calls = r.fake.calls.lock().unwrap().clone();
    assert!(calls.contains(&format!("abort {aborted}")), "{calls:?}");
    assert!(calls.contains(&format!("abort {late}")), "{calls:?}");
}
