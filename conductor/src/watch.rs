//! Keeping console-svc in line with the nodes: on every (re)connection of
//! WatchConsoles, the snapshot is compared with the nodes that want a
//! console and the missing ones are enabled (reconcile, idempotent); then
//! each change updates console_info, vnc_host/vnc_port or last_error. A
//! console console-svc reports DISABLED while its node wants it is enabled
//! again: console_enabled never flips silently.
//!
//! ```text
//!  connect ──▶ EXISTING* ──▶ SYNCED: enable every wanted console not running ──▶ CHANGED* ...
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

/// Every node that wants a console and has none running gets one.
async fn reconcile(conductor: &Arc<Conductor>, running: HashMap<String, pb::Console>) {
    let nodes = match conductor.store.list_nodes() {
        Ok(n) => n,
        Err(e) => return tracing::error!(error = %e, "reconcile: cannot list nodes"),
    };
    let mut restored = 0;
    for node in nodes.iter().filter(|n| n.console_enabled) {
        match running.get(&node.uuid) {
            Some(c) if is_live(c) => {
                crate::metrics::get().reconciled(crate::metrics::Reconcile::InSync);
                conductor.record_console(&node.uuid, c, true).await
            }
            _ => {
                conductor.ensure_console(&node.uuid).await;
                restored += 1;
            }
        }
    }
    tracing::info!(
        wanted = nodes.iter().filter(|n| n.console_enabled).count(),
        restored,
        "consoles reconciled"
    );
}

fn is_live(c: &pb::Console) -> bool {
    c.state == pb::ConsoleState::Running as i32 || c.state == pb::ConsoleState::Starting as i32
}

async fn on_change(conductor: &Arc<Conductor>, c: pb::Console) {
    let wanted = conductor
        .store
        .get_node(&c.node_id)
        .map(|n| n.console_enabled)
        .unwrap_or(false);
    if !wanted {
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
