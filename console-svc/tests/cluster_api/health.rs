//! grpc.health.v1 after DrainReplica: the drained replica reports
//! NOT_SERVING for the console service (and keeps answering calls); the
//! others stay SERVING.

use porthole_proto::console::v1 as pb;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::replicas::Cluster;
use crate::support::{options, rig};

#[tokio::test]
async fn a_drained_replica_is_not_serving_but_answers() {
    let Some(rig) = rig() else { return };
    let cluster = Cluster::start(&rig, "health", &options(), 2);
    cluster.until_health(0, ServingStatus::Serving).await;
    cluster.until_health(1, ServingStatus::Serving).await;

    let mut c1 = cluster.client(1).await;
    let drained = c1
        .drain_replica(pb::DrainReplicaRequest {})
        .await
        .expect("drain")
        .into_inner();
    assert_eq!(drained.replica, "replica-1");
    assert_eq!(cluster.health(1).await, ServingStatus::NotServing);
    // Still NOT_SERVING a while later (the lease is still renewed).
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    assert_eq!(cluster.health(1).await, ServingStatus::NotServing);
    assert_eq!(cluster.health(0).await, ServingStatus::Serving);
    c1.list_consoles(pb::ListConsolesRequest::default())
        .await
        .expect("a drained replica still answers");
}
