//! Store tests: round trips, sealing at rest, restart, name lookups, ports.

use super::*;
use crate::model::{Dict, Port};
use serde_json::json;

fn node(uuid: &str, name: &str) -> Node {
    let mut info = Dict::new();
    info.insert("ipmi_address".into(), json!("127.0.0.1"));
    info.insert("ipmi_password".into(), json!("pw-at-rest"));
    Node {
        uuid: uuid.into(),
        name: Some(name.into()),
        driver: "ipmi".into(),
        driver_info: info,
        driver_internal_info: Dict::new(),
        console_interface: "ipmitool-socat".into(),
        power_state: None,
        target_power_state: None,
        provision_state: "enroll".into(),
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
        created_at: now(),
        updated_at: None,
        provision_updated_at: None,
        inspection_started_at: None,
        inspection_finished_at: None,
        deploy_step: Dict::new(),
        clean_step: Dict::new(),
        automated_clean: None,
        interfaces: crate::drivers::InterfaceSet::from_stored("ipmi", &Dict::new()),
        reservation: None,
        attrs: Default::default(),
    }
}

fn open(dir: &Path) -> Store {
    let sealer = Sealer::load_or_create(&dir.join("k")).unwrap();
    Store::open(&dir.join("db.sqlite"), sealer).unwrap()
}

#[tokio::test]
async fn nodes_survive_a_reopen_with_passwords_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let n = node("1be26c0b-03f2-4d2e-ae87-c02d7f33c123", "n1");
    {
        let s = open(dir.path());
        s.insert_node(&n).await.unwrap();
        assert!(matches!(
            s.insert_node(&n).await,
            Err(DbError::Duplicate(_))
        ));
    }
    let raw = std::fs::read(dir.path().join("db.sqlite")).unwrap();
    let wal = std::fs::read(dir.path().join("db.sqlite-wal")).unwrap_or_default();
    let needle = b"pw-at-rest";
    assert!(!raw.windows(needle.len()).any(|w| w == needle));
    assert!(!wal.windows(needle.len()).any(|w| w == needle));
    let s = open(dir.path());
    assert_eq!(s.get_node("n1").await.unwrap(), n);
    assert_eq!(
        s.get_node(&n.uuid).await.unwrap().driver_info["ipmi_password"],
        "pw-at-rest"
    );
    assert!(matches!(
        s.get_node("nope").await,
        Err(DbError::NotFound { .. })
    ));
}

#[tokio::test]
async fn modify_and_ports() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let n = node("2be26c0b-03f2-4d2e-ae87-c02d7f33c123", "n2");
    s.insert_node(&n).await.unwrap();
    let m = s
        .modify_node(&n.uuid, |n: &mut Node| {
            n.console_enabled = true;
            Ok::<_, DbError>(())
        })
        .await
        .unwrap();
    assert!(m.console_enabled && m.updated_at.is_some());
    let p = Port {
        uuid: "3be26c0b-03f2-4d2e-ae87-c02d7f33c123".into(),
        address: "52:54:00:12:34:56".into(),
        node_uuid: n.uuid.clone(),
        extra: Dict::new(),
        pxe_enabled: true,
        created_at: now(),
        updated_at: None,
        internal_info: Dict::new(),
        local_link_connection: Dict::new(),
        physical_network: None,
        portgroup_uuid: None,
        is_smartnic: false,
        name: None,
    };
    s.insert_port(&p).await.unwrap();
    assert!(matches!(
        s.insert_port(&p).await,
        Err(DbError::Duplicate(_))
    ));
    assert_eq!(s.get_port("52:54:00:12:34:56").await.unwrap(), p);
    assert_eq!(s.list_ports(Some(&n.uuid)).await.unwrap().len(), 1);
    s.delete_node(&n.uuid).await.unwrap();
    assert!(s.list_ports(None).await.unwrap().is_empty());
}

/// While SQLite waits on a lock (another connection holds the write lock;
/// its busy timeout is 5 s), the runtime keeps running other tasks: the
/// store's calls run on the blocking pool, not on the (here: only) worker.
#[tokio::test(flavor = "current_thread")]
async fn a_waiting_database_call_does_not_stall_the_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let n = node("4be26c0b-03f2-4d2e-ae87-c02d7f33c123", "n4");
    s.insert_node(&n).await.unwrap();
    let holder = Connection::open(dir.path().join("db.sqlite")).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let store = s.clone();
    let uuid = n.uuid.clone();
    let write = tokio::spawn(async move {
        store
            .modify_node(&uuid, |n: &mut Node| {
                n.maintenance = true;
                Ok::<_, DbError>(())
            })
            .await
    });
    // The write starts at this task's first await and blocks on the lock;
    // this timer must still fire on time.
    let start = std::time::Instant::now();
    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    let took = start.elapsed();
    holder.execute_batch("ROLLBACK").unwrap();
    assert!(
        took < std::time::Duration::from_secs(1),
        "a 250 ms timer took {took:?} while a database call waited"
    );
    assert!(write.await.unwrap().unwrap().maintenance);
}

