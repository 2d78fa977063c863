//! Issue 12's benchmark (ignored: not part of CI; run it with
//! `cargo test -p inspect --test inspector_bench -- --ignored --nocapture`):
//! 50 `fake-hardware` nodes inspected at once through the inspect service
//! and the REAL ironic-inspector 12.5, which processes each ramdisk report
//! against the conductor's API (properties PATCH, ports, power off). A
//! simulated ramdisk posts each node's inventory to inspector's
//! `/v1/continue`, one every [`STAGGER`], once every node waits.
//!
//! Printed (markdown, for `tests/bench-results/inspect.md`): the time from
//! each callback (the POST's start) to the node seen `manageable` on the
//! conductor (one node list every 100 ms), p50/p99, and the status requests
//! per second our poller made to inspector (the inspect service's
//! `porthole_inspect_inspector_requests_total{call="status"}` over the
//! run), next to the same figures for Ironic's default poll period (60 s)
//! computed from the same run's timestamps: a 60 s poller started at each
//! node's inspection start sees it at its first tick not before inspector's
//! `finished_at`, and makes one request per node per tick until then.
//!
//! `PORTHOLE_BENCH_POLL` sets our `status_check_period` (default `1s`);
//! `PORTHOLE_BENCH_NODES` the node count (default 50). Needs
//! `../shared/rig/inspector-up.sh` and `.venv-inspector` (skips without).

mod common;

use std::time::{Duration, Instant, SystemTime};

use anyhow::{ensure, Context, Result};
use common::{Api, Inspector};
use futures::future::try_join_all;
use tokio::net::TcpListener;

/// Between two ramdisks' callbacks.
const STAGGER: Duration = Duration::from_millis(500);
/// Ironic's `[inspector] status_check_period` default.
const IRONIC_PERIOD: Duration = Duration::from_secs(60);

