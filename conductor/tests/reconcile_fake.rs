//! Reconcile both ways against an in-memory console-svc (a tonic server in
//! this process, in addition to the rig test in console_kill.rs): after a
//! conductor restart, a console console-svc serves for a known node with
//! `console_enabled = false` is disabled, a wanted console console-svc lost
//! is enabled again, and a console of a node id the conductor does not know
//! is left alone; the same for a console that appears later (a CHANGED
//! event of WatchConsoles). Needs no rig.

mod common;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Result};
use common::{eventually, TestConductor};
use pb::console_service_server::{ConsoleService, ConsoleServiceServer};
use porthole_proto::console::v1 as pb;
use serde_json::json;
use tonic::{Request, Response, Status};

/// console-svc in memory: consoles by node, and every call it got.
struct Fake {
    consoles: Mutex<HashMap<String, pb::Console>>,
    calls: Mutex<Vec<String>>,
    changes: tokio::sync::broadcast::Sender<pb::ConsoleEvent>,
}

impl Default for Fake {
    fn default() -> Self {
        Self {
            consoles: Mutex::default(),
            calls: Mutex::default(),
            changes: tokio::sync::broadcast::channel(16).0,
        }
    }
}

impl Fake {
    /// A console console-svc starts by itself (or for someone else): kept
    /// and reported as CHANGED to every watcher.
    fn appear(&self, c: pb::Console) {
        self.consoles
            .lock()
            .unwrap()
            .insert(c.node_id.clone(), c.clone());
        let _ = self.changes.send(pb::ConsoleEvent {
            r#type: pb::console_event::Type::Changed as i32,
            console: Some(c),
        });
    }

    fn running(node: &str, port: u32) -> pb::Console {
        pb::Console {
            node_id: node.to_owned(),
            kind: pb::ConsoleKind::Serial as i32,
            state: pb::ConsoleState::Running as i32,
            url: format!("tcp://127.0.0.1:{port}"),
            host: "127.0.0.1".into(),
            port,
            ..Default::default()
        }
    }

