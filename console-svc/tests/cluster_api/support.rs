//! What the cluster API scenarios build on besides [`crate::replicas`]:
//! their replica options (127.0.0.12 and up, TTL 3 s, claim step 300 ms),
//! GetConsoleLog and a polling wait.

use std::time::{Duration, Instant};

use porthole_proto::console::v1 as pb;

use crate::replicas::{Client, Options, Ports, Rig};

pub fn rig() -> Option<Rig> {
    Rig::load("cluster_api")
}

/// Replicas on 127.0.0.12 and up, twenty console ports leased free, the
/// native backend, lease TTL 3 s.
pub fn options() -> Options {
    Options {
        ports: Ports::Free(20),
        backend: "native",
        ttl: Duration::from_secs(3),
        claim_step: Duration::from_millis(300),
        enable_timeout: Duration::from_secs(8),
        first_ip: 12,
        etcd_tag: "capi-",
        dir_tag: "capi-",
    }
}

pub async fn log(c: &mut Client, node: &str) -> Result<pb::GetConsoleLogResponse, tonic::Status> {
    let req = pb::GetConsoleLogRequest {
        node_id: node.into(),
        max_bytes: 0,
    };
    c.get_console_log(req).await.map(|r| r.into_inner())
}

/// Poll `done` every 50 ms until it holds; fail with `why` after `within`.
pub async fn until(within: Duration, why: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{why} (waited {within:?})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
