//! `console.v1.ConsoleService` over tonic: wire types in, calls on the one
//! [`Consoles`] (the local manager, or the cluster with etcd), wire types
//! out. Errors map to `tonic::Status` in one place (`From<ConsoleError> for
//! Status`, in `error.rs`).

use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use futures::Stream;
use pb::console_service_server::ConsoleService;
use porthole_proto::console::v1 as pb;
use tonic::{Request, Response, Status};
use tracing::{info_span, Instrument};

use crate::cluster::forward::FORWARDED_BY;
use crate::consoles::{Change, ConsoleWatch, Consoles};
use crate::error::ConsoleError;
use crate::manager::{ConsoleInfo, ConsoleState, Endpoint};
use crate::spec::{ConsoleKind, ConsoleSpec, NodeId};

pub struct ConsoleApi {
    consoles: Arc<dyn Consoles>,
}

impl ConsoleApi {
    pub fn new(consoles: Arc<dyn Consoles>) -> Self {
        Self { consoles }
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
        let info = self.consoles.enable(spec).instrument(span).await?;
        Ok(Response::new(to_proto(&info)))
    }

    async fn disable_console(
        &self,
        request: Request<pb::DisableConsoleRequest>,
    ) -> Result<Response<pb::Console>, Status> {
        let node = NodeId::parse(&request.into_inner().node_id)?;
        let info = self.consoles.disable(&node).await?;
        Ok(Response::new(to_proto(&info)))
    }

    async fn get_console(
        &self,
        request: Request<pb::GetConsoleRequest>,
    ) -> Result<Response<pb::Console>, Status> {
        let node = NodeId::parse(&request.into_inner().node_id)?;
        let info = self.consoles.get(&node).await?;
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
        let all = self.consoles.list().await?;
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
        Ok(Response::new(Box::pin(event_stream(self.consoles.watch()))))
    }

    async fn drain_replica(
        &self,
        _request: Request<pb::DrainReplicaRequest>,
    ) -> Result<Response<pb::DrainReplicaResponse>, Status> {
        let (replica, released) = self
            .consoles
            .drain()
            .instrument(info_span!("drain"))
            .await?;
        Ok(Response::new(pb::DrainReplicaResponse {
            replica,
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
        let log = self
            .consoles
            .log(&node, req.max_bytes, forwarded_by.as_deref())
            .await?;
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

/// WatchConsoles, for both modes: the snapshot (EXISTING), a SYNCED marker,
/// then a CHANGED per change. A watcher that falls too far behind gets a
/// fresh snapshot instead of the changes it missed. Ends when the client
/// goes or the service stops (so the server's graceful shutdown can finish).
fn event_stream(
    mut watch: Box<dyn ConsoleWatch>,
) -> impl Stream<Item = Result<pb::ConsoleEvent, Status>> {
    use pb::console_event::Type;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        'snapshot: loop {
            let snapshot = watch.snapshot().into_iter();
            let events = snapshot.map(|info| event(Type::Existing, Some(&info)));
            for ev in events.chain([event(Type::Synced, None)]) {
                if tx.send(Ok(ev)).await.is_err() {
                    return;
                }
            }
            loop {
                let change = tokio::select! {
                    _ = tx.closed() => return,
                    change = watch.next() => change,
                };
                let info = match change {
                    Change::Console(info) => info,
                    Change::Resync => continue 'snapshot,
                    Change::Closed => return,
                };
                if tx
                    .send(Ok(event(Type::Changed, Some(&info))))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
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

    /// A watch that plays a script: each snapshot in turn, then the changes.
    struct Scripted {
        snapshots: std::collections::VecDeque<Vec<ConsoleInfo>>,
        changes: std::collections::VecDeque<Change>,
    }

    #[async_trait::async_trait]
    impl ConsoleWatch for Scripted {
        fn snapshot(&mut self) -> Vec<ConsoleInfo> {
            self.snapshots.pop_front().unwrap_or_default()
        }

        async fn next(&mut self) -> Change {
            self.changes.pop_front().unwrap_or(Change::Closed)
        }
    }

    /// (type, node) of each event until the stream ends.
    async fn events_of(watch: Scripted) -> Vec<(pb::console_event::Type, String)> {
        use futures::StreamExt;
        event_stream(Box::new(watch))
            .map(|ev| {
                let ev = ev.unwrap();
                let kind = ev.r#type();
                (kind, ev.console.map(|c| c.node_id).unwrap_or_default())
            })
            .collect()
            .await
    }

    #[tokio::test]
    async fn a_watch_is_snapshot_synced_changes_and_a_new_snapshot_after_a_resync() {
        use pb::console_event::Type::{Changed, Existing, Synced};
        let all = infos(3);
        let watch = Scripted {
            snapshots: [all[..2].to_vec(), all[1..].to_vec()].into(),
            changes: [
                Change::Console(all[2].clone()),
                Change::Resync,
                Change::Console(all[0].clone()),
                Change::Closed,
                Change::Console(all[1].clone()),
            ]
            .into(),
        };
        let n = |i: usize| all[i].node.to_string();
        assert_eq!(
            events_of(watch).await,
            vec![
                (Existing, n(0)),
                (Existing, n(1)),
                (Synced, String::new()),
                (Changed, n(2)),
                (Existing, n(1)),
                (Existing, n(2)),
                (Synced, String::new()),
                (Changed, n(0)),
            ],
            "Closed ends the stream; nothing after it is sent"
        );
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
