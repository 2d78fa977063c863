//! Console sessions end to end: enable over gRPC, wait for a state, and
//! bring a viewer and the node side to a known, quiet point.
//!
//! The rig's BMCs may drop the first SOL packet of a new session, the
//! native backend starts `ipmitool sol activate` only when a viewer
//! arrives, and earlier tests may have left bytes in the node's pty, so
//! [`establish`] primes both directions and drains them before a test
//! asserts exact bytes.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use pb::console_service_client::ConsoleServiceClient;
use porthole_proto::console::v1 as pb;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::wire::{find, Wire};

pub type Client = ConsoleServiceClient<Channel>;

/// How long a session may take to carry its first bytes.
pub const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(30);
const QUIET: Duration = Duration::from_millis(300);

/// A node id unique to this test process and call.
pub fn node_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

pub async fn enable(client: &mut Client, req: pb::EnableConsoleRequest) -> Result<pb::Console> {
    let node = req.node_id.clone();
    match client.enable_console(req).await {
        Ok(c) => Ok(c.into_inner()),
        Err(status) => {
            let who = port_holders(status.message());
            Err(anyhow::Error::new(status).context(format!("EnableConsole({node}){who}")))
        }
    }
}

/// For a "port ... already in use" error: who holds that port (`ss`), to
/// tell a leftover of ours from a stranger.
fn port_holders(message: &str) -> String {
    let Some(port) = message
        .split_once("already in use")
        .and_then(|(before, _)| before.trim().rsplit(':').next())
        .and_then(|p| p.split_whitespace().next())
        .and_then(|p| p.parse::<u16>().ok())
    else {
        return String::new();
    };
    let filter = format!("( sport = :{port} )");
    match std::process::Command::new("ss")
        .args(["-Htanp", &filter])
        .output()
    {
        Ok(out) => format!(
            "; sockets on port {port}: {}",
            String::from_utf8_lossy(&out.stdout).trim()
        ),
        Err(e) => format!("; ss failed: {e}"),
    }
}

pub async fn get(client: &mut Client, node: &str) -> Result<pb::Console> {
    let req = pb::GetConsoleRequest {
        node_id: node.into(),
    };
    Ok(client
        .get_console(req)
        .await
        .with_context(|| format!("GetConsole({node})"))?
        .into_inner())
}

pub async fn disable(client: &mut Client, node: &str) -> Result<pb::Console> {
    let req = pb::DisableConsoleRequest {
        node_id: node.into(),
    };
    Ok(client
        .disable_console(req)
        .await
        .with_context(|| format!("DisableConsole({node})"))?
        .into_inner())
}

/// Poll GetConsole until `pred` holds (bounded); returns that console.
pub async fn wait_console(
    client: &mut Client,
    node: &str,
    within: Duration,
    what: &str,
    pred: impl Fn(&pb::Console) -> bool,
) -> Result<pb::Console> {
    let deadline = Instant::now() + within;
    loop {
        let c = get(client, node).await?;
        if pred(&c) {
            return Ok(c);
        }
        if Instant::now() > deadline {
            bail!("console {node} not {what} within {within:?}; last seen: {c:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Make sure keystrokes reach the node and node output reaches the viewer,
/// then leave both sides drained.
pub async fn establish(viewer: &mut Wire, node: &mut Wire) -> Result<()> {
    node.drain(QUIET, Duration::from_secs(5)).await?;
    prime_keystrokes(viewer, node).await?;
    prime_output(viewer, node).await?;
    node.drain(QUIET, Duration::from_secs(5)).await?;
    viewer.drain(QUIET, Duration::from_secs(5)).await?;
    Ok(())
}

/// Send `\r` from the viewer until one arrives on the node side.
async fn prime_keystrokes(viewer: &mut Wire, node: &mut Wire) -> Result<()> {
    let deadline = Instant::now() + ESTABLISH_TIMEOUT;
    while Instant::now() < deadline {
        viewer.send(b"\r").await?;
        if find(&node.read_for(Duration::from_millis(700)).await?, b"\r").is_some() {
            return Ok(());
        }
    }
    bail!(
        "{}: keystrokes never reached {} within {ESTABLISH_TIMEOUT:?}",
        viewer.name(),
        node.name()
    )
}

/// Print a marker on the node side until the viewer sees it.
async fn prime_output(viewer: &mut Wire, node: &mut Wire) -> Result<()> {
    let marker = format!("sync-{}", node_id("m"));
    let deadline = Instant::now() + ESTABLISH_TIMEOUT;
    while Instant::now() < deadline {
        node.send(format!("{marker}\r\n").as_bytes()).await?;
        if viewer
            .try_expect(marker.as_bytes(), Duration::from_millis(700))
            .await?
            .is_some()
        {
            return Ok(());
        }
    }
    bail!(
        "{}: node output never reached {} within {ESTABLISH_TIMEOUT:?}",
        node.name(),
        viewer.name()
    )
}

/// `tcp://host:port` of a running console, or an error saying why not.
pub fn url_of(c: &pb::Console) -> Result<String> {
    if c.state() != pb::ConsoleState::Running || c.url.is_empty() {
        bail!("console {} is not running with a URL: {c:?}", c.node_id);
    }
    Ok(c.url.clone())
}

/// Every byte value except `~` (ipmitool's escape character at line start)
/// in a scrambled order, framed by printable markers.
pub fn binary_payload(tag: &str) -> (Vec<u8>, Vec<u8>) {
    let mut body: Vec<u8> = (0..=255u8).filter(|b| *b != b'~').collect();
    body.rotate_left(97);
    let mut all = format!("<{tag}|").into_bytes();
    all.extend_from_slice(b"\x00\x03\x1b\xff");
    all.extend_from_slice(&body);
    let end = format!("|{tag}>").into_bytes();
    all.extend_from_slice(&end);
    (all, end)
}
