//! PrepareRamdisk's time, split by step, for 1 node and for 20 nodes at
//! once, next to a peer measured in the same run: the same Redfish calls
//! made straight to sushy-tools with a plain HTTP client and a plain upload
//! straight to the store ([`peer`]), so the service's overhead shows as a
//! ratio. The deploy service runs in-process against sushy-tools with 20
//! emulated systems (porthole-tests' `peers::Sushy`: a running one named by
//! PORTHOLE_REDFISH_URL, or one started here where PORTHOLE_RIG_JSON is
//! set), once with the embedded store and once with the rig's Swift
//! (tempauth; skipped with a notice when Swift cannot be started). Each
//! node's deploy ISO (1 MiB) comes from an HTTP server on 127.0.0.1;
//! sushy downloads both media on every InsertMedia.
//!
//! `cargo bench -p deploy --bench prepare` (not run by CI or `cargo
//! test`). It prints a markdown report (machine, load, profile, tables) to
//! stdout: tests/bench-results/deploy-prepare.md is one such run.
//!
//! Steps as the response reports them (each step's own seconds): floppy
//! build; upload (store + temp URL); insert (both media, the BMC's
//! downloads included); power (boot once + power state + reset). "other":
//! the rest of the call (validation, the virtual-media check of both
//! devices, gRPC). There is no ISO step: the deploy ISO is inserted by its
//! URL, not copied.

#[path = "prepare/peer.rs"]
mod peer;
#[path = "prepare/report.rs"]
mod report;

use std::path::Path;
use std::time::{Duration, Instant};

use axum::routing::get;
use bytes::Bytes;
use deploy::config::{Backend, Config};
use peer::{Peer, PlainStore, Target};
use porthole_proto::deploy::v1::deploy_service_client::DeployServiceClient;
use porthole_proto::deploy::v1::{
    CleanUpRequest, DeployNode, PrepareRamdiskRequest, PrepareRamdiskResponse, RedfishAccess,
};
use porthole_tests::peers::{Sushy, Swift};
use report::{Samples, Table};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

const NODES: usize = 20;
/// One-node calls (one at a time) and 20-node rounds per store and side.
const SINGLE_CALLS: usize = 10;
const ROUNDS: usize = 5;

fn node(sushy: &Sushy, i: usize, iso: &str) -> DeployNode {
    DeployNode {
        uuid: format!("00000000-0000-4000-8000-{i:012}"),
        bmc: Some(RedfishAccess {
            address: sushy.url.clone(),
            system_id: Sushy::system(i),
            ..Default::default()
        }),
        deploy_iso: iso.into(),
        image_source: "http://images/user.qcow2".into(),
        port_addresses: vec![format!("52:54:00:00:00:{i:02x}")],
        ..Default::default()
    }
}

/// The media server: the deploy ISO, and the peer's floppy.
async fn media_server(floppy: Bytes) -> String {
    let iso: Vec<u8> = (0..1 << 20).map(|i| (i % 253) as u8).collect();
    let app = axum::Router::new()
        .route("/deploy.iso", get(move || async move { iso }))
        .route("/floppy.img", get(move || async move { floppy }));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    url
}

/// The service on `config` and a client to it.
async fn service(
    config: Config,
) -> (
    DeployServiceClient<Channel>,
    CancellationToken,
    tokio::task::JoinHandle<Result<(), deploy::RunError>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(deploy::run(listener, config, stop.clone()));
    let client = DeployServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    (client, stop, task)
}

/// `nodes` PrepareRamdisk calls at once; each one's answer (or error) and
/// duration.
async fn service_round(
    client: &DeployServiceClient<Channel>,
    nodes: &[DeployNode],
) -> (
    Vec<(Result<PrepareRamdiskResponse, String>, Duration)>,
    Duration,
) {
    let start = Instant::now();
    let calls = nodes.iter().cloned().map(|node| {
        let mut c = client.clone();
        async move {
            let t = Instant::now();
            let uuid = node.uuid.clone();
            let r = c
                .prepare_ramdisk(PrepareRamdiskRequest { node: Some(node) })
                .await
                .map(tonic::Response::into_inner)
                .map_err(|e| format!("node {uuid}: {}", e.message()));
            (r, t.elapsed())
        }
    });
    let done = futures::future::join_all(calls).await;
    let wall = start.elapsed();
    for node in nodes {
        let mut c = client.clone();
        c.clean_up(CleanUpRequest {
            node: Some(node.clone()),
        })
        .await
        .expect("CleanUp");
    }
    (done, wall)
}

