//! `inspect.v1` over a real gRPC connection, with the in-memory backend:
//! status codes of each refusal, WatchInspections' snapshot then changes,
//! and a watcher that fell behind getting every inspection again.

use std::sync::Arc;
use std::time::Duration;

use pb::inspect_service_client::InspectServiceClient;
use pb::inspect_service_server::InspectServiceServer;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::Code;

use super::*;
use crate::fake::FakeInspector;
use crate::inspections::{Timing, INSPECTOR};
use crate::inspector::Backend;

const A: &str = "1be26c0b-03f2-4d2e-ae87-c02d7f33c123";

struct Served {
    client: InspectServiceClient<tonic::transport::Channel>,
    inspections: Inspections,
    fake: Arc<FakeInspector>,
    _cancel: tokio_util::sync::DropGuard,
}

async fn serve(enabled: bool, buffer: usize) -> Served {
    let fake = Arc::new(FakeInspector::default());
    let cancel = CancellationToken::new();
    let timing = Timing {
        status_check_period: Duration::from_secs(3600),
        inspect_wait_timeout: Duration::from_secs(7200),
    };
    let backend = enabled.then(|| fake.clone() as Arc<dyn Backend>);
    let inspections =
        Inspections::with_buffer(backend, timing, &TaskTracker::new(), cancel.clone(), buffer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tonic::transport::Server::builder()
        .add_service(InspectServiceServer::new(InspectApi::new(
            inspections.clone(),
        )))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            cancel.clone().cancelled_owned(),
        );
    tokio::spawn(server);
    let client = InspectServiceClient::connect(url).await.unwrap();
    Served {
        client,
        inspections,
        fake,
        _cancel: cancel.drop_guard(),
    }
}

fn start(uuid: &str, interface: &str) -> pb::StartInspectionRequest {
    pb::StartInspectionRequest {
        node_uuid: uuid.into(),
        interface: interface.into(),
    }
}

