//! Image write throughput over iSCSI, three ways in the same run against
//! the rig's tgtd (porthole-tests' `peers::Iscsi`, under its PeerLock):
//! through the deploy service (ContinueDeploy over gRPC, in-process, image
//! already cached, verify off: the write is `qemu-img convert` run by the
//! service), `qemu-img convert -n -O raw` run straight to the same target,
//! and a local `dd` of the same bytes into a file (conv=fsync). Then the
//! wall time of 10 concurrent ContinueDeploys of one image to 10 LUNs.
//!
//! `cargo bench -p deploy --bench iscsi_write` (BENCH_IMAGE_MIB, default
//! 256; BENCH_ROUNDS, default 3). Prints a Markdown table: per way the
//! median seconds and MiB/s over the rounds, and the ratio of the
//! service's write to the direct one.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use deploy::config::Config;
use porthole_proto::deploy::v1::instance_deploy_service_client::InstanceDeployServiceClient;
use porthole_proto::deploy::v1::{
    ContinueDeployRequest, DeployNode, DeployResult, InstanceImage, IscsiTarget,
};
use porthole_tests::peers::{Iscsi, Lun};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Serves `dir`'s files (the image) over HTTP.
async fn image_server(dir: PathBuf) -> String {
    let app = axum::Router::new().route(
        "/{name}",
        axum::routing::get(
            move |axum::extract::Path(name): axum::extract::Path<String>| {
                let dir = dir.clone();
                async move { std::fs::read(dir.join(name)).unwrap_or_default() }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// A `done` port that accepts and drains every connection.
async fn ramdisk() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut b = Vec::new();
            let _ = s.read_to_end(&mut b).await;
        }
    });
    port
}

fn request(lun: &Lun, image: &str, port: u16) -> ContinueDeployRequest {
    ContinueDeployRequest {
        node: Some(DeployNode {
            uuid: "00000000-0000-4000-8000-000000000001".into(),
            boot_option: "local".into(),
            ..Default::default()
        }),
        target: Some(IscsiTarget {
            address: Iscsi::ADDRESS.into(),
            port: Iscsi::PORT.into(),
            iqn: lun.iqn.clone(),
            lun: 1,
            ..Default::default()
        }),
        image: Some(InstanceImage {
            image_source: image.into(),
            ..Default::default()
        }),
        ramdisk_address: "127.0.0.1".into(),
        ramdisk_port: port.into(),
        skip_boot: true,
    }
}

async fn deploy(
    client: &mut InstanceDeployServiceClient<Channel>,
    req: ContinueDeployRequest,
) -> DeployResult {
    let mut s = client.continue_deploy(req).await.unwrap().into_inner();
    let mut last = None;
    while let Some(p) = s.message().await.unwrap() {
        last = p.result;
    }
    last.expect("a result")
}

fn timed(c: &mut Command) -> f64 {
    let t = Instant::now();
    let out = c.output().expect("running the tool");
    assert!(out.status.success(), "{c:?}: {out:?}");
    t.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mib = env_num("BENCH_IMAGE_MIB", 256);
    let rounds = env_num("BENCH_ROUNDS", 3);
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/porthole-deploy-bench-iscsi");
    let Some(tgt) = Iscsi::up(&base.join("rig")) else {
        return;
    };
    let work =
        tempfile::tempdir_in(Path::new(env!("CARGO_MANIFEST_DIR")).join("../target")).unwrap();
    let image = work.path().join("disk.raw");
    let out = Command::new("dd")
        .args(["if=/dev/urandom", "bs=1M", "status=none"])
        .arg(format!("of={}", image.display()))
        .arg(format!("count={mib}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let url = format!("{}/disk.raw", image_server(work.path().to_owned()).await);

    let mut config = Config::default();
    config.store.http_listen = "127.0.0.1:0".parse().unwrap();
    config.store.http_dir = work.path().join("objects");
    config.instance.cache_dir = Some(work.path().join("cache"));
    config.instance.cache_size_mib = (mib as u64) * 2 + 64;
    config.instance.verify = false;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(deploy::run(listener, config, stop.clone()));
    let mut client = InstanceDeployServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let port = ramdisk().await;

    let lun = tgt.add(
        &format!("iqn.2026-12.org.porthole:bench-{}", std::process::id()),
        &format!("{}M", mib + 16),
    );
    // Warm the cache: the rounds measure the write, not the download.
    deploy(&mut client, request(&lun, &url, port)).await;

    let load_before = loadavg();
    let (mut svc_write, mut svc_wall, mut direct, mut dd) = (vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        let t = Instant::now();
        let r = deploy(&mut client, request(&lun, &url, port)).await;
        svc_wall.push(t.elapsed().as_secs_f64());
        svc_write.push(r.write_seconds);
        direct.push(timed(
            Command::new("qemu-img")
                .args(["convert", "-n", "-f", "raw", "-O", "raw"])
                .arg(&image)
                .arg(&lun.url),
        ));
        let copy = work.path().join("dd.out");
        dd.push(timed(
            Command::new("dd")
                .arg(format!("if={}", image.display()))
                .arg(format!("of={}", copy.display()))
                .args(["bs=1M", "conv=fsync", "status=none"]),
        ));
        let _ = std::fs::remove_file(copy);
    }
    let load_after = loadavg();

    // 10 at once: one image (32 MiB, cached after the first), 10 LUNs.
    drop(lun);
    let small = work.path().join("small.raw");
    std::fs::write(&small, &std::fs::read(&image).unwrap()[..32 << 20]).unwrap();
    let small_url = url.replace("disk.raw", "small.raw");
    let luns: Vec<Lun> = (0..10)
        .map(|i| {
            tgt.add(
                &format!("iqn.2026-12.org.porthole:bench-{}-{i}", std::process::id()),
                "40M",
            )
        })
        .collect();
    deploy(&mut client, request(&luns[0], &small_url, port)).await;
    let t = Instant::now();
    let runs = luns.iter().map(|l| {
        let mut c = client.clone();
        let req = request(l, &small_url, port);
        async move { deploy(&mut c, req).await }
    });
    let results = futures::future::join_all(runs).await;
    let ten = t.elapsed().as_secs_f64();
    assert_eq!(results.len(), 10);

    let rate = |s: f64| mib as f64 / s;
    let (w, d) = (median(svc_write), median(direct));
    println!("image {mib} MiB (random), {rounds} rounds, tgtd on 127.0.0.1:3260, load average before {load_before}, after {load_after}");
    println!();
    println!("| way | median s | MiB/s |");
    println!("| --- | ---: | ---: |");
    println!(
        "| service: qemu-img write inside ContinueDeploy | {w:.3} | {:.1} |",
        rate(w)
    );
    let wall = median(svc_wall);
    println!(
        "| service: whole ContinueDeploy (checks, write, done) | {wall:.3} | {:.1} |",
        rate(wall)
    );
    println!(
        "| qemu-img convert straight to the target | {d:.3} | {:.1} |",
        rate(d)
    );
    let l = median(dd);
    println!(
        "| local dd into a file (conv=fsync) | {l:.3} | {:.1} |",
        rate(l)
    );
    println!();
    println!(
        "service write / direct: {:.2}; whole ContinueDeploy / direct: {:.2}",
        d / w,
        d / wall
    );
    println!("10 concurrent ContinueDeploys of a 32 MiB image to 10 LUNs: {ten:.2} s wall");
    drop(luns);
    stop.cancel();
    task.await.unwrap().unwrap();
}
