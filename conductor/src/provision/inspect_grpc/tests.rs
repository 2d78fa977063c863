//! The gRPC inspect interface against an in-memory inspect service (a
//! tonic server in-process whose answers the test sets): the node's path
//! through `inspect wait`, refusals that leave it where it was, abort, and
//! a result that arrives before the node reached `inspect wait`. The real
//! service and ironic-inspector: `inspect/tests/inspector_real.rs`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pb::inspect_service_server::{InspectService, InspectServiceServer};
use serde_json::{json, Value};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tonic::{Request, Response, Status};

use super::*;
use crate::config::Config;
use crate::service::{NodeCreate, PowerTiming, ServiceError};

#[derive(Default)]
struct Answers {
    validate: Option<Status>,
    abort: Option<Status>,
    /// What StartInspection sends on the stream before it answers.
    start_emits: Option<pb::InspectionState>,
    /// What GetInspection answers (else NOT_FOUND).
    known: std::collections::HashMap<String, pb::Inspection>,
    /// What ContinueInspection answers (else UNAVAILABLE); the requests
    /// it got are kept in `continued`.
    continue_answer: Option<Result<pb::ContinueInspectionResponse, Status>>,
    continued: Vec<pb::ContinueInspectionRequest>,
}

struct FakeService {
    answers: Mutex<Answers>,
    events: broadcast::Sender<pb::Inspection>,
    calls: Mutex<Vec<String>>,
}

fn inspection(uuid: &str, state: pb::InspectionState, error: &str) -> pb::Inspection {
    pb::Inspection {
        node_uuid: uuid.into(),
        interface: "inspector".into(),
        state: state as i32,
        error: error.into(),
        started_at_ms: 1,
        finished_at_ms: 0,
    }
}

/// The served handle (tonic needs a type of this crate).
struct Served(Arc<FakeService>);

impl std::ops::Deref for Served {
    type Target = FakeService;
    fn deref(&self) -> &FakeService {
        &self.0
    }
}

#[tonic::async_trait]
impl InspectService for Served {
    async fn validate_inspection(
        &self,
        r: Request<pb::ValidateInspectionRequest>,
    ) -> Result<Response<pb::ValidateInspectionResponse>, Status> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("validate {}", r.get_ref().interface));
        match self.answers.lock().unwrap().validate.clone() {
            Some(s) => Err(s),
            None => Ok(Response::new(pb::ValidateInspectionResponse {})),
        }
    }
    async fn start_inspection(
        &self,
        r: Request<pb::StartInspectionRequest>,
    ) -> Result<Response<pb::Inspection>, Status> {
        let r = r.into_inner();
        self.calls
            .lock()
            .unwrap()
            .push(format!("start {} {}", r.node_uuid, r.interface));
        if let Some(state) = self.answers.lock().unwrap().start_emits {
            let _ = self.events.send(inspection(&r.node_uuid, state, ""));
        }
        let shown = inspection(&r.node_uuid, pb::InspectionState::Waiting, "");
        self.answers
            .lock()
            .unwrap()
            .known
            .insert(r.node_uuid.clone(), shown.clone());
        Ok(Response::new(shown))
    }
    async fn get_inspection(
        &self,
        r: Request<pb::GetInspectionRequest>,
    ) -> Result<Response<pb::Inspection>, Status> {
        let uuid = r.into_inner().node_uuid;
        self.calls.lock().unwrap().push(format!("get {uuid}"));
        match self.answers.lock().unwrap().known.get(&uuid) {
            Some(i) => Ok(Response::new(i.clone())),
            None => Err(Status::not_found(format!("No inspection of node {uuid}"))),
        }
    }
    async fn abort_inspection(
        &self,
        r: Request<pb::AbortInspectionRequest>,
    ) -> Result<Response<pb::Inspection>, Status> {
        let uuid = r.into_inner().node_uuid;
        self.calls.lock().unwrap().push(format!("abort {uuid}"));
        if let Some(s) = self.answers.lock().unwrap().abort.clone() {
            return Err(s);
        }
        let shown = inspection(&uuid, pb::InspectionState::Aborted, "aborted");
        let _ = self.events.send(shown.clone());
        Ok(Response::new(shown))
    }
    async fn continue_inspection(
        &self,
        r: Request<pb::ContinueInspectionRequest>,
    ) -> Result<Response<pb::ContinueInspectionResponse>, Status> {
        let r = r.into_inner();
        self.calls
            .lock()
            .unwrap()
            .push(format!("continue {}", r.node_uuid));
        let mut a = self.answers.lock().unwrap();
        a.continued.push(r);
        match a.continue_answer.clone() {
            Some(answer) => answer.map(Response::new),
            None => Err(Status::unavailable("no answer set")),
        }
    }
    type WatchInspectionsStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::Inspection, Status>> + Send>>;
    async fn watch_inspections(
        &self,
        _: Request<pb::WatchInspectionsRequest>,
    ) -> Result<Response<Self::WatchInspectionsStream>, Status> {
        let s = BroadcastStream::new(self.events.subscribe())
            .filter_map(|r| r.ok())
            .map(Ok);
        Ok(Response::new(Box::pin(s)))
    }
}

