//! Console specs in the rig's real etcd: sealed passwords (nothing in
//! clear under the prefix), cluster-wide port reservations written with the
//! spec, sticky ports, concurrent writers never sharing a port.
//!
//! Runs only when `PORTHOLE_RIG_JSON` names the rig's `rig.json`; each test
//! has its own key prefix and deletes it at the end.

mod common;

use std::time::Instant;

use console_svc::coordinator::etcd::failover::EtcdClient;
use console_svc::coordinator::etcd::spec_doc::SpecTimes;
use console_svc::coordinator::etcd::specs::{SpecStore, SpecStoreError};
use console_svc::ports::{PortError, PortRange};
use console_svc::seal::Sealer;
use console_svc::secret::Secret;
use console_svc::spec::{ConsoleSpec, IpmiTarget, NodeId, PrivilegeLevel, Target};
use etcd_client::{Client, GetOptions};

fn unique_prefix(test: &str) -> String {
    format!(
        "/porthole-test/{test}-{}-{:?}/",
        std::process::id(),
        Instant::now()
    )
}

fn spec(node: &str, port: Option<u16>) -> ConsoleSpec {
    ConsoleSpec {
        node: NodeId::parse(node).unwrap(),
        target: Target::Ipmi(IpmiTarget {
            address: "127.0.0.1".into(),
            port: 21100,
            username: "admin".into(),
            password: Secret::new("pw-in-clear-1234"),
            cipher_suite: 3,
            privilege: PrivilegeLevel::Administrator,
        }),
        requested_port: port,
    }
}

async fn store(ep: &str, prefix: &str, range: &str) -> (SpecStore, Client) {
    let client = Client::connect([ep], None).await.expect("etcd");
    let sealer = Sealer::from_key(&[9; 32]);
    let range: PortRange = range.parse().unwrap();
    (
        SpecStore::new(failover(ep).await, prefix, sealer, range),
        client,
    )
}

fn now() -> SpecTimes {
    SpecTimes::new_at(std::time::SystemTime::now())
}

async fn failover(ep: &str) -> EtcdClient {
    let options = etcd_client::ConnectOptions::new();
    EtcdClient::connect(&[ep.to_owned()], options, std::time::Duration::from_secs(3))
        .await
        .expect("etcd")
}

async fn dump(client: &Client, prefix: &str) -> Vec<(String, String)> {
    let resp = client
        .kv_client()
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    resp.kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
            )
        })
        .collect()
}

async fn cleanup(client: &Client, prefix: &str) {
    let opts = etcd_client::DeleteOptions::new().with_prefix();
    client.kv_client().delete(prefix, Some(opts)).await.unwrap();
}

#[tokio::test]
async fn specs_are_sealed_and_ports_sticky() {
    let Some(ep) = common::rig_etcd_endpoint("etcd_specs") else {
        return;
    };
    let prefix = unique_prefix("specs");
    let (specs, client) = store(&ep, &prefix, "30000:30003").await;

    let a = specs.put(&spec("node-a", None), now()).await.unwrap();
    let b = specs.put(&spec("node-b", None), now()).await.unwrap();
    assert_eq!((a.port, b.port), (30000, 30001));
    let keys = dump(&client, &prefix).await;
    assert!(
        keys.iter().all(|(_, v)| !v.contains("pw-in-clear-1234")),
        "{keys:?}"
    );
    assert!(keys.contains(&(format!("{prefix}ports/30000"), "node-a".into())));

    let back = specs.get(&a.spec.node).await.unwrap().expect("stored");
    assert_eq!(back.spec, a.spec, "password opens again");
    assert!(specs.delete(&a.spec.node).await.unwrap());
    assert!(specs.get(&a.spec.node).await.unwrap().is_none());
    let again = specs.put(&spec("node-a", None), now()).await.unwrap();
    assert_eq!(again.port, 30000, "a disabled node keeps its port");

    let taken = specs
        .put(&spec("node-c", Some(30001)), now())
        .await
        .unwrap_err();
    assert!(
        matches!(taken, SpecStoreError::Port(PortError::Taken { .. })),
        "{taken}"
    );
    let moved = specs
        .put(&spec("node-a", Some(30002)), now())
        .await
        .unwrap();
    assert_eq!(moved.port, 30002);
    let keys = dump(&client, &prefix).await;
    assert!(
        !keys.iter().any(|(k, _)| k.ends_with("ports/30000")),
        "old port freed"
    );
    let (all, revision) = specs.list().await.unwrap();
    assert_eq!(all.len(), 2);
    assert!(revision >= moved.mod_revision);
    cleanup(&client, &prefix).await;
}

#[tokio::test]
async fn concurrent_writers_never_share_a_port() {
    let Some(ep) = common::rig_etcd_endpoint("etcd_specs") else {
        return;
    };
    let prefix = unique_prefix("race");
    let (one, client) = store(&ep, &prefix, "30100:30120").await;
    let (two, _) = store(&ep, &prefix, "30100:30120").await;
    let puts = (0..16).map(|i| {
        let s = if i % 2 == 0 { one.clone() } else { two.clone() };
        async move { s.put(&spec(&format!("n{i}"), None), now()).await }
    });
    let mut ports: Vec<u16> = futures::future::join_all(puts)
        .await
        .into_iter()
        .map(|r| r.expect("every put lands").port)
        .collect();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 16, "16 nodes, 16 distinct ports");
    cleanup(&client, &prefix).await;
}
