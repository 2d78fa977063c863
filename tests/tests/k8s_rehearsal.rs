//! The Kubernetes rehearsal without a cluster (issue 15): the rendered
//! `deploy-k8s` overlays started process by process (`porthole_tests::k8s`)
//! with the command, args and environment each container is given.
//!
//! - `ha`: every pod (3 etcd members, 3 console-svc replicas, the
//!   conductor, deploy, inspect) becomes ready by its own probes; a console
//!   enabled through the conductor's Service is drained with its owner pod
//!   (the eviction API, preStop, SIGTERM within the grace period) and goes
//!   on on another pod on the same port, never two owners at once; the
//!   budget then refuses a second eviction; one etcd member deleted and
//!   recreated fences nobody.
//! - the rehearsal itself fails on a wrong manifest (an env name console-svc
//!   does not know, a readiness probe on the wrong port), and passes the
//!   same manifest unbroken.
//!
//! The `ha` scenario needs the rig (`PORTHOLE_RIG_JSON`, one BMC); all need
//! `PORTHOLE_K8S_RENDERED` (scripts/k8s-check.sh's output) and the built
//! binaries (target/debug, or `PORTHOLE_TEST_BIN_DIR`).

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use base64::Engine;
use porthole_proto::console::v1 as pb;
use porthole_tests::k8s::cluster::{Cluster, Options, NET};
use porthole_tests::k8s::manifest::Manifests;
use porthole_tests::k8s::pod::Binaries;
use porthole_tests::k8s::secrets::{self, ApiUser};
use porthole_tests::k8s::{bin_dir, probe, rendered};
use porthole_tests::{node_side, rig_or_skip, session, viewer};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

fn options(secrets: porthole_tests::k8s::pod::Secrets, first_ip: u8, first_vip: u8, only: Option<&[&str]>) -> Options {
    Options {
        binaries: Binaries { porthole: bin_dir() },
        secrets,
        first_ip,
        first_vip,
        only: only.map(|o| o.iter().map(|s| s.to_string()).collect()),
    }
}

/// One HTTP/1.1 request with basic auth and a JSON body; (status, body).
async fn http(addr: &str, method: &str, path: &str, user: &ApiUser, body: Option<&Value>) -> Result<(u16, Value)> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", user.user, user.password));
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Basic {auth}\r\nX-OpenStack-Ironic-API-Version: 1.78\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut raw)).await??;
    let text = String::from_utf8_lossy(&raw);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("{method} {path}: no HTTP status"))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