/// A conductor on `dir` without the inspect service.
fn conductor(dir: &tempfile::TempDir) -> Conductor {
    let sealer = crate::seal::Sealer::load_or_create(&dir.path().join("k")).unwrap();
    let store = crate::db::Store::open(&dir.path().join("db"), sealer).unwrap();
    let cfg = Config::default();
    let consoles = crate::console::ConsoleClient::new(&cfg.console).unwrap();
    let power =
        crate::power::PowerSettings::new("ipmitool".into(), Duration::from_secs(2)).unwrap();
    let timing = PowerTiming {
        state_timeout: Duration::from_secs(2),
        poll_interval: Duration::from_millis(50),
    };
    Conductor::new(store, consoles, power, timing, Default::default())
}

struct Rig {
    c: Arc<Conductor>,
    fake: Arc<FakeService>,
    _dir: tempfile::TempDir,
}

async fn rig() -> Rig {
    let (events, _) = broadcast::channel(64);
    let fake = Arc::new(FakeService {
        answers: Mutex::default(),
        events,
        calls: Mutex::default(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tonic::transport::Server::builder()
        .add_service(InspectServiceServer::new(Served(fake.clone())))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);

    let dir = tempfile::tempdir().unwrap();
    let mut c = conductor(&dir);
    let client = InspectClient::new(&url, Duration::from_secs(5)).unwrap();
    c.interfaces.set_inspect_service(client.clone());
    let c = Arc::new(c);
    c.tasks.spawn(follow(c.clone(), client));
    // The follower is subscribed once an event sent now reaches it; wait
    // for the subscription instead of racing it.
    for _ in 0..500 {
        if fake.events.receiver_count() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        fake.events.receiver_count() > 0,
        "the conductor follows the stream"
    );
    Rig { c, fake, _dir: dir }
}

/// A fake-hardware node inspected by `inspector`, in `manageable`.
async fn manageable_node(c: &Arc<Conductor>) -> String {
    manageable_node_with(
        c,
        json!({"driver": "fake-hardware", "inspect_interface": "inspector"}),
    )
    .await
}

async fn manageable_node_with(c: &Arc<Conductor>, body: Value) -> String {
    let Value::Object(m) = body else {
        unreachable!()
    };
    let uuid = c.create_node(NodeCreate(m)).await.unwrap().uuid;
    c.set_provision_state(&uuid, "manage", None).await.unwrap();
    settles(c, &uuid, "manageable").await;
    uuid
}

/// Wait (up to 5 s) until the node is in `want` with its lock free.
async fn settles(c: &Conductor, uuid: &str, want: &str) -> Node {
    for _ in 0..500 {
        let n = c.store.get_node(uuid).await.unwrap();
        if n.provision_state == want && !c.is_busy(uuid) {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let n = c.store.get_node(uuid).await.unwrap();
    panic!("never {want}: {} / {:?}", n.provision_state, n.last_error);
}

mod agent;

#[tokio::test]
async fn waits_unlocked_then_the_streamed_result_ends_it() {
    let r = rig().await;
    let c = &r.c;
    let ok = manageable_node(c).await;
    c.set_provision_state(&ok, "inspect", None).await.unwrap();
    let n = settles(c, &ok, "inspect wait").await;
    assert_eq!(n.target_provision_state.as_deref(), Some("manageable"));
    assert!(n.inspection_started_at.is_some() && n.inspection_finished_at.is_none());
    assert_eq!(
        *r.fake.calls.lock().unwrap(),
        vec![
            "validate inspector".to_string(),
            format!("start {ok} inspector")
        ]
    );
    r.fake
        .events
        .send(inspection(&ok, pb::InspectionState::Finished, ""))
        .unwrap();
    let n = settles(c, &ok, "manageable").await;
    assert!(n.last_error.is_none() && n.inspection_finished_at.is_some());
    assert_eq!(n.target_provision_state, None);

    let bad = manageable_node(c).await;
    c.set_provision_state(&bad, "inspect", None).await.unwrap();
    settles(c, &bad, "inspect wait").await;
    r.fake
        .events
        .send(inspection(
            &bad,
            pb::InspectionState::Failed,
            "Introspection timeout",
        ))
        .unwrap();
    let n = settles(c, &bad, "inspect failed").await;
    assert_eq!(
        n.last_error.as_deref(),
        Some("ironic-inspector inspection failed: Introspection timeout")
    );
    // A late duplicate changes nothing.
    r.fake
        .events
        .send(inspection(&bad, pb::InspectionState::Finished, ""))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        c.store.get_node(&bad).await.unwrap().provision_state,
        "inspect failed"
    );
}

#[tokio::test]
async fn a_result_before_the_node_reached_inspect_wait_still_ends_it() {
    let r = rig().await;
    let c = &r.c;
    r.fake.answers.lock().unwrap().start_emits = Some(pb::InspectionState::Finished);
    let u = manageable_node(c).await;
    c.set_provision_state(&u, "inspect", None).await.unwrap();
    let n = settles(c, &u, "manageable").await;
    assert!(n.inspection_finished_at.is_some(), "{n:?}");
}

#[tokio::test]
async fn a_refused_validate_leaves_the_node_where_it_was() {
    let r = rig().await;
    let c = &r.c;
    let u = manageable_node(c).await;
    let before = c.store.get_node(&u).await.unwrap();
    r.fake.answers.lock().unwrap().validate = Some(Status::failed_precondition(
        "Inspection through ironic-inspector is disabled in the inspect service: set [inspector] enabled = true",
    ));
    let err = c
        .set_provision_state(&u, "inspect", None)
        .await
        .unwrap_err();
    assert!(matches!(err, ServiceError::Invalid(_)), "{err}");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "Failed to validate inspect interface inspector of node {u}: "
        )) && text.contains("[inspector] enabled = true"),
        "{text}"
    );
    let after = c.store.get_node(&u).await.unwrap();
    assert_eq!(after, before);
    assert!(!c.is_busy(&u));
    assert!(!r
        .fake
        .calls
        .lock()
        .unwrap()
        .iter()
        .any(|c| c.starts_with("start")));
}

