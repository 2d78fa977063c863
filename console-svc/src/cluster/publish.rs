//! The owner's side of `consoles/<node>/endpoint`: it follows the local
//! manager's events, written in a transaction that compares the owner key's
//! create revision with the claim's token (a fenced replica writes nothing).
//!
//! ```text
//!  manager event: port open (RUNNING/FAILED) ──▶ put endpoint {url, host, port, replica, state}
//!  manager event: no port (STARTING/DISABLED) ─▶ delete endpoint
//!  (release deletes owner + endpoint together; lease expiry deletes both too)
//! ```

use tokio::sync::broadcast::error::RecvError;
use tracing::{debug, info_span, warn, Instrument};

use super::Cluster;
use crate::coordinator::etcd::EndpointDoc;
use crate::manager::{ConsoleInfo, ConsoleState};

/// Publish on `cluster`'s tasks until they stop.
pub(super) fn spawn(cluster: Cluster) {
    let span = info_span!(parent: None, "publish", replica = cluster.replica());
    let mut events = cluster.inner.manager.subscribe();
    let tasks = cluster.inner.tasks.clone();
    let cancel = tasks.token().clone();
    tasks.spawn(
        async move {
            loop {
                let info = tokio::select! {
                    _ = cancel.cancelled() => return,
                    ev = events.recv() => match ev {
                        Ok(info) => info,
                        Err(RecvError::Lagged(_)) => {
                            republish_all(&cluster).await;
                            continue;
                        }
                        Err(RecvError::Closed) => return,
                    },
                };
                publish(&cluster, &info).await;
            }
        }
        .instrument(span),
    );
}

async fn republish_all(cluster: &Cluster) {
    for info in cluster.inner.manager.list() {
        publish(cluster, &info).await;
    }
}

/// Write what `info` says about this replica's console of its node.
pub(super) async fn publish(cluster: &Cluster, info: &ConsoleInfo) {
    let Some(ownership) = cluster.inner.manager.ownership(&info.node) else {
        // Not ours (any more): release or lease expiry removed the endpoint.
        return;
    };
    let doc = endpoint_doc(cluster.replica(), info);
    match cluster
        .inner
        .store
        .publish_endpoint(&info.node, ownership.token, doc.as_ref())
        .await
    {
        Ok(true) => debug!(node = %info.node, published = doc.is_some(), "endpoint written"),
        Ok(false) => debug!(node = %info.node, "endpoint not written: claim superseded"),
        Err(e) => warn!(node = %info.node, error = %e, "endpoint not written"),
    }
}

fn endpoint_doc(replica: &str, info: &ConsoleInfo) -> Option<EndpointDoc> {
    let ep = info.endpoint.as_ref()?;
    let state = match info.state {
        ConsoleState::Running => "running",
        ConsoleState::Failed => "failed",
        ConsoleState::Starting | ConsoleState::Disabled => return None,
    };
    Some(EndpointDoc {
        url: ep.url(),
        host: ep.host.clone(),
        port: ep.port,
        replica: replica.to_owned(),
        state: state.to_owned(),
        last_error: info.last_error.clone(),
    })
}
