//! Console evidence on real peers: an `ipmi` node on a rig BMC (ipmi_sim)
//! has its serial console enabled through the conductor (console-svc as a
//! process, native backend, which runs the SOL session while a viewer is
//! attached: one is, as an operator's); the simulated node prints on its serial line
//! as a ramdisk would (colours, a progress line redrawn with `\r`); its
//! inspection, through the inspect service and the REAL ironic-inspector
//! 12.5, ends at inspector's timeout (no ramdisk calls back), and the
//! node's `last_error` is inspector's error followed by the console's last
//! lines, terminal escapes stripped. A second `ipmi` node without a console
//! fails at the same time with inspector's error alone. Then the console
//! node is inspected again twice: with console-svc stopped by SIGSTOP
//! (slow: it accepts and never answers) and with console-svc gone (down);
//! both times the failure is recorded within the evidence timeout of
//! inspector's verdict, with a note saying why there is no evidence.
//!
//! Needs `PORTHOLE_RIG_JSON`, `../shared/rig/inspector-up.sh`,
//! `.venv-inspector` and the built `target/debug/console-svc`; skips with
//! a notice without them, fails instead under `PORTHOLE_REQUIRE_PEERS`.

mod common;

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use common::{Api, Inspector};
use porthole_proto::console::v1 as pb;
use porthole_tests::{node_side, rig_or_skip, Backend, Bmc, ConsoleSvc, Wire};
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// inspector's own introspection timeout: how each inspection here ends.
const INSPECTOR_TIMEOUT: Duration = Duration::from_secs(15);
/// `[conductor] failure_console_log_timeout` for this run.
const EVIDENCE_TIMEOUT: Duration = Duration::from_secs(2);
/// The inspect service's `status_check_period`.
const POLL: Duration = Duration::from_secs(1);
const TIMEOUT_ERROR: &str = "ironic-inspector inspection failed: Introspection timeout";

