//! console-svc and the conductor started from one environment: both
//! services' variables are set for both processes (including
//! `PORTHOLE_CONSOLE_SVC_SERVICE_REPLICA_ID=1` and a `[console]` key for
//! each, whose sections differ in shape), and each reads its own. The
//! conductor reaches console-svc only through its own
//! `PORTHOLE_CONDUCTOR_CONSOLE_ENDPOINT`, enables a console on a rig BMC,
//! and console-svc reports the console owned by replica "1".
//!
//! Both binaries run as processes (as from a shell), stopped by pid.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use porthole_tests::ports::PortSlot;
use porthole_tests::rig_or_skip;
use serde_json::{json, Value};
use tokio::process::{Child, Command};

mod common;
use common::eventually;

/// A child process, SIGTERMed (then reaped) when dropped.
struct Service {
    name: &'static str,
    child: Child,
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} did not stop on SIGTERM; killing it", self.name);
        let _ = self.child.start_kill();
    }
}

fn start(
    name: &'static str,
    bin: &Path,
    args: &[&str],
    env: &[(String, String)],
    log: &Path,
) -> Result<Service> {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("PORTHOLE_LOG", "info")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    Ok(Service { name, child })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_services_read_their_own_variables_from_one_environment() {
    porthole_tests::run(body()).await
}

async fn body() -> Result<()> {
    let rig = rig_or_skip!();
    let bmcs = rig.lease_bmcs(1).await?;
    let bmc = &bmcs[0];
    let dir = tempfile::Builder::new()
        .prefix("porthole-one-env-")
        .tempdir()?;
    let slot = PortSlot::lease(4)?;
    let grpc = format!("127.0.0.1:{}", slot.grpc_port());
    let (first, end) = slot.console_range(4);
    let api = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let db = dir.path().join("conductor.sqlite");
    let pid_dir = dir.path().join("pids");
    let var = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    // One environment for both: each service's keys, plus the other's.
    let env = vec![
        var("PORTHOLE_CONSOLE_SVC_SERVICE_LISTEN", &grpc),
        var("PORTHOLE_CONSOLE_SVC_SERVICE_REPLICA_ID", "1"),
        var(
            "PORTHOLE_CONSOLE_SVC_CONSOLE_PORT_RANGE",
            &format!("{first}:{end}"),
        ),
        var("PORTHOLE_CONSOLE_SVC_CONSOLE_SOCAT_ADDRESS", "127.0.0.1"),
        var(
            "PORTHOLE_CONSOLE_SVC_CONSOLE_TERMINAL_PID_DIR",
            &pid_dir.display().to_string(),
        ),
        var("PORTHOLE_CONDUCTOR_API_LISTEN", &api.to_string()),
        var(
            "PORTHOLE_CONDUCTOR_CONSOLE_ENDPOINT",
            &format!("http://{grpc}"),
        ),
        var("PORTHOLE_CONDUCTOR_CONSOLE_TIMEOUT", "20"),
        var(
            "PORTHOLE_CONDUCTOR_DATABASE_PATH",
            &db.display().to_string(),
        ),
        var("PORTHOLE_CONDUCTOR_POWER_POLL_INTERVAL", "200ms"),
    ];
    // `timeout = "20"` is no duration: the conductor must refuse it, naming
    // its variable, while console-svc (which has no such key) does not care.
    let bad = start(
        "conductor",
        Path::new(env!("CARGO_BIN_EXE_conductor")),
        &[],
        &env,
        &dir.path().join("conductor-bad.log"),
    )?;
    let status = wait_exit(bad, Duration::from_secs(20)).await?;
    let said = std::fs::read_to_string(dir.path().join("conductor-bad.log"))?;
    ensure!(
        !status.success() && said.contains("PORTHOLE_CONDUCTOR_CONSOLE_TIMEOUT"),
        "the conductor took console.timeout = \"20\" ({status}): {said}"
    );
    let env: Vec<_> = env
        .into_iter()
        .map(|(k, v)| match k.as_str() {
            "PORTHOLE_CONDUCTOR_CONSOLE_TIMEOUT" => (k, "20s".to_owned()),
            _ => (k, v),
        })
        .collect();

    let _svc = start(
        "console-svc",
        &porthole_tests::svc::binary()?,
        &["serve"],
        &env,
        &dir.path().join("console-svc.log"),
    )?;
    let _cond = start(
        "conductor",
        Path::new(env!("CARGO_BIN_EXE_conductor")),
        &[],
        &env,
        &dir.path().join("conductor.log"),
    )?;
    let logs = || {
        ["console-svc.log", "conductor.log"]
            .iter()
            .map(|f| std::fs::read_to_string(dir.path().join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n---\n")
    };

    let http = reqwest::Client::new();
    let base = format!("http://{api}/v1");
    let ironic = |r: reqwest::RequestBuilder| r.header("X-OpenStack-Ironic-API-Version", "1.78");
    eventually(
        Duration::from_secs(30),
        "the conductor on its own api.listen",
        || async {
            let up = ironic(http.get(&base)).send().await;
            Ok(up.ok().filter(|r| r.status().is_success()))
        },
    )
    .await
    .with_context(logs)?;
    ensure!(db.exists(), "the conductor did not use its database.path");

    let node: Value = ironic(http.post(format!("{base}/nodes")))
        .json(&json!({
            "name": "one-env",
            "driver": "ipmi",
            "driver_info": {
                "ipmi_address": bmc.host,
                "ipmi_port": bmc.port,
                "ipmi_username": bmc.username,
                "ipmi_password": bmc.password,
                "ipmi_cipher_suite": bmc.cipher_suite,
            },
        }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let uuid = node["uuid"].as_str().context("node uuid")?.to_owned();
    ironic(http.put(format!("{base}/nodes/{uuid}/states/console")))
        .json(&json!({"enabled": true}))
        .send()
        .await?
        .error_for_status()
        .with_context(logs)?;

    // console-svc's view of the console the conductor asked for.
    let shown = eventually(Duration::from_secs(60), "the console running", || async {
        let out = Command::new(porthole_tests::svc::binary()?)
            .args([
                "show",
                &uuid,
                "--json",
                "--server",
                &format!("http://{grpc}"),
            ])
            .env_remove("PORTHOLE_SERVER")
            .output()
            .await?;
        // Not there yet (the conductor enables it in the background).
        let v: Value = match serde_json::from_slice(&out.stdout) {
            Ok(v) => v,
            Err(_) => return Ok(None),
        };
        Ok((v["state"] == "running").then_some(v))
    })
    .await
    .with_context(logs)?;
    ensure!(shown["owner"] == "1", "owner is not replica \"1\": {shown}");
    let port = shown["port"].as_u64().context("console port")?;
    ensure!(
        (u64::from(first)..u64::from(end)).contains(&port),
        "console port {port} outside console-svc's own range {first}:{end}"
    );

    ironic(http.put(format!("{base}/nodes/{uuid}/states/console")))
        .json(&json!({"enabled": false}))
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

async fn wait_exit(mut s: Service, within: Duration) -> Result<std::process::ExitStatus> {
    let status = tokio::time::timeout(within, s.child.wait())
        .await
        .context("the conductor neither refused its configuration nor stopped")??;
    Ok(status)
}
