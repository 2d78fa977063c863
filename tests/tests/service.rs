//! The service around the consoles, both backends: gRPC health reports
//! SERVING, server reflection lists the console service, and the operator's
//! CLI (`console-svc enable/show/list/log/disable --json`) works against a
//! running instance and refuses, in one line and with a non-zero exit, a node
//! the service does not know; SIGTERM ends open WatchConsoles streams (the
//! conductor keeps one open all the time) and the service with them.

use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use porthole_tests::svc::{binary, health_status, SERVICE_NAME};
use porthole_tests::{both_backends, rig_or_skip, Backend, Bmc, ConsoleSvc};
use serde_json::Value;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

/// Needs no rig: no console is ever started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_refuses_unknown_nodes() {
    porthole_tests::run(unknown_nodes(Backend::Native)).await
}

both_backends!(
    health_and_reflection,
    cli_drives_a_running_service,
    sigterm_ends_watch_streams_and_the_service
);

async fn health_and_reflection(backend: Backend) -> Result<()> {
    let _rig = rig_or_skip!();
    let svc = ConsoleSvc::start(backend).await?;
    for service in ["", SERVICE_NAME] {
        let status = health_status(&svc.grpc_url(), service).await?;
        ensure!(
            status == ServingStatus::Serving,
            "health of {service:?}: {status:?}"
        );
    }
    let services = reflected_services(&svc).await?;
    for want in [SERVICE_NAME, "grpc.health.v1.Health"] {
        ensure!(
            services.iter().any(|s| s == want),
            "reflection lists {services:?}, not {want}"
        );
    }
    Ok(())
}

/// `ListServices` over grpc.reflection.v1.
async fn reflected_services(svc: &ConsoleSvc) -> Result<Vec<String>> {
    let mut client = ServerReflectionClient::new(svc.channel().await?);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::once(req))
        .await?
        .into_inner();
    let resp = stream
        .message()
        .await?
        .ok_or_else(|| anyhow!("reflection closed without answering"))?;
    match resp.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            Ok(list.service.into_iter().map(|s| s.name).collect())
        }
        other => bail!("reflection answered {other:?}"),
    }
}

async fn cli_drives_a_running_service(backend: Backend) -> Result<()> {
    let rig = rig_or_skip!();
    let bmcs = rig.lease_bmcs(1).await?;
    let svc = ConsoleSvc::start(backend).await?;
    let node = porthole_tests::session::node_id("cli");
    let (start, end) = svc.port_range();

    let on = cli(&svc, &enable_args(&node, &bmcs[0])).await?;
    ensure!(
        on["node_id"] == node.as_str() && on["state"] == "running",
        "enable: {on}"
    );
    ensure!(
        on["backend"] == backend.as_str() && on["kind"] == "serial",
        "enable: {on}"
    );
    let port = on["port"]
        .as_u64()
        .ok_or_else(|| anyhow!("no port: {on}"))?;
    ensure!(
        (u64::from(start)..u64::from(end)).contains(&port),
        "port {port} outside {start}:{end}"
    );
    ensure!(
        on["url"] == format!("tcp://127.0.0.1:{port}").as_str(),
        "url: {on}"
    );

    let shown = cli(&svc, &["show", &node]).await?;
    ensure!(
        shown["url"] == on["url"] && shown["state"] == "running",
        "show: {shown}"
    );
    let list = cli(&svc, &["list"]).await?;
    let listed = list
        .as_array()
        .ok_or_else(|| anyhow!("list is not an array: {list}"))?;
    ensure!(
        listed.len() == 1 && listed[0]["node_id"] == node.as_str(),
        "list: {list}"
    );

    let log = cli(&svc, &["log", &node]).await;
    match backend {
        Backend::Native | Backend::Rmcp => {
            let log = log?;
            ensure!(
                log["data"].is_string() && log["truncated"] == false,
                "log: {log}"
            );
        }
        Backend::Socat => ensure!(log.is_err(), "log on the socat backend succeeded: {log:?}"),
    }

    let off = cli(&svc, &["disable", &node]).await?;
    ensure!(
        off["state"] == "disabled" && off["url"].is_null(),
        "disable: {off}"
    );
    let shown = cli(&svc, &["show", &node]).await?;
    ensure!(shown["state"] == "disabled", "show after disable: {shown}");

    let missing = cli(&svc, &["show", "no-such-node"]).await;
    ensure!(
        missing.is_err(),
        "show of an unknown node succeeded: {missing:?}"
    );
    Ok(())
}

