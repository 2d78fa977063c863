//! console-svc's `/metrics` (service.metrics_listen) against the real rig,
//! read by Prometheus' own parser: every family is there with its type, and
//! the values move with real actions: an enable (consoles by state, enable
//! latency, gRPC requests), a viewer connecting (viewers, SOL activations)
//! and typing (bytes both ways, exactly what crossed), the viewer leaving
//! and a disable. The socat backend counts its connections and activations;
//! the rmcp backend shows its session on the shared UDP socket (or none
//! there, with `PORTHOLE_TEST_RMCP_UDP=per-console`).

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use porthole_proto::console::v1 as pb;
use porthole_tests::metrics::{self, Scrape};
use porthole_tests::session::{self, establish, url_of};
use porthole_tests::{node_side, rig_or_skip, viewer, Backend, ConsoleSvc, SvcOptions};

/// How long a value may take to show (a viewer leaving, a socat log line).
const WAIT: Duration = Duration::from_secs(10);

const CONSOLE_SERVICE: &str = "porthole.console.v1.ConsoleService";

/// Every family console-svc exports, with its type.
const FAMILIES: &[(&str, &str)] = &[
    ("porthole_console_consoles", "gauge"),
    ("porthole_console_sol_activations", "counter"),
    ("porthole_console_sol_activation_failures", "counter"),
    ("porthole_console_viewers", "gauge"),
    ("porthole_console_viewer_connections", "counter"),
    ("porthole_console_viewer_bytes", "counter"),
    ("porthole_console_enable_duration_seconds", "histogram"),
    (
        "porthole_console_lease_renewal_duration_seconds",
        "histogram",
    ),
    ("porthole_console_fences", "counter"),
    ("porthole_console_claims", "counter"),
    ("porthole_console_takeovers", "counter"),
    ("porthole_console_etcd_request_errors", "counter"),
    ("porthole_console_rmcp_udp_dropped", "counter"),
    ("porthole_console_rmcp_udp_shared_sessions", "gauge"),
    ("porthole_console_rmcp_udp_own_sockets", "counter"),
    ("porthole_console_grpc_requests", "counter"),
    (
        "porthole_console_grpc_request_duration_seconds",
        "histogram",
    ),
];

async fn start(backend: Backend) -> Result<ConsoleSvc> {
    let opts = SvcOptions::new(backend).set("service", "metrics_listen", "\"127.0.0.1:0\"");
    ConsoleSvc::start_with(opts).await
}

fn consoles(s: &Scrape, state: &str) -> Result<f64> {
    s.value(
        "porthole_console_consoles",
        &[("kind", "serial"), ("state", state)],
    )
}

fn bytes(s: &Scrape, direction: &str) -> Result<f64> {
    s.value(
        "porthole_console_viewer_bytes_total",
        &[("kind", "serial"), ("direction", direction)],
    )
}

