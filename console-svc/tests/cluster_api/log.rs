//! GetConsoleLog on every replica: the owner answers from its log ring, any
//! other replica forwards to the owner; an owner that does not answer is
//! UNAVAILABLE with its name, quickly.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use porthole_proto::console::v1 as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::replicas::{enable_request, get, Cluster, Options, Rig};
use crate::support::{log, options, rig};

const MARKER: &str = "capi-log-marker";

#[tokio::test]
async fn every_replica_answers_get_console_log() {
    let Some(rig) = rig() else { return };
    let _bmc = rig.lease_bmc(0).await;
    let opts = Options {
        ttl: Duration::from_secs(10),
        ..options()
    };
    let cluster = Cluster::start(&rig, "log", &opts, 2);
    let mut c0 = cluster.client(0).await;
    let con = c0
        .enable_console(enable_request(&rig, 0, "capi-log"))
        .await
        .expect("enable")
        .into_inner();
    let owner = cluster.owner_of(&con);
    let other = 1 - owner;
    node_prints(&rig, &con).await;

    let mut at_owner = cluster.client(owner).await;
    let mine = log(&mut at_owner, "capi-log").await.expect("owner's log");
    assert!(text(&mine).contains(MARKER), "{:?}", text(&mine));
    let mut elsewhere = cluster.client(other).await;
    let theirs = log(&mut elsewhere, "capi-log")
        .await
        .expect("GetConsoleLog on the replica that does not own the console");
    assert!(text(&theirs).contains(MARKER), "{:?}", text(&theirs));

    let unknown = log(&mut elsewhere, "capi-nobody").await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown:?}");

    // The owner stops answering (its lease outlives this).
    cluster.signal(owner, Signal::SIGSTOP);
    let asked = Instant::now();
    let err = log(&mut elsewhere, "capi-log").await.unwrap_err();
    let took = asked.elapsed();
    cluster.signal(owner, Signal::SIGCONT);
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().contains(&con.owner), "{err:?}");
    assert!(took < Duration::from_secs(4), "took {took:?}");
    assert_eq!(
        get(&mut c0, "capi-log").await.expect("get").owner,
        con.owner
    );
}

fn text(log: &pb::GetConsoleLogResponse) -> String {
    String::from_utf8_lossy(&log.data).into_owned()
}

/// A viewer on the console (so the SOL session runs) and the node printing
/// [`MARKER`] until the viewer has seen it.
async fn node_prints(rig: &Rig, con: &pb::Console) {
    let hc = &rig.bmc(0)["host_console"];
    let node_addr = format!(
        "{}:{}",
        hc["host"].as_str().unwrap(),
        hc["port"].as_u64().unwrap()
    );
    let mut node = TcpStream::connect(node_addr).await.expect("host console");
    let mut viewer = TcpStream::connect((con.host.as_str(), con.port as u16))
        .await
        .expect("console port");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        node.write_all(format!("\r\n{MARKER}\r\n").as_bytes())
            .await
            .unwrap();
        let mut buf = [0u8; 4096];
        let read = tokio::time::timeout(Duration::from_millis(500), viewer.read(&mut buf));
        if let Ok(Ok(n)) = read.await {
            seen.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&seen).contains(MARKER) {
                return;
            }
        }
    }
    panic!(
        "the node's output never reached the viewer: {:?}",
        String::from_utf8_lossy(&seen)
    );
}
