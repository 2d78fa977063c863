//! Bad input against the conductor binary, answered as Ironic does and
//! costing nothing: every refusal is 400/413/414 in Ironic's error body,
//! nothing is recorded, the text log cannot be forged through a URL, and
//! the conductor keeps serving. Needs no rig (console-svc is never called).

mod common;

use anyhow::{ensure, Context, Result};
use common::{faultstring, ConductorProc};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_as_ironic_does() {
    porthole_tests::run(body()).await
}

/// Status and faultstring of a refused request.
async fn refused(resp: reqwest::Response) -> Result<(u16, String)> {
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let text = resp.text().await?;
    ensure!(
        ct.starts_with("application/json"),
        "{status}: not JSON ({ct}): {text}"
    );
    let body: Value = serde_json::from_str(&text).with_context(|| text.clone())?;
    Ok((status, faultstring(&body)?))
}

async fn body() -> Result<()> {
    let cond = ConductorProc::start("http://127.0.0.1:9").await?;
    let base = cond.url.clone();
    let http = reqwest::Client::new();
    let node: Value = http
        .post(format!("{base}/v1/nodes"))
        .json(&json!({"driver": "ipmi", "name": "n-bad", "driver_info": {"ipmi_address": "127.0.0.1"}}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let uuid = node["uuid"].as_str().context("uuid")?;

    // A %0a in a path parameter must not start a new log line.
    let forged = "FORGED-LINE  INFO conductor: all is well";
    let r = http
        .get(format!(
            "{base}/v1/nodes/nope%0a{}",
            forged.replace(' ', "%20")
        ))
        .send()
        .await?;
    ensure!(r.status() == 404, "forged lookup: {}", r.status());
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let lines = cond.log_lines();
    ensure!(
        lines.iter().any(|l| l.contains("FORGED-LINE")),
        "the refusal was not logged at all: {lines:?}"
    );
    ensure!(
        !lines.iter().any(|l| l.starts_with("FORGED-LINE")),
        "a URL forged a log line: {lines:?}"
    );

    // 413 and 414 in Ironic's error format.
    let big = "x".repeat(3 * 1024 * 1024);
    // Its own client: the server closes a connection whose body it refused
    // unread, which must not break the pooled connection the rest uses.
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/nodes"))
        .header("content-type", "application/json")
        .body(format!(
            "{{\"driver\": \"ipmi\", \"extra\": {{\"a\": \"{big}\"}}}}"
        ))
        .send()
        .await?;
    let (status, f) = refused(r).await?;
    ensure!(
        status == 413 && f.contains("too large"),
        "big body: {status} {f}"
    );
    let r = http
        .get(format!("{base}/v1/nodes/{}", "y".repeat(20_000)))
        .send()
        .await?;
    let (status, f) = refused(r).await?;
    ensure!(
        status == 414 && f.contains("too long"),
        "long URI: {status} {f}"
    );

    // Wrong types: 400 with Ironic's reasons; nothing recorded.
    let patch = |ops: Value| {
        http.patch(format!("{base}/v1/nodes/{uuid}"))
            .json(&ops)
            .send()
    };
    let (status, f) =
        refused(patch(json!([{"op": "replace", "path": "/maintenance", "value": "maybe"}])).await?)
            .await?;
    ensure!(
        status == 400 && f.starts_with("Invalid maintenance: Unrecognized value 'maybe'"),
        "maintenance maybe: {status} {f}"
    );
    let r = http
        .post(format!("{base}/v1/nodes"))
        .json(&json!({"driver": "ipmi", "name": "n-bad2", "maintenance": 5}))
        .send()
        .await?;
    let (status, f) = refused(r).await?;
    ensure!(status == 400, "create with maintenance 5: {status} {f}");
    // Ironic reads "yes" as true (oslo's strict bool_from_string).
    let n: Value = patch(json!([{"op": "replace", "path": "/maintenance", "value": "yes"}]))
        .await?
        .error_for_status()?
        .json()
        .await?;
    ensure!(n["maintenance"] == true, "maintenance yes: {n}");
    let (status, f) =
        refused(patch(json!([{"op": "replace", "path": "/driver_info/nope", "value": 1}])).await?)
            .await?;
    ensure!(
        status == 400
            && f.starts_with("Couldn't apply patch '")
            && f.ends_with("Reason: can't replace a non-existent object 'nope'"),
        "replace of a missing member: {status} {f}"
    );
    let r = http
        .put(format!("{base}/v1/nodes/{uuid}/management/boot_device"))
        .json(&json!({"boot_device": "pxe", "persistent": "x"}))
        .send()
        .await?;
    let (status, f) = refused(r).await?;
    ensure!(
        status == 400 && f.starts_with("Invalid persistent: Unrecognized value 'x'"),
        "persistent x: {status} {f}"
    );
    for (limit, want) in [
        ("-1", "Limit must be positive"),
        ("0", "Limit must be positive"),
        ("abc", "Expected an integer for limit: abc"),
    ] {
        for path in ["nodes", "ports"] {
            let r = http
                .get(format!("{base}/v1/{path}?limit={limit}"))
                .send()
                .await?;
            let (status, f) = refused(r).await?;
            ensure!(
                status == 400 && f == want,
                "{path} limit={limit}: {status} {f}"
            );
        }
    }
    let r = http
        .get(format!("{base}/v1/nodes"))
        .header(
            "X-OpenStack-Ironic-API-Version",
            reqwest::header::HeaderValue::from_bytes("1.\u{e9}".as_bytes())?,
        )
        .send()
        .await?;
    let (status, f) = refused(r).await?;
    // Ironic answers any value that is not a version with 406.
    ensure!(
        status == 406 && f.starts_with("Invalid value for X-OpenStack-Ironic-API-Version header"),
        "non-ASCII version: {status} {f}"
    );

    // Nothing recorded by the refusals; still serving.
    let nodes: Value = http
        .get(format!("{base}/v1/nodes?limit=5"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    ensure!(
        nodes["nodes"].as_array().map(Vec::len) == Some(1),
        "nodes after the refusals: {nodes}"
    );
    let n: Value = http
        .get(format!("{base}/v1/nodes/{uuid}"))
        .send()
        .await?
        .json()
        .await?;
    ensure!(
        n["driver_info"].get("nope").is_none() && n["maintenance"] == true,
        "node after the refusals: {n}"
    );
    Ok(())
}
