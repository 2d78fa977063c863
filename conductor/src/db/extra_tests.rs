//! Store tests for the API-surface additions: node attributes and traits
//! survive a reopen, `instance_uuid` is unique with Ironic's message, the
//! later port columns round-trip, and portgroup/volume documents keep
//! their uniqueness rules and go with their node.

use super::*;
use crate::model::{NodeAttrs, Port, Portgroup, VolumeConnector, VolumeTarget};

#[tokio::test]
async fn attrs_ports_and_documents() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = node("1be26c0b-03f2-4d2e-ae87-c02d7f33c123", "n1");
    n.attrs.owner = Some("p1".into());
    n.attrs.traits = vec!["CUSTOM_GOLD".into()];
    n.instance_uuid = Some("0e7b7b6e-0000-4000-8000-000000000001".into());
    let other = node("2be26c0b-03f2-4d2e-ae87-c02d7f33c123", "n2");
    {
        let s = open(dir.path());
        s.insert_node(&n).await.unwrap();
        s.insert_node(&other).await.unwrap();
        let e = s
            .modify_node(&other.uuid, |o: &mut Node| {
                o.instance_uuid = Some("0e7b7b6e-0000-4000-8000-000000000001".into());
                Ok::<_, DbError>(())
            })
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("Instance 0e7b7b6e-0000-4000-8000-000000000001 is already associated with a node, it cannot be associated with this other node {}", other.uuid)
        );
        let mut p = Port {
            uuid: "3be26c0b-03f2-4d2e-ae87-c02d7f33c123".into(),
            address: "52:54:00:12:34:56".into(),
            node_uuid: n.uuid.clone(),
            extra: Dict::new(),
            pxe_enabled: false,
            created_at: now(),
            updated_at: None,
            internal_info: Dict::new(),
            local_link_connection: Dict::new(),
            physical_network: Some("physnet1".into()),
            portgroup_uuid: None,
            is_smartnic: false,
            name: Some("eth0".into()),
        };
        s.insert_port(&p).await.unwrap();
        let m = s
            .modify_port(&p.address, |q: &mut Port| {
                q.internal_info
                    .insert("tenant_vif_port_id".into(), json!("v1"));
                Ok::<_, DbError>(())
            })
            .await
            .unwrap();
        assert!(m.updated_at.is_some());
        p = m;
        assert_eq!(s.get_port(&p.uuid).await.unwrap(), p);

        let g = Portgroup {
            uuid: "4be26c0b-03f2-4d2e-ae87-c02d7f33c123".into(),
            name: Some("bond0".into()),
            address: None,
            node_uuid: n.uuid.clone(),
            extra: Dict::new(),
            mode: Some("active-backup".into()),
            properties: Dict::new(),
            standalone_ports_supported: true,
            internal_info: Dict::new(),
            physical_network: None,
            created_at: now(),
            updated_at: None,
        };
        s.insert_doc(&g).await.unwrap();
        let mut dup = g.clone();
        dup.uuid = "5be26c0b-03f2-4d2e-ae87-c02d7f33c123".into();
        let e = s.insert_doc(&dup).await.unwrap_err();
        assert_eq!(e.to_string(), "A portgroup with name bond0 already exists.");
        assert_eq!(s.get_doc::<Portgroup>("bond0").await.unwrap(), g);
        let t = VolumeTarget {
            uuid: "6be26c0b-03f2-4d2e-ae87-c02d7f33c123".into(),
            node_uuid: n.uuid.clone(),
            volume_type: "iscsi".into(),
            properties: Dict::new(),
            boot_index: 0,
            volume_id: "vol-1".into(),
            extra: Dict::new(),
            created_at: now(),
            updated_at: None,
        };
        s.insert_doc(&t).await.unwrap();
        let mut t2 = t.clone();
        t2.uuid = "7be26c0b-03f2-4d2e-ae87-c02d7f33c123".into();
        let e = s.insert_doc(&t2).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "A volume target with boot index '0' for the same node already exists."
        );
        t2.node_uuid = other.uuid.clone();
        s.insert_doc(&t2).await.unwrap();
        let mut orphan = t.clone();
        orphan.uuid = "8be26c0b-03f2-4d2e-ae87-c02d7f33c123".into();
        orphan.node_uuid = "9be26c0b-03f2-4d2e-ae87-c02d7f33c123".into();
        assert!(matches!(
            s.insert_doc(&orphan).await,
            Err(DbError::NotFound { .. })
        ));
        let c = VolumeConnector {
            uuid: "aae26c0b-03f2-4d2e-ae87-c02d7f33c123".into(),
            node_uuid: n.uuid.clone(),
            kind: "iqn".into(),
            connector_id: "iqn.2017-05.org.openstack:node".into(),
            extra: Dict::new(),
            created_at: now(),
            updated_at: None,
        };
        s.insert_doc(&c).await.unwrap();
        assert_eq!(
            s.list_docs::<VolumeTarget>(Some(&n.uuid)).await.unwrap(),
            vec![t.clone()]
        );
        assert_eq!(s.list_docs::<VolumeTarget>(None).await.unwrap().len(), 2);
    }
    let s = open(dir.path());
    let back = s.get_node("n1").await.unwrap();
    assert_eq!(back.attrs, n.attrs, "attributes survive a reopen");
    assert_eq!(
        s.list_nodes().await.unwrap()[0].attrs.traits,
        vec!["CUSTOM_GOLD"]
    );
    s.delete_node(&n.uuid).await.unwrap();
    assert!(s.list_docs::<Portgroup>(None).await.unwrap().is_empty());
    assert_eq!(
        s.list_docs::<VolumeTarget>(None).await.unwrap().len(),
        1,
        "the other node's stays"
    );
    assert!(s
        .list_docs::<VolumeConnector>(None)
        .await
        .unwrap()
        .is_empty());
}

/// A database from before the API-surface columns opens: its ports gain
/// the new columns with Ironic's empty values, its nodes read with default
/// attributes, and two nodes sharing an instance (allowed then) still open.
#[test]
fn an_old_database_gains_the_port_columns_and_attrs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        for (u, name) in [("u-a", "a"), ("u-b", "b")] {
            conn.execute(
                "INSERT INTO nodes (uuid, name, driver, driver_info, driver_internal_info, \
                 console_interface, provision_state, maintenance, console_enabled, properties, \
                 instance_info, instance_uuid, extra, created_at) VALUES (?1, ?2, 'ipmi', '{}', \
                 '{}', 'no-console', 'active', 0, 0, '{}', '{}', 'i-shared', '{}', 'then')",
                [u, name],
            )
            .unwrap();
        }
        conn.execute(
            "INSERT INTO ports (uuid, address, node_uuid, extra, pxe_enabled, created_at) \
             VALUES ('p-old', '52:54:00:00:00:99', 'u-a', '{}', 1, 'then')",
            [],
        )
        .unwrap();
    }
    let store = open(dir.path());
    let n = store.inner.get_node("a").unwrap();
    assert_eq!(n.attrs, NodeAttrs::default());
    let p = store.inner.get_port("p-old").unwrap();
    assert!(p.internal_info.is_empty() && p.local_link_connection.is_empty());
    assert!(p.physical_network.is_none() && p.portgroup_uuid.is_none() && !p.is_smartnic);
    store
        .inner
        .modify_port("p-old", |p: &mut Port| {
            p.physical_network = Some("physnet1".into());
            Ok::<_, DbError>(())
        })
        .unwrap();
    drop(store);
    let p = open(dir.path()).inner.get_port("p-old").unwrap();
    assert_eq!(p.physical_network.as_deref(), Some("physnet1"));
}
