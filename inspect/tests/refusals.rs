//! What the service refuses, and that a refusal costs nothing: with
//! `[inspector] enabled = false` the conductor's `inspect` verb fails at
//! once naming the option and the node stays `manageable`; misconfigured or
//! facing no (or the wrong) inspector, the service refuses to start, in
//! process and as the `inspect` binary (exit 1, one line saying what is
//! wrong). No real inspector needed: "down" is a closed port, "wrong
//! version" a stub answering like inspector with other version headers.

mod common;

use std::time::Duration;

use anyhow::{ensure, Result};
use axum::http::HeaderMap;
use axum::routing::get;
use common::Api;
use tokio::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_inspector_refuses_and_the_node_stays_manageable() {
    porthole_tests::run(async {
        let dir = tempfile::tempdir()?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        // Defaults: [inspector] enabled = false.
        let mut inspect = common::serve_inspect(listener, common::inspect_config(&[])?)?;
        let mut conductor = common::conductor(dir.path(), &url).await?;
        let api = Api::new(&conductor.url);
        let uuid = api.create_node("n1", "192.0.2.30").await?;
        api.manage(&uuid).await?;
        let before = api.node(&uuid).await?;
        let (code, body) = api.provision(&uuid, "inspect").await?;
        let text = body.to_string();
        ensure!(code == 400, "{code} {body}");
        ensure!(
            text.contains("ironic-inspector is disabled")
                && text.contains("[inspector] enabled = true")
                && text.contains("PORTHOLE_INSPECT_INSPECTOR_ENABLED"),
            "the error names the option: {text}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after = api.node(&uuid).await?;
        for key in [
            "provision_state",
            "target_provision_state",
            "last_error",
            "inspection_started_at",
            "provision_updated_at",
            "updated_at",
        ] {
            ensure!(
                before[key] == after[key],
                "{key} changed: {before} → {after}"
            );
        }
        ensure!(after["provision_state"] == "manageable", "{after}");
        // And the inspect service is down: refused the same way, nothing moves.
        inspect.stop().await?;
        let (code, body) = api.provision(&uuid, "inspect").await?;
        ensure!(
            code == 400 && body.to_string().contains("inspect service at"),
            "{code} {body}"
        );
        ensure!(api.node(&uuid).await?["provision_state"] == "manageable");
        conductor.stop().await?;
        Ok(())
    })
    .await
}

/// A stub that answers `GET /` as inspector does, with these versions.
async fn stub(min: &'static str, max: &'static str) -> Result<String> {
    let app = axum::Router::new().route(
        "/",
        get(move || async move {
            let mut h = HeaderMap::new();
            h.insert(inspect::inspector::MIN_VERSION_HEADER, min.parse().unwrap());
            h.insert(inspect::inspector::MAX_VERSION_HEADER, max.parse().unwrap());
            (h, r#"{"versions":[{"id":"2.1","status":"CURRENT"}]}"#)
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

#[tokio::test]
async fn misconfigured_or_no_supported_inspector_refuses_to_start() {
    porthole_tests::run(async {
        let dead = format!("http://127.0.0.1:{}/v1", common::free_port()?);
        let wrong = stub("2.0", "2.1").await?;
        for (settings, want) in [
            (vec![("enabled", "true")], "needs [inspector] service_url"),
            (
                vec![("enabled", "true"), ("service_url", dead.as_str())],
                "does not answer",
            ),
            (
                vec![("enabled", "true"), ("service_url", wrong.as_str())],
                "supports API versions 2.0 to 2.1; this service needs 1.3",
            ),
        ] {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let err = tokio::time::timeout(
                Duration::from_secs(20),
                inspect::run(
                    listener,
                    common::inspect_config(&settings)?,
                    Default::default(),
                ),
            )
            .await?
            .expect_err("refused to start");
            let text = err.to_string();
            ensure!(
                text.starts_with("refusing to start: ") && text.contains(want),
                "{settings:?}: {text}"
            );
        }
        Ok(())
    })
    .await
}

#[tokio::test]
async fn the_binary_refuses_to_start_with_one_line() {
    porthole_tests::run(async {
        let wrong = stub("1.0", "1.2").await?;
        let port = common::free_port()?;
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_inspect"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--inspector-url", &wrong])
            .env("PORTHOLE_INSPECT_INSPECTOR_ENABLED", "true")
            .env_remove("PORTHOLE_INSPECT_CONFIG")
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(20), out).await??;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().last().unwrap_or_default();
        ensure!(out.status.code() == Some(1), "{:?} {stderr}", out.status);
        ensure!(
            last.starts_with("inspect: refusing to start: ironic-inspector at ")
                && last.contains("supports API versions 1.0 to 1.2"),
            "{stderr}"
        );
        // A bad setting names its variable.
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_inspect"))
            .env("PORTHOLE_INSPECT_DISCOVERD_ENABLED", "maybe")
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(20), out).await??;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.code() == Some(1)
                && stderr.contains("environment variable PORTHOLE_INSPECT_DISCOVERD_ENABLED"),
            "{stderr}"
        );
        Ok(())
    })
    .await
}