/// Scrape until `ok` holds (the hub notices a viewer leaving on its own
/// schedule, a takeover waits for a lease to expire), at most `within`;
/// the last scrape either way.
async fn scrape_until(
    python: &std::path::Path,
    url: &str,
    within: Duration,
    ok: impl Fn(&Scrape) -> bool,
) -> Result<Scrape> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let s = Scrape::take(python, url).await?;
        if ok(&s) || tokio::time::Instant::now() > deadline {
            return Ok(s);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_values_move_with_enable_viewers_and_bytes() {
    porthole_tests::run(native_values_move()).await
}

async fn native_values_move() -> Result<()> {
    let rig = rig_or_skip!();
    let Some(python) = metrics::parser() else {
        return Ok(());
    };
    let bmcs = rig.lease_bmcs(1).await?;
    let svc = start(Backend::Native).await?;
    let url = metrics::console_svc_url(&svc).await?;

    let s0 = Scrape::take(&python, &url).await?;
    ensure!(
        s0.content_type.starts_with("application/openmetrics-text"),
        "content type {}",
        s0.content_type
    );
    for (name, kind) in FAMILIES {
        ensure!(
            s0.family_type(name) == Some(kind),
            "family {name}: {:?}, not {kind}",
            s0.families.get(*name)
        );
    }
    ensure!(
        consoles(&s0, "running")? == 0.0,
        "a console before any enable"
    );
    let enables_before = s0.value(
        "porthole_console_enable_duration_seconds_count",
        &[("kind", "serial"), ("result", "ok")],
    )?;

    let mut client = svc.client().await?;
    let node = session::node_id("metrics");
    let console = session::enable(&mut client, bmcs[0].enable_request(&node)).await?;
    let s1 = Scrape::take(&python, &url).await?;
    ensure!(consoles(&s1, "running")? == 1.0, "running after enable");
    ensure!(
        s1.value(
            "porthole_console_enable_duration_seconds_count",
            &[("kind", "serial"), ("result", "ok")],
        )? == enables_before + 1.0,
        "enable latency not observed"
    );
    let enable_rpcs = s1.value(
        "porthole_console_grpc_requests_total",
        &[
            ("service", CONSOLE_SERVICE),
            ("method", "EnableConsole"),
            ("code", "OK"),
        ],
    )?;
    ensure!(enable_rpcs == 1.0, "EnableConsole OK counted {enable_rpcs}");
    // A refused call is counted under its own code.
    let missing = pb::GetConsoleRequest {
        node_id: session::node_id("metrics-missing"),
    };
    ensure!(
        client.get_console(missing).await.is_err(),
        "GetConsole of nothing"
    );
    let s1 = Scrape::take(&python, &url).await?;
    let not_found = s1.value(
        "porthole_console_grpc_requests_total",
        &[
            ("service", CONSOLE_SERVICE),
            ("method", "GetConsole"),
            ("code", "NotFound"),
        ],
    )?;
    ensure!(not_found == 1.0, "GetConsole NotFound counted {not_found}");
    // The native backend activates SOL only when a viewer comes.
    let activations = |s: &Scrape| {
        s.value(
            "porthole_console_sol_activations_total",
            &[("backend", "native")],
        )
    };
    ensure!(activations(&s1)? == 0.0, "SOL activated without a viewer");

    let mut v = viewer(&url_of(&console)?).await?;
    let mut n = node_side(&bmcs[0]).await?;
    establish(&mut v, &mut n).await?;
    let s2 = Scrape::take(&python, &url).await?;
    let viewers = |s: &Scrape| s.value("porthole_console_viewers", &[("kind", "serial")]);
    ensure!(viewers(&s2)? == 1.0, "viewers {}", viewers(&s2)?);
    ensure!(
        s2.value(
            "porthole_console_viewer_connections_total",
            &[("kind", "serial")]
        )? == 1.0,
        "one viewer connection"
    );
    ensure!(activations(&s2)? >= 1.0, "no SOL activation counted");

    // Typing and output: exactly these bytes cross, each way.
    let keys = b"metrics-keys-0123456789\r";
    let out = b"metrics-output-abcdefghij\r\n";
    v.send(keys).await?;
    n.expect(keys, Duration::from_secs(15)).await?;
    n.send(out).await?;
    v.expect(out, Duration::from_secs(15)).await?;
    let s3 = Scrape::take(&python, &url).await?;
    let typed = bytes(&s3, "to_node")? - bytes(&s2, "to_node")?;
    let shown = bytes(&s3, "to_viewer")? - bytes(&s2, "to_viewer")?;
    ensure!(
        typed == keys.len() as f64,
        "to_node moved by {typed}, typed {}",
        keys.len()
    );
    ensure!(
        shown == out.len() as f64,
        "to_viewer moved by {shown}, printed {}",
        out.len()
    );

    drop(v);
    let s4 = scrape_until(&python, &url, WAIT, |s| viewers(s).is_ok_and(|n| n == 0.0)).await?;
    ensure!(
        viewers(&s4)? == 0.0,
        "the viewer left; gauge {}",
        viewers(&s4)?
    );

    session::disable(&mut client, &node).await?;
    let s5 = Scrape::take(&python, &url).await?;
    ensure!(
        consoles(&s5, "running")? == 0.0 && consoles(&s5, "disabled")? == 1.0,
        "after disable: running {}, disabled {}",
        consoles(&s5, "running")?,
        consoles(&s5, "disabled")?
    );
    // No label value is a node id, a port or anything else a caller chose.
    ensure!(
        !s5.label_values().any(|v| v.contains(&node)),
        "a node id became a label value"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socat_counts_connections_and_activations() {
    porthole_tests::run(socat_counts()).await
}

async fn socat_counts() -> Result<()> {
    let rig = rig_or_skip!();
    let Some(python) = metrics::parser() else {
        return Ok(());
    };
    let bmcs = rig.lease_bmcs(1).await?;
    let svc = start(Backend::Socat).await?;
    let url = metrics::console_svc_url(&svc).await?;
    let mut client = svc.client().await?;
    let node = session::node_id("metrics-socat");
    let console = session::enable(&mut client, bmcs[0].enable_request(&node)).await?;
    let s1 = Scrape::take(&python, &url).await?;
    let activations = |s: &Scrape| {
        s.value(
            "porthole_console_sol_activations_total",
            &[("backend", "socat")],
        )
    };
    ensure!(consoles(&s1, "running")? == 1.0, "running after enable");
    ensure!(activations(&s1)? == 0.0, "activated before a viewer came");

    let mut v = viewer(&url_of(&console)?).await?;
    let mut n = node_side(&bmcs[0]).await?;
    establish(&mut v, &mut n).await?;
    // socat logs the connection; its stderr is read asynchronously.
    let s2 = scrape_until(&python, &url, WAIT, |s| {
        activations(s).is_ok_and(|a| a >= 1.0)
    })
    .await?;
    ensure!(activations(&s2)? >= 1.0, "no socat activation counted");
    ensure!(
        s2.value(
            "porthole_console_viewer_connections_total",
            &[("kind", "serial")]
        )? >= 1.0,
        "no socat connection counted"
    );
    session::disable(&mut client, &node)
        .await
        .context("disable")?;
    Ok(())
}

/// The rig's first etcd client URL.
fn etcd_endpoint() -> Result<String> {
    let path = std::env::var("PORTHOLE_RIG_JSON")?;
    let rig: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    Ok(rig["etcd"]["endpoints"][0]
        .as_str()
        .context("rig.json: etcd.endpoints")?
        .to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_counts_claims_lease_renewals_and_a_takeover() {
    porthole_tests::run(etcd_counts()).await
}

/// Two replicas on the rig's etcd: the owner's claim and lease renewals
/// are counted; after a `kill -9` of the owner the survivor counts a
/// takeover and its consoles gauge shows the console running there.
async fn etcd_counts() -> Result<()> {
    let rig = rig_or_skip!();
    let Some(python) = metrics::parser() else {
        return Ok(());
    };
    let bmcs = rig.lease_bmcs(1).await?;
    let keys = tempfile::Builder::new()
        .prefix("porthole-metrics-key-")
        .tempdir()?;
    let key_file = keys.path().join("etcd.key");
    std::fs::write(&key_file, "ab".repeat(32))?;
    let prefix = format!(
        "/porthole-test/metrics-{}-{}/",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
    );
    let dead = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let opts = SvcOptions::new(Backend::Native)
        .set("service", "metrics_listen", "\"127.0.0.1:0\"")
        // A member that is down, listed first: calls fail over from it.
        .set(
            "etcd",
            "endpoints",
            &format!("[\"http://{dead}\", \"{}\"]", etcd_endpoint()?),
        )
        .set("etcd", "prefix", &format!("\"{prefix}\""))
        .set(
            "etcd",
            "secret_key_file",
            &format!("{:?}", key_file.display().to_string()),
        );
    let mut a = ConsoleSvc::start_with(opts.clone()).await?;
    let mut b = ConsoleSvc::start_with(opts).await?;
    let urls = [
        metrics::console_svc_url(&a).await?,
        metrics::console_svc_url(&b).await?,
    ];

    let node = session::node_id("metrics-etcd");
    let mut client = a.client().await?;
    let console = session::enable(&mut client, bmcs[0].enable_request(&node)).await?;
    let owner_is_a =
        console.owner == format!("test-{}", a.grpc_url().rsplit(':').next().unwrap_or(""));
    let (owner_url, survivor_url) = match owner_is_a {
        true => (&urls[0], &urls[1]),
        false => (&urls[1], &urls[0]),
    };
    let won = [("result", "won")];
    let renewals = "porthole_console_lease_renewal_duration_seconds_count";
    let s = scrape_until(&python, owner_url, WAIT, |s| {
        s.value(renewals, &[]).is_ok_and(|n| n >= 1.0)
    })
    .await?;
    ensure!(
        s.value("porthole_console_claims_total", &won)? == 1.0,
        "the owner's claim: {}",
        s.value("porthole_console_claims_total", &won)?
    );
    ensure!(s.value(renewals, &[])? >= 1.0, "no lease renewal observed");
    ensure!(consoles(&s, "running")? == 1.0, "running on the owner");
    let failed_over = s.value(
        "porthole_console_etcd_request_errors_total",
        &[("outcome", "failed_over")],
    )?;
    ensure!(
        failed_over >= 1.0,
        "no failover from the dead member counted"
    );
    let before = Scrape::take(&python, survivor_url).await?;
    ensure!(
        before.value("porthole_console_takeovers_total", &[])? == 0.0,
        "a takeover before any replica died"
    );
    ensure!(
        consoles(&before, "running")? == 0.0,
        "running on both replicas"
    );

    // Let the survivor's placement see the console owned elsewhere, then
    // kill the owner: its lease expires (TTL 5 s) and the survivor claims.
    tokio::time::sleep(Duration::from_secs(1)).await;
    match owner_is_a {
        true => a.kill9()?,
        false => b.kill9()?,
    }
    let after = scrape_until(&python, survivor_url, Duration::from_secs(30), |s| {
        s.value("porthole_console_takeovers_total", &[])
            .is_ok_and(|n| n >= 1.0)
            && consoles(s, "running").is_ok_and(|n| n == 1.0)
    })
    .await?;
    ensure!(
        after.value("porthole_console_takeovers_total", &[])? == 1.0,
        "takeovers on the survivor: {}",
        after.value("porthole_console_takeovers_total", &[])?
    );
    ensure!(
        after.value("porthole_console_claims_total", &won)? == 1.0,
        "the survivor's claim"
    );
    ensure!(
        consoles(&after, "running")? == 1.0,
        "running on the survivor"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmcp_sessions_show_on_the_shared_udp_socket() {
    porthole_tests::run(rmcp_udp()).await
}

async fn rmcp_udp() -> Result<()> {
    let rig = rig_or_skip!();
    let Some(python) = metrics::parser() else {
        return Ok(());
    };
    let bmcs = rig.lease_bmcs(1).await?;
    let svc = start(Backend::Rmcp).await?;
    let shared = std::env::var(porthole_tests::svc::RMCP_UDP_ENV).as_deref() != Ok("per-console");
    let url = metrics::console_svc_url(&svc).await?;
    let sessions = |s: &Scrape| s.value("porthole_console_rmcp_udp_shared_sessions", &[]);
    let activations = |s: &Scrape| {
        s.value(
            "porthole_console_sol_activations_total",
            &[("backend", "rmcp")],
        )
    };
    let s0 = Scrape::take(&python, &url).await?;
    ensure!(sessions(&s0)? == 0.0, "a session before any enable");
    let mut client = svc.client().await?;
    let node = session::node_id("metrics-rmcp");
    session::enable(&mut client, bmcs[0].enable_request(&node)).await?;
    // Always on: the session comes up with no viewer.
    let s1 = scrape_until(&python, &url, WAIT, |s| {
        activations(s).is_ok_and(|a| a >= 1.0)
    })
    .await?;
    ensure!(activations(&s1)? >= 1.0, "no rmcp activation counted");
    let want = if shared { 1.0 } else { 0.0 };
    ensure!(
        sessions(&s1)? == want,
        "shared-socket sessions {} (shared mode: {shared})",
        sessions(&s1)?
    );
    let dropped = |s: &Scrape, reason: &str| {
        s.value(
            "porthole_console_rmcp_udp_dropped_total",
            &[("reason", reason)],
        )
    };
    ensure!(
        dropped(&s1, "unknown_peer")? == 0.0 && dropped(&s1, "queue_full")? == 0.0,
        "drops on a quiet line"
    );
    // The BMC probe at start runs beside the SOL session: neither may push
    // the other off the shared socket (the probe has a socket of its own).
    let own = s1.value("porthole_console_rmcp_udp_own_sockets_total", &[])?;
    ensure!(
        own == 0.0,
        "{own} sessions fell back to a socket of their own"
    );
    session::disable(&mut client, &node).await?;
    let s2 = scrape_until(&python, &url, WAIT, |s| sessions(s).is_ok_and(|n| n == 0.0)).await?;
    ensure!(
        sessions(&s2)? == 0.0,
        "the disabled console's session left the shared socket: {}",
        sessions(&s2)?
    );
    Ok(())
}