/// The conductor's `console_info.url` once it names a host other than
/// `not_on` (bounded).
async fn console_url(api: &str, user: &ApiUser, node: &str, not_on: Option<&str>, within: Duration) -> Result<(String, u16)> {
    let since = Instant::now();
    let mut last = Value::Null;
    while since.elapsed() < within {
        let (st, v) = http(api, "GET", &format!("/v1/nodes/{node}/states/console"), user, None).await?;
        if st == 200 && v["console_enabled"] == json!(true) {
            if let Some(url) = v["console_info"]["url"].as_str() {
                let hp = url.strip_prefix("tcp://").ok_or_else(|| anyhow!("url {url}"))?;
                let (h, p) = hp.rsplit_once(':').ok_or_else(|| anyhow!("url {url}"))?;
                if Some(h) != not_on {
                    return Ok((h.to_owned(), p.parse()?));
                }
            }
        }
        last = v;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("no console url (other than on {not_on:?}) within {within:?}: {last}")
}

/// `porthole_console_fences_total` of a replica, from its metrics port.
async fn fences(ip: &str) -> Result<f64> {
    let (_, body) = probe::http_get(ip, 9464, "/metrics").await.map_err(|e| anyhow!(e))?;
    body.lines()
        .find_map(|l| l.strip_prefix("porthole_console_fences_total "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow!("{ip}: no porthole_console_fences_total in /metrics"))
}

/// Listeners on `port` among the rehearsal's addresses, from `ss`.
fn listeners(port: u16) -> Vec<String> {
    let out = std::process::Command::new("ss")
        .args(["-Hltn", &format!("sport = :{port}")])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter(|a| a.starts_with(&format!("{NET}.")))
        .map(str::to_owned)
        .collect()
}

/// Samples [`listeners`] every 50 ms until cancelled: (the most at once,
/// every address seen, in order).
fn watch_listeners(port: u16, stop: CancellationToken) -> tokio::task::JoinHandle<(usize, Vec<String>)> {
    tokio::spawn(async move {
        let (mut most, mut seen) = (0, Vec::<String>::new());
        while !stop.is_cancelled() {
            let now = listeners(port);
            most = most.max(now.len());
            for a in now {
                if seen.last() != Some(&a) {
                    seen.push(a);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (most, seen)
    })
}

fn shutdown_timeout(m: &Manifests) -> Result<Duration> {
    let toml = m
        .config_maps
        .get("console-svc-config")
        .and_then(|c| c.get("console-svc.toml"))
        .ok_or_else(|| anyhow!("no console-svc-config"))?;
    let line = toml
        .lines()
        .find(|l| l.trim_start().starts_with("shutdown_timeout"))
        .ok_or_else(|| anyhow!("console-svc.toml sets no shutdown_timeout"))?;
    let secs: u64 = line
        .split('"')
        .nth(1)
        .and_then(|v| v.strip_suffix('s'))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("shutdown_timeout {line:?}: not whole seconds"))?;
    Ok(Duration::from_secs(secs))
}

async fn grpc_console(addr: &str, node: &str) -> Result<pb::Console> {
    let mut client = pb::console_service_client::ConsoleServiceClient::connect(format!("http://{addr}")).await?;
    session::get(&mut client, node).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_overlay_drains_a_console_owner_and_loses_an_etcd_member() {
    porthole_tests::run(ha()).await
}

async fn ha() -> Result<()> {
    let rig = rig_or_skip!();
    let Some(path) = rendered("ha") else { return Ok(()) };
    let m = Manifests::load(&path)?;
    let grace = m.workload("console-svc")?.grace;
    let shutdown = shutdown_timeout(&m)?;
    // The drain bound: shutdown_timeout plus the etcd leave and revoke
    // (2 s each at most, README "High availability").
    ensure!(
        grace > shutdown + Duration::from_secs(4),
        "console-svc's terminationGracePeriodSeconds {grace:?} must exceed shutdown_timeout {shutdown:?} + 4 s"
    );
    let (secrets, user) = secrets::make(&m.namespace)?;
    let bmcs = rig.lease_bmcs(1).await?;
    let bmc = &bmcs[0];
    let mut c = Cluster::start(m, options(secrets, 10, 200, None)).await?;
    let took = c.settle(Duration::from_secs(90)).await?;
    eprintln!(
        "every pod ready by its probes after {took:?}: {}",
        c.pods.iter().map(|p| format!("{} {}", p.name, p.ip)).collect::<Vec<_>>().join(", ")
    );
    let api = c.service("conductor", 6385)?;
    let grpc = c.service("console-svc", 50051)?;

    // A node and its console, through the conductor's Service.
    let body = json!({"name": "k8s-rehearsal", "driver": "ipmi", "driver_info": {
        "ipmi_address": bmc.host, "ipmi_port": bmc.port, "ipmi_username": bmc.username,
        "ipmi_password": bmc.password, "ipmi_cipher_suite": bmc.cipher_suite}});
    let (st, node) = http(&api, "POST", "/v1/nodes", &user, Some(&body)).await?;
    ensure!(st == 201, "creating the node: HTTP {st}: {node}");
    let uuid = node["uuid"].as_str().ok_or_else(|| anyhow!("no uuid: {node}"))?.to_owned();
    let (st, v) = http(&api, "PUT", &format!("/v1/nodes/{uuid}/states/console"), &user, Some(&json!({"enabled": true}))).await?;
    ensure!(st == 202, "console enable: HTTP {st}: {v}");
    let (host, port) = console_url(&api, &user, &uuid, None, Duration::from_secs(30)).await?;
    let con = grpc_console(&grpc, &uuid).await?;
    let owner = c.pod(&con.owner).with_context(|| format!("owner {:?} is not a pod", con.owner))?;
    ensure!(owner.ip == host, "console URL host {host} is not its owner {}'s pod IP {}", owner.name, owner.ip);
    let owner = owner.name.clone();
    eprintln!("console of {uuid} on tcp://{host}:{port}, owned by {owner}");
    let mut node = node_side(bmc).await?;
    let mut v1 = viewer(&format!("tcp://{host}:{port}")).await?;
    session::establish(&mut v1, &mut node).await?;

    // Drain the owner's pod as a node drain does.
    let stop = CancellationToken::new();
    let watch = watch_listeners(port, stop.clone());
    let since = Instant::now();
    let t = c.evict(&owner).await?;
    eprintln!("{owner} deleted: preStop {:?}, exit {:?} after SIGTERM, {:?} in all (grace {grace:?})", t.pre_stop, t.exit_after_sigterm, t.total);
    match &t.pre_stop {
        Some((_, Ok(()))) => {}
        other => bail!("{owner}'s preStop did not succeed: {other:?}"),
    }
    let (host2, port2) = console_url(&api, &user, &uuid, Some(&host), Duration::from_secs(30)).await?;
    eprintln!("the conductor reports tcp://{host2}:{port2} {:?} after the eviction began", since.elapsed());
    ensure!(port2 == port, "the console moved from port {port} to {port2}");
    let con2 = grpc_console(&grpc, &uuid).await?;
    let new_owner = c.pod(&con2.owner)?;
    ensure!(new_owner.ip == host2 && new_owner.name != owner, "new owner {} ({}) vs url host {host2}", new_owner.name, new_owner.ip);
    let mut v2 = viewer(&format!("tcp://{host2}:{port2}")).await?;
    session::establish(&mut v2, &mut node).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    let (most, seen) = watch.await?;
    eprintln!("listeners on port {port} during the drain: {seen:?}, at most {most} at once");
    ensure!(most <= 1, "two pods listened on console port {port} at once: {seen:?}");

    // One replica is down: the budget refuses a second eviction.
    let other = c
        .pods_of("console-svc")
        .find(|p| p.name != owner && p.name != new_owner.name)
        .map(|p| p.name.clone())
        .ok_or_else(|| anyhow!("no third replica"))?;
    let refused = c.evict(&other).await.err().ok_or_else(|| anyhow!("{other} was evicted with {owner} still down"))?;
    ensure!(refused.to_string().contains("disruption budget"), "{refused:#}");
    c.recreate(&owner)?;
    c.settle(Duration::from_secs(60)).await?;
    eprintln!("{owner} recreated and ready");

    // Delete etcd-0 (every replica's first endpoint), then recreate it.
    let replicas: Vec<(String, String)> = c.pods_of("console-svc").map(|p| (p.name.clone(), p.ip.clone())).collect();
    let mut before = Vec::new();
    for (_, ip) in &replicas {
        before.push(fences(ip).await?);
    }
    let changes_before: Vec<usize> = c.pods_of("console-svc").map(|p| p.status().changes.len()).collect();
    let t = c.evict("etcd-0").await?;
    eprintln!("etcd-0 deleted in {:?}", t.total);
    let grpc_probe = c.pod(&replicas[0].0)?.container.readiness.clone().ok_or_else(|| anyhow!("no readiness probe"))?;
    let exec = |_: &[String]| -> Result<tokio::process::Command, String> { Err("no exec".into()) };
    let down = Instant::now();
    // Longer than the lease TTL (5 s): a replica that could not renew would fence.
    while down.elapsed() < Duration::from_secs(7) {
        for (name, ip) in &replicas {
            let pod = c.pod(name)?;
            probe::run(&grpc_probe.handler, ip, &pod.container, &exec, Duration::from_secs(1))
                .await
                .map_err(|e| anyhow!("{name} with etcd-0 down {:?}: {e}", down.elapsed()))?;
        }
        ensure!(listeners(port) == vec![format!("{host2}:{port}")], "the console's listener moved with etcd-0 down: {:?}", listeners(port));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    c.recreate("etcd-0")?;
    c.settle(Duration::from_secs(60)).await?;
    eprintln!("etcd-0 recreated from its claim and ready; {:?} down", t.total + down.elapsed());
    for (k, (name, ip)) in replicas.iter().enumerate() {
        let after = fences(ip).await?;
        ensure!(after == before[k], "{name} fenced while etcd-0 was down: fences_total {} -> {after}", before[k]);
    }
    let changes_after: Vec<usize> = c.pods_of("console-svc").map(|p| p.status().changes.len()).collect();
    ensure!(changes_before == changes_after, "a replica's readiness changed with etcd-0 down: {changes_before:?} -> {changes_after:?}");
    session::establish(&mut v2, &mut node).await?;

    for p in &c.pods {
        ensure!(!p.status().liveness_failed, "{}: {:?}", p.name, p.status().last_failure);
    }
    let (st, v) = http(&api, "PUT", &format!("/v1/nodes/{uuid}/states/console"), &user, Some(&json!({"enabled": false}))).await?;
    ensure!(st == 202, "console disable: HTTP {st}: {v}");
    Ok(())
}

/// The dev overlay's etcd and console-svc, after `mutate`; what settling
/// them gives.
async fn dev(first_ip: u8, first_vip: u8, mutate: impl FnOnce(&mut Vec<Value>)) -> Result<Option<Result<Duration>>> {
    let Some(path) = rendered("dev") else { return Ok(None) };
    let mut docs: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    mutate(&mut docs);
    let m = Manifests::parse(&docs)?;
    let (secrets, _) = secrets::make(&m.namespace)?;
    let mut c = Cluster::start(m, options(secrets, first_ip, first_vip, Some(&["etcd", "console-svc"]))).await?;
    Ok(Some(c.settle(Duration::from_secs(20)).await))
}

fn console_svc_container(docs: &mut [Value]) -> &mut Value {
    docs.iter_mut()
        .find(|d| d["kind"] == "StatefulSet" && d["metadata"]["name"] == "console-svc")
        .map(|d| &mut d["spec"]["template"]["spec"]["containers"][0])
        .expect("console-svc in the dev overlay")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rehearsal_passes_the_dev_overlay_as_rendered() {
    porthole_tests::run(async {
        if let Some(r) = dev(40, 220, |_| {}).await? {
            r?;
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rehearsal_fails_on_an_env_name_console_svc_does_not_know() {
    porthole_tests::run(async {
        let Some(r) = dev(50, 230, |docs| {
            let env = console_svc_container(docs)["env"].as_array_mut().expect("env");
            let e = env
                .iter_mut()
                .find(|e| e["name"] == "PORTHOLE_CONSOLE_SVC_SERVICE_REPLICA_ID")
                .expect("the replica id variable");
            e["name"] = json!("PORTHOLE_CONSOLE_SVC_SERVICE_REPLICAID");
        })
        .await?
        else {
            return Ok(());
        };
        let err = format!("{:#}", r.err().ok_or_else(|| anyhow!("the rehearsal passed a wrong env name"))?);
        eprintln!("{err}");
        ensure!(err.contains("console-svc-0") && err.contains("exited"), "{err}");
        ensure!(err.to_lowercase().contains("replicaid"), "the error does not name the variable: {err}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rehearsal_fails_on_a_readiness_probe_on_the_wrong_port() {
    porthole_tests::run(async {
        let Some(r) = dev(60, 240, |docs| {
            console_svc_container(docs)["readinessProbe"]["grpc"]["port"] = json!(50052);
        })
        .await?
        else {
            return Ok(());
        };
        let err = format!("{:#}", r.err().ok_or_else(|| anyhow!("the rehearsal passed a probe on the wrong port"))?);
        eprintln!("{err}");
        ensure!(err.contains("readiness probe of console-svc-0") && err.contains(":50052"), "{err}");
        Ok(())
    })
    .await
}
