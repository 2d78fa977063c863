//! http_basic like Ironic's standalone mode: version discovery is open,
//! everything else needs a user from the bcrypt htpasswd file; failures are
//! 401 in Ironic's error format with a Basic challenge. Needs no rig.

mod common;

use anyhow::{ensure, Result};
use conductor::config::Config;
use conductor::config::Layered as _;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_basic_guards_everything_but_discovery() {
    porthole_tests::run(body()).await
}

async fn body() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(
        &htpasswd,
        format!("operator:{}\n", bcrypt::hash("op-pass", 4)?),
    )?;
    let s = |v: String| toml::Value::String(v);
    let config = Config::load(
        None,
        Vec::new(),
        &[
            ("api", "auth_strategy", s("http_basic".into())),
            (
                "api",
                "http_basic_auth_user_file",
                s(htpasswd.display().to_string()),
            ),
            (
                "database",
                "path",
                s(dir.path().join("db.sqlite").display().to_string()),
            ),
            ("console", "endpoint", s("http://127.0.0.1:9".into())),
        ],
    )?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(conductor::run(listener, config, shutdown.clone()));
    let http = reqwest::Client::new();
    let root = http.get(format!("{base}/")).send().await?;
    ensure!(
        root.status() == 200,
        "GET / without credentials: {}",
        root.status()
    );
    let denied = http.get(format!("{base}/v1/nodes")).send().await?;
    ensure!(
        denied.status() == 401,
        "no credentials: {}",
        denied.status()
    );
    ensure!(
        denied.headers().contains_key("www-authenticate"),
        "no Basic challenge"
    );
    let f = common::faultstring(&denied.json().await?)?;
    ensure!(
        f.contains("requires authentication"),
        "401 faultstring: {f}"
    );
    let wrong = http
        .get(format!("{base}/v1/nodes"))
        .basic_auth("operator", Some("nope"))
        .send()
        .await?;
    ensure!(wrong.status() == 401, "wrong password: {}", wrong.status());
    let ok = http
        .get(format!("{base}/v1/nodes"))
        .basic_auth("operator", Some("op-pass"))
        .send()
        .await?;
    ensure!(ok.status() == 200, "right password: {}", ok.status());
    shutdown.cancel();
    task.await??;
    Ok(())
}
