//! The conductor's `/metrics` (api.metrics_listen) against the real rig and
//! a console-svc process, read by Prometheus' own parser: API requests move
//! by route template and status (never a raw path or a node's UUID), a
//! power on through the REST API counts as a successful action, a console
//! that console-svc dropped is restored, and one it serves for a node that
//! does not want it is retired, each counted as such.
//!
//! Its own test binary: the conductor's metrics are process-wide, so no
//! other conductor may run in this process.

use conductor::config::Layered as _;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use porthole_proto::console::v1 as pb;
use porthole_tests::metrics::{self, Scrape};
use porthole_tests::{rig_or_skip, Backend, ConsoleSvc};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const FAMILIES: &[(&str, &str)] = &[
    ("porthole_conductor_api_requests", "counter"),
    (
        "porthole_conductor_api_request_duration_seconds",
        "histogram",
    ),
    ("porthole_conductor_power_actions", "counter"),
    (
        "porthole_conductor_power_action_duration_seconds",
        "histogram",
    ),
    ("porthole_conductor_console_reconciles", "counter"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_move_with_api_requests_power_on_and_a_restored_console() {
    porthole_tests::run(body()).await
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value)> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("X-OpenStack-Ironic-API-Version", "1.78");
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.with_context(|| path.to_owned())?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }
}

