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
        request: Request<pb::ListConsolesRequest>,
    ) -> Result<Response<pb::ListConsolesResponse>, Status> {
        let req = request.into_inner();
        let after = match req.page_token.as_str() {
            "" => None,
            token => Some(NodeId::parse(token).map_err(|_| {
                ConsoleError::invalid("page_token is not a next_page_token this service gave")
            })?),
        };
        let all = match &self.cluster {
            Some(c) => c.list().await?,
            None => self.manager.list(),
        };
        let (page, next) = page_of(&all, after.as_ref(), req.page_size);
        Ok(Response::new(pb::ListConsolesResponse {
            consoles: page.iter().map(to_proto).collect(),
            next_page_token: next.map(|n| n.to_string()).unwrap_or_default(),
        }))
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

/// ListConsoles' page size when the request names none, and its maximum:
/// a Console is at most about 1 KiB (node ids are at most 128 characters,
/// last_error is bounded), so a page stays far below 4 MiB.
pub const DEFAULT_PAGE_SIZE: usize = 500;
pub const MAX_PAGE_SIZE: usize = 1000;

/// The consoles after `after` (all sorted by node id), at most `size` of
/// them (0: the default), and the token of the next page when more follow.
/// The token is the page's last node id: a console added or removed
/// between pages neither repeats nor hides the others.
fn page_of<'a>(
    all: &'a [ConsoleInfo],
    after: Option<&NodeId>,
    size: u32,
) -> (&'a [ConsoleInfo], Option<&'a NodeId>) {
    let size = match size as usize {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    };
    let start = after.map_or(0, |a| all.partition_point(|c| c.node <= *a));
    let rest = &all[start..];
    let page = &rest[..rest.len().min(size)];
    let next = (rest.len() > page.len()).then(|| &page[page.len() - 1].node);
    (page, next)
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
        last_error: info
            .last_error
            .clone()
            .map(|e| crate::text::bounded(e, crate::error::MAX_MESSAGE_LEN))
            .unwrap_or_default(),
        created_at: info.created_at.map(timestamp),
        updated_at: info.updated_at.map(timestamp),
        backend: info.backend.to_owned(),
    }
}

fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn infos(n: usize) -> Vec<ConsoleInfo> {
        (0..n)
            .map(|i| ConsoleInfo {
                node: NodeId::parse(&format!("node-{i:05}")).unwrap(),
                kind: ConsoleKind::Serial,
                state: ConsoleState::Running,
                endpoint: None,
                owner: "r".into(),
                last_error: None,
                created_at: None,
                updated_at: None,
                backend: "native",
            })
            .collect()
    }

    #[test]
    fn pages_cover_everything_once_in_order() {
        let all = infos(2345);
        let mut seen = Vec::new();
        let mut after: Option<NodeId> = None;
        let mut pages = 0;
        loop {
            let (page, next) = page_of(&all, after.as_ref(), 0);
            assert!(page.len() <= DEFAULT_PAGE_SIZE);
            seen.extend(page.iter().map(|c| c.node.clone()));
            pages += 1;
            match next {
                Some(n) => after = Some(n.clone()),
                None => break,
            }
        }
        assert_eq!(pages, 5);
        assert_eq!(seen, all.iter().map(|c| c.node.clone()).collect::<Vec<_>>());
    }

    #[test]
    fn page_sizes_are_bounded() {
        let all = infos(1500);
        assert_eq!(page_of(&all, None, 7).0.len(), 7);
        assert_eq!(page_of(&all, None, u32::MAX).0.len(), MAX_PAGE_SIZE);
        let (page, next) = page_of(&all, None, 1500);
        assert_eq!((page.len(), next.is_some()), (MAX_PAGE_SIZE, true));
        // Exactly the rest: no next page.
        let (page, next) = page_of(&all, Some(&all[499].node), 1000);
        assert_eq!((page.len(), next), (1000, None));
        // A token past the end (its console was removed): an empty last page.
        let gone = NodeId::parse("zzz").unwrap();
        assert_eq!(page_of(&all, Some(&gone), 0), (&[][..], None));
    }

    /// The biggest console this service can describe stays near 1 KiB, so a
    /// full page is far below gRPC's 4 MiB default limit.
    #[test]
    fn a_full_page_of_the_largest_consoles_fits_well_under_4_mib() {
        use prost::Message as _;
        let mut big = infos(MAX_PAGE_SIZE);
        for c in &mut big {
            c.node = NodeId::parse(&"n".repeat(crate::spec::MAX_NODE_ID_LEN)).unwrap();
            c.last_error = Some("e".repeat(crate::error::MAX_MESSAGE_LEN));
            c.owner = "o".repeat(64);
            c.endpoint = Some(Endpoint {
                host: "h".repeat(253),
                port: 65535,
            });
            c.created_at = Some(SystemTime::now());
            c.updated_at = Some(SystemTime::now());
        }
        let answer = pb::ListConsolesResponse {
            consoles: big.iter().map(to_proto).collect(),
            next_page_token: "n".repeat(crate::spec::MAX_NODE_ID_LEN),
        };
        let len = answer.encoded_len();
        assert!(len < 2 * 1024 * 1024, "{len} bytes");
    }
}
