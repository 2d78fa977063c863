//! `console_svc::run` with etcd, against the rig's real etcd: when `run`
//! returns, this replica's lease is revoked (its `members/` key and every
//! other key bound to it are gone at once, not a TTL later), and with etcd
//! unreachable `run` still returns within a bound.
//!
//! Each test runs the service on a runtime of its own and drops that runtime
//! as soon as `run` returns, as `main` does: a revoke still in flight on a
//! task of its own would be cut off there, so only a revoke `run` awaited
//! counts. Runs only when `PORTHOLE_RIG_JSON` names the rig's `rig.json`.

mod common;

use console_svc::config::Layered as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use console_svc::config::Config;
use etcd_client::{Client, GetOptions};
use tokio_util::sync::CancellationToken;

/// Far longer than the tests: a key still there after `run` is one whose
/// lease was not revoked, not one that has not expired yet.
const LEASE_TTL: &str = "60s";

/// What `run` may take to stop with etcd unreachable: the revoke's own
/// bound (2 s), the drain's leave (2 s) and the rest of the shutdown.
const UNREACHABLE_BOUND: Duration = Duration::from_secs(6);

/// A TCP relay to etcd that can stall: from then on it holds every
/// connection open and forwards nothing (an etcd that stopped answering,
/// not one that refuses: that fails fast and proves no bound).
struct Stall {
    addr: String,
    stalled: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Stall {
    async fn start(upstream: &str) -> Self {
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let stalled = Arc::new(tokio::sync::watch::channel(false).0);
        let flag = stalled.clone();
        tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                let (up, mut stall) = (upstream.clone(), flag.subscribe());
                tokio::spawn(async move {
                    let Ok(mut up) = tokio::net::TcpStream::connect(up).await else {
                        return;
                    };
                    if !*stall.borrow() {
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut down, &mut up) => return,
                            _ = stall.wait_for(|s| *s) => {}
                        }
                    }
                    // Held open, silent, until the relay's runtime goes.
                    std::future::pending::<()>().await;
                    drop((down, up));
                });
            }
        });
        Self { addr, stalled }
    }

    fn stall(&self) {
        self.stalled.send_replace(true);
    }
}

struct Service {
    prefix: String,
    replica: String,
    config: Config,
    _scratch: tempfile::TempDir,
}

fn service(endpoint: &str, test: &str) -> Service {
    let scratch = tempfile::Builder::new()
        .prefix("porthole-run-shutdown-")
        .tempdir()
        .unwrap();
    let key = scratch.path().join("etcd.key");
    std::fs::write(&key, "ab".repeat(32)).unwrap();
    let prefix = format!("/porthole-test/{test}-{}/", std::process::id());
    let replica = format!("replica-{test}");
    let base = 19700 + 20 * (std::process::id() % 10) as u16;
    let env = [
        ("ETCD_ENDPOINTS", endpoint.to_owned()),
        ("ETCD_PREFIX", prefix.clone()),
        ("ETCD_LEASE_TTL", LEASE_TTL.to_owned()),
        ("ETCD_SECRET_KEY_FILE", key.display().to_string()),
        ("SERVICE_REPLICA_ID", replica.clone()),
        ("CONSOLE_PORT_RANGE", format!("{base}:{}", base + 10)),
        (
            "CONSOLE_TERMINAL_PID_DIR",
            scratch.path().join("pids").display().to_string(),
        ),
    ];
    let env = env
        .into_iter()
        .map(|(k, v)| (format!("PORTHOLE_CONSOLE_SVC_{k}"), v));
    let config = Config::load(None, env.collect::<Vec<_>>(), &[]).expect("config");
    Service {
        prefix,
        replica,
        config,
        _scratch: scratch,
    }
}

/// The lease of `members/<replica>` once the replica registered (10 s at most).
async fn registered(etcd: &mut Client, key: &str) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = etcd.get(key, None).await.unwrap();
        if let Some(kv) = got.kvs().first() {
            return kv.lease();
        }
        assert!(Instant::now() < deadline, "{key} never appeared");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Run the service on a runtime of its own until `stop` fires (called once
/// the replica registered, on the test's runtime), drop that runtime, and
/// return how long `run` took from `stop` to its return.
fn run_until(svc: Service, stop: impl FnOnce(CancellationToken) + Send + 'static) -> Duration {
    let shutdown = CancellationToken::new();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let token = shutdown.clone();
    std::thread::spawn(move || {
        stop(token);
        tx.send(Instant::now()).unwrap();
    });
    rt.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(60),
            console_svc::run(listener, svc.config, shutdown),
        )
        .await
        .expect("run returns")
        .expect("run succeeds")
    });
    let returned = Instant::now();
    drop(rt);
    returned - rx.recv().unwrap()
}

fn test_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn when_run_returns_the_lease_and_its_keys_are_gone() {
    let Some(ep) = common::rig_etcd_endpoint("run_shutdown") else {
        return;
    };
    common::init_tracing();
    let svc = service(&ep, "revoked");
    let (prefix, member) = (
        svc.prefix.clone(),
        format!("{}members/{}", svc.prefix, svc.replica),
    );
    let ep2 = ep.clone();
    let lease = std::sync::Arc::new(std::sync::Mutex::new(0));
    let seen = lease.clone();
    let took = run_until(svc, move |shutdown| {
        test_runtime().block_on(async {
            let mut etcd = Client::connect([ep2], None).await.unwrap();
            *seen.lock().unwrap() = registered(&mut etcd, &member).await;
        });
        shutdown.cancel();
    });
    let lease = *lease.lock().unwrap();
    test_runtime().block_on(async {
        let mut etcd = Client::connect([ep], None).await.unwrap();
        let left = etcd
            .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        let left: Vec<String> = left
            .kvs()
            .iter()
            .filter(|kv| kv.lease() == lease)
            .map(|kv| kv.key_str().unwrap_or("?").to_owned())
            .collect();
        assert!(left.is_empty(), "keys of lease {lease} left: {left:?}");
        let ttl = etcd.lease_time_to_live(lease, None).await.unwrap();
        assert_eq!(ttl.ttl(), -1, "lease {lease} still granted");
    });
    assert!(took < Duration::from_secs(5), "run took {took:?} to stop");
}

#[test]
fn with_etcd_unreachable_run_still_returns_within_the_bound() {
    let Some(ep) = common::rig_etcd_endpoint("run_shutdown") else {
        return;
    };
    common::init_tracing();
    let relay_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let relay = Arc::new(relay_rt.block_on(Stall::start(&ep)));
    let svc = service(&relay.addr, "unreachable");
    let member = format!("{}members/{}", svc.prefix, svc.replica);
    let stall = relay.clone();
    let took = run_until(svc, move |shutdown| {
        test_runtime().block_on(async {
            let mut etcd = Client::connect([ep], None).await.unwrap();
            registered(&mut etcd, &member).await;
        });
        stall.stall();
        shutdown.cancel();
    });
    assert!(
        took < UNREACHABLE_BOUND,
        "run took {took:?} to stop with etcd unreachable"
    );
    // It waited for etcd, up to its bounds, rather than not at all.
    assert!(took >= Duration::from_secs(2), "run took only {took:?}");
    drop(relay_rt);
}
