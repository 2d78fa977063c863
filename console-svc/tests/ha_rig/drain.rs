//! `console-svc drain`: the owner hands its consoles over without stopping,
//! WatchConsoles elsewhere sees the move, and Disable through the drained
//! replica still stops the console on its new owner.

use std::process::Command;
use std::time::{Duration, Instant};

use porthole_proto::console::v1 as pb;

use crate::replicas::{get, Cluster};
use crate::support::{enable, list, listening, options_for, rig, served_elsewhere, Checker, NODE};

crate::both_backends!(drain_hands_consoles_over_and_watch_shows_it);

/// `console-svc drain` empties the owner without stopping it; a WatchConsoles
/// stream on the other replica sees the console move.
async fn drain_hands_consoles_over_and_watch_shows_it(backend: &'static str) {
    let Some(rig) = rig() else { return };
    let _bmc = rig.lease_bmc(0).await;
    let cluster = Cluster::start(&rig, &format!("drain-{backend}"), &options_for(backend), 2);
    let mut c0 = cluster.client(0).await;
    let con = enable(&mut c0, &rig).await;
    let checker = Checker::start(con.port as u16);
    let owner = cluster.owner_of(&con);
    let mut other = cluster.client(1 - owner).await;
    let mut watch = other
        .watch_consoles(pb::WatchConsolesRequest {})
        .await
        .unwrap()
        .into_inner();

    let out = Command::new(env!("CARGO_BIN_EXE_console-svc"))
        .args([
            "drain",
            "--server",
            &format!("http://{}", cluster.replicas[owner].grpc),
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("released 1"), "{said}");
    let moved = served_elsewhere(&mut other, &con.owner, Duration::from_secs(2)).await;
    assert_eq!(moved.port, con.port);

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ev = tokio::time::timeout_at(deadline.into(), watch.message())
            .await
            .expect("watch saw the move")
            .unwrap()
            .expect("stream open");
        let c = ev.console.unwrap_or_default();
        if c.owner == moved.owner && c.state == pb::ConsoleState::Running as i32 {
            break;
        }
    }
    // The drained replica does not take it back; Get agrees on both.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut drained = cluster.client(owner).await;
    let on_drained = get(&mut drained, NODE).await.unwrap();
    let on_other = get(&mut other, NODE).await.unwrap();
    assert_eq!(
        (on_drained.owner.as_str(), on_drained.url.as_str()),
        (moved.owner.as_str(), moved.url.as_str())
    );
    assert_eq!(on_other.owner, moved.owner);

    // Disable through the drained replica stops it on the owner.
    let off = drained
        .disable_console(pb::DisableConsoleRequest {
            node_id: "ha-node".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(off.state, pb::ConsoleState::Disabled as i32, "{off:?}");
    assert!(
        listening(con.port as u16).is_empty(),
        "port closed everywhere"
    );
    let consoles = list(&mut other).await;
    assert_eq!(consoles[0].state, pb::ConsoleState::Disabled as i32);
    checker.finish().await;
}