/// What the "ramdisk" prints last, raw, and the lines evidence must show.
const PRINTED: &[&str] = &[
    "\x1b[0;1mironic-python-agent\x1b[0m 9.4.0 starting\r\n",
    "Collecting inventory...  10%\rCollecting inventory... 100%\r\n",
    "\x1b[31mERROR\x1b[0m ironic_python_agent.inspector: cannot reach 192.0.2.1:5050\r\n",
    "\x1b]0;ipa\x07giving up on inspection\r\n",
];
const SHOWN: &[&str] = &[
    "ironic-python-agent 9.4.0 starting",
    "Collecting inventory... 100%",
    "ERROR ironic_python_agent.inspector: cannot reach 192.0.2.1:5050",
    "giving up on inspection",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_inspection_shows_the_consoles_last_lines() {
    porthole_tests::run(async {
        let rig = rig_or_skip!();
        let Some((script, venv)) = common::peers() else {
            return Ok(());
        };
        let bmcs = rig.lease_bmcs(2).await?;
        let mut svc = ConsoleSvc::start(Backend::Native).await?;
        let dir = tempfile::tempdir()?;
        let inspect_listener = TcpListener::bind("127.0.0.1:0").await?;
        let inspect_url = format!("http://{}", inspect_listener.local_addr()?);
        let s = |v: &str| toml::Value::String(v.to_owned());
        let mut conductor = common::conductor_with(
            dir.path(),
            &inspect_url,
            vec![
                ("console", "endpoint", s(&svc.grpc_url())),
                (
                    "conductor",
                    "failure_console_log_lines",
                    toml::Value::Integer(4),
                ),
                (
                    "conductor",
                    "failure_console_log_timeout",
                    toml::Value::Integer(EVIDENCE_TIMEOUT.as_secs() as i64),
                ),
            ],
        )
        .await?;
        let api = Api::new(&conductor.url);
        let inspector = Inspector::start(&script, &venv, &conductor.url, INSPECTOR_TIMEOUT)?;
        let config = common::inspect_config(&[
            ("enabled", "true"),
            ("service_url", &format!("{}/v1", inspector.url)),
            ("status_check_period", &format!("{}s", POLL.as_secs())),
        ])?;
        let mut inspect = common::serve_inspect(inspect_listener, config)?;
        let result = flow(&api, &inspector, &mut svc, [&bmcs[0], &bmcs[1]]).await;
        if result.is_err() {
            eprintln!("--- ironic-inspector's log ---\n{}", inspector.log());
        }
        inspect.stop().await?;
        conductor.stop().await?;
        result
    })
    .await
}

async fn flow(
    api: &Api,
    inspector: &Inspector,
    svc: &mut ConsoleSvc,
    bmcs: [&Bmc; 2],
) -> Result<()> {
    let watched = ipmi_node(api, "ev-console", bmcs[0], "52:54:00:12:35:01").await?;
    let quiet = ipmi_node(api, "ev-quiet", bmcs[1], "52:54:00:12:35:02").await?;
    let url = enable_console(api, &watched).await?;
    // console-svc's native backend runs the SOL session (and so logs)
    // while a viewer is attached: an operator's, or nova-serialproxy's.
    let mut viewer = porthole_tests::viewer(&url).await?;
    let mut serial = node_side(bmcs[0]).await?;
    porthole_tests::session::establish(&mut viewer, &mut serial).await?;
    sync(svc, &watched, &mut serial).await?;

    // Both fail at inspector's timeout; the ramdisk printed meanwhile.
    start_inspection(api, &watched).await?;
    start_inspection(api, &quiet).await?;
    for line in PRINTED {
        serial.send(line.as_bytes()).await?;
    }
    let (n, _) = fails(api, inspector, &watched).await?;
    let want = format!(
        "{TIMEOUT_ERROR}\nLast 4 lines of the node's serial console:\n{}",
        SHOWN.join("\n")
    );
    ensure!(n["last_error"] == want.as_str(), "with a console: {n}");
    let (n, _) = fails(api, inspector, &quiet).await?;
    ensure!(n["last_error"] == TIMEOUT_ERROR, "without a console: {n}");

    without_evidence(api, inspector, svc, &watched).await
}

/// The console node fails again twice, with console-svc slow (stopped by
/// SIGSTOP, its port still accepting) and then down: promptly (`fails`
/// checks the lag), with a note instead of the evidence.
async fn without_evidence(
    api: &Api,
    inspector: &Inspector,
    svc: &mut ConsoleSvc,
    watched: &str,
) -> Result<()> {
    signal(svc.pid(), "-STOP")?;
    start_inspection(api, watched).await?;
    let slow = fails(api, inspector, watched).await;
    signal(svc.pid(), "-CONT")?;
    let (n, lag) = slow?;
    let note = format!(
        "{TIMEOUT_ERROR}\nNo console log: the console service at {} did not answer within {}s.",
        svc.grpc_url(),
        EVIDENCE_TIMEOUT.as_secs()
    );
    ensure!(n["last_error"] == note.as_str(), "console-svc stopped: {n}");
    eprintln!("console-svc stopped: inspect failed {lag:?} after inspector's verdict");

    let url = svc.grpc_url();
    svc.stop()?;
    start_inspection(api, watched).await?;
    let (n, lag) = fails(api, inspector, watched).await?;
    let e = n["last_error"].as_str().unwrap_or_default();
    ensure!(
        e.starts_with(&format!(
            "{TIMEOUT_ERROR}\nNo console log: the console service at {url} is unavailable"
        )),
        "console-svc down: {n}"
    );
    ensure!(
        n["console_enabled"] == true,
        "the console is still wanted: {n}"
    );
    eprintln!("console-svc down: inspect failed {lag:?} after inspector's verdict");
    Ok(())
}

/// An `ipmi` node on `bmc` with a port `mac`, verified (manageable).
async fn ipmi_node(api: &Api, name: &str, bmc: &Bmc, mac: &str) -> Result<String> {
    let uuid = api
        .create_node_with(json!({
            "name": name, "driver": "ipmi", "inspect_interface": "inspector",
            "console_interface": "ipmitool-socat",
            "driver_info": {
                "ipmi_address": bmc.host, "ipmi_port": bmc.port,
                "ipmi_username": bmc.username, "ipmi_password": bmc.password,
                "ipmi_cipher_suite": bmc.cipher_suite,
            },
        }))
        .await?;
    // inspector looks a node up by MAC (it ignores a loopback BMC address)
    // and refuses to start without something to look it up by.
    let (code, port) = api
        .call(
            reqwest::Method::POST,
            "/v1/ports",
            Some(json!({"node_uuid": uuid, "address": mac})),
        )
        .await?;
    ensure!(code == 201, "port: {code} {port}");
    api.manage(&uuid).await?;
    Ok(uuid)
}

/// Enable `uuid`'s console through the conductor; its URL.
async fn enable_console(api: &Api, uuid: &str) -> Result<String> {
    let (code, v) = api
        .call(
            reqwest::Method::PUT,
            &format!("/v1/nodes/{uuid}/states/console"),
            Some(json!({"enabled": true})),
        )
        .await?;
    ensure!(code == 202, "console enable: {code} {v}");
    for _ in 0..100 {
        let (_, n) = api
            .call(
                reqwest::Method::GET,
                &format!("/v1/nodes/{uuid}/states/console"),
                None,
            )
            .await?;
        if let Some(url) = n["console_info"]["url"].as_str() {
            ensure!(n["console_enabled"] == true, "{n}");
            return Ok(url.to_owned());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!("console of {uuid} never enabled")
}

/// Print a marker on the node's serial line until console-svc's log has it
/// (the SOL session is up and logging).
async fn sync(svc: &ConsoleSvc, uuid: &str, serial: &mut Wire) -> Result<()> {
    let marker = format!("sync-{uuid}");
    let mut last = String::new();
    for _ in 0..60 {
        serial.send(format!("{marker}\r\n").as_bytes()).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let req = pb::GetConsoleLogRequest {
            node_id: uuid.to_owned(),
            max_bytes: 0,
        };
        last = match svc.client().await?.get_console_log(req).await {
            Ok(log) => String::from_utf8_lossy(&log.into_inner().data).into_owned(),
            Err(s) => format!("GetConsoleLog: {s}"),
        };
        if last.contains(&marker) {
            return Ok(());
        }
    }
    anyhow::bail!("console-svc's log never showed what the node printed: {last:?}")
}

async fn start_inspection(api: &Api, uuid: &str) -> Result<()> {
    let (code, v) = api.provision(uuid, "inspect").await?;
    ensure!(code == 202, "inspect {uuid}: {code} {v}");
    api.wait_state_target(uuid, "inspect wait", Duration::from_secs(30))
        .await?;
    Ok(())
}

/// Wait for `uuid`'s inspection to fail: the node (in `inspect failed`,
/// unlocked) and how long after inspector's own verdict (first seen
/// finished with an error) the conductor recorded it. That lag is the
/// inspect service's poll plus the evidence's bound, never more.
async fn fails(api: &Api, inspector: &Inspector, uuid: &str) -> Result<(Value, Duration)> {
    let within = INSPECTOR_TIMEOUT + Duration::from_secs(60);
    let end = Instant::now() + within;
    let mut verdict = None;
    loop {
        if verdict.is_none() {
            let st = common::introspection_status(&inspector.url, uuid).await?;
            if st["finished"] == true {
                ensure!(st["error"] == "Introspection timeout", "inspector: {st}");
                verdict = Some(Instant::now());
            }
        }
        let n = api.node(uuid).await?;
        if n["provision_state"] == "inspect failed" && n["reservation"].is_null() {
            // inspector finished just after this round's look at it.
            let seen = match verdict {
                Some(at) => at,
                None => {
                    let st = common::introspection_status(&inspector.url, uuid).await?;
                    ensure!(
                        st["finished"] == true,
                        "failed before inspector said so: {st} {n}"
                    );
                    Instant::now()
                }
            };
            let lag = seen.elapsed();
            ensure!(
                lag < POLL + EVIDENCE_TIMEOUT + Duration::from_secs(3),
                "the failure took {lag:?} after inspector's verdict: {n}"
            );
            return Ok((n, lag));
        }
        ensure!(
            Instant::now() < end,
            "{uuid} not inspect failed within {within:?}: {n}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `kill SIG pid` for the console-svc this test started.
fn signal(pid: i32, sig: &str) -> Result<()> {
    ensure!(pid > 0, "console-svc is not running");
    let st = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()?;
    ensure!(st.success(), "kill {sig} {pid}");
    Ok(())
}
