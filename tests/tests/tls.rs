//! console-svc's gRPC over TLS, the binary as a black box with certificates
//! made by rcgen: with a client CA set (mutual TLS) a certified client is
//! served, while one without a certificate, one certified by another CA
//! and a plaintext one are refused in the handshake, cost the service
//! nothing and are logged without key material; the operator's CLI works
//! over TLS with `--ca-file/--cert-file/--key-file`, and says what is wrong
//! when it is given the wrong ones.

use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use porthole_proto::console::v1 as pb;
use porthole_tests::pki::{client_tls, Pki};
use porthole_tests::svc::{binary, health_at, SERVICE_NAME};
use porthole_tests::{rig_or_skip, Backend, ConsoleSvc, SvcOptions};
use tonic::transport::Endpoint;
use tonic_health::pb::health_check_response::ServingStatus;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_serves_certified_clients_only() {
    porthole_tests::run(mutual_tls_body()).await
}

async fn mutual_tls_body() -> Result<()> {
    let _rig = rig_or_skip!();
    let pki = Pki::new()?;
    let svc = ConsoleSvc::start_with(SvcOptions::new(Backend::Native).tls(&pki, true)).await?;
    ensure!(svc.grpc_url().starts_with("https://"), "{}", svc.grpc_url());

    // The harness's client presents the client certificate.
    for service in ["", SERVICE_NAME] {
        let status = health_at(svc.endpoint()?, service).await?;
        ensure!(status == ServingStatus::Serving, "{service:?}: {status:?}");
    }
    let list = svc
        .client()
        .await?
        .list_consoles(pb::ListConsolesRequest::default())
        .await?;
    ensure!(list.into_inner().consoles.is_empty());

    let https = svc.grpc_url();
    let no_cert = Endpoint::from_shared(https.clone())?.tls_config(client_tls(&pki.ca(), None)?)?;
    let refused = health_at(no_cert, "").await;
    ensure!(
        refused.is_err(),
        "a client without a certificate was served: {refused:?}"
    );
    let stranger = Endpoint::from_shared(https.clone())?
        .tls_config(client_tls(&pki.ca(), Some(&pki.stranger()))?)?;
    let refused = health_at(stranger, "").await;
    ensure!(
        refused.is_err(),
        "a certificate of another CA was accepted: {refused:?}"
    );
    let plain = format!("http://127.0.0.1:{}", svc.grpc_port());
    let refused = health_at(Endpoint::from_shared(plain)?, "").await;
    ensure!(
        refused.is_err(),
        "a plaintext client was served: {refused:?}"
    );

    // Still serving the certified client after the refusals.
    let status = health_at(svc.endpoint()?, SERVICE_NAME).await?;
    ensure!(
        status == ServingStatus::Serving,
        "after refusals: {status:?}"
    );

    // The refusals are logged with the peer; the key never is.
    let log = svc.log_lines();
    let refusals = log
        .iter()
        .filter(|l| l.contains("TLS handshake refused") && l.contains("127.0.0.1"))
        .count();
    ensure!(
        refusals >= 3,
        "{refusals} refusals logged:\n{}",
        log.join("\n")
    );
    ensure!(
        log.iter()
            .any(|l| l.contains("tls") && l.contains("mutual")),
        "the start line does not say TLS is mutual:\n{}",
        log.join("\n")
    );
    let key = std::fs::read_to_string(pki.server().key)?;
    for secret in key.lines().filter(|l| !l.starts_with("-----")) {
        ensure!(
            !log.iter().any(|l| l.contains(secret)),
            "a line of the key is in the log"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_over_tls() {
    porthole_tests::run(cli_body()).await
}

async fn cli_body() -> Result<()> {
    let _rig = rig_or_skip!();
    let pki = Pki::new()?;
    let svc = ConsoleSvc::start_with(SvcOptions::new(Backend::Native).tls(&pki, true)).await?;
    let url = svc.grpc_url();
    let ca = pki.ca().display().to_string();
    let client = pki.client();
    let (cert, key) = (
        client.cert.display().to_string(),
        client.key.display().to_string(),
    );

    let out = cli(&[
        "list",
        "--server",
        &url,
        "--ca-file",
        &ca,
        "--cert-file",
        &cert,
        "--key-file",
        &key,
        "--json",
    ])
    .await?;
    ensure!(out.0, "list over mutual TLS failed: {}", out.2);
    let list: serde_json::Value =
        serde_json::from_str(&out.1).with_context(|| format!("list printed {:?}", out.1))?;
    ensure!(list == serde_json::json!([]), "list: {list}");

    let out = cli(&["list", "--server", &url, "--ca-file", &ca]).await?;
    ensure!(
        !out.0 && out.2.contains("give --cert-file and --key-file"),
        "list without a client certificate: {} {}",
        out.1,
        out.2
    );

    let plain = format!("http://127.0.0.1:{}", svc.grpc_port());
    let out = cli(&["list", "--server", &plain]).await?;
    ensure!(!out.0, "plaintext list succeeded: {}", out.1);
    let out = cli(&["list", "--server", &plain, "--ca-file", &ca]).await?;
    ensure!(
        !out.0 && out.2.contains("TLS options need an https:// URL"),
        "http:// with --ca-file: {}",
        out.2
    );
    let out = cli(&["list", "--server", &url, "--cert-file", &cert]).await?;
    ensure!(
        !out.0 && out.2.contains("--key-file"),
        "--cert-file alone: {}",
        out.2
    );
    Ok(())
}

/// `console-svc <args>`: (success, stdout, stderr).
async fn cli(args: &[&str]) -> Result<(bool, String, String)> {
    let mut cmd = tokio::process::Command::new(binary()?);
    cmd.args(args)
        .env_remove("PORTHOLE_SERVER")
        .env_remove("RUST_BACKTRACE")
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .map_err(|_| anyhow!("console-svc {args:?} took over 30 s"))??;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_log_goes_over_mutual_tls() {
    porthole_tests::run(forward_body()).await
}

/// Two replicas on the rig's etcd, both serving mutual TLS: GetConsoleLog
/// on the replica that does not own the console is forwarded to the owner
/// over https with the replica's own certificate, and answers.
async fn forward_body() -> Result<()> {
    let rig = rig_or_skip!();
    let rig_json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        std::env::var("PORTHOLE_RIG_JSON")?,
    )?)?;
    let etcd = rig_json["etcd"]["endpoints"][0]
        .as_str()
        .context("rig.json: etcd.endpoints")?
        .to_owned();
    let bmcs = rig.lease_bmcs(1).await?;
    let pki = Pki::new()?;
    let key_dir = tempfile::Builder::new().prefix("porthole-tls-").tempdir()?;
    let key_file = key_dir.path().join("etcd.key");
    std::fs::write(&key_file, "cd".repeat(32))?;
    let prefix = format!("/porthole-test/tls-forward-{}/", std::process::id());
    let opts = SvcOptions::new(Backend::Native)
        .tls(&pki, true)
        .set("etcd", "endpoints", &format!("[{etcd:?}]"))
        .set("etcd", "prefix", &format!("{prefix:?}"))
        .set(
            "etcd",
            "secret_key_file",
            &format!("{:?}", key_file.display().to_string()),
        )
        .set("etcd", "lease_ttl", "\"3s\"");
    let replicas = [
        ConsoleSvc::start_with(opts.clone()).await?,
        ConsoleSvc::start_with(opts).await?,
    ];
    let node = porthole_tests::session::node_id("tls-fwd");
    let mut first = replicas[0].client().await?;
    let on = porthole_tests::session::enable(&mut first, bmcs[0].enable_request(&node)).await?;
    let on = porthole_tests::session::wait_console(
        &mut first,
        &node,
        Duration::from_secs(30),
        "running",
        |c| c.state == pb::ConsoleState::Running as i32,
    )
    .await
    .with_context(|| format!("after enable: {on:?}"))?;
    let mut forwarded = 0;
    for svc in &replicas {
        let owner = on.owner == format!("test-{}", svc.grpc_port());
        let log = svc
            .client()
            .await?
            .get_console_log(pb::GetConsoleLogRequest {
                node_id: node.clone(),
                max_bytes: 0,
            })
            .await;
        ensure!(
            log.is_ok(),
            "GetConsoleLog on {} (owner: {owner}): {log:?}",
            svc.grpc_url()
        );
        forwarded += usize::from(!owner);
    }
    ensure!(
        forwarded == 1,
        "owner {} is not one of the replicas",
        on.owner
    );
    porthole_tests::session::disable(&mut first, &node).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_key_stops_the_start_and_is_named_not_quoted() {
    porthole_tests::run(bad_key_body()).await
}

async fn bad_key_body() -> Result<()> {
    let _rig = rig_or_skip!();
    let pki = Pki::new()?;
    let dir = tempfile::Builder::new().prefix("porthole-tls-").tempdir()?;
    let key = dir.path().join("broken.key");
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nSECRET-KEY-MATERIAL*\n-----END PRIVATE KEY-----\n",
    )?;
    let opts = SvcOptions::new(Backend::Native).tls(&pki, true).set(
        "service",
        "tls_key_file",
        &format!("{:?}", key.display().to_string()),
    );
    let err = match ConsoleSvc::start_with(opts).await {
        Ok(_) => anyhow::bail!("console-svc started with a broken key"),
        Err(e) => format!("{e:#}"),
    };
    ensure!(
        err.contains("exited during start") && err.contains("broken.key"),
        "{err}"
    );
    ensure!(
        !err.contains("SECRET-KEY-MATERIAL"),
        "the key is quoted: {err}"
    );
    Ok(())
}
