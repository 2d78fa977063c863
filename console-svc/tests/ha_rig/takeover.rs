//! Takeover when the owner goes: kill -9 (a survivor serves on the same
//! port within the TTL and typing reaches the node) and SIGTERM (the owner
//! hands over with a gap under a second), on both backends.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::replicas::{get, Cluster};
use crate::support::{
    enable, enable_running, list, options_for, rig, served_elsewhere, typing_reaches_the_node,
    until_let_go, Checker, NODE, TTL,
};

crate::both_backends!(
    kill_9_of_the_owner_moves_the_console_to_a_survivor_on_the_same_port,
    sigterm_of_the_owner_hands_over_within_a_second
);

async fn kill_9_of_the_owner_moves_the_console_to_a_survivor_on_the_same_port(
    backend: &'static str,
) {
    let Some(rig) = rig() else { return };
    let _bmc = rig.lease_bmc(0).await;
    let mut cluster = Cluster::start(&rig, &format!("kill9-{backend}"), &options_for(backend), 3);
    let mut c0 = cluster.client(0).await;
    let con = enable_running(&mut c0, &rig).await;
    let checker = Checker::start(con.port as u16);

    // Any replica answers Get/List consistently.
    for i in 1..3 {
        let mut c = cluster.client(i).await;
        let other = get(&mut c, NODE).await.expect("get on another replica");
        assert_eq!(
            (other.owner.as_str(), other.port, other.url.as_str()),
            (con.owner.as_str(), con.port, con.url.as_str())
        );
        assert_eq!(list(&mut c).await.len(), 1);
    }
    let dump = cluster.etcd_dump();
    let password = std::fs::read_to_string(rig.bmc(0)["password_file"].as_str().unwrap()).unwrap();
    // The rig's password is "password", also a JSON key: look for it as a value.
    let clear = format!(":\"{}\"", password.trim_end());
    assert!(
        dump.contains("\"password\":\"sealed:v1:") && !dump.contains(&clear),
        "password in clear:\n{dump}"
    );

    let owner = cluster.owner_of(&con);
    let survivor = (owner + 1) % 3;
    let mut cs = cluster.client(survivor).await;
    let killed_at = Instant::now();
    cluster.kill_9(owner);
    let moved = served_elsewhere(&mut cs, &con.owner, TTL + Duration::from_secs(2)).await;
    eprintln!(
        "kill -9 → accepting on {} after {:?}",
        moved.owner,
        killed_at.elapsed()
    );
    assert_eq!(moved.port, con.port, "same port");
    assert_ne!(moved.host, con.host, "under the survivor's host");
    typing_reaches_the_node(&rig, &moved).await;
    checker.finish().await;
}

async fn sigterm_of_the_owner_hands_over_within_a_second(backend: &'static str) {
    let Some(rig) = rig() else { return };
    let _bmc = rig.lease_bmc(0).await;
    let mut cluster = Cluster::start(
        &rig,
        &format!("sigterm-{backend}"),
        &options_for(backend),
        2,
    );
    let mut c0 = cluster.client(0).await;
    let con = enable(&mut c0, &rig).await;
    let checker = Checker::start(con.port as u16);
    let owner = cluster.owner_of(&con);
    let mut cs = cluster.client(1 - owner).await;
    let port = con.port as u16;
    let old = cluster.replicas[owner].ip.clone();
    cluster.signal(owner, Signal::SIGTERM);
    // The gap: from the old listener closing to the new one accepting.
    until_let_go(port, &old, Duration::from_secs(10)).await;
    let closed_at = Instant::now();
    let moved = served_elsewhere(&mut cs, &con.owner, Duration::from_secs(5)).await;
    let gap = closed_at.elapsed();
    eprintln!("SIGTERM handover gap: {gap:?} (now on {})", moved.owner);
    assert!(gap < Duration::from_secs(1), "gap {gap:?}");
    assert_eq!(moved.port, con.port);
    cluster.exited(owner, Duration::from_secs(10)).await;
    checker.finish().await;
}
