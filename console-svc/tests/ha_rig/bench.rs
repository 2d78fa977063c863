//! Benchmark (ignored, run by hand): takeover time for many idle consoles
//! after kill -9 of the busiest replica, and etcd requests per second at
//! steady state. It prints its results on stdout, as it always has.

use std::time::{Duration, Instant};

use porthole_proto::console::v1 as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::replicas::{enable_request, Cluster, Options, Ports};
use crate::support::{accepts, list, options, rig, NODE, TTL};

/// Benchmark (printed, not asserted): takeover time for many idle consoles
/// and etcd requests per second at steady state. Consoles point at an
/// unreachable BMC: the native backend touches it only when a viewer comes.
///
/// ```sh
/// HA_BENCH_CONSOLES=1000 PORTHOLE_RIG_JSON=/tmp/rigrun/rig.json \
///     cargo test -p console-svc --test ha_rig bench -- --ignored --nocapture
/// ```
#[tokio::test]
#[ignore = "benchmark; run by hand"]
async fn bench_takeover_and_steady_state_etcd_rate() {
    use futures::StreamExt;
    let Some(rig) = rig() else { return };
    let n: usize = std::env::var("HA_BENCH_CONSOLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    // Healthy consoles (the rig's BMC answers each one's probe) unless
    // HA_BENCH_UNREACHABLE is set: then every console is FAILED and its
    // supervisor retries the BMC with backoff, which shows in the etcd rate.
    let unreachable = std::env::var_os("HA_BENCH_UNREACHABLE").is_some();
    let ttl = std::env::var("HA_BENCH_TTL_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(TTL, Duration::from_secs);
    let opts = Options {
        ttl,
        ports: Ports::Fixed(38000, 39100),
        ..options()
    };
    let mut cluster = Cluster::start(&rig, "bench", &opts, 3);
    let c0 = cluster.client(0).await;
    let t = Instant::now();
    let template = enable_request(&rig, 0, NODE);
    let enables = futures::stream::iter(0..n).map(|i| {
        let mut c = c0.clone();
        let mut req = template.clone();
        async move {
            req.node_id = format!("bench-{i}");
            if unreachable {
                req.ipmi.as_mut().unwrap().address = "127.0.0.1".into();
                req.ipmi.as_mut().unwrap().port = 9;
            }
            c.enable_console(req).await.map(|_| ())
        }
    });
    let failed = enables
        .buffer_unordered(32)
        .filter(|r| futures::future::ready(r.is_err()))
        .count()
        .await;
    println!(
        "enabled {n} consoles in {:?} ({failed} failed; BMC {})",
        t.elapsed(),
        if unreachable {
            "unreachable"
        } else {
            "the rig's"
        }
    );

    let (rpcs, messages) = etcd_requests(&rig.etcd).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (rpcs_after, messages_after) = etcd_requests(&rig.etcd).await;
    println!(
        "steady state: {:.1} etcd RPCs/s completed, {:.1} request messages/s received \
         (stream messages such as keep-alives included; the whole rig etcd)",
        (rpcs_after - rpcs) / 10.0,
        (messages_after - messages) / 10.0
    );

    let mut any = cluster.client(1).await;
    let consoles = list(&mut any).await;
    let victim = (0..3)
        .max_by_key(|i| {
            consoles
                .iter()
                .filter(|c| c.owner == cluster.replicas[*i].id)
                .count()
        })
        .unwrap();
    let victim_id = cluster.replicas[victim].id.clone();
    let moving = consoles.iter().filter(|c| c.owner == victim_id).count();
    let mut survivor = cluster.client((victim + 1) % 3).await;
    let killed = Instant::now();
    let mut list_errors = 0;
    cluster.kill_9(victim);
    loop {
        // A survivor busy with the takeover may time out a ListConsoles:
        // count it and ask again.
        let all = match pb::list_all(&mut survivor, 0).await {
            Ok(all) => all,
            Err(e) => {
                assert!(killed.elapsed() < Duration::from_secs(120), "{e}");
                list_errors += 1;
                eprintln!("ListConsoles during the takeover: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let moved = all
            .iter()
            // RUNNING, or FAILED with the port open (the BMC is unreachable).
            .filter(|c| c.owner != victim_id && c.port != 0 && !c.url.is_empty())
            .count();
        if moved == n {
            let mut accepting = 0;
            for c in &all {
                accepting += usize::from(accepts(c).await);
            }
            if accepting == n {
                break;
            }
        }
        assert!(
            killed.elapsed() < Duration::from_secs(120),
            "takeover incomplete: {moved}/{n}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "kill -9 of {victim_id} ({moving} of {n} consoles): every console accepting on a survivor after {:?} (TTL {ttl:?}; {list_errors} ListConsoles errors meanwhile)",
        killed.elapsed()
    );
}

/// Sum of etcd's `grpc_server_handled_total` (every finished gRPC call).
/// etcd's own counters: (RPCs completed, request messages received). A
/// keep-alive or watch stream is one RPC carrying many messages.
async fn etcd_requests(endpoint: &str) -> (f64, f64) {
    let addr = endpoint.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    let sum = |metric: &str| -> f64 {
        body.lines()
            .filter(|l| l.starts_with(metric))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    (
        sum("grpc_server_handled_total{"),
        sum("grpc_server_msg_received_total{"),
    )
}
