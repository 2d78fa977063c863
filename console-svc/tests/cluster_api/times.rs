//! created_at / updated_at in cluster answers: when the spec was first
//! written and last changed, not when it was read; the same on every
//! replica, in Get and List alike.

use std::time::{Duration, SystemTime};

use porthole_proto::console::v1 as pb;

use crate::replicas::{enable_request, get, Client, Cluster};
use crate::support::{options, rig};

const NODE: &str = "capi-times";

#[tokio::test]
async fn created_and_updated_are_the_specs_own_times_on_every_replica() {
    let Some(rig) = rig() else { return };
    let _bmc = rig.lease_bmc(1).await;
    let cluster = Cluster::start(&rig, "times", &options(), 2);
    let (mut c0, mut c1) = (cluster.client(0).await, cluster.client(1).await);
    let before = SystemTime::now() - Duration::from_secs(1);
    let enabled = c0
        .enable_console(enable_request(&rig, 1, NODE))
        .await
        .expect("enable")
        .into_inner();
    let after = SystemTime::now() + Duration::from_secs(1);
    let first = times(&enabled);
    assert!(before <= first.0 && first.0 <= after, "{first:?}");
    assert_eq!(first.0, first.1, "never changed yet");

    tokio::time::sleep(Duration::from_millis(1100)).await;
    for c in [&mut c0, &mut c1] {
        assert_eq!(
            times(&get(c, NODE).await.expect("get")),
            first,
            "Get, any replica, later"
        );
        assert_eq!(listed(c).await, first, "List, any replica, later");
    }

    // A changed spec (another port) through the other replica.
    let mut changed = enable_request(&rig, 1, NODE);
    changed.port = enabled.port + 1;
    let moved = c1.enable_console(changed).await.expect("re-enable");
    let second = times(&moved.into_inner());
    assert_eq!(second.0, first.0, "created_at stays");
    assert!(second.1 > first.1 + Duration::from_secs(1), "{second:?}");
    for c in [&mut c0, &mut c1] {
        assert_eq!(times(&get(c, NODE).await.expect("get")), second);
    }
}

/// (created_at, updated_at); both must be set.
fn times(con: &pb::Console) -> (SystemTime, SystemTime) {
    let t = |ts: Option<prost_types::Timestamp>| {
        SystemTime::try_from(ts.expect("timestamp set")).expect("a time")
    };
    (t(con.created_at), t(con.updated_at))
}

async fn listed(c: &mut Client) -> (SystemTime, SystemTime) {
    let all = c
        .list_consoles(pb::ListConsolesRequest::default())
        .await
        .expect("list")
        .into_inner()
        .consoles;
    times(all.iter().find(|con| con.node_id == NODE).expect("listed"))
}