#[tokio::test]
async fn abort_asks_the_service_first_and_a_refusal_keeps_the_node_waiting() {
    let r = rig().await;
    let c = &r.c;
    let u = manageable_node(c).await;
    c.set_provision_state(&u, "inspect", None).await.unwrap();
    settles(c, &u, "inspect wait").await;
    r.fake.answers.lock().unwrap().abort = Some(Status::unavailable("ironic-inspector is down"));
    let err = c.set_provision_state(&u, "abort", None).await.unwrap_err();
    assert!(matches!(err, ServiceError::Conflict(_)), "{err}");
    assert!(
        err.to_string().contains("ironic-inspector is down"),
        "{err}"
    );
    let n = settles(c, &u, "inspect wait").await;
    assert!(n.last_error.is_none());

    r.fake.answers.lock().unwrap().abort = None;
    c.set_provision_state(&u, "abort", None).await.unwrap();
    let n = settles(c, &u, "inspect failed").await;
    assert_eq!(
        n.last_error.as_deref(),
        Some("Inspection was aborted by request.")
    );
    assert_eq!(
        r.fake
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.starts_with("abort"))
            .count(),
        2
    );
}

/// ironic-inspector sets boot device pxe before it powers a node on; a
/// fake-hardware node's management does as Ironic's fake: pxe only.
#[tokio::test]
async fn fake_management_takes_pxe_as_ironics_fake_does() {
    let r = rig().await;
    let c = &r.c;
    let u = manageable_node(c).await;
    let body = |dev: &str| {
        let Value::Object(m) = json!({"boot_device": dev}) else {
            unreachable!()
        };
        m
    };
    c.set_boot_device(&u, &body("pxe")).await.unwrap();
    assert_eq!(
        c.boot_device(&u).await.unwrap(),
        json!({"boot_device": "pxe", "persistent": false})
    );
    let err = c.set_boot_device(&u, &body("disk")).await.unwrap_err();
    assert!(matches!(err, ServiceError::Invalid(_)), "{err}");
    assert_eq!(err.to_string(), "Invalid boot device disk specified.");
    let node = c.store.get_node(&u).await.unwrap();
    assert_eq!(Conductor::supported_boot_devices(&node), ["pxe"]);
}