/// One node's timeline.
struct Timeline {
    started: SystemTime,
    callback: SystemTime,
    /// inspector's `finished_at`.
    finished: SystemTime,
    manageable: SystemTime,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn fifty_nodes_through_the_real_inspector() {
    porthole_tests::run(bench()).await
}

fn env_or<T: std::str::FromStr>(var: &str, default: T) -> T {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn bench() -> Result<()> {
    let Some((script, venv)) = common::peers() else {
        return Ok(());
    };
    let n: usize = env_or("PORTHOLE_BENCH_NODES", 50);
    ensure!(
        (1..=200).contains(&n),
        "PORTHOLE_BENCH_NODES must be 1..=200"
    );
    let poll = std::env::var("PORTHOLE_BENCH_POLL").unwrap_or_else(|_| "1s".into());
    let load_start = loadavg();
    let wall = Instant::now();
    let dir = tempfile::tempdir()?;
    let inspect_listener = TcpListener::bind("127.0.0.1:0").await?;
    let inspect_url = format!("http://{}", inspect_listener.local_addr()?);
    let mut conductor = common::conductor(dir.path(), &inspect_url).await?;
    let api = Api::new(&conductor.url);
    let inspector = Inspector::start(&script, &venv, &conductor.url, Duration::from_secs(600))?;
    let metrics = format!("127.0.0.1:{}", common::free_port()?);
    let config = common::inspect_config_with(
        &[
            ("enabled", "true"),
            ("service_url", &format!("{}/v1", inspector.url)),
            ("status_check_period", &poll),
        ],
        &[("metrics_listen", &metrics)],
    )?;
    let mut inspect = common::serve_inspect(inspect_listener, config)?;
    let result = run(&api, &inspector, &metrics, n).await;
    if result.is_err() {
        eprintln!("--- ironic-inspector's log ---\n{}", inspector.log());
    }
    inspect.stop().await?;
    conductor.stop().await?;
    let (timelines, requests) = result?;
    report(&timelines, requests, &poll, load_start, wall.elapsed());
    Ok(())
}

fn mac(i: usize) -> String {
    format!("52:54:00:12:{:02x}:{:02x}", 0x40 + i / 256, i % 256)
}

fn bmc(i: usize) -> String {
    format!("192.0.2.{}", 10 + i)
}

/// The timelines, and the status requests our poller made meanwhile.
async fn run(
    api: &Api,
    inspector: &Inspector,
    metrics: &str,
    n: usize,
) -> Result<(Vec<Timeline>, f64)> {
    let mut uuids = Vec::new();
    for i in 0..n {
        let uuid = api.create_node(&format!("bench-{i}"), &bmc(i)).await?;
        api.manage(&uuid).await?;
        uuids.push(uuid);
    }
    let before = status_requests(metrics).await?;
    let started = start_all(api, inspector, &uuids).await?;
    let watcher = tokio::spawn(watch_manageable(api.clone(), uuids.clone()));
    let callbacks = ramdisks(inspector, &uuids).await?;
    let manageable = watcher.await??;
    let after = status_requests(metrics).await?;
    let mut timelines = Vec::new();
    for (i, uuid) in uuids.iter().enumerate() {
        timelines.push(Timeline {
            started: started[i],
            callback: callbacks[i],
            finished: processed(api, inspector, uuid).await?,
            manageable: manageable[i],
        });
    }
    Ok((timelines, after - before))
}

/// Inspect every node at once; when each was asked. Returns once every
/// node waits, on both sides, before any ramdisk calls back.
async fn start_all(api: &Api, inspector: &Inspector, uuids: &[String]) -> Result<Vec<SystemTime>> {
    let started: Vec<SystemTime> = try_join_all(uuids.iter().map(|u| async move {
        let at = SystemTime::now();
        let (code, v) = api.provision(u, "inspect").await?;
        ensure!(code == 202, "inspect {u}: {code} {v}");
        Ok::<_, anyhow::Error>(at)
    }))
    .await?;
    for u in uuids {
        api.wait_state_target(u, "inspect wait", Duration::from_secs(120))
            .await?;
        let end = Instant::now() + Duration::from_secs(120);
        while common::introspection_status(&inspector.url, u).await?["state"] != "waiting" {
            ensure!(Instant::now() < end, "inspector never waiting for {u}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(started)
}

/// The ramdisks' callbacks, one every [`STAGGER`]; when each POST started.
async fn ramdisks(inspector: &Inspector, uuids: &[String]) -> Result<Vec<SystemTime>> {
    let mut posts = Vec::new();
    for (i, u) in uuids.iter().enumerate() {
        let data = common::ramdisk_data(&mac(i), &format!("198.51.100.{}", 10 + i), &bmc(i));
        let url = inspector.url.clone();
        let u = u.clone();
        posts.push(tokio::spawn(async move {
            let at = SystemTime::now();
            let (code, body) = common::post_continue(&url, &data).await?;
            ensure!(code == 200, "continue {u}: {code} {body}");
            Ok::<_, anyhow::Error>(at)
        }));
        tokio::time::sleep(STAGGER).await;
    }
    let mut callbacks = Vec::new();
    for p in posts {
        callbacks.push(p.await??);
    }
    Ok(callbacks)
}

/// inspector's `finished_at` for `uuid`, once its processing is checked
/// to have reached the conductor (properties, power off, no error).
async fn processed(api: &Api, inspector: &Inspector, uuid: &str) -> Result<SystemTime> {
    let st = common::introspection_status(&inspector.url, uuid).await?;
    ensure!(st["finished"] == true && st["error"].is_null(), "{st}");
    let finished =
        humantime::parse_rfc3339_weak(st["finished_at"].as_str().context("finished_at")?)?;
    let node = api.node(uuid).await?;
    ensure!(
        node["properties"]["cpus"] == "4"
            && node["properties"]["local_gb"] == "99"
            && node["power_state"] == "power off"
            && node["last_error"].is_null(),
        "{node}"
    );
    Ok(finished)
}

/// When each node was first seen `manageable` (one node list every 100 ms).
async fn watch_manageable(api: Api, uuids: Vec<String>) -> Result<Vec<SystemTime>> {
    let mut seen: Vec<Option<SystemTime>> = vec![None; uuids.len()];
    let end = Instant::now() + Duration::from_secs(600);
    while seen.iter().any(Option::is_none) {
        ensure!(
            Instant::now() < end,
            "not every node manageable within 600 s"
        );
        let (code, list) = api.call(reqwest::Method::GET, "/v1/nodes", None).await?;
        ensure!(code == 200, "node list: {code} {list}");
        let now = SystemTime::now();
        for node in list["nodes"].as_array().context("nodes")? {
            if node["provision_state"] != "manageable" {
                continue;
            }
            if let Some(i) = uuids.iter().position(|u| node["uuid"] == u.as_str()) {
                seen[i].get_or_insert(now);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(seen.into_iter().flatten().collect())
}

/// `porthole_inspect_inspector_requests_total{call="status",...}`, summed
/// over outcomes.
async fn status_requests(addr: &str) -> Result<f64> {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await?
        .text()
        .await?;
    let mut sum = 0.0;
    for l in text.lines() {
        if l.starts_with(r#"porthole_inspect_inspector_requests_total{call="status""#) {
            sum += l.rsplit(' ').next().unwrap_or("0").parse::<f64>()?;
        }
    }
    Ok(sum)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn since(later: SystemTime, earlier: SystemTime) -> Duration {
    later.duration_since(earlier).unwrap_or_default()
}

/// The `q` quantile (nearest rank) of `v`.
fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

/// A 60 s poller started at `t.started`: the tick that sees `t` finished,
/// and the requests it made for `t` until then.
fn ironic_poller(t: &Timeline) -> (SystemTime, u64) {
    let waited = since(t.finished, t.started);
    let ticks = (secs(waited) / secs(IRONIC_PERIOD)).ceil().max(1.0) as u64;
    (t.started + IRONIC_PERIOD * ticks as u32, ticks)
}

/// nproc and the CPU model.
fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_default();
    format!("nproc {cpus}, CPU {model:?}")
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// One poller's figures over the run.
struct Figures {
    /// callback → manageable (or → seen), seconds, per node.
    latency: Vec<f64>,
    requests: f64,
    /// From the first inspection's start to the last node seen.
    window: f64,
}

impl Figures {
    fn row(&self, name: &str) -> String {
        let l = &self.latency;
        format!(
            "| {name} | {:.2} | {:.2} | {:.2} | {:.0} | {:.1} | {:.2} |",
            quantile(l, 0.5),
            quantile(l, 0.99),
            l.iter().copied().fold(0.0, f64::max),
            self.requests,
            self.window,
            self.requests / self.window
        )
    }
}

/// Ours as measured, and Ironic's 60 s poller computed from the same timestamps.
fn figures(t: &[Timeline], requests: f64) -> (Figures, Figures) {
    let first_start = t.iter().map(|x| x.started).min().expect("nodes");
    let last_ours = t.iter().map(|x| x.manageable).max().expect("nodes");
    let ours = Figures {
        latency: t
            .iter()
            .map(|x| secs(since(x.manageable, x.callback)))
            .collect(),
        requests,
        window: secs(since(last_ours, first_start)),
    };
    let ironic: Vec<(SystemTime, u64)> = t.iter().map(ironic_poller).collect();
    let last_ironic = ironic.iter().map(|(s, _)| *s).max().expect("nodes");
    let computed = Figures {
        latency: t
            .iter()
            .zip(&ironic)
            .map(|(x, (seen, _))| secs(since(*seen, x.callback)))
            .collect(),
        requests: ironic.iter().map(|(_, k)| *k).sum::<u64>() as f64,
        window: secs(since(last_ironic, first_start)),
    };
    (ours, computed)
}

fn report(t: &[Timeline], requests: f64, poll: &str, load_start: String, wall: Duration) {
    let (ours, ironic) = figures(t, requests);
    // inspector's own share: callback to its finished_at.
    let processing: Vec<f64> = t
        .iter()
        .map(|x| secs(since(x.finished, x.callback)))
        .collect();
    println!("## {} nodes through ironic-inspector 12.5\n", t.len());
    println!("- Machine: {}", machine());
    println!(
        "- Load average (1, 5, 15 min): {load_start} at the start, {} at the end",
        loadavg()
    );
    println!(
        "- Callbacks: one every {} ms; inspector's processing (callback to its finished_at): p50 {:.2} s, p99 {:.2} s",
        STAGGER.as_millis(),
        quantile(&processing, 0.5),
        quantile(&processing, 0.99)
    );
    println!("- Bench wall time: {:.1} s\n", secs(wall));
    println!("| poller | callback → manageable p50 s | p99 s | max s | status requests | window s | requests/s |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    println!(
        "{}",
        ours.row(&format!("ours, status_check_period {poll} (measured)"))
    );
    println!(
        "{}",
        ironic.row("Ironic's default 60 s (computed from this run's timestamps)")
    );
    println!(
        "\nwindow: from the first inspection's start to the last node seen manageable (ours) or seen by the 60 s poller (computed)."
    );
    if ours.latency.iter().any(|l| *l <= 0.0) {
        println!("\nnote: a node was seen manageable before its callback started");
    }
}

#[test]
fn quantiles_and_the_computed_poller() {
    let v = [1.0, 2.0, 3.0, 4.0];
    assert_eq!((quantile(&v, 0.5), quantile(&v, 0.99)), (2.0, 4.0));
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
    let t = |finished: u64| Timeline {
        started: t0,
        callback: t0,
        finished: t0 + Duration::from_secs(finished),
        manageable: t0,
    };
    // Finished at 61 s: the ticks at 60 and 120 s, seen at 120 s.
    assert_eq!(ironic_poller(&t(61)), (t0 + Duration::from_secs(120), 2));
    assert_eq!(ironic_poller(&t(60)), (t0 + Duration::from_secs(60), 1));
    assert_eq!(ironic_poller(&t(5)), (t0 + Duration::from_secs(60), 1));
}