async fn eventually<T, F, Fut>(what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn body() -> Result<()> {
    let rig = rig_or_skip!();
    let Some(python) = metrics::parser() else {
        return Ok(());
    };
    let bmcs = rig.lease_bmcs(1).await?;
    let bmc = &bmcs[0];
    let svc = ConsoleSvc::start(Backend::Native).await?;

    let dir = tempfile::Builder::new()
        .prefix("porthole-metrics-")
        .tempdir()?;
    let metrics_addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let s = |v: &str| toml::Value::String(v.to_owned());
    let db = dir.path().join("conductor.sqlite").display().to_string();
    let overrides = [
        ("console", "endpoint", s(&svc.grpc_url())),
        ("database", "path", s(&db)),
        ("power", "poll_interval", s("200ms")),
        ("power", "state_timeout", s("30s")),
        ("api", "metrics_listen", s(&metrics_addr.to_string())),
    ];
    let config = conductor::config::Config::load(None, Vec::new(), &overrides)?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let api = Api {
        http: reqwest::Client::new(),
        base: format!("http://{}", listener.local_addr()?),
    };
    let stop = CancellationToken::new();
    let served = tokio::spawn(conductor::run(listener, config, stop.clone()));
    let _stop = stop.clone().drop_guard();
    let url = format!("http://{metrics_addr}/metrics");

    let (status, _) = api.call(reqwest::Method::GET, "/v1", None).await?;
    ensure!(status == 200, "GET /v1: {status}");
    let s0 = Scrape::take(&python, &url).await?;
    for (name, kind) in FAMILIES {
        ensure!(
            s0.family_type(name) == Some(kind),
            "family {name}: {:?}, not {kind}",
            s0.families.get(*name)
        );
    }
    let on_ok = [("action", "on"), ("result", "success")];
    let power_before = s0.value("porthole_conductor_power_actions_total", &on_ok)?;
    let restored = [("outcome", "restored")];
    let restored_before = s0.value("porthole_conductor_console_reconciles_total", &restored)?;

    let create = json!({"name": "metrics-node", "driver": "ipmi", "driver_info": {
        "ipmi_address": bmc.host, "ipmi_port": bmc.port, "ipmi_username": bmc.username,
        "ipmi_password": bmc.password, "ipmi_cipher_suite": bmc.cipher_suite}});
    let (status, node) = api
        .call(reqwest::Method::POST, "/v1/nodes", Some(create))
        .await?;
    ensure!(status == 201, "create: {status} {node}");
    let uuid = node["uuid"].as_str().context("uuid")?.to_owned();
    let node_path = format!("/v1/nodes/{uuid}");

    // Right after create the power sync holds the node (409, "retry").
    let power_path = format!("{node_path}/states/power");
    eventually("power on accepted", || async {
        let on = json!({"target": "power on"});
        let (status, body) = api
            .call(reqwest::Method::PUT, &power_path, Some(on))
            .await?;
        ensure!(status == 202 || status == 409, "power on: {status} {body}");
        Ok((status == 202).then_some(()))
    })
    .await?;
    eventually("power on settles", || async {
        let (_, n) = api.call(reqwest::Method::GET, &node_path, None).await?;
        Ok((n["power_state"] == "power on" && n["target_power_state"].is_null()).then_some(()))
    })
    .await?;
    let (status, _) = api.call(reqwest::Method::GET, "/v1/nowhere", None).await?;
    ensure!(status == 404, "GET /v1/nowhere: {status}");

    let s1 = Scrape::take(&python, &url).await?;
    let power_after = s1.value("porthole_conductor_power_actions_total", &on_ok)?;
    ensure!(
        power_after == power_before + 1.0,
        "power on counted {power_before} → {power_after}"
    );
    ensure!(
        s1.value(
            "porthole_conductor_power_action_duration_seconds_count",
            &[("action", "on")]
        )? >= 1.0,
        "power on duration not observed"
    );
    let requests = |s: &Scrape, method: &str, route: &str, status: &str| {
        s.value_or_zero(
            "porthole_conductor_api_requests_total",
            &[("method", method), ("route", route), ("status", status)],
        )
    };
    ensure!(
        requests(&s1, "POST", "/v1/nodes", "201") == 1.0,
        "POST /v1/nodes 201"
    );
    ensure!(
        requests(&s1, "PUT", "/v1/nodes/{node}/states/power", "202") == 1.0,
        "PUT power 202 by its route template"
    );
    ensure!(
        requests(&s1, "GET", "/v1/nodes/{node}", "200") >= 1.0,
        "GET node 200"
    );
    ensure!(
        requests(&s1, "GET", "unmatched", "404") == 1.0,
        "GET unmatched 404"
    );
    // One latency observation per PUT power, whatever its status (the
    // retried 409s included).
    let puts = requests(&s1, "PUT", "/v1/nodes/{node}/states/power", "202")
        + requests(&s1, "PUT", "/v1/nodes/{node}/states/power", "409");
    ensure!(
        s1.value(
            "porthole_conductor_api_request_duration_seconds_count",
            &[
                ("method", "PUT"),
                ("route", "/v1/nodes/{node}/states/power")
            ]
        )? == puts,
        "PUT power latency observed once per request"
    );
    ensure!(
        !s1.label_values()
            .any(|v| v.contains(&uuid) || v.contains("nowhere")),
        "a raw path or a UUID became a label value"
    );

    // A console console-svc drops while the node wants it is restored.
    let (status, body) = api
        .call(
            reqwest::Method::PUT,
            &format!("{node_path}/states/console"),
            Some(json!({"enabled": true})),
        )
        .await?;
    ensure!(status == 202, "console enable: {status} {body}");
    let mut client = svc.client().await?;
    let running = |c: &pb::Console| c.state == pb::ConsoleState::Running as i32;
    let get = |mut client: pb::console_service_client::ConsoleServiceClient<_>, node: String| async move {
        let req = pb::GetConsoleRequest { node_id: node };
        Ok::<_, anyhow::Error>(client.get_console(req).await.ok().map(|c| c.into_inner()))
    };
    eventually("console-svc runs the console", || {
        let (c, n) = (client.clone(), uuid.clone());
        async move { Ok(get(c, n).await?.filter(running).map(drop)) }
    })
    .await?;
    client
        .disable_console(pb::DisableConsoleRequest {
            node_id: uuid.clone(),
        })
        .await?;
    let s2 = eventually("the reconcile is counted", || async {
        let s = Scrape::take(&python, &url).await?;
        let n = s.value("porthole_conductor_console_reconciles_total", &restored)?;
        Ok((n > restored_before).then_some(s))
    })
    .await?;
    ensure!(
        s2.value("porthole_conductor_console_reconciles_total", &restored)?
            == restored_before + 1.0,
        "one restore counted"
    );
    eventually("console-svc runs the console again", || {
        let (c, n) = (client.clone(), uuid.clone());
        async move { Ok(get(c, n).await?.filter(running).map(drop)) }
    })
    .await?;

    // And one served for a node that does not want it is retired.
    let retired = [("outcome", "retired")];
    let retired_before = s2.value("porthole_conductor_console_reconciles_total", &retired)?;
    let (status, body) = api
        .call(
            reqwest::Method::PUT,
            &format!("{node_path}/states/console"),
            Some(json!({"enabled": false})),
        )
        .await?;
    ensure!(status == 202, "console disable: {status} {body}");
    client.enable_console(bmc.enable_request(&uuid)).await?;
    eventually("the retire is counted", || async {
        let s = Scrape::take(&python, &url).await?;
        let n = s.value("porthole_conductor_console_reconciles_total", &retired)?;
        Ok((n > retired_before).then_some(()))
    })
    .await?;
    let disabled = |c: &pb::Console| c.state == pb::ConsoleState::Disabled as i32;
    eventually("console-svc disabled the unwanted console", || {
        let (c, n) = (client.clone(), uuid.clone());
        async move { Ok(get(c, n).await?.filter(disabled).map(drop)) }
    })
    .await?;

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(20), served)
        .await
        .context("conductor stop")???;
    ensure!(
        std::net::TcpStream::connect(metrics_addr).is_err(),
        "the metrics endpoint outlived the conductor"
    );
    Ok(())
}
