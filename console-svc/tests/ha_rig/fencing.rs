//! Fencing: a replica cut off from etcd stops before another starts its
//! console; with etcd gone for everyone nobody serves, and service returns
//! with etcd (both backends); a console nobody can serve ends Enable with
//! DEADLINE_EXCEEDED.

use std::time::{Duration, Instant};

use crate::replicas::{enable_request, Cluster};
use crate::support::{
    enable, listening, options, options_for, rig, served_elsewhere, still_nobody_listens_after,
    until_nobody_listens, Checker, TTL,
};

crate::both_backends!(
    a_replica_cut_off_from_etcd_stops_before_another_starts_its_console,
    without_etcd_nobody_serves_and_service_returns_with_it
);

/// The owner loses etcd (its own proxy cut) while its viewers can still reach
/// it: it stops listening before any other replica starts the console.
async fn a_replica_cut_off_from_etcd_stops_before_another_starts_its_console(
    backend: &'static str,
) {
    let Some(rig) = rig() else { return };
    let _bmc = rig.lease_bmc(0).await;
    let opts = options_for(backend);
    let (proxies, cluster) =
        Cluster::start_behind_proxies(&rig, &format!("cut-{backend}"), &opts, 2).await;
    let mut c0 = cluster.client(0).await;
    let con = enable(&mut c0, &rig).await;
    let checker = Checker::start(con.port as u16);
    let owner = cluster.owner_of(&con);
    let old = cluster.replicas[owner].ip.clone();
    let port = con.port as u16;

    cluster.set_etcd_open(&proxies[owner], owner, false);
    let cut_at = Instant::now();
    let mut stopped = None;
    let mut started = None;
    while started.is_none() {
        let l = listening(port);
        if stopped.is_none() && !l.iter().any(|a| a.starts_with(&old)) {
            stopped = Some(cut_at.elapsed());
        }
        if l.iter().any(|a| !a.starts_with(&old)) {
            started = Some(cut_at.elapsed());
        }
        assert!(cut_at.elapsed() < TTL * 3, "no takeover after the cut");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (stopped, started) = (stopped.expect("the cut replica stopped"), started.unwrap());
    eprintln!("cut: owner stopped after {stopped:?}, survivor listening after {started:?}");
    assert!(stopped < TTL && stopped < started);
    checker.finish().await;
}

/// A console no replica can start (its port is taken on every address)
/// ends Enable with DEADLINE_EXCEEDED and the state it is in.
#[tokio::test]
async fn enable_that_nobody_can_serve_is_deadline_exceeded() {
    let Some(rig) = rig() else { return };
    let cluster = Cluster::start(&rig, "deadline", &options(), 2);
    let squat = cluster.ports.start + 5;
    let _squatter = std::net::TcpListener::bind(("0.0.0.0", squat)).unwrap();
    let mut c0 = cluster.client(0).await;
    let mut req = enable_request(&rig, 0, "ha-nowhere");
    req.port = squat.into();
    let started = Instant::now();
    let err = c0.enable_console(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err}");
    assert!(err.message().contains("ha-nowhere"), "{}", err.message());
    assert!(started.elapsed() < Duration::from_secs(8));
}

/// etcd gone for every replica (all proxies cut, as if every member
/// stopped): each replica stops serving within the TTL; when etcd is back
/// the console is served again without a restart.
async fn without_etcd_nobody_serves_and_service_returns_with_it(backend: &'static str) {
    let Some(rig) = rig() else { return };
    let _bmc = rig.lease_bmc(0).await;
    let opts = options_for(backend);
    let (proxies, cluster) =
        Cluster::start_behind_proxies(&rig, &format!("alldown-{backend}"), &opts, 2).await;
    let mut c0 = cluster.client(0).await;
    let con = enable(&mut c0, &rig).await;
    let checker = Checker::start(con.port as u16);
    let port = con.port as u16;

    for (i, p) in proxies.iter().enumerate() {
        cluster.set_etcd_open(p, i, false);
    }
    let cut_at = Instant::now();
    until_nobody_listens(port, cut_at, TTL).await;
    eprintln!("all cut: nobody listens after {:?}", cut_at.elapsed());
    let quiet = TTL + Duration::from_secs(1);
    still_nobody_listens_after(port, quiet, "nobody serves while etcd is gone").await;

    for (i, p) in proxies.iter().enumerate() {
        cluster.set_etcd_open(p, i, true);
    }
    let back_at = Instant::now();
    let mut any = cluster.client(1).await;
    let again = served_elsewhere(&mut any, "", Duration::from_secs(15)).await;
    eprintln!(
        "etcd back: served by {} after {:?}",
        again.owner,
        back_at.elapsed()
    );
    assert_eq!(again.port, con.port);
    checker.finish().await;
}
