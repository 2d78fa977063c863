//! Ramdisk-facing calls over HTTP with http_basic on: the conductor's own
//! router served in-process, with a deploy interface that waits for its
//! ramdisk and keeps the secret it was handed. Without credentials only
//! the ramdisk's calls get through, and only with the right secret while
//! the node waits; a wrong one is 400 with Ironic's words and changes
//! nothing; everything else is 401. Needs no rig.

mod common;

use std::future::IntoFuture;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use conductor::api::{self, AppState, HttpBasic};
use conductor::model::Node;
use conductor::provision::interfaces::{
    BoxFuture, CleanStep, DeployInterface, InterfaceError, Outcome, StepResult,
};
use conductor::service::{Conductor, PowerTiming};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// Deploys wait for the callback; the last token handed over is kept.
#[derive(Default)]
struct Waits(Mutex<Option<String>>);

impl DeployInterface for Waits {
    fn name(&self) -> &'static str {
        "waits"
    }
    fn deploy<'a>(&'a self, n: &'a Node, _: Option<&'a Value>) -> BoxFuture<'a, StepResult> {
        Box::pin(async move {
            let t = n.driver_internal_info["agent_secret_token"].as_str();
            *self.0.lock().unwrap() = t.map(str::to_owned);
            Ok(Outcome::Wait)
        })
    }
    fn tear_down<'a>(&'a self, _: &'a Node) -> BoxFuture<'a, Result<(), InterfaceError>> {
        Box::pin(async { Ok(()) })
    }
    fn take_over<'a>(&'a self, _: &'a Node) -> BoxFuture<'a, Result<(), InterfaceError>> {
        Box::pin(async { Ok(()) })
    }
    fn clean_steps(&self, _: &Node) -> Vec<CleanStep> {
        Vec::new()
    }
    fn execute_clean_step<'a>(
        &'a self,
        _: &'a Node,
        _: &'a CleanStep,
    ) -> BoxFuture<'a, StepResult> {
        Box::pin(async { Ok(Outcome::Done) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ramdisk_calls_need_the_operations_secret_and_nothing_else_gets_through() {
    porthole_tests::run(body()).await
}

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        operator: bool,
    ) -> Result<(u16, Value)> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("X-OpenStack-Ironic-API-Version", "1.78");
        if operator {
            req = req.basic_auth("operator", Some("op-pass"));
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).with_context(|| format!("{path}: {text}"))?
        };
        Ok((status, v))
    }

    async fn node(&self, u: &str) -> Result<Value> {
        let (s, mut v) = self
            .send(reqwest::Method::GET, &format!("/v1/nodes/{u}"), None, true)
            .await?;
        ensure!(s == 200, "GET node: {s} {v}");
        // Changes with every read-only rendering? No: but drop the links' host.
        v.as_object_mut().map(|m| m.remove("links"));
        Ok(v)
    }

    async fn settles(&self, u: &str, want: &str) -> Result<Value> {
        for _ in 0..200 {
            let n = self.node(u).await?;
            if n["provision_state"] == want && n["reservation"].is_null() {
                return Ok(n);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        anyhow::bail!("node {u} never settled in {want}: {}", self.node(u).await?)
    }
}

async fn body() -> Result<()> {
    use reqwest::Method as M;
    let dir = tempfile::tempdir()?;
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(
        &htpasswd,
        format!("operator:{}\n", bcrypt::hash("op-pass", 4)?),
    )?;
    let sealer = conductor::seal::Sealer::load_or_create(&dir.path().join("k"))?;
    let store = conductor::db::Store::open(&dir.path().join("db"), sealer)?;
    let consoles =
        conductor::console::ConsoleClient::new(&conductor::config::Config::default().console)?;
    let power = conductor::power::PowerSettings::new("ipmitool".into(), Duration::from_secs(2))?;
    let timing = PowerTiming {
        state_timeout: Duration::from_secs(2),
        poll_interval: Duration::from_millis(50),
    };
    let shutdown = CancellationToken::new();
    let mut c = Conductor::new(store, consoles, power, timing, shutdown.clone());
    let waits = Arc::new(Waits::default());
    c.interfaces.deploy.insert(
        "fake".into(),
        waits.clone() as Arc<dyn conductor::provision::interfaces::DeployInterface>,
    );
    let state = AppState {
        conductor: Arc::new(c),
        basic: Some(Arc::new(HttpBasic::load(&htpasswd)?)),
        public_endpoint: None,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let api = Api {
        base: format!("http://{}", listener.local_addr()?),
        http: reqwest::Client::new(),
    };
    use tower::Layer;
    let app = tower::util::MapRequestLayer::new(api::normalize_path).layer(api::router(state));
    let app = axum::ServiceExt::<axum::extract::Request>::into_make_service(app);
    let server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .into_future(),
    );

    // The operator enrolls a node and deploys it: it waits for its ramdisk.
    let (s, n) = api
        .send(
            M::POST,
            "/v1/nodes",
            Some(json!({"driver": "fake-hardware"})),
            true,
        )
        .await?;
    ensure!(s == 201, "create: {s} {n}");
    let u = n["uuid"].as_str().context("uuid")?.to_owned();
    let (s, p) = api
        .send(
            M::POST,
            "/v1/ports",
            Some(json!({"address": "52:54:00:aa:00:01", "node_uuid": u})),
            true,
        )
        .await?;
    ensure!(s == 201, "port: {s} {p}");
    for (verb, rest) in [
        ("manage", "manageable"),
        ("provide", "available"),
        ("active", "wait call-back"),
    ] {
        let (s, v) = api
            .send(
                M::PUT,
                &format!("/v1/nodes/{u}/states/provision"),
                Some(json!({"target": verb})),
                true,
            )
            .await?;
        ensure!(s == 202, "{verb}: {s} {v}");
        api.settles(&u, rest).await?;
    }
    let token = waits
        .0
        .lock()
        .unwrap()
        .clone()
        .context("no token handed over")?;
    let shown = api.node(&u).await?;
    ensure!(
        !shown.to_string().contains(&token),
        "the API shows the token: {shown}"
    );

    // Without credentials: only the ramdisk's calls get through at all.
    let cb = format!("/v1/nodes/{u}/vendor_passthru/fake_callback");
    for (m, path, b) in [
        (M::GET, "/v1/nodes".to_owned(), None),
        (M::GET, format!("/v1/nodes/{u}"), None),
        (
            M::GET,
            format!("/v1/nodes/{u}/vendor_passthru/methods"),
            None,
        ),
        (
            M::PUT,
            format!("/v1/nodes/{u}/states/power"),
            Some(json!({"target": "power off"})),
        ),
        (
            M::PUT,
            format!("/v1/nodes/{u}/states/provision"),
            Some(json!({"target": "abort"})),
        ),
        (
            M::POST,
            format!("/v1/nodes/{u}/vendor_passthru/no_such"),
            Some(json!({"key": token})),
        ),
        (M::GET, "/v1/ports".to_owned(), None),
        (M::GET, format!("/v1/nodes/{u}/inventory"), None),
    ] {
        let (s, v) = api.send(m.clone(), &path, b, false).await?;
        ensure!(s == 401, "{m} {path} without credentials: {s} {v}");
        let f = common::faultstring(&v)?;
        ensure!(f.contains("requires authentication"), "{path}: {f}");
    }
    // The inspection ramdisk's call reaches its handler without them (no
    // node waits for inspection: 404, as Ironic, nothing disclosed).
    let before = api.node(&u).await?;
    let (s, v) = api
        .send(
            M::POST,
            "/v1/continue_inspection",
            Some(json!({"inventory": {"interfaces": [{"mac_address": "52:54:00:aa:00:01"}]}})),
            false,
        )
        .await?;
    ensure!(s == 404, "continue_inspection without credentials: {s} {v}");
    ensure!(api.node(&u).await? == before, "it changed the node");

    // A wrong or missing key: 400, Ironic's words, the node unchanged.
    let before = api.node(&u).await?;
    for b in [
        json!({"key": "wrong"}),
        json!({}),
        json!({"agent_token": format!("{token}x")}),
    ] {
        let (s, v) = api.send(M::POST, &cb, Some(b.clone()), false).await?;
        ensure!(s == 400, "{b}: {s} {v}");
        let f = common::faultstring(&v)?;
        ensure!(f == "Invalid or missing agent token received.", "{f}");
    }
    let (s, v) = api
        .send(
            M::POST,
            &format!("/v1/heartbeat/{u}"),
            Some(json!({"callback_url": "http://192.0.2.9:9999", "agent_token": "wrong"})),
            false,
        )
        .await?;
    ensure!(s == 400, "heartbeat with a wrong token: {s} {v}");
    ensure!(
        api.node(&u).await? == before,
        "a refused call changed the node"
    );

    // The right key, in the wait state: accepted, both URL forms.
    let (s, v) = api
        .send(
            M::POST,
            &cb,
            Some(json!({"key": token, "address": "192.0.2.9"})),
            false,
        )
        .await?;
    ensure!(s == 200, "right key: {s} {v}");
    ensure!(
        v["node_uuid"] == json!(u) && v["args"] == json!({"address": "192.0.2.9"}),
        "{v}"
    );
    let (s, v) = api
        .send(
            M::POST,
            &format!("/v1/nodes/{u}/vendor_passthru?method=fake_callback"),
            Some(json!({"agent_token": token})),
            false,
        )
        .await?;
    ensure!(s == 200, "?method= form: {s} {v}");
    let (s, v) = api
        .send(
            M::GET,
            "/v1/lookup?addresses=52:54:00:AA:00:01",
            None,
            false,
        )
        .await?;
    ensure!(s == 200 && v["node"]["uuid"] == json!(u), "lookup: {s} {v}");
    ensure!(
        !v.to_string().contains(&token),
        "lookup gave the token away: {v}"
    );
    let (s, v) = api
        .send(
            M::POST,
            &format!("/v1/heartbeat/{u}"),
            Some(json!({"callback_url": "http://192.0.2.9:9999", "agent_token": token})),
            false,
        )
        .await?;
    ensure!(s == 202, "heartbeat: {s} {v}");

    // The operator sees the methods; after the wait ends the key is dead.
    let (s, v) = api
        .send(
            M::GET,
            &format!("/v1/nodes/{u}/vendor_passthru/methods"),
            None,
            true,
        )
        .await?;
    ensure!(
        s == 200 && v["fake_callback"]["http_methods"] == json!(["POST"]),
        "{s} {v}"
    );
    let (s, v) = api
        .send(
            M::PUT,
            &format!("/v1/nodes/{u}/states/provision"),
            Some(json!({"target": "abort"})),
            true,
        )
        .await?;
    ensure!(s == 202, "abort: {s} {v}");
    api.settles(&u, "deploy failed").await?;
    let (s, v) = api
        .send(M::POST, &cb, Some(json!({"key": token})), false)
        .await?;
    ensure!(s == 400, "the key after the wait ended: {s} {v}");
    let (s, v) = api
        .send(
            M::GET,
            "/v1/lookup?addresses=52:54:00:aa:00:01",
            None,
            false,
        )
        .await?;
    ensure!(s == 404, "lookup of a node that waits no more: {s} {v}");

    shutdown.cancel();
    server.await??;
    Ok(())
}
