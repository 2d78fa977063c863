//! PrepareRamdisk's time, split by step, for 1 and 20 nodes at once:
//! the deploy service in-process (embedded store) against sushy-tools with
//! 20 emulated systems (porthole-tests' `peers::Sushy`: a running one named
//! by PORTHOLE_REDFISH_URL with 20 nodes, or one started here where
//! PORTHOLE_RIG_JSON is set). Each node's deploy ISO (1 MiB) comes from an
//! HTTP server on 127.0.0.1; sushy downloads both media for every node.
//!
//! `cargo bench -p deploy --bench prepare`. Printed: per step (floppy
//! build; upload: store and temp URL; insert: both media; power: boot once
//! and reset) the median and the maximum over the nodes, and the wall time
//! from the first call to the last answer. There is no ISO step: the
//! deploy ISO is inserted by its URL, not copied.

use std::path::Path;
use std::time::{Duration, Instant};

use axum::routing::get;
use deploy::config::Config;
use porthole_proto::deploy::v1::deploy_service_client::DeployServiceClient;
use porthole_proto::deploy::v1::{
    CleanUpRequest, DeployNode, PrepareRamdiskRequest, PrepareRamdiskResponse, RedfishAccess,
};
use porthole_tests::peers::Sushy;
use tokio_util::sync::CancellationToken;

const NODES: usize = 20;

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

fn ms(s: f64) -> String {
    format!("{:.1}", s * 1000.0)
}

fn summary(label: &str, mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    format!(
        "| {label} | {} | {} |",
        ms(v[v.len() / 2]),
        ms(v[v.len() - 1])
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let state = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/porthole-deploy-bench-sushy");
    let Some(sushy) = Sushy::get(&state, NODES) else {
        return;
    };
    let iso: Vec<u8> = (0..1 << 20).map(|i| (i % 253) as u8).collect();
    let app = axum::Router::new().route("/deploy.iso", get(move || async move { iso }));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let iso_url = format!("http://{}/deploy.iso", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });

    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.conductor.api_url = Some("http://192.0.2.1:6385".into());
    config.store.http_listen = "127.0.0.1:0".parse().unwrap();
    config.store.http_dir = dir.path().join("objects");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(deploy::run(listener, config, stop.clone()));
    let client = DeployServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();

    println!(
        "PrepareRamdisk against sushy-tools {}, embedded store, 1 MiB deploy ISO\n",
        sushy.url
    );
    for n in [1, NODES] {
        let nodes: Vec<DeployNode> = (0..n).map(|i| node(&sushy, i, &iso_url)).collect();
        let start = Instant::now();
        let calls = nodes.iter().cloned().map(|node| {
            let mut c = client.clone();
            async move {
                let t = Instant::now();
                let r = c
                    .prepare_ramdisk(PrepareRamdiskRequest { node: Some(node) })
                    .await
                    .expect("PrepareRamdisk")
                    .into_inner();
                (r, t.elapsed())
            }
        });
        let done: Vec<(PrepareRamdiskResponse, Duration)> = futures::future::join_all(calls).await;
        let wall = start.elapsed();
        println!("{n} node(s) at once: wall {} ms\n", wall.as_millis());
        println!("| step | median ms | max ms |\n| --- | --- | --- |");
        let col = |f: fn(&PrepareRamdiskResponse) -> f64| done.iter().map(|(r, _)| f(r)).collect();
        println!(
            "{}",
            summary("floppy build", col(|r| r.floppy_build_seconds))
        );
        println!(
            "{}",
            summary("upload (store + temp URL)", col(|r| r.upload_seconds))
        );
        println!(
            "{}",
            summary("insert (floppy + CD)", col(|r| r.insert_seconds))
        );
        println!(
            "{}",
            summary("power (boot once + reset)", col(|r| r.power_seconds))
        );
        println!(
            "{}\n",
            summary(
                "whole call",
                done.iter().map(|(_, d)| d.as_secs_f64()).collect()
            )
        );
        for node in nodes {
            let mut c = client.clone();
            c.clean_up(CleanUpRequest { node: Some(node) })
                .await
                .expect("CleanUp");
        }
    }
    stop.cancel();
    task.await.unwrap().unwrap();
}