/// A database an older conductor wrote: `user_version` 0, one password
/// sealed without associated data (its `sealed:v1:` form, nonce ||
/// ciphertext, built here with the cipher directly) and one from before
/// sealing, in clear text. The first open re-seals both bound to the node's
/// UUID; later opens read them.
#[tokio::test]
async fn an_old_database_is_resealed_on_first_open() {
    use base64::Engine;
    use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
    use chacha20poly1305::{ChaCha20Poly1305, Key};

    let dir = tempfile::tempdir().unwrap();
    let key = [5u8; 32];
    std::fs::write(dir.path().join("k"), key).unwrap();
    let uuid = "4be26c0b-03f2-4d2e-ae87-c02d7f33c123";
    let mut n = node(uuid, "old");
    n.driver_info
        .insert("redfish_password".into(), json!("clear-from-long-ago"));
    open(dir.path()).insert_node(&n).await.unwrap();

    let cipher = ChaCha20Poly1305::new(Key::from_slice(&key));
    let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
    let mut raw = nonce.to_vec();
    raw.extend(cipher.encrypt(&nonce, b"pw-at-rest".as_slice()).unwrap());
    let unbound = format!(
        "sealed:v1:{}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    );
    let mut old_info = n.driver_info.clone();
    old_info.insert("ipmi_password".into(), json!(unbound));
    {
        let conn = Connection::open(dir.path().join("db.sqlite")).unwrap();
        conn.execute(
            "UPDATE nodes SET driver_info = ?1",
            [serde_json::to_string(&old_info).unwrap()],
        )
        .unwrap();
        conn.execute_batch("PRAGMA user_version = 0").unwrap();
    }

    let s = open(dir.path());
    assert_eq!(
        s.get_node(uuid).await.unwrap(),
        n,
        "readable after the migration"
    );
    drop(s);
    let conn = Connection::open(dir.path().join("db.sqlite")).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SEALED_BY_NODE);
    let stored: String = conn
        .query_row("SELECT driver_info FROM nodes", [], |r| r.get(0))
        .unwrap();
    let stored: Dict = serde_json::from_str(&stored).unwrap();
    let shared = porthole_common::seal::Sealer::from_key(&key);
    for (field, clear) in [
        ("ipmi_password", "pw-at-rest"),
        ("redfish_password", "clear-from-long-ago"),
    ] {
        let v = stored[field].as_str().unwrap();
        assert_ne!(v, unbound);
        assert_eq!(
            shared.open(uuid, v).unwrap(),
            clear,
            "{field} bound to the node"
        );
        assert!(shared.open("another-node", v).is_err());
        assert!(shared.open_unbound_v0(v).is_err());
    }
    // A second open leaves the (already migrated) values alone.
    drop(conn);
    let s = open(dir.path());
    assert_eq!(s.get_node(uuid).await.unwrap(), n);
}

/// A database written before the provision columns existed opens, gains
/// them, and reads its nodes with Ironic's empty values.
#[test]
fn an_old_database_gains_the_provision_columns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        conn.execute(
            "INSERT INTO nodes (uuid, name, driver, driver_info, driver_internal_info, \
             console_interface, provision_state, maintenance, console_enabled, properties, \
             instance_info, extra, created_at) VALUES ('u-old', 'old', 'ipmi', '{}', '{}', \
             'no-console', 'enroll', 0, 0, '{}', '{}', '{}', 'then')",
            [],
        )
        .unwrap();
    }
    let store = open(dir.path());
    let n = store.inner.get_node("old").unwrap();
    assert_eq!(n.provision_state, "enroll");
    assert_eq!(n.provision_updated_at, None);
    assert_eq!(n.automated_clean, None);
    assert!(n.deploy_step.is_empty() && n.clean_step.is_empty());
    // Its interfaces: the hardware type's first choices.
    use crate::drivers::Kind;
    assert_eq!(n.interface(Kind::Power), "ipmitool");
    assert_eq!(n.interface(Kind::Deploy), "direct");
    assert_eq!(n.interface(Kind::Bios), "no-bios");
    store
        .inner
        .modify_node("old", |n: &mut Node| {
            n.provision_updated_at = Some("now".into());
            n.clean_step.insert("step".into(), json!("erase"));
            n.automated_clean = Some(false);
            n.set_interface(Kind::Deploy, "iscsi".into());
            Ok::<_, DbError>(())
        })
        .unwrap();
    drop(store);
    let n = open(dir.path()).inner.get_node("u-old").unwrap();
    assert_eq!(n.provision_updated_at.as_deref(), Some("now"));
    assert_eq!(n.clean_step["step"], "erase");
    assert_eq!(n.automated_clean, Some(false));
    assert_eq!(n.interface(Kind::Deploy), "iscsi");
    assert_eq!(n.interface(Kind::Inspect), "no-inspect");
}

#[cfg(test)]
#[path = "extra_tests.rs"]
mod extra_tests;
