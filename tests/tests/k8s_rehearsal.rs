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
//!   recreated fences nobody; every member stopped fences every replica,
//!   which its readiness probe sees (liveness does not restart it), and
//!   service comes back when they continue.
//! - each overlay's etcd member lists match its member count;
//! - the rehearsal itself fails on a wrong manifest (an env name console-svc
//!   does not know, a readiness probe on the wrong port), and passes the
//!   same manifest unbroken.
//!
//! The `ha` scenario needs the rig (`PORTHOLE_RIG_JSON`, one BMC); all need
//! `PORTHOLE_K8S_RENDERED` (scripts/k8s-check.sh's output) and the built
//! binaries (target/debug, or `PORTHOLE_TEST_BIN_DIR`).

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use nix::sys::signal::Signal;
use porthole_proto::console::v1 as pb;
use porthole_tests::k8s::cluster::{Cluster, Options};
use porthole_tests::k8s::manifest::Manifests;
use porthole_tests::k8s::observe::{console_url, fences, http, listeners, watch_listeners};
use porthole_tests::k8s::pod::Binaries;
use porthole_tests::k8s::secrets;
use porthole_tests::k8s::{bin_dir, probe, rendered};
use porthole_tests::{node_side, rig_or_skip, session, viewer};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

fn options(
    secrets: porthole_tests::k8s::pod::Secrets,
    first_ip: u8,
    first_vip: u8,
    only: Option<&[&str]>,
) -> Options {
    Options {
        binaries: Binaries {
            porthole: bin_dir(),
        },
        secrets,
        first_ip,
        first_vip,
        only: only.map(|o| o.iter().map(|s| s.to_string()).collect()),
    }
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
    let mut client =
        pb::console_service_client::ConsoleServiceClient::connect(format!("http://{addr}")).await?;
    session::get(&mut client, node).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_overlay_drains_an_owner_loses_a_member_and_fences_without_quorum() {
    porthole_tests::run(ha()).await
}

/// The `ha` scenario's state between its steps.
struct Scene {
    c: Cluster,
    user: secrets::ApiUser,
    api: String,
    grpc: String,
    uuid: String,
    node: porthole_tests::Wire,
    viewer: Option<porthole_tests::Wire>,
    /// Where the console is served now.
    host: String,
    port: u16,
}

async fn ha() -> Result<()> {
    let rig = rig_or_skip!();
    let Some(path) = rendered("ha") else {
        return Ok(());
    };
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
    let mut c = Cluster::start(m, options(secrets, 10, 200, None)).await?;
    let took = c.settle(Duration::from_secs(90)).await?;
    eprintln!(
        "every pod ready by its probes after {took:?}: {}",
        c.pods
            .iter()
            .map(|p| format!("{} {}", p.name, p.ip))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut scene = Scene::enable(c, user, &bmcs[0]).await?;
    let (owner, new_owner) = scene.drain_owner().await?;
    scene.budget_refuses_a_second(&owner, &new_owner).await?;
    scene.lose_etcd_member("etcd-0").await?;
    scene.lose_quorum().await?;
    for p in &scene.c.pods {
        ensure!(
            !p.status().liveness_failed,
            "{}: {:?}",
            p.name,
            p.status().last_failure
        );
    }
    scene.disable().await
}

impl Scene {
    /// A node and its console, through the conductor's Service; typing
    /// reaches the node through it.
    async fn enable(
        c: Cluster,
        user: secrets::ApiUser,
        bmc: &porthole_tests::Bmc,
    ) -> Result<Scene> {
        let api = c.service("conductor", 6385)?;
        let grpc = c.service("console-svc", 50051)?;
        let body = json!({"name": "k8s-rehearsal", "driver": "ipmi", "driver_info": {
            "ipmi_address": bmc.host, "ipmi_port": bmc.port, "ipmi_username": bmc.username,
            "ipmi_password": bmc.password, "ipmi_cipher_suite": bmc.cipher_suite}});
        let (st, node) = http(&api, "POST", "/v1/nodes", &user, Some(&body)).await?;
        ensure!(st == 201, "creating the node: HTTP {st}: {node}");
        let uuid = node["uuid"]
            .as_str()
            .ok_or_else(|| anyhow!("no uuid: {node}"))?
            .to_owned();
        let path = format!("/v1/nodes/{uuid}/states/console");
        let (st, v) = http(&api, "PUT", &path, &user, Some(&json!({"enabled": true}))).await?;
        ensure!(st == 202, "console enable: HTTP {st}: {v}");
        let (host, port) = console_url(&api, &user, &uuid, None, Duration::from_secs(30)).await?;
        let mut scene = Scene {
            node: node_side(bmc).await?,
            c,
            user,
            api,
            grpc,
            uuid,
            viewer: None,
            host,
            port,
        };
        let owner = scene.owner().await?;
        eprintln!(
            "console of {} on tcp://{}:{}, owned by {owner}",
            scene.uuid, scene.host, scene.port
        );
        scene.type_through().await?;
        Ok(scene)
    }

    /// The owning pod per console-svc (GetConsole through the Service),
    /// checked against the URL's host.
    async fn owner(&self) -> Result<String> {
        let con = grpc_console(&self.grpc, &self.uuid).await?;
        let pod = self
            .c
            .pod(&con.owner)
            .with_context(|| format!("owner {:?} is not a pod", con.owner))?;
        ensure!(
            pod.ip == self.host,
            "console URL host {} is not its owner {}'s pod IP {}",
            self.host,
            pod.name,
            pod.ip
        );
        Ok(pod.name.clone())
    }

    /// A new viewer on the current URL; keystrokes and output flow.
    async fn type_through(&mut self) -> Result<()> {
        let mut v = viewer(&format!("tcp://{}:{}", self.host, self.port)).await?;
        session::establish(&mut v, &mut self.node).await?;
        self.viewer = Some(v);
        Ok(())
    }

    /// Evict the owner's pod as a node drain does; the console goes on on
    /// another pod, same port, never two listeners at once. Returns (old,
    /// new) owner.
    async fn drain_owner(&mut self) -> Result<(String, String)> {
        let owner = self.owner().await?;
        let grace = self.c.pod(&owner)?.grace;
        let stop = CancellationToken::new();
        let watch = watch_listeners(self.port, stop.clone());
        let since = Instant::now();
        let t = self.c.evict(&owner).await?;
        eprintln!(
            "{owner} deleted: preStop {:?}, exit {:?} after SIGTERM, {:?} in all (grace {grace:?})",
            t.pre_stop, t.exit_after_sigterm, t.total
        );
        match &t.pre_stop {
            Some((_, Ok(()))) => {}
            other => bail!("{owner}'s preStop did not succeed: {other:?}"),
        }
        let old = self.host.clone();
        let (host, port) = console_url(
            &self.api,
            &self.user,
            &self.uuid,
            Some(&old),
            Duration::from_secs(30),
        )
        .await?;
        eprintln!(
            "the conductor reports tcp://{host}:{port} {:?} after the eviction began",
            since.elapsed()
        );
        ensure!(
            port == self.port,
            "the console moved from port {} to {port}",
            self.port
        );
        self.host = host;
        let new_owner = self.owner().await?;
        ensure!(new_owner != owner, "{owner} still owns the console");
        self.type_through().await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.cancel();
        let (most, seen) = watch.await?;
        eprintln!("listeners on port {port} during the drain: {seen:?}, at most {most} at once");
        ensure!(
            most <= 1,
            "two pods listened on console port {port} at once: {seen:?}"
        );
        Ok((owner, new_owner))
    }

    /// With `down` gone the budget refuses to evict a second replica; then
    /// the StatefulSet brings `down` back.
    async fn budget_refuses_a_second(&mut self, down: &str, owner: &str) -> Result<()> {
        let other = self
            .c
            .pods_of("console-svc")
            .find(|p| p.name != down && p.name != owner)
            .map(|p| p.name.clone())
            .ok_or_else(|| anyhow!("no third replica"))?;
        let refused = self
            .c
            .evict(&other)
            .await
            .err()
            .ok_or_else(|| anyhow!("{other} was evicted with {down} still down"))?;
        ensure!(
            refused.to_string().contains("disruption budget"),
            "{refused:#}"
        );
        self.c.recreate(down)?;
        self.c.settle(Duration::from_secs(60)).await?;
        eprintln!("{other}'s eviction refused by the budget; {down} recreated and ready");
        Ok(())
    }

    /// Delete etcd member `member` for longer than the lease TTL, then
    /// recreate it: every replica stays ready (its grpc probe, sampled
    /// every 250 ms), fences nothing, and the console stays where it is.
    async fn lose_etcd_member(&mut self, member: &str) -> Result<()> {
        let replicas: Vec<(String, String)> = self
            .c
            .pods_of("console-svc")
            .map(|p| (p.name.clone(), p.ip.clone()))
            .collect();
        let mut before = Vec::new();
        for (_, ip) in &replicas {
            before.push(fences(ip).await?);
        }
        let changes = |c: &Cluster| -> Vec<usize> {
            c.pods_of("console-svc")
                .map(|p| p.status().changes.len())
                .collect()
        };
        let changes_before = changes(&self.c);
        let t = self.c.evict(member).await?;
        eprintln!("{member} deleted in {:?}", t.total);
        let probe_of = self
            .c
            .pod(&replicas[0].0)?
            .container
            .readiness
            .clone()
            .ok_or_else(|| anyhow!("no readiness probe"))?;
        let exec =
            |_: &[String]| -> Result<tokio::process::Command, String> { Err("no exec".into()) };
        let down = Instant::now();
        let serving = vec![format!("{}:{}", self.host, self.port)];
        while down.elapsed() < Duration::from_secs(7) {
            for (name, ip) in &replicas {
                let pod = self.c.pod(name)?;
                probe::run(
                    &probe_of.handler,
                    ip,
                    &pod.container,
                    &exec,
                    // Longer than the kubelet's: an answer, not a loaded machine's delay.
                    Duration::from_secs(3),
                )
                .await
                .map_err(|e| anyhow!("{name} with {member} down {:?}: {e}", down.elapsed()))?;
            }
            ensure!(
                listeners(self.port) == serving,
                "the console's listener moved with {member} down: {:?}",
                listeners(self.port)
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        self.c.recreate(member)?;
        self.c.settle(Duration::from_secs(60)).await?;
        eprintln!(
            "{member} recreated from its claim and ready, {:?} after its deletion began",
            t.total + down.elapsed()
        );
        for (k, (name, ip)) in replicas.iter().enumerate() {
            let after = fences(ip).await?;
            ensure!(
                after == before[k],
                "{name} fenced while {member} was down: fences_total {} -> {after}",
                before[k]
            );
        }
        let changes_after = changes(&self.c);
        ensure!(changes_before == changes_after, "a replica's readiness changed with {member} down: {changes_before:?} -> {changes_after:?}");
        let v = self.viewer.as_mut().ok_or_else(|| anyhow!("no viewer"))?;
        session::establish(v, &mut self.node).await
    }

    /// Every etcd member stopped (SIGSTOP): each replica fences, its
    /// readiness probe sees it and the console's listener closes, while
    /// liveness keeps it running; continued, they serve again without a
    /// restart and the console is back on its port.
    async fn lose_quorum(&mut self) -> Result<()> {
        let members: Vec<String> = self.c.pods_of("etcd").map(|p| p.name.clone()).collect();
        for m in &members {
            ensure!(self.c.pod(m)?.signal(Signal::SIGSTOP), "{m} is not running");
        }
        let stopped = Instant::now();
        let unready = loop {
            let ready: Vec<String> = self
                .c
                .pods_of("console-svc")
                .filter(|p| p.status().ready)
                .map(|p| p.name.clone())
                .collect();
            if ready.is_empty() {
                break stopped.elapsed();
            }
            if stopped.elapsed() > Duration::from_secs(20) {
                for m in &members {
                    self.c.pod(m)?.signal(Signal::SIGCONT);
                }
                bail!("with every etcd member stopped for 20 s, still ready: {ready:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let open = listeners(self.port);
        for m in &members {
            ensure!(self.c.pod(m)?.signal(Signal::SIGCONT), "{m} is not running");
        }
        eprintln!("etcd stopped: every console-svc replica unready (fenced) after {unready:?}; console listeners then: {open:?}");
        ensure!(
            open.is_empty(),
            "a fenced replica still listens on the console port: {open:?}"
        );
        let back = self.c.settle(Duration::from_secs(60)).await?;
        let since = Instant::now();
        loop {
            let (host, port) = console_url(
                &self.api,
                &self.user,
                &self.uuid,
                None,
                Duration::from_secs(30),
            )
            .await?;
            ensure!(
                port == self.port,
                "the console came back on port {port}, not {}",
                self.port
            );
            self.host = host;
            if self.owner().await.is_ok()
                && listeners(port) == vec![format!("{}:{port}", self.host)]
            {
                break;
            }
            ensure!(
                since.elapsed() < Duration::from_secs(30),
                "the console was not served again within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        eprintln!(
            "etcd continued: every pod ready again after {back:?}, the console on tcp://{}:{}",
            self.host, self.port
        );
        self.type_through().await
    }

    async fn disable(&self) -> Result<()> {
        let path = format!("/v1/nodes/{}/states/console", self.uuid);
        let (st, v) = http(
            &self.api,
            "PUT",
            &path,
            &self.user,
            Some(&json!({"enabled": false})),
        )
        .await?;
        ensure!(st == 202, "console disable: HTTP {st}: {v}");
        Ok(())
    }
}

/// The dev overlay's etcd and console-svc, after `mutate`; what settling
/// them gives.
async fn dev(
    first_ip: u8,
    first_vip: u8,
    mutate: impl FnOnce(&mut Vec<Value>),
) -> Result<Option<Result<Duration>>> {
    let Some(path) = rendered("dev") else {
        return Ok(None);
    };
    let mut docs: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    mutate(&mut docs);
    let m = Manifests::parse(&docs)?;
    let (secrets, _) = secrets::make(&m.namespace)?;
    let mut c = Cluster::start(
        m,
        options(secrets, first_ip, first_vip, Some(&["etcd", "console-svc"])),
    )
    .await?;
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
            let env = console_svc_container(docs)["env"]
                .as_array_mut()
                .expect("env");
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
        let err = format!(
            "{:#}",
            r.err()
                .ok_or_else(|| anyhow!("the rehearsal passed a wrong env name"))?
        );
        eprintln!("{err}");
        ensure!(
            err.contains("console-svc-0") && err.contains("exited"),
            "{err}"
        );
        ensure!(
            err.to_lowercase().contains("replicaid"),
            "the error does not name the variable: {err}"
        );
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
        let err = format!(
            "{:#}",
            r.err()
                .ok_or_else(|| anyhow!("the rehearsal passed a probe on the wrong port"))?
        );
        eprintln!("{err}");
        ensure!(
            err.contains("readiness probe of console-svc-0") && err.contains(":50052"),
            "{err}"
        );
        Ok(())
    })
    .await
}

/// What every overlay must keep consistent when it changes a count: etcd's
/// `--initial-cluster` and console-svc's `etcd.endpoints` name exactly the
/// StatefulSet's members, and console-svc's grace period covers its drain.
#[test]
fn overlays_list_exactly_their_etcd_members() {
    if let Err(e) = members_consistent() {
        panic!("{e:#}");
    }
}

fn members_consistent() -> Result<()> {
    for overlay in ["dev", "ha"] {
        let Some(path) = rendered(overlay) else {
            return Ok(());
        };
        let m = Manifests::load(&path)?;
        let etcd = m.workload("etcd")?;
        let want: Vec<String> = (0..etcd.replicas).map(|k| format!("etcd-{k}")).collect();
        let cmd = &etcd.containers[0].command;
        let cluster = cmd
            .iter()
            .find_map(|a| a.strip_prefix("--initial-cluster="))
            .ok_or_else(|| anyhow!("{overlay}: etcd has no --initial-cluster"))?;
        let members: Vec<&str> = cluster
            .split(',')
            .filter_map(|m| m.split('=').next())
            .collect();
        ensure!(
            members == want,
            "{overlay}: --initial-cluster names {members:?}, the StatefulSet runs {want:?}"
        );
        let svc = m.workload("console-svc")?;
        let endpoints = svc.containers[0]
            .env
            .iter()
            .find(|e| e.name == "PORTHOLE_CONSOLE_SVC_ETCD_ENDPOINTS")
            .and_then(|e| match &e.source {
                porthole_tests::k8s::container::EnvSource::Value(v) => Some(v.clone()),
                _ => None,
            })
            .ok_or_else(|| anyhow!("{overlay}: console-svc sets no etcd endpoints"))?;
        let hosts: Vec<String> = endpoints
            .split(',')
            .map(|e| {
                e.trim_start_matches("http://")
                    .split('.')
                    .next()
                    .unwrap_or("")
                    .to_owned()
            })
            .collect();
        ensure!(
            hosts == want,
            "{overlay}: console-svc's etcd endpoints {hosts:?}, the members {want:?}"
        );
        let grace = svc.grace;
        let shutdown = shutdown_timeout(&m)?;
        ensure!(
            grace > shutdown + Duration::from_secs(4),
            "{overlay}: grace {grace:?} vs shutdown_timeout {shutdown:?}"
        );
    }
    Ok(())
}