#[tokio::test]
async fn each_refusal_has_its_code_and_records_nothing() {
    let mut s = serve(false, 16).await;
    let validate = |i: &str| pb::ValidateInspectionRequest {
        interface: i.into(),
    };
    let e = s
        .client
        .validate_inspection(validate(INSPECTOR))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("[inspector] enabled = true"), "{e:?}");
    let e = s
        .client
        .start_inspection(start(A, INSPECTOR))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let e = s
        .client
        .start_inspection(start(A, "pxe"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = s
        .client
        .get_inspection(pb::GetInspectionRequest {
            node_uuid: A.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(s.inspections.watch().0.is_empty());

    let mut s = serve(true, 16).await;
    s.client
        .validate_inspection(validate(INSPECTOR))
        .await
        .unwrap();
    let e = s
        .client
        .start_inspection(start("../etc", INSPECTOR))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    s.fake
        .refuse
        .lock()
        .unwrap()
        .insert(A.into(), "Node is in maintenance".into());
    let e = s
        .client
        .start_inspection(start(A, INSPECTOR))
        .await
        .unwrap_err();
    // Inspector's 400 is the request's fault: FAILED_PRECONDITION, its words.
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("Node is in maintenance"), "{e:?}");
    s.fake.refuse.lock().unwrap().clear();
    s.client
        .start_inspection(start(A, INSPECTOR))
        .await
        .unwrap();
    let e = s
        .client
        .start_inspection(start(A, INSPECTOR))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("already being inspected"), "{e:?}");
    s.client
        .abort_inspection(pb::AbortInspectionRequest {
            node_uuid: A.into(),
        })
        .await
        .unwrap();
    let e = s
        .client
        .abort_inspection(pb::AbortInspectionRequest {
            node_uuid: A.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn watch_sends_every_inspection_then_each_change() {
    let mut s = serve(true, 16).await;
    let b = uuid::Uuid::new_v4().to_string();
    s.client
        .start_inspection(start(A, INSPECTOR))
        .await
        .unwrap();
    let mut watch = s
        .client
        .watch_inspections(pb::WatchInspectionsRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(
        (first.node_uuid.as_str(), first.state()),
        (A, pb::InspectionState::Waiting)
    );
    s.client
        .start_inspection(start(&b, INSPECTOR))
        .await
        .unwrap();
    let next = watch.next().await.unwrap().unwrap();
    assert_eq!(next.node_uuid, b);
    s.fake.set(A, crate::inspector::Status::Finished);
    s.inspections.poll_once().await;
    let done = watch.next().await.unwrap().unwrap();
    assert_eq!(
        (done.node_uuid.as_str(), done.state()),
        (A, pb::InspectionState::Finished)
    );
}

#[tokio::test]
async fn a_watcher_that_fell_behind_gets_every_inspection_again() {
    let mut s = serve(true, 2).await;
    let mut watch = s
        .client
        .watch_inspections(pb::WatchInspectionsRequest {})
        .await
        .unwrap()
        .into_inner();
    let uuids: Vec<String> = (0..8).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    for u in &uuids {
        s.client
            .start_inspection(start(u, INSPECTOR))
            .await
            .unwrap();
    }
    for u in &uuids {
        s.fake.set(u, crate::inspector::Status::Finished);
    }
    s.inspections.poll_once().await;
    // 16 changes into a buffer of 2: the watcher lagged. Whatever it saw,
    // it ends up with every node finished.
    let mut last = std::collections::HashMap::new();
    while last.len() < uuids.len()
        || last
            .values()
            .any(|s: &pb::InspectionState| *s != pb::InspectionState::Finished)
    {
        let i = tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .expect("every outcome arrives")
            .unwrap()
            .unwrap();
        last.insert(i.node_uuid.clone(), i.state());
    }
    assert_eq!(last.len(), uuids.len());
}

fn data(uuid: &str, inventory: &str) -> pb::ContinueInspectionRequest {
    pb::ContinueInspectionRequest {
        node_uuid: uuid.into(),
        inventory_json: inventory.into(),
        plugin_data_json: r#"{"logs": "xx"}"#.into(),
        properties_json: r#"{"cpus": 2}"#.into(),
        ports: vec![],
    }
}

const INVENTORY: &str = r#"{"interfaces": [{"name": "eth0", "mac_address": "52:54:00:AA:00:01"}],
  "cpu": {"count": 8, "architecture": "aarch64"}, "memory": {"physical_mb": 4096},
  "disks": [{"name": "/dev/vda", "size": 10737418240}]}"#;

/// The `agent` interface over gRPC: started without any backend call, the
/// ramdisk's data answered with the outcome once, every other call refused
/// with its code and nothing changed.
#[tokio::test]
async fn agent_data_is_processed_once_for_a_waiting_agent_inspection() {
    let mut s = serve(false, 16).await;
    let e = s
        .client
        .continue_inspection(data(A, INVENTORY))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    s.client
        .validate_inspection(pb::ValidateInspectionRequest {
            interface: "agent".into(),
        })
        .await
        .unwrap();
    let w = s.client.start_inspection(start(A, "agent")).await.unwrap();
    assert_eq!(w.into_inner().state(), pb::InspectionState::Waiting);
    assert!(s.fake.calls().is_empty());
    for bad in ["[1]", "{nope"] {
        let e = s
            .client
            .continue_inspection(data(A, bad))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    }
    assert_eq!(
        s.inspections.get(A).unwrap().state(),
        pb::InspectionState::Waiting
    );
    let r = s
        .client
        .continue_inspection(data(A, INVENTORY))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.inspection.unwrap().state(), pb::InspectionState::Finished);
    let props: serde_json::Value = serde_json::from_str(&r.properties_json).unwrap();
    // cpus was set already: kept.
    assert_eq!(
        props,
        serde_json::json!({"cpu_arch": "aarch64", "memory_mb": 4096, "local_gb": 9})
    );
    assert_eq!(r.add_ports.len(), 1);
    assert_eq!(r.add_ports[0].address, "52:54:00:aa:00:01");
    let pd: serde_json::Value = serde_json::from_str(&r.plugin_data_json).unwrap();
    assert!(pd.get("logs").is_none() && pd["root_disk"]["name"] == "/dev/vda");
    let e = s
        .client
        .continue_inspection(data(A, INVENTORY))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("not waiting"), "{e:?}");

    // A failing inventory ends the inspection FAILED, answered OK.
    s.client.start_inspection(start(A, "agent")).await.unwrap();
    let r = s
        .client
        .continue_inspection(data(A, r#"{"interfaces": []}"#))
        .await
        .unwrap()
        .into_inner();
    let i = r.inspection.unwrap();
    assert_eq!(i.state(), pb::InspectionState::Failed);
    assert!(
        i.error.contains("no valid network interfaces"),
        "{}",
        i.error
    );
    assert!(r.add_ports.is_empty());
}

/// Data for an `inspector` inspection is not the agent's to process.
#[tokio::test]
async fn agent_data_for_an_inspector_inspection_is_refused() {
    let mut s = serve(true, 16).await;
    s.client
        .start_inspection(start(A, INSPECTOR))
        .await
        .unwrap();
    let e = s
        .client
        .continue_inspection(data(A, INVENTORY))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("not \"agent\""), "{e:?}");
    assert_eq!(
        s.inspections.get(A).unwrap().state(),
        pb::InspectionState::Waiting
    );
}
