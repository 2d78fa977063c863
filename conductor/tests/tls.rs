//! The conductor and console-svc through mutual TLS, with real peers: the
//! openstack CLI against the conductor, console-svc as a process serving
//! gRPC over TLS with a client CA (certificates made here by rcgen), a
//! simulated IPMI BMC from the rig.
//!
//! A conductor with the client certificate (`[console] tls_ca, tls_cert,
//! tls_key`) enables a node's console and keystrokes flow through it; the
//! operator's CLI sees the same console over TLS. A conductor trusting the
//! CA but presenting no certificate is refused, and so is one talking
//! plaintext: the enable fails, says the console service is unavailable,
//! and records nothing.

mod common;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::{eventually, Cli, TestConductor};
use porthole_tests::pki::Pki;
use porthole_tests::session::establish;
use porthole_tests::svc::binary;
use porthole_tests::{node_side, rig_or_skip, viewer, Backend, Bmc, ConsoleSvc, SvcOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conductor_through_mutual_tls() {
    porthole_tests::run(body()).await
}

async fn body() -> Result<()> {
    let rig = rig_or_skip!();
    let Some(bin) = common::clients() else {
        return Ok(());
    };
    let bmcs = rig.lease_bmcs(1).await?;
    let bmc = &bmcs[0];
    let pki = Pki::new()?;
    let svc = ConsoleSvc::start_with(SvcOptions::new(Backend::Native).tls(&pki, true)).await?;
    let s = |p: &std::path::Path| toml::Value::String(p.display().to_string());
    let client = pki.client();

    let cond = TestConductor::start_with(
        &svc.grpc_url(),
        vec![
            ("console", "tls_ca", s(&pki.ca())),
            ("console", "tls_cert", s(&client.cert)),
            ("console", "tls_key", s(&client.key)),
        ],
    )
    .await?;
    let cli = Cli {
        bin: bin.clone(),
        url: cond.url.clone(),
    };
    let uuid = create_node(&cli, bmc, "n-tls").await?;
    cli.ok(&["node", "console", "enable", "n-tls"]).await?;
    let url = eventually(Duration::from_secs(30), "console url", || async {
        let c = cli.json(&["node", "console", "show", "n-tls"]).await?;
        Ok((c["console_enabled"] == true)
            .then(|| c["console_info"]["url"].as_str().map(str::to_owned))
            .flatten())
    })
    .await?;
    type_through(&url, bmc).await?;

    // The operator's CLI, over the same mutual TLS, sees that console.
    let out = tokio::process::Command::new(binary()?)
        .args(["show", &uuid, "--json", "--server", &svc.grpc_url()])
        .arg("--ca-file")
        .arg(pki.ca())
        .arg("--cert-file")
        .arg(&client.cert)
        .arg("--key-file")
        .arg(&client.key)
        .env_remove("PORTHOLE_SERVER")
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "console-svc show over TLS: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    ensure!(
        shown["state"] == "running" && shown["url"] == url.as_str(),
        "console-svc show: {shown}"
    );

    // A conductor that trusts the CA but has no client certificate, and
    // one that talks plaintext: both refused, nothing recorded.
    let no_cert =
        TestConductor::start_with(&svc.grpc_url(), vec![("console", "tls_ca", s(&pki.ca()))])
            .await?;
    refused(&bin, &no_cert, bmc, "no client certificate").await?;
    let plain = format!("http://127.0.0.1:{}", svc.grpc_port());
    let plaintext = TestConductor::start(&plain).await?;
    refused(&bin, &plaintext, bmc, "plaintext").await?;

    // The refusals cost the service nothing: the first conductor still
    // manages the console.
    cli.ok(&["node", "console", "disable", "n-tls"]).await?;
    let c = cli.json(&["node", "console", "show", "n-tls"]).await?;
    ensure!(
        c["console_enabled"] == false && c["console_info"].is_null(),
        "after disable: {c}"
    );
    Ok(())
}

/// A console enable through `cond` fails as unavailable and enables nothing.
async fn refused(bin: &std::path::Path, cond: &TestConductor, bmc: &Bmc, what: &str) -> Result<()> {
    let cli = Cli {
        bin: bin.to_owned(),
        url: cond.url.clone(),
    };
    create_node(&cli, bmc, "n-refused").await?;
    let ran = cli.run(&["node", "console", "enable", "n-refused"]).await?;
    ensure!(!ran.ok, "{what}: console enable succeeded");
    ensure!(
        ran.stderr.contains("console service") && ran.stderr.contains("unavailable"),
        "{what}: {}",
        ran.stderr
    );
    let c = cli.json(&["node", "console", "show", "n-refused"]).await?;
    ensure!(
        c["console_enabled"] == false && c["console_info"].is_null(),
        "{what}: after the refused enable: {c}"
    );
    Ok(())
}

async fn create_node(cli: &Cli, bmc: &Bmc, name: &str) -> Result<String> {
    let info = |k: &str, v: &str| format!("{k}={v}");
    let args = [
        info("ipmi_address", &bmc.host),
        info("ipmi_port", &bmc.port.to_string()),
        info("ipmi_username", &bmc.username),
        info("ipmi_password", &bmc.password),
        info("ipmi_cipher_suite", &bmc.cipher_suite.to_string()),
    ];
    let mut cmd = vec!["node", "create", "--driver", "ipmi", "--name", name];
    for a in &args {
        cmd.extend(["--driver-info", a.as_str()]);
    }
    let node = cli.json(&cmd).await?;
    Ok(node["uuid"].as_str().context("uuid")?.to_owned())
}

/// Keystrokes through the console URL reach the node; its output comes back.
async fn type_through(url: &str, bmc: &Bmc) -> Result<()> {
    let mut v = eventually(Duration::from_secs(20), "console port accepts", || async {
        Ok(viewer(url).await.ok())
    })
    .await?;
    let mut n = node_side(bmc).await?;
    establish(&mut v, &mut n).await?;
    v.send(b"typed-over-tls\r").await?;
    n.expect(b"typed-over-tls", Duration::from_secs(15)).await?;
    n.send(b"printed-over-tls\r\n").await?;
    v.expect(b"printed-over-tls", Duration::from_secs(15))
        .await?;
    Ok(())
}