fn enable_args<'a>(node: &'a str, bmc: &'a Bmc) -> Vec<String> {
    let mut args: Vec<String> = [
        "enable",
        node,
        "--bmc-address",
        &bmc.host,
        "--bmc-username",
        &bmc.username,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend([
        "--bmc-port".into(),
        bmc.port.to_string(),
        "--bmc-password-file".into(),
        bmc.password_file.display().to_string(),
        "--cipher-suite".into(),
        bmc.cipher_suite.to_string(),
    ]);
    args
}

/// `disable`, `show` and `log` of a node the service does not know (e.g. the
/// conductor's node name where console-svc knows its UUID) fail with one line
/// naming the node and NOT_FOUND, and record nothing.
async fn unknown_nodes(backend: Backend) -> Result<()> {
    let svc = ConsoleSvc::start(backend).await?;
    for cmd in ["disable", "show", "log"] {
        let out = cli_output(&svc, &[cmd, "no-such-node"]).await?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.code() == Some(1),
            "{cmd} of an unknown node: {} (stdout {:?}, stderr {stderr:?})",
            out.status,
            String::from_utf8_lossy(&out.stdout)
        );
        ensure!(
            stderr.lines().count() == 1
                && stderr.starts_with("console-svc: ")
                && stderr.contains("no-such-node")
                && stderr.contains("(NOT_FOUND)"),
            "{cmd} of an unknown node printed {stderr:?}"
        );
        ensure!(out.stdout.is_empty(), "{cmd} printed {:?}", out.stdout);
    }
    let list = cli(&svc, &["list"]).await?;
    ensure!(
        list == serde_json::json!([]),
        "list after the refusals: {list}"
    );
    Ok(())
}

/// Run `console-svc <args> --server URL --json` with a backtrace asked for
/// (a user error must still be one line).
async fn cli_output<S: AsRef<str>>(svc: &ConsoleSvc, args: &[S]) -> Result<std::process::Output> {
    let mut cmd = tokio::process::Command::new(binary()?);
    cmd.args(args.iter().map(AsRef::as_ref))
        .args(["--server", &svc.grpc_url(), "--json"])
        .env_remove("PORTHOLE_SERVER")
        .env("RUST_BACKTRACE", "full")
        .env("RUST_LIB_BACKTRACE", "1")
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output()).await;
    Ok(out.map_err(|_| anyhow!("console-svc took over 30 s"))??)
}

/// Run `console-svc <args> --server URL --json` and parse its output.
async fn cli<S: AsRef<str>>(svc: &ConsoleSvc, args: &[S]) -> Result<Value> {
    let mut cmd = tokio::process::Command::new(binary()?);
    cmd.args(args.iter().map(AsRef::as_ref))
        .args(["--server", &svc.grpc_url(), "--json"])
        .env_remove("PORTHOLE_SERVER")
        .kill_on_drop(true);
    let shown: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .map_err(|_| anyhow!("console-svc {shown:?} took over 30 s"))??;
    if !out.status.success() {
        bail!(
            "console-svc {shown:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "console-svc {shown:?} printed {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// A watcher must not hold the server's graceful shutdown open.
async fn sigterm_ends_watch_streams_and_the_service(backend: Backend) -> Result<()> {
    let _rig = rig_or_skip!();
    let mut svc = ConsoleSvc::start(backend).await?;
    let mut client = svc.client().await?;
    let mut stream = client
        .watch_consoles(porthole_proto::console::v1::WatchConsolesRequest {})
        .await?
        .into_inner();
    let synced = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .context("no SYNCED event")??
        .ok_or_else(|| anyhow!("stream ended before SYNCED"))?;
    ensure!(
        synced.r#type == 2,
        "first event of an empty service: {synced:?}"
    );
    let (by_itself, status) = tokio::task::spawn_blocking(move || svc.stop()).await??;
    ensure!(
        by_itself && status.success(),
        "SIGTERM with a watcher: exited by itself {by_itself}, {status}"
    );
    let end = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .context("the watch stream did not end")?;
    ensure!(
        !matches!(end, Ok(Some(_))),
        "the stream ended, not another event: {end:?}"
    );
    Ok(())
}
