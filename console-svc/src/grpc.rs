//! `console.v1.ConsoleService` over tonic: wire types in, domain calls on
//! the [`ConsoleManager`], wire types out. Errors map to `tonic::Status` in
//! one place (`From<ConsoleError> for Status`, in `error.rs`).

use std::pin::Pin;
use std::time::SystemTime;

use futures::Stream;
use pb::console_service_server::ConsoleService;
use porthole_proto::console::v1 as pb;
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};
use tracing::{info_span, Instrument};

use crate::cluster::forward::FORWARDED_BY;
use crate::cluster::Cluster;
use crate::error::ConsoleError;
use crate::manager::{ConsoleInfo, ConsoleManager, ConsoleState, Endpoint};
use crate::spec::{ConsoleKind, ConsoleSpec, NodeId};

pub struct ConsoleApi {
    manager: ConsoleManager,
    /// With etcd: answers from cluster state (any replica serves the API).
    cluster: Option<Cluster>,
}

impl ConsoleApi {
    pub fn new(manager: ConsoleManager) -> Self {
        Self {
            manager,
            cluster: None,
        }
    }

    pub fn clustered(cluster: Cluster) -> Self {
        Self {
            manager: cluster.manager().clone(),
            cluster: Some(cluster),
        }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::ConsoleEvent, Status>> + Send>>;

#[tonic::async_trait]
impl ConsoleService for ConsoleApi {
    async fn enable_console(
        &self,
        request: Request<pb::EnableConsoleRequest>,
    ) -> Result<Response<pb::Console>, Status> {
        let spec = ConsoleSpec::from_request(request.into_inner())?;
        let span = info_span!("enable", node = %spec.node);
        let info = match &self.cluster {
            Some(c) => c.enable(spec).instrument(span).await?,
            None => self.manager.enable(spec).instrument(span).await?,
        };
        Ok(Response::new(to_proto(&info)))
    }

    async fn disable_console(
        &self,
        request: Request<pb::DisableConsoleRequest>,
    ) -> Result<Response<pb::Console>, Status> {
        let node = NodeId::parse(&request.into_inner().node_id)?;
        let info = match &self.cluster {
            Some(c) => c.disable(&node).await?,
            None => self.manager.disable(&node).await?,
        };
        Ok(Response::new(to_proto(&info)))
    }

    async fn get_console(
        &self,
        request: Request<pb::GetConsoleRequest>,
    ) -> Result<Response<pb::Console>, Status> {
        let node = NodeId::parse(&request.into_inner().node_id)?;
        let info = match &self.cluster {
            Some(c) => c.get(&node).await?,
            None => self.manager.get(&node)?,
        };
        Ok(Response::new(to_proto(&info)))
    }

    async fn list_consoles(
        &self,
        _request: Request<pb::ListConsolesRequest>,
    ) -> Result<Response<pb::ListConsolesResponse>, Status> {
        let all = match &self.cluster {
            Some(c) => c.list().await?,
            None => self.manager.list(),
        };
        let consoles = all.iter().map(to_proto).collect();
        Ok(Response::new(pb::ListConsolesResponse { consoles }))
    }

    type WatchConsolesStream = EventStream;

    async fn watch_consoles(
        &self,
        _request: Request<pb::WatchConsolesRequest>,
    ) -> Result<Response<Self::WatchConsolesStream>, Status> {
        if let Some(cluster) = &self.cluster {
            return Ok(Response::new(Box::pin(cluster_stream(
                cluster,
                self.manager.stopping(),
            ))));
        }
        let manager = self.manager.clone();
        let stream = async_stream(manager);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn drain_replica(
        &self,
        _request: Request<pb::DrainReplicaRequest>,
    ) -> Result<Response<pb::DrainReplicaResponse>, Status> {
        let Some(cluster) = &self.cluster else {
            return Err(ConsoleError::Unsupported(
                "drain needs etcd coordination ([etcd] endpoints): without it there is no other replica"
                    .into(),
            )
            .into());
        };
        let released = cluster.drain().instrument(info_span!("drain")).await;
        Ok(Response::new(pb::DrainReplicaResponse {
            replica: cluster.replica().to_owned(),
            released: released as u32,
        }))
    }

    async fn get_console_log(
        &self,
        request: Request<pb::GetConsoleLogRequest>,
    ) -> Result<Response<pb::GetConsoleLogResponse>, Status> {
        let forwarded_by = request
            .metadata()
            .get(FORWARDED_BY)
            .map(|v| v.to_str().unwrap_or("unnamed").to_owned());
        let req = request.into_inner();
        let node = NodeId::parse(&req.node_id)?;
        let log = match &self.cluster {
            Some(c) => c.log(&node, req.max_bytes, forwarded_by.as_deref()).await?,
            None => self.manager.log(&node, req.max_bytes as usize)?,
        };
        Ok(Response::new(pb::GetConsoleLogResponse {
            data: log.data,
            truncated: log.truncated,
        }))
    }
}

/// The snapshot, a SYNCED marker, then changes. A watcher that falls too far
/// behind gets a fresh snapshot instead of the changes it missed.
fn async_stream(manager: ConsoleManager) -> impl Stream<Item = Result<pb::ConsoleEvent, Status>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let mut events = manager.subscribe();
        let stopping = manager.stopping();
        'snapshot: loop {
            for info in manager.list() {
                if tx
                    .send(Ok(event(pb::console_event::Type::Existing, Some(&info))))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if tx
                .send(Ok(event(pb::console_event::Type::Synced, None)))
                .await
                .is_err()
            {
                return;
            }
            loop {
                let ev = tokio::select! {
                    _ = tx.closed() => return,
                    // Ends the stream so the server's graceful shutdown can finish.
                    _ = stopping.cancelled() => return,
                    ev = events.recv() => ev,
                };
                match ev {
                    Ok(info) => {
                        if tx
                            .send(Ok(event(pb::console_event::Type::Changed, Some(&info))))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(RecvError::Lagged(_)) => continue 'snapshot,
                    Err(RecvError::Closed) => return,
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// WatchConsoles on cluster state (see `cluster::api`).
fn cluster_stream(
    cluster: &Cluster,
    stopping: tokio_util::sync::CancellationToken,
) -> impl Stream<Item = Result<pb::ConsoleEvent, Status>> {
    use futures::StreamExt;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    cluster.watch(tx, stopping);
    let mut synced = false;
    tokio_stream::wrappers::ReceiverStream::new(rx).map(move |info| {
        Ok(match info {
            Some(info) if synced => event(pb::console_event::Type::Changed, Some(&info)),
            Some(info) => event(pb::console_event::Type::Existing, Some(&info)),
            None => {
                synced = true;
                event(pb::console_event::Type::Synced, None)
            }
        })
    })
}

fn event(kind: pb::console_event::Type, info: Option<&ConsoleInfo>) -> pb::ConsoleEvent {
    pb::ConsoleEvent {
        r#type: kind as i32,
        console: info.map(to_proto),
    }
}

pub fn to_proto(info: &ConsoleInfo) -> pb::Console {
    let (url, host, port) = match &info.endpoint {
        Some(ep @ Endpoint { host, port }) => (ep.url(), host.clone(), u32::from(*port)),
        None => (String::new(), String::new(), 0),
    };
    pb::Console {
        node_id: info.node.to_string(),
        kind: match info.kind {
            ConsoleKind::Serial => pb::ConsoleKind::Serial as i32,
            ConsoleKind::Vnc => pb::ConsoleKind::Vnc as i32,
        },
        state: match info.state {
            ConsoleState::Starting => pb::ConsoleState::Starting,
            ConsoleState::Running => pb::ConsoleState::Running,
            ConsoleState::Failed => pb::ConsoleState::Failed,
            ConsoleState::Disabled => pb::ConsoleState::Disabled,
        } as i32,
        url,
        host,
        port,
        owner: info.owner.clone(),
        last_error: info.last_error.clone().unwrap_or_default(),
        created_at: info.created_at.map(timestamp),
        updated_at: info.updated_at.map(timestamp),
        backend: info.backend.to_owned(),
    }
}

fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}
