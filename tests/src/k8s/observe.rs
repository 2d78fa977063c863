//! What the rehearsal test observes from outside the pods: the conductor's
//! REST API (basic auth, Ironic's microversion header), a replica's
//! fences counter from its metrics port, and who listens on a console
//! port, sampled. Used by `tests/tests/k8s_rehearsal.rs`.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::cluster::NET;
use super::probe;
use super::secrets::ApiUser;

/// One HTTP/1.1 request with basic auth and a JSON body; (status, body).
pub async fn http(
    addr: &str,
    method: &str,
    path: &str,
    user: &ApiUser,
    body: Option<&Value>,
) -> Result<(u16, Value)> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let auth = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", user.user, user.password));
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Basic {auth}\r\nX-OpenStack-Ironic-API-Version: 1.78\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut raw)).await??;
    let text = String::from_utf8_lossy(&raw);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("{method} {path}: no HTTP status"))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

/// The conductor's `console_info.url` once it names a host other than
/// `not_on` (bounded).
pub async fn console_url(
    api: &str,
    user: &ApiUser,
    node: &str,
    not_on: Option<&str>,
    within: Duration,
) -> Result<(String, u16)> {
    let since = Instant::now();
    let mut last = Value::Null;
    while since.elapsed() < within {
        let (st, v) = http(
            api,
            "GET",
            &format!("/v1/nodes/{node}/states/console"),
            user,
            None,
        )
        .await?;
        if st == 200 && v["console_enabled"] == json!(true) {
            if let Some(url) = v["console_info"]["url"].as_str() {
                let hp = url
                    .strip_prefix("tcp://")
                    .ok_or_else(|| anyhow!("url {url}"))?;
                let (h, p) = hp.rsplit_once(':').ok_or_else(|| anyhow!("url {url}"))?;
                if Some(h) != not_on {
                    return Ok((h.to_owned(), p.parse()?));
                }
            }
        }
        last = v;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("no console url (other than on {not_on:?}) within {within:?}: {last}")
}

/// `porthole_console_fences_total` of a replica, from its metrics port.
pub async fn fences(ip: &str) -> Result<f64> {
    let (_, body) = probe::http_get(ip, 9464, "/metrics")
        .await
        .map_err(|e| anyhow!(e))?;
    body.lines()
        .find_map(|l| l.strip_prefix("porthole_console_fences_total "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow!("{ip}: no porthole_console_fences_total in /metrics"))
}

/// Listeners on `port` among the rehearsal's addresses, from `ss`.
pub fn listeners(port: u16) -> Vec<String> {
    let out = std::process::Command::new("ss")
        .args(["-Hltn", &format!("sport = :{port}")])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter(|a| a.starts_with(&format!("{NET}.")))
        .map(str::to_owned)
        .collect()
}

/// Samples [`listeners`] every 50 ms until cancelled: (the most at once,
/// every address seen, in order).
pub fn watch_listeners(
    port: u16,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<(usize, Vec<String>)> {
    tokio::spawn(async move {
        let (mut most, mut seen) = (0, Vec::<String>::new());
        while !stop.is_cancelled() {
            let now = listeners(port);
            most = most.max(now.len());
            for a in now {
                if seen.last() != Some(&a) {
                    seen.push(a);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (most, seen)
    })
}
