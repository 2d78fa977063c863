//! grpc.health.v1 of one replica on the rig's etcd, reached through a TCP
//! proxy the test can cut: the overall service `""` (what a Kubernetes gRPC
//! probe without a service name asks) follows
//! `porthole.console.v1.ConsoleService` — NOT_SERVING while the replica is
//! fenced (etcd cut), SERVING again once etcd is back, NOT_SERVING for good
//! once drained.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use porthole_proto::console::v1 as pb;
use porthole_tests::svc::{health_at, SERVICE_NAME};
use porthole_tests::{rig_or_skip, Backend, ConsoleSvc, SvcOptions};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tonic_health::pb::health_check_response::ServingStatus;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overall_health_follows_the_console_service_when_fenced_and_drained() {
    porthole_tests::run(body()).await
}

async fn body() -> Result<()> {
    let _rig = rig_or_skip!();
    let rig_json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        std::env::var("PORTHOLE_RIG_JSON")?,
    )?)?;
    let etcd = rig_json["etcd"]["endpoints"][0]
        .as_str()
        .context("rig.json: etcd.endpoints")?
        .trim_start_matches("http://")
        .to_owned();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let proxy_addr = listener.local_addr()?;
    let mut proxy = Proxy::start(listener, etcd.clone());

    let key_dir = tempfile::Builder::new()
        .prefix("porthole-health-")
        .tempdir()?;
    let key_file = key_dir.path().join("etcd.key");
    std::fs::write(&key_file, "ef".repeat(32))?;
    let prefix = format!("/porthole-test/health-{}/", std::process::id());
    let opts = SvcOptions::new(Backend::Native)
        .set("etcd", "endpoints", &format!("[\"http://{proxy_addr}\"]"))
        .set("etcd", "prefix", &format!("{prefix:?}"))
        .set(
            "etcd",
            "secret_key_file",
            &format!("{:?}", key_file.display().to_string()),
        )
        .set("etcd", "lease_ttl", "\"2s\"");
    let svc = ConsoleSvc::start_with(opts).await?;
    becomes(&svc, ServingStatus::Serving, "started").await?;

    proxy.cut();
    becomes(&svc, ServingStatus::NotServing, "etcd cut (fenced)").await?;

    let listener = TcpListener::bind(proxy_addr).await?;
    proxy = Proxy::start(listener, etcd);
    becomes(&svc, ServingStatus::Serving, "etcd back").await?;

    svc.client()
        .await?
        .drain_replica(pb::DrainReplicaRequest {})
        .await?;
    becomes(&svc, ServingStatus::NotServing, "drained").await?;
    drop(proxy);
    Ok(())
}

/// Both `""` and the console service report `want` within 15 s (a fence
/// takes up to the lease TTL; coming back, a new lease).
async fn becomes(svc: &ConsoleSvc, want: ServingStatus, when: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let overall = health_at(svc.endpoint()?, "").await?;
        let named = health_at(svc.endpoint()?, SERVICE_NAME).await?;
        if overall == want && named == want {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{when}: \"\" is {overall:?} and {SERVICE_NAME} {named:?}, not {want:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A TCP proxy to etcd; [`Proxy::cut`] (or drop) closes its listener and
/// every connection through it.
struct Proxy {
    task: JoinHandle<()>,
}

impl Proxy {
    fn start(listener: TcpListener, upstream: String) -> Self {
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((mut down, _)) = listener.accept().await {
                let upstream = upstream.clone();
                conns.spawn(async move {
                    if let Ok(mut up) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
            }
        });
        Self { task }
    }

    fn cut(&mut self) {
        // Aborting the task drops the listener and the JoinSet, which
        // aborts (and closes) every connection.
        self.task.abort();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