/// What the peer needs for one store.
struct PeerSide {
    store: PlainStore,
    /// The floppy URL for node `i`.
    floppy_url: Box<dyn Fn(usize) -> String>,
}

async fn peer_round(
    peer: &Peer,
    side: &PeerSide,
    targets: &[Target],
    floppy: &Bytes,
    iso_url: &str,
) -> (Vec<peer::PeerTimes>, Duration) {
    let start = Instant::now();
    let calls = targets.iter().enumerate().map(|(i, t)| {
        let url = (side.floppy_url)(i);
        async move {
            peer.prepare(
                t,
                &side.store,
                &format!("peer-image-{i}"),
                floppy.clone(),
                &url,
                iso_url,
            )
            .await
        }
    });
    let done = futures::future::join_all(calls).await;
    let wall = start.elapsed();
    for t in targets {
        peer.eject(t).await;
    }
    (done, wall)
}

/// Both sides on one store: 1 node, then 20 at once, rounds alternating.
async fn measure(label: &str, config: Config, side: PeerSide, ctx: &Ctx) -> Vec<Table> {
    let (client, stop, task) = service(config).await;
    // Warm-up, untimed: connections, the store's token, container and key.
    let first = [node(&ctx.sushy, 0, &ctx.iso_url)];
    service_round(&client, &first).await;
    peer_round(
        &ctx.peer,
        &side,
        &ctx.targets[..1],
        &ctx.floppy,
        &ctx.iso_url,
    )
    .await;
    let mut tables = Vec::new();
    for (n, rounds) in [(1, SINGLE_CALLS), (NODES, ROUNDS)] {
        let nodes: Vec<DeployNode> = (0..n).map(|i| node(&ctx.sushy, i, &ctx.iso_url)).collect();
        let targets = &ctx.targets[..n];
        eprintln!("prepare bench: {label}, {n} node(s) at once, {rounds} rounds");
        let (mut svc, mut plain) = (Samples::default(), Samples::default());
        for _ in 0..rounds {
            let (done, wall) = service_round(&client, &nodes).await;
            for (r, d) in &done {
                let r = match r {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("prepare bench: PrepareRamdisk failed: {e}");
                        svc.failed(e);
                        continue;
                    }
                };
                svc.add(&[
                    r.floppy_build_seconds,
                    0.0,
                    r.upload_seconds,
                    r.insert_seconds,
                    r.power_seconds,
                    d.as_secs_f64()
                        - (r.floppy_build_seconds
                            + r.upload_seconds
                            + r.insert_seconds
                            + r.power_seconds),
                    d.as_secs_f64(),
                ]);
            }
            svc.wall(wall);
            let (done, wall) =
                peer_round(&ctx.peer, &side, targets, &ctx.floppy, &ctx.iso_url).await;
            for p in &done {
                plain.add(&[
                    f64::NAN,
                    f64::NAN,
                    p.upload,
                    p.insert,
                    p.power,
                    f64::NAN,
                    p.whole,
                ]);
            }
            plain.wall(wall);
        }
        tables.push(Table {
            title: format!(
                "{label}, {n} node{} at once ({} calls per side)",
                if n == 1 { "" } else { "s" },
                n * rounds
            ),
            service: svc,
            peer: plain,
        });
    }
    stop.cancel();
    task.await.unwrap().unwrap();
    tables
}

struct Ctx {
    sushy: Sushy,
    peer: Peer,
    targets: Vec<Target>,
    floppy: Bytes,
    iso_url: String,
    media_url: String,
}

fn base_config(dir: &Path) -> Config {
    let mut config = Config::default();
    config.conductor.api_url = Some("http://192.0.2.1:6385".into());
    config.store.http_listen = "127.0.0.1:0".parse().unwrap();
    config.store.http_dir = dir.join("objects");
    config
}

