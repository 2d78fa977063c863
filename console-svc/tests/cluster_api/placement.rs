//! A replica that lost etcd and rejoins claims consoles in rank order, like
//! any replica: it does not restart what it ran before ahead of a replica
//! that placement ranks higher.
//!
//! ```text
//!  members: ghost (never claims) > replica-1 > replica-0 for the node
//!  replica-0 owns the console (it was alone when it was enabled)
//!  replica-0 cut off ─▶ its lease expires, the console is unowned ─▶ replica-0 back at once
//!  replica-1 (rank 1) claims after 1 × claim_step; replica-0 (rank 2) would after 2 ×
//! ```

use std::time::{Duration, Instant};

use console_svc::cluster::placement::rank;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::replicas::{enable_request, get, Cluster, Options};
use crate::support::{options, rig, until};

const GHOST: &str = r#"{"replica":"ghost","host":"127.0.0.99","grpc":"127.0.0.99:9"}"#;

#[tokio::test]
async fn a_rejoining_replica_claims_in_rank_order() {
    let Some(rig) = rig() else { return };
    let _bmc = rig.lease_bmc(1).await;
    let opts = Options {
        claim_step: Duration::from_secs(10),
        ..options()
    };
    let (proxies, cluster) = Cluster::start_behind_proxies(&rig, "rank", &opts, 2).await;
    let node = node_ranked(["ghost", "replica-1", "replica-0"]);
    let owner_key = format!("consoles/{node}/owner");
    cluster.until_health(0, ServingStatus::Serving).await;
    cluster.until_health(1, ServingStatus::Serving).await;

    // replica-1 away: replica-0, the only member, claims the console.
    cluster.set_etcd_open(&proxies[1], 1, false);
    let gone = || cluster.etcd_get("members/replica-1").is_none();
    until(Duration::from_secs(15), "replica-1 never left", gone).await;
    let mut c0 = cluster.client(0).await;
    let con = c0
        .enable_console(enable_request(&rig, 1, &node))
        .await
        .expect("enable")
        .into_inner();
    assert_eq!(con.owner, "replica-0");
    cluster.set_etcd_open(&proxies[1], 1, true);
    let back = || cluster.etcd_get("members/replica-1").is_some();
    until(Duration::from_secs(15), "replica-1 never came back", back).await;
    assert_eq!(
        get(&mut c0, &node).await.expect("get").owner,
        "replica-0",
        "sticky"
    );

    // A better-placed member that never claims.
    cluster.etcd_put("members/ghost", GHOST);
    cluster.set_etcd_open(&proxies[0], 0, false);
    let unowned = || cluster.etcd_get(&owner_key).is_none();
    until(
        Duration::from_secs(15),
        "replica-0's claim never expired",
        unowned,
    )
    .await;
    cluster.set_etcd_open(&proxies[0], 0, true);
    let since = Instant::now();
    let mut rejoined = None;
    let owner = loop {
        if rejoined.is_none() && cluster.etcd_get("members/replica-0").is_some() {
            rejoined = Some(since.elapsed());
        }
        if let Some(owner) = cluster.etcd_get(&owner_key) {
            break owner;
        }
        assert!(since.elapsed() < Duration::from_secs(40), "nobody claimed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let claimed = since.elapsed();
    let rejoined = rejoined.expect("replica-0 rejoins before anyone claims (else no test)");
    eprintln!("replica-0 rejoined after {rejoined:?}; {owner} claimed after {claimed:?}");
    assert_eq!(owner, "replica-1", "replica-0 claimed ahead of its rank");
    assert!(
        claimed + Duration::from_secs(1) >= opts.claim_step,
        "{claimed:?}"
    );
}

/// A node name whose placement order over `members` is as given.
fn node_ranked(members: [&str; 3]) -> String {
    (0..10_000)
        .map(|i| format!("capi-rank-{i}"))
        .find(|node| rank(node, members) == members)
        .expect("some node ranks so")
}
