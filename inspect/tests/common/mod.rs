//! Harness for the inspect service's tests against the real
//! ironic-inspector: the conductor and the inspect service in-process (each
//! `run` on a 127.0.0.1 listener), ironic-inspector 12.5 started by
//! `../shared/rig/inspector-up.sh` in a state dir of the test's own (its
//! venv linked from `.venv-inspector`, made by scripts/venv-inspector.sh),
//! talking to the conductor as its Ironic API, and stopped by its pid file
//! when the harness drops.
//!
//! Tests skip with a notice when the rig script or the venv is missing,
//! and fail instead when `PORTHOLE_REQUIRE_PEERS` is set (scripts/test.sh).

#![allow(dead_code)]

use conductor::config::Layered as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn missing(what: &str) -> Option<(PathBuf, PathBuf)> {
    eprintln!("notice: {what}; skipping");
    assert!(
        std::env::var_os("PORTHOLE_REQUIRE_PEERS").is_none(),
        "a test peer is missing and PORTHOLE_REQUIRE_PEERS is set (CI): see the notice above"
    );
    None
}

/// The rig script and the inspector venv, or `None` with a notice.
pub fn peers() -> Option<(PathBuf, PathBuf)> {
    let rig = std::env::var_os("PORTHOLE_RIG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared/rig"));
    let script = rig.join("inspector-up.sh");
    let venv = std::env::var_os("PORTHOLE_VENV_INSPECTOR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv-inspector"));
    if !script.exists() {
        return missing(&format!("no {} (set PORTHOLE_RIG_DIR)", script.display()));
    }
    if !venv.join("bin/ironic-inspector").exists() {
        return missing(&format!(
            "{} has no ironic-inspector (run scripts/venv-inspector.sh)",
            venv.display()
        ));
    }
    Some((script, venv))
}

/// A port free now (bound, then closed).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A real ironic-inspector, stopped on drop.
pub struct Inspector {
    pub url: String,
    script: PathBuf,
    state: tempfile::TempDir,
}

impl Inspector {
    /// Start it against the Ironic API at `ironic`; its port is
    /// `INSPECTOR_PORT` when set, else a free one. `timeout`: inspector's
    /// own introspection timeout.
    pub fn start(script: &Path, venv: &Path, ironic: &str, timeout: Duration) -> Result<Self> {
        let state = tempfile::Builder::new()
            .prefix("porthole-inspector-")
            .tempdir()?;
        std::fs::create_dir_all(state.path().join("inspector"))?;
        std::os::unix::fs::symlink(venv, state.path().join("inspector/venv"))?;
        let port = match std::env::var("INSPECTOR_PORT") {
            Ok(p) => p.parse().context("INSPECTOR_PORT")?,
            Err(_) => free_port()?,
        };
        let out = Command::new(script)
            .arg("up")
            .env("RIG_STATE_DIR", state.path())
            .env("INSPECTOR_PORT", port.to_string())
            .env("IRONIC_URL", ironic)
            .env("INSPECTOR_TIMEOUT", timeout.as_secs().to_string())
            .output()?;
        let this = Self {
            url: format!("http://127.0.0.1:{port}"),
            script: script.to_owned(),
            state,
        };
        if !out.status.success() {
            bail!(
                "inspector-up.sh failed: {}{}\nlog: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                this.log()
            );
        }
        Ok(this)
    }

    /// inspector's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state.path().join("inspector/inspector.log"))
            .unwrap_or_default()
    }

    pub fn stop(&self) {
        let _ = Command::new(&self.script)
            .arg("down")
            .env("RIG_STATE_DIR", self.state.path())
            .output();
    }
}

impl Drop for Inspector {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A service's `run` in-process; cancelled on drop.
pub struct Served<E> {
    pub url: String,
    pub shutdown: CancellationToken,
    pub task: Option<JoinHandle<Result<(), E>>>,
}

impl<E> Drop for Served<E> {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl<E: std::error::Error + Send + Sync + 'static> Served<E> {
    pub async fn stop(&mut self) -> Result<()> {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(20), t)
                .await
                .context("stopping")???;
        }
        Ok(())
    }
}

/// The conductor with `[inspect] endpoint = inspect` (which nodes go to
/// it is each node's `inspect_interface`: [`Api::create_node`]).
pub async fn conductor(dir: &Path, inspect: &str) -> Result<Served<conductor::RunError>> {
    conductor_with(dir, inspect, Vec::new()).await
}