    fn note(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

#[derive(Clone)]
struct Svc(Arc<Fake>);

type Events = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ConsoleEvent, Status>> + Send>>;

#[tonic::async_trait]
impl ConsoleService for Svc {
    async fn enable_console(
        &self,
        r: Request<pb::EnableConsoleRequest>,
    ) -> Result<Response<pb::Console>, Status> {
        let node = r.into_inner().node_id;
        self.0.note(format!("enable {node}"));
        let c = Fake::running(&node, 10_000);
        self.0.consoles.lock().unwrap().insert(node, c.clone());
        Ok(Response::new(c))
    }

    async fn disable_console(
        &self,
        r: Request<pb::DisableConsoleRequest>,
    ) -> Result<Response<pb::Console>, Status> {
        let node = r.into_inner().node_id;
        self.0.note(format!("disable {node}"));
        self.0.consoles.lock().unwrap().remove(&node);
        Ok(Response::new(pb::Console {
            node_id: node,
            state: pb::ConsoleState::Disabled as i32,
            ..Default::default()
        }))
    }

    async fn get_console(
        &self,
        r: Request<pb::GetConsoleRequest>,
    ) -> Result<Response<pb::Console>, Status> {
        let node = r.into_inner().node_id;
        let c = self.0.consoles.lock().unwrap().get(&node).cloned();
        c.map(Response::new).ok_or_else(|| Status::not_found(node))
    }

    async fn list_consoles(
        &self,
        _: Request<pb::ListConsolesRequest>,
    ) -> Result<Response<pb::ListConsolesResponse>, Status> {
        let consoles = self.0.consoles.lock().unwrap().values().cloned().collect();
        // A handful of consoles: one page.
        Ok(Response::new(pb::ListConsolesResponse {
            consoles,
            next_page_token: String::new(),
        }))
    }

    type WatchConsolesStream = Events;

    async fn watch_consoles(
        &self,
        _: Request<pb::WatchConsolesRequest>,
    ) -> Result<Response<Events>, Status> {
        self.0.note("watch".into());
        let mut events: Vec<Result<pb::ConsoleEvent, Status>> = self
            .0
            .consoles
            .lock()
            .unwrap()
            .values()
            .map(|c| {
                Ok(pb::ConsoleEvent {
                    r#type: pb::console_event::Type::Existing as i32,
                    console: Some(c.clone()),
                })
            })
            .collect();
        events.push(Ok(pb::ConsoleEvent {
            r#type: pb::console_event::Type::Synced as i32,
            console: None,
        }));
        use tokio_stream::StreamExt;
        let changes = tokio_stream::wrappers::BroadcastStream::new(self.0.changes.subscribe())
            .filter_map(|e| e.ok().map(Ok));
        let stream = tokio_stream::iter(events).chain(changes);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_console_log(
        &self,
        _: Request<pb::GetConsoleLogRequest>,
    ) -> Result<Response<pb::GetConsoleLogResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn drain_replica(
        &self,
        _: Request<pb::DrainReplicaRequest>,
    ) -> Result<Response<pb::DrainReplicaResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_disables_unwanted_and_restores_wanted() {
    porthole_tests::run(body()).await
}

async fn body() -> Result<()> {
    let unwanted = "1f0e26c0-03f2-4d2e-ae87-c02d7f33c001";
    let wanted = "1f0e26c0-03f2-4d2e-ae87-c02d7f33c002";
    let foreign = "1f0e26c0-03f2-4d2e-ae87-c02d7f33c003";
    let fake = Arc::new(Fake::default());
    for (n, port) in [(unwanted, 10_001), (foreign, 10_003)] {
        fake.consoles
            .lock()
            .unwrap()
            .insert(n.to_owned(), Fake::running(n, port));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ConsoleServiceServer::new(Svc(fake.clone())))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let mut cond = TestConductor::start(&url).await?;
    let watched = |n: usize| {
        let fake = fake.clone();
        async move {
            eventually(Duration::from_secs(20), "the conductor watches", || async {
                Ok((fake.calls().iter().filter(|c| *c == "watch").count() >= n).then_some(()))
            })
            .await
        }
    };
    watched(1).await?;
    let http = reqwest::Client::new();
    for (uuid, name) in [(unwanted, "n-unwanted"), (wanted, "n-wanted")] {
        http.post(format!("{}/v1/nodes", cond.url))
            .json(&json!({
                "uuid": uuid, "name": name, "driver": "ipmi",
                "driver_info": {"ipmi_address": "127.0.0.1", "ipmi_username": "u", "ipmi_password": "p"},
            }))
            .send()
            .await?
            .error_for_status()?;
    }
    http.put(format!("{}/v1/nodes/{wanted}/states/console", cond.url))
        .json(&json!({"enabled": true}))
        .send()
        .await?
        .error_for_status()?;
    // console-svc loses the wanted console (a restart); the unwanted one
    // it has from before is still there.
    fake.consoles.lock().unwrap().remove(wanted);

    cond.stop().await?;
    cond.restart().await?;
    watched(2).await?;
    let calls = eventually(Duration::from_secs(10), "reconcile both ways", || async {
        let calls = fake.calls();
        let done = calls.contains(&format!("disable {unwanted}"))
            && calls
                .iter()
                .filter(|c| **c == format!("enable {wanted}"))
                .count()
                == 2;
        Ok(done.then_some(calls))
    })
    .await;
    let calls = calls.map_err(|e| anyhow::anyhow!("{e}: calls {:?}", fake.calls()))?;
    ensure!(
        !calls.contains(&format!("disable {foreign}")),
        "a console of a node the conductor does not know was disabled: {calls:?}"
    );
    let consoles = fake.consoles.lock().unwrap().clone();
    ensure!(
        consoles.contains_key(wanted)
            && consoles.contains_key(foreign)
            && !consoles.contains_key(unwanted),
        "consoles after reconcile: {:?}",
        consoles.keys().collect::<Vec<_>>()
    );

    // Later, console-svc reports a live console for the known node that
    // does not want one (its enable answer came too late), and one for a
    // node it does not know.
    let late = "1f0e26c0-03f2-4d2e-ae87-c02d7f33c004";
    let stranger = "1f0e26c0-03f2-4d2e-ae87-c02d7f33c005";
    http.post(format!("{}/v1/nodes", cond.url))
        .json(&json!({"uuid": late, "name": "n-late", "driver": "ipmi"}))
        .send()
        .await?
        .error_for_status()?;
    fake.appear(Fake::running(stranger, 10_005));
    fake.appear(Fake::running(late, 10_004));
    eventually(
        Duration::from_secs(10),
        "the late console disabled",
        || async {
            Ok(fake
                .calls()
                .contains(&format!("disable {late}"))
                .then_some(()))
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}: calls {:?}", fake.calls()))?;
    ensure!(
        !fake.calls().contains(&format!("disable {stranger}")),
        "a console of a node the conductor does not know was disabled: {:?}",
        fake.calls()
    );
    cond.stop().await?;
    server.abort();
    Ok(())
}