/// The Swift side: the service's config and the peer's plain store.
async fn swift_side(dir: &Path, config: &mut Config, peer: &Peer) -> PeerSide {
    let key = dir.join("swift-key");
    std::fs::write(&key, Swift::KEY).unwrap();
    let container = "ironic_ilo_container-bench".to_owned();
    config.store.backend = Backend::Swift;
    config.swift.auth_url = Some(Swift::AUTH_URL.into());
    config.swift.user = Some(Swift::USER.into());
    config.swift.key_file = Some(key);
    config.swift.container = container.clone();
    let auth = peer
        .http
        .get(Swift::AUTH_URL)
        .header("X-Auth-User", Swift::USER)
        .header("X-Auth-Key", Swift::KEY)
        .send()
        .await
        .unwrap();
    let h = |n: &str| auth.headers()[n].to_str().unwrap().to_owned();
    let (storage_url, token) = (h("x-storage-url"), h("x-auth-token"));
    let account = peer
        .http
        .head(&storage_url)
        .header("X-Auth-Token", &token)
        .send()
        .await
        .unwrap();
    let temp_key = account.headers()["x-account-meta-temp-url-key"]
        .to_str()
        .unwrap()
        .to_owned();
    peer.http
        .put(format!("{storage_url}/{container}"))
        .header("X-Auth-Token", &token)
        .send()
        .await
        .unwrap();
    let base = url::Url::parse(&storage_url).unwrap();
    let (origin, path) = (
        base.origin().ascii_serialization(),
        base.path().trim_end_matches('/').to_owned(),
    );
    let c = container.clone();
    PeerSide {
        store: PlainStore::Swift {
            storage_url,
            container,
            token,
        },
        floppy_url: Box::new(move |i| {
            let object = format!("{path}/{c}/peer-image-{i}");
            let expires = deploy::store::expires_at(Duration::from_secs(600));
            let sig = deploy::store::temp_url_sig(temp_key.as_bytes(), "GET", expires, &object);
            format!("{origin}{object}?temp_url_sig={sig}&temp_url_expires={expires}")
        }),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // The service's own logs, to stderr, where RUST_LOG asks for them.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let state = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/porthole-deploy-bench-sushy");
    let Some(sushy) = Sushy::get(&state, NODES) else {
        return;
    };
    let started = Instant::now();
    let load_before = report::loadavg();
    let params = vec![("deployment_id".to_owned(), "peer".to_owned())];
    let floppy = Bytes::from(
        deploy::image::vfat::build(&deploy::image::vfat::Floppy {
            parameters: &params,
            token: None,
            size_kib: deploy::image::vfat::DEFAULT_SIZE_KIB,
        })
        .unwrap(),
    );
    let media_url = media_server(floppy.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let peer = Peer {
        http: peer::client(Config::default().redfish.timeout),
        bmc: sushy.url.clone(),
    };
    let mut targets = Vec::new();
    for i in 0..NODES {
        targets.push(peer.target(&Sushy::system(i)).await);
    }
    let ctx = Ctx {
        iso_url: format!("{media_url}/deploy.iso"),
        sushy,
        peer,
        targets,
        floppy,
        media_url,
    };

    let peer_dir = dir.path().join("peer");
    std::fs::create_dir_all(&peer_dir).unwrap();
    let media = ctx.media_url.clone();
    let embedded = PeerSide {
        store: PlainStore::Dir(peer_dir),
        floppy_url: Box::new(move |_| format!("{media}/floppy.img")),
    };
    // PORTHOLE_BENCH_STORES: `embedded`, `swift` or both (the default).
    let only = std::env::var("PORTHOLE_BENCH_STORES").unwrap_or_default();
    let mut tables = Vec::new();
    if only.is_empty() || only.contains("embedded") {
        tables.extend(measure("embedded store", base_config(dir.path()), embedded, &ctx).await);
    }

    let swift_state =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/porthole-deploy-bench-swift");
    let mut swift_note = None;
    match (only.is_empty() || only.contains("swift"))
        .then(|| Swift::up(&swift_state))
        .flatten()
    {
        Some(swift) => {
            let mut config = base_config(dir.path());
            let side = swift_side(dir.path(), &mut config, &ctx.peer).await;
            tables.extend(measure("Swift (tempauth)", config, side, &ctx).await);
            drop(swift);
        }
        None => swift_note = Some("no Swift tables: Swift not asked for or not started"),
    }
    let load_after = report::loadavg();
    report::print(&report::Run {
        sushy: &ctx.sushy.url,
        load_before,
        load_after,
        elapsed: started.elapsed(),
        tables: &tables,
        note: swift_note,
    });
}