/// [`conductor`] with more `(section, key, value)` settings.
pub async fn conductor_with(
    dir: &Path,
    inspect: &str,
    extra: Vec<(&'static str, &'static str, toml::Value)>,
) -> Result<Served<conductor::RunError>> {
    let s = |v: &str| toml::Value::String(v.to_owned());
    let db = dir.join("conductor.sqlite");
    let mut overrides = vec![
        // Nothing listens there: these tests have no consoles.
        (
            "console",
            "endpoint",
            s(&format!("http://127.0.0.1:{}", free_port()?)),
        ),
        ("database", "path", s(&db.display().to_string())),
        ("inspect", "endpoint", s(inspect)),
    ];
    overrides.extend(extra);
    let config = conductor::config::Config::load(None, Vec::new(), &overrides)?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(conductor::run(listener, config, shutdown.clone()));
    Ok(Served {
        url,
        shutdown,
        task: Some(task),
    })
}

/// The inspect service on `listener`, `[inspector]` from `settings`.
pub fn inspect_config(settings: &[(&'static str, &str)]) -> Result<inspect::config::Config> {
    inspect_config_with(settings, &[])
}

/// [`inspect_config`] with `[service]` settings too.
pub fn inspect_config_with(
    settings: &[(&'static str, &str)],
    service: &[(&'static str, &str)],
) -> Result<inspect::config::Config> {
    let overrides: Vec<(&str, &str, toml::Value)> = settings
        .iter()
        .map(|(k, v)| ("inspector", *k, toml::Value::String((*v).to_owned())))
        .chain(
            service
                .iter()
                .map(|(k, v)| ("service", *k, toml::Value::String((*v).to_owned()))),
        )
        .collect();
    Ok(inspect::config::Config::load(None, Vec::new(), &overrides)?)
}

pub fn serve_inspect(
    listener: TcpListener,
    config: inspect::config::Config,
) -> Result<Served<inspect::RunError>> {
    let url = format!("http://{}", listener.local_addr()?);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(inspect::run(listener, config, shutdown.clone()));
    Ok(Served {
        url,
        shutdown,
        task: Some(task),
    })
}

/// The conductor's REST API, as a client sees it.
#[derive(Clone)]
pub struct Api {
    pub url: String,
    http: reqwest::Client,
}

impl Api {
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            http: reqwest::Client::new(),
        }
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value)> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .header("X-OpenStack-Ironic-API-Version", "1.81");
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let code = resp.status().as_u16();
        let text = resp.text().await?;
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).with_context(|| format!("not JSON: {text}"))?
        };
        Ok((code, v))
    }

    pub async fn node(&self, uuid: &str) -> Result<Value> {
        let (code, v) = self
            .call(reqwest::Method::GET, &format!("/v1/nodes/{uuid}"), None)
            .await?;
        if code != 200 {
            bail!("GET node {uuid}: {code} {v}");
        }
        Ok(v)
    }

    /// A fake-hardware node inspected by `inspector`, whose BMC address
    /// inspector looks it up by.
    pub async fn create_node(&self, name: &str, bmc: &str) -> Result<String> {
        self.create_node_with(json!({"name": name, "driver": "fake-hardware",
                                     "inspect_interface": "inspector",
                                     "driver_info": {"ipmi_address": bmc}}))
            .await
    }

    /// `POST /v1/nodes` with `body`; the new node's UUID.
    pub async fn create_node_with(&self, body: Value) -> Result<String> {
        let (code, v) = self
            .call(reqwest::Method::POST, "/v1/nodes", Some(body))
            .await?;
        if code != 201 {
            bail!("create node: {code} {v}");
        }
        Ok(v["uuid"].as_str().context("uuid")?.to_owned())
    }

    /// PUT states/provision; the status and body.
    pub async fn provision(&self, uuid: &str, target: &str) -> Result<(u16, Value)> {
        self.call(
            reqwest::Method::PUT,
            &format!("/v1/nodes/{uuid}/states/provision"),
            Some(json!({ "target": target })),
        )
        .await
    }

    /// Wait until the node's provision_state is `state` (and has no target),
    /// unlocked.
    pub async fn wait_state(&self, uuid: &str, state: &str, within: Duration) -> Result<Value> {
        self.wait_for(uuid, state, true, within).await
    }

    /// Wait until the node's provision_state is `state`, whatever its
    /// target, unlocked.
    pub async fn wait_state_target(
        &self,
        uuid: &str,
        state: &str,
        within: Duration,
    ) -> Result<Value> {
        self.wait_for(uuid, state, false, within).await
    }

    async fn wait_for(
        &self,
        uuid: &str,
        state: &str,
        stable: bool,
        within: Duration,
    ) -> Result<Value> {
        let end = tokio::time::Instant::now() + within;
        loop {
            let n = self.node(uuid).await?;
            // Its lock free too (the work's last step releases it just after).
            if n["provision_state"] == state
                && (!stable || n["target_provision_state"].is_null())
                && n["reservation"].is_null()
            {
                return Ok(n);
            }
            if tokio::time::Instant::now() >= end {
                bail!("node {uuid} not {state} within {within:?}: {n}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// manage, then wait for manageable.
    pub async fn manage(&self, uuid: &str) -> Result<()> {
        let (code, v) = self.provision(uuid, "manage").await?;
        if code != 202 {
            bail!("manage {uuid}: {code} {v}");
        }
        self.wait_state(uuid, "manageable", Duration::from_secs(20))
            .await?;
        Ok(())
    }
}

/// What a ramdisk (IPA) posts to inspector's `/v1/continue`: one NIC
/// with `mac`, a 100 GiB disk (also its root disk), 4 CPUs, 8 GiB, and the
/// BMC address `bmc`.
pub fn ramdisk_data(mac: &str, ip: &str, bmc: &str) -> Value {
    json!({
        "inventory": {
            "interfaces": [{"name": "eth0", "mac_address": mac, "ipv4_address": ip,
                            "has_carrier": true}],
            "cpu": {"count": 4, "architecture": "x86_64"},
            "memory": {"physical_mb": 8192, "total": 8_589_934_592u64},
            "disks": [{"name": "/dev/sda", "size": 107_374_182_400u64, "model": "disk",
                       "rotational": false}],
            "bmc_address": bmc,
        },
        // IPA sends the root disk it would pick; inspector's local_gb comes from it.
        "root_disk": {"name": "/dev/sda", "size": 107_374_182_400u64, "model": "disk",
                      "rotational": false},
        "boot_interface": format!("01-{}", mac.replace(':', "-")),
    })
}

/// POST inspector's `/v1/continue` as the ramdisk would.
pub async fn post_continue(inspector: &str, data: &Value) -> Result<(u16, String)> {
    let resp = reqwest::Client::new()
        .post(format!("{inspector}/v1/continue"))
        .json(data)
        .send()
        .await?;
    Ok((resp.status().as_u16(), resp.text().await?))
}

/// inspector's `GET /v1/introspection/{uuid}`.
pub async fn introspection_status(inspector: &str, uuid: &str) -> Result<Value> {
    let resp = reqwest::get(format!("{inspector}/v1/introspection/{uuid}")).await?;
    let code = resp.status().as_u16();
    let v: Value = resp.json().await?;
    if code != 200 {
        bail!("introspection status {uuid}: {code} {v}");
    }
    Ok(v)
}

/// `.venv-clients/bin/openstack`, or `None` with a notice.
pub fn openstack() -> Option<PathBuf> {
    let venv = std::env::var_os("PORTHOLE_VENV_CLIENTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv-clients"));
    let bin = venv.join("bin/openstack");
    if bin.exists() {
        return Some(bin);
    }
    missing(&format!(
        "{} has no openstack client (run scripts/venv-clients.sh)",
        venv.display()
    ))
    .map(|_| bin)
}

/// `openstack --os-auth-type none --os-endpoint URL baremetal ARGS`: the
/// exit status and what it printed.
pub async fn baremetal(bin: &Path, url: &str, args: &[&str]) -> Result<(bool, String)> {
    let out = tokio::process::Command::new(bin)
        .args(["--os-auth-type", "none", "--os-endpoint", url, "baremetal"])
        .args(args)
        .env_remove("OS_CLOUD")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), out)
        .await
        .with_context(|| format!("openstack baremetal {} took too long", args.join(" ")))??;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("$ openstack baremetal {}\n{text}", args.join(" "));
    Ok((out.status.success(), text))
}