/// The inspect service restarted and lost its inspections: once the
/// conductor follows it again, a node it does not know fails instead of
/// waiting for ever; one it knows keeps waiting.
#[tokio::test]
async fn a_node_the_service_lost_fails_when_the_stream_opens_again() {
    let r = rig().await;
    let c = &r.c;
    let lost = manageable_node(c).await;
    let kept = manageable_node(c).await;
    for u in [&lost, &kept] {
        c.set_provision_state(u, "inspect", None).await.unwrap();
        settles(c, u, "inspect wait").await;
    }
    r.fake.answers.lock().unwrap().known.remove(&lost);
    // A second follower stands for the conductor following again.
    let client = c.interfaces.inspect_service.clone().unwrap();
    c.tasks.spawn(follow(c.clone(), client));
    let n = settles(c, &lost, "inspect failed").await;
    assert_eq!(n.last_error.as_deref(), Some(LOST));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let n = c.store.get_node(&kept).await.unwrap();
    assert_eq!(n.provision_state, "inspect wait");
    let calls = r.fake.calls.lock().unwrap().clone();
    assert!(calls.contains(&format!("get {kept}")), "{calls:?}");
}

/// Which nodes go to the service is their `inspect_interface`: `agent`
/// does too (the service answers for it), the `fake` default does not.
#[tokio::test]
async fn the_node_s_inspect_interface_picks_the_service() {
    let r = rig().await;
    let c = &r.c;
    let agent = manageable_node_with(
        c,
        json!({"driver": "fake-hardware", "inspect_interface": "agent"}),
    )
    .await;
    c.set_provision_state(&agent, "inspect", None)
        .await
        .unwrap();
    settles(c, &agent, "inspect wait").await;
    let fake = manageable_node_with(c, json!({"driver": "fake-hardware"})).await;
    let n = c.store.get_node(&fake).await.unwrap();
    assert_eq!(n.interface(crate::drivers::Kind::Inspect), "fake");
    c.set_provision_state(&fake, "inspect", None).await.unwrap();
    settles(c, &fake, "manageable").await;
    assert_eq!(
        *r.fake.calls.lock().unwrap(),
        vec!["validate agent".to_string(), format!("start {agent} agent")],
        "only the agent node reached the service"
    );
}

/// The classic `pxe_ipmitool` alias sets `inspector` inspection: such a
/// node is inspected through the service.
#[tokio::test]
async fn a_pxe_ipmitool_node_is_inspected_by_the_service() {
    let r = rig().await;
    let c = &r.c;
    let Value::Object(m) = json!({"driver": "pxe_ipmitool",
        "driver_info": {"ipmi_address": "127.0.0.1", "ipmi_username": "u", "ipmi_password": "p"}})
    else {
        unreachable!()
    };
    let n = c.create_node(NodeCreate(m)).await.unwrap();
    assert_eq!(n.driver, "ipmi");
    assert_eq!(n.interface(crate::drivers::Kind::Inspect), "inspector");
    let v = c.validate(&n.uuid).await.unwrap();
    assert_eq!(v["inspect"], json!({"result": true}), "{v}");
    // manageable without a BMC to verify against (verify is not under test).
    c.store
        .modify_node(&n.uuid, |n: &mut Node| {
            n.provision_state = "manageable".into();
            Ok::<_, ServiceError>(())
        })
        .await
        .unwrap();
    c.set_provision_state(&n.uuid, "inspect", None)
        .await
        .unwrap();
    settles(c, &n.uuid, "inspect wait").await;
    assert_eq!(
        *r.fake.calls.lock().unwrap(),
        vec![
            "validate inspector".to_string(),
            format!("start {} inspector", n.uuid)
        ]
    );
}

/// Without `[inspect] endpoint` an `inspector` node's interface validates
/// false naming the option, and `inspect` is refused with nothing moved.
#[tokio::test]
async fn without_the_service_inspector_nodes_are_refused_naming_the_option() {
    let dir = tempfile::tempdir().unwrap();
    let c = Arc::new(conductor(&dir));
    let u = manageable_node(&c).await;
    let v = c.validate(&u).await.unwrap();
    let want = "The inspect interface \"inspector\" needs the inspect service, which this conductor is not configured with: set inspect.endpoint (PORTHOLE_CONDUCTOR_INSPECT_ENDPOINT).";
    assert_eq!(
        v["inspect"],
        json!({"result": false, "reason": want}),
        "{v}"
    );
    let before = c.store.get_node(&u).await.unwrap();
    let err = c
        .set_provision_state(&u, "inspect", None)
        .await
        .unwrap_err();
    assert!(matches!(err, ServiceError::Invalid(_)), "{err}");
    assert_eq!(
        err.to_string(),
        format!("Failed to validate inspection or power info for node {u}. Error: {want}")
    );
    assert_eq!(c.store.get_node(&u).await.unwrap(), before);
    assert!(!c.is_busy(&u));
}
