//! Keeping console-svc in line with the nodes, both ways: on every
//! (re)connection of WatchConsoles, the snapshot is compared with the nodes
//! and console-svc is made to match `console_enabled`, which is the state
//! of record (as in Ironic): missing consoles of nodes that want one are
//! enabled, and consoles of known nodes that do not want one are disabled
//! (left by an enable the conductor did not finish, e.g. killed after
//! console-svc started the console but before `console_enabled = true` was
//! written). Consoles of node ids the conductor does not know are left
//! alone: console-svc may serve other clients. Then each change updates
//! console_info, vnc_host/vnc_port or last_error; a console console-svc
//! reports DISABLED while its node wants it is enabled again, and one it
//! reports live for a node that does not want it is disabled:
//! console_enabled never flips silently.
//!
//! ```text
//!  connect ──▶ EXISTING* ──▶ SYNCED: enable wanted, disable unwanted ──▶ CHANGED* ...
//!     ▲                                                                              │ stream ends / error
//!     └──────────────────────────── backoff (1 s .. 30 s) ◀──────────────────────────┘
//! ```
//!
//! Started by `lib::run`; stops with the shutdown token.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pb::console_event::Type as EventType;
use porthole_proto::console::v1 as pb;
use tokio_stream::StreamExt;

use crate::service::Conductor;

const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Follow console-svc until shutdown.
pub async fn follow(conductor: Arc<Conductor>) {
    let shutdown = conductor.shutdown.clone();
    let mut backoff = Duration::from_secs(1);
    loop {
        let session = watch_once(&conductor);
        let ended = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = session => r,
        };
        match ended {
            Ok(()) => {
                tracing::info!("console-svc closed the watch; reconnecting");
                backoff = Duration::from_secs(1);
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "watching console-svc failed")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One WatchConsoles stream, from the snapshot to its end.
#[tracing::instrument(skip_all, fields(endpoint = %conductor.consoles.endpoint()))]
async fn watch_once(conductor: &Arc<Conductor>) -> Result<(), crate::console::ConsoleError> {
    let mut stream = conductor.consoles.watch().await?;
    let mut snapshot: HashMap<String, pb::Console> = HashMap::new();
    let mut synced = false;
    while let Some(ev) = stream.next().await {
        let ev = ev.map_err(|s| crate::console::ConsoleError::Unavailable {
            endpoint: conductor.consoles.endpoint().to_owned(),
            message: s.message().to_owned(),
        })?;
        match (EventType::try_from(ev.r#type), ev.console) {
            (Ok(EventType::Existing), Some(c)) => {
                snapshot.insert(c.node_id.clone(), c);
            }
            (Ok(EventType::Synced), _) => {
                synced = true;
                reconcile(conductor, std::mem::take(&mut snapshot)).await;
            }
            (Ok(EventType::Changed), Some(c)) if synced => on_change(conductor, c).await,
            _ => {}
        }
    }
    Ok(())
}

/// Every node that wants a console and has none running gets one; every
/// known node that does not want one loses the one console-svc has.
async fn reconcile(conductor: &Arc<Conductor>, running: HashMap<String, pb::Console>) {
    let nodes = match conductor.store.list_nodes().await {
        Ok(n) => n,
        Err(e) => return tracing::error!(error = %e, "reconcile: cannot list nodes"),
    };
    let (mut restored, mut retired) = (0, 0);
    for node in &nodes {
        match running.get(&node.uuid) {
            Some(c) if node.console_enabled && is_live(c) => {
                crate::metrics::get().reconciled(crate::metrics::Reconcile::InSync);
                conductor.record_console(&node.uuid, c, true).await
            }
            _ if node.console_enabled => {
                conductor.ensure_console(&node.uuid).await;
                restored += 1;
            }
            Some(c) if !is_disabled(c) => {
                conductor.retire_console(&node.uuid).await;
                retired += 1;
            }
            _ => {}
        }
    }
    tracing::info!(
        wanted = nodes.iter().filter(|n| n.console_enabled).count(),
        restored,
        retired,
        "consoles reconciled"
    );
}

fn is_disabled(c: &pb::Console) -> bool {
    c.state == pb::ConsoleState::Disabled as i32
}

fn is_live(c: &pb::Console) -> bool {
    c.state == pb::ConsoleState::Running as i32 || c.state == pb::ConsoleState::Starting as i32
}

async fn on_change(conductor: &Arc<Conductor>, c: pb::Console) {
    let wanted = match conductor.store.get_node(&c.node_id).await {
        Ok(n) => n.console_enabled,
        // Not one of ours: console-svc may serve other clients.
        Err(_) => return,
    };
    if !wanted {
        if !is_disabled(&c) {
            // Live for a node that does not want it (an enable whose answer
            // came too late, or someone else's). retire_console re-reads the
            // node under its console lock, so an enable the API is doing
            // right now wins.
            conductor.retire_console(&c.node_id).await;
        }
        return;
    }
    if c.state == pb::ConsoleState::Disabled as i32 {
        // Someone else (or a restart) stopped it; the node still wants it.
        // ensure_console re-reads the node under its console lock, so a
        // disable the API is doing right now wins.
        conductor.ensure_console(&c.node_id).await;
    } else {
        conductor.record_console(&c.node_id, &c, true).await;
    }
}
