//! The registry and poller over an in-memory backend, on tokio's paused
//! clock: what is recorded, when the backend is asked, how results and
//! timeouts end an inspection, and what a watcher sees.

use super::*;
use crate::fake::FakeInspector;

const A: &str = "1be26c0b-03f2-4d2e-ae87-c02d7f33c123";
const B: &str = "2be26c0b-03f2-4d2e-ae87-c02d7f33c123";

const PERIOD: Duration = Duration::from_secs(10);
const TIMEOUT: Duration = Duration::from_secs(100);

fn setup(enabled: bool) -> (Inspections, Arc<FakeInspector>, CancellationToken) {
    let fake = Arc::new(FakeInspector::default());
    let cancel = CancellationToken::new();
    let backend = enabled.then(|| fake.clone() as Arc<dyn Backend>);
    let timing = Timing {
        status_check_period: PERIOD,
        inspect_wait_timeout: TIMEOUT,
    };
    let i = Inspections::new(backend, timing, &TaskTracker::new(), cancel.clone());
    (i, fake, cancel)
}

/// Let the poller run what is due now.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn disabled_and_unknown_are_refused_before_anything_is_recorded() {
    let (i, fake, _c) = setup(false);
    let err = i.start(A, INSPECTOR).await.unwrap_err();
    assert!(matches!(err, InspectError::InspectorDisabled));
    let text = err.to_string();
    assert!(text.contains("[inspector] enabled = true"), "{text}");
    assert!(i.validate(INSPECTOR).is_err());
    assert!(matches!(
        i.validate("discoverd"),
        Err(InspectError::UnknownInterface(_))
    ));
    assert!(matches!(i.get(A), Err(InspectError::NotFound(_))));
    assert!(i.watch().0.is_empty());
    assert!(fake.calls().is_empty());

    let (i, fake, _c) = setup(true);
    assert!(i.validate(INSPECTOR).is_ok());
    assert!(matches!(
        i.start("not-a-uuid", INSPECTOR).await,
        Err(InspectError::BadUuid(_))
    ));
    fake.refuse
        .lock()
        .unwrap()
        .insert(A.into(), "Node is in maintenance".into());
    let err = i.start(A, INSPECTOR).await.unwrap_err().to_string();
    assert!(err.contains("Node is in maintenance"), "{err}");
    assert!(matches!(i.get(A), Err(InspectError::NotFound(_))));
    assert!(i.watch().0.is_empty());
}

#[tokio::test(start_paused = true)]
async fn started_node_is_polled_once_a_period_until_it_finishes() {
    let (i, fake, _c) = setup(true);
    let (_, mut rx) = i.watch();
    // Upper-case in, canonical out.
    let shown = i.start(&A.to_uppercase(), INSPECTOR).await.unwrap();
    assert_eq!(shown.node_uuid, A);
    assert_eq!(shown.state(), pb::InspectionState::Waiting);
    assert!(shown.started_at_ms > 0 && shown.finished_at_ms == 0);
    assert_eq!(rx.recv().await.unwrap(), shown);
    assert!(matches!(
        i.start(A, INSPECTOR).await,
        Err(InspectError::AlreadyWaiting(_))
    ));
    assert_eq!(fake.count("start"), 1);

    settle().await;
    let first = fake.count("status");
    for n in 1..=3 {
        tokio::time::advance(PERIOD).await;
        settle().await;
        assert_eq!(fake.count("status"), first + n, "{:?}", fake.calls());
    }
    assert_eq!(i.get(A).unwrap().state(), pb::InspectionState::Waiting);

    fake.set(A, Status::Finished);
    tokio::time::advance(PERIOD).await;
    settle().await;
    let done = rx.recv().await.unwrap();
    assert_eq!(done.state(), pb::InspectionState::Finished);
    assert!(done.error.is_empty() && done.finished_at_ms >= done.started_at_ms);
    assert_eq!(i.get(A).unwrap(), done);
    // Not asked again once finished; a new inspection may start.
    let asked = fake.count("status");
    tokio::time::advance(PERIOD * 3).await;
    settle().await;
    assert_eq!(fake.count("status"), asked);
    i.start(A, INSPECTOR).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn inspector_error_lost_node_and_timeout_fail_the_inspection() {
    let (i, fake, _c) = setup(true);
    i.start(A, INSPECTOR).await.unwrap();
    i.start(B, INSPECTOR).await.unwrap();
    let (_, mut rx) = i.watch();
    fake.set(A, Status::Failed("The ramdisk said: no disks".into()));
    fake.status.lock().unwrap().remove(B);
    tokio::time::advance(PERIOD).await;
    settle().await;
    let mut ended: Vec<pb::Inspection> = vec![rx.recv().await.unwrap(), rx.recv().await.unwrap()];
    ended.sort_by(|a, b| a.node_uuid.cmp(&b.node_uuid));
    assert_eq!(ended[0].state(), pb::InspectionState::Failed);
    assert_eq!(ended[0].error, "The ramdisk said: no disks");
    assert_eq!(ended[1].state(), pb::InspectionState::Failed);
    assert!(
        ended[1]
            .error
            .contains("ironic-inspector no longer knows the node")
            && ended[1].error.contains("Could not find node"),
        "{}",
        ended[1].error
    );

    i.start(A, INSPECTOR).await.unwrap();
    assert_eq!(
        rx.recv().await.unwrap().state(),
        pb::InspectionState::Waiting
    );
    tokio::time::advance(TIMEOUT - PERIOD).await;
    settle().await;
    assert_eq!(i.get(A).unwrap().state(), pb::InspectionState::Waiting);
    tokio::time::advance(PERIOD * 2).await;
    settle().await;
    let late = rx.recv().await.unwrap();
    assert_eq!(late.state(), pb::InspectionState::Failed);
    assert!(late.error.contains("Timeout reached"), "{}", late.error);
    assert!(late.error.contains("1m 40s"), "{}", late.error);
    assert_eq!(fake.count(&format!("abort {A}")), 1);
}

#[tokio::test(start_paused = true)]
async fn abort_ends_a_waiting_inspection_and_refuses_otherwise() {
    let (i, fake, _c) = setup(true);
    assert!(matches!(i.abort(A).await, Err(InspectError::NotFound(_))));
    i.start(A, INSPECTOR).await.unwrap();
    let aborted = i.abort(A).await.unwrap();
    assert_eq!(aborted.state(), pb::InspectionState::Aborted);
    assert_eq!(aborted.error, "Inspection was aborted by request.");
    assert_eq!(fake.count(&format!("abort {A}")), 1);
    let err = i.abort(A).await.unwrap_err();
    assert!(
        matches!(
            err,
            InspectError::NotWaiting {
                state: "aborted",
                ..
            }
        ),
        "{err}"
    );
    // A result that arrives after the abort changes nothing.
    fake.set(A, Status::Finished);
    tokio::time::advance(PERIOD).await;
    settle().await;
    assert_eq!(i.get(A).unwrap().state(), pb::InspectionState::Aborted);
}

#[tokio::test(start_paused = true)]
async fn many_waiting_nodes_cost_one_status_request_each_per_period() {
    let (i, fake, cancel) = setup(true);
    let uuids: Vec<String> = (0..50).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    for u in &uuids {
        i.start(u, INSPECTOR).await.unwrap();
    }
    settle().await;
    let before = fake.count("status");
    tokio::time::advance(PERIOD).await;
    settle().await;
    assert_eq!(fake.count("status") - before, 50);
    let round: Vec<String> = fake.calls()[fake.calls().len() - 50..].to_vec();
    for u in &uuids {
        assert_eq!(
            round
                .iter()
                .filter(|c| **c == format!("status {u}"))
                .count(),
            1,
            "{u}"
        );
    }
    // Stopped: no more requests.
    cancel.cancel();
    settle().await;
    let stopped = fake.count("status");
    tokio::time::advance(PERIOD * 5).await;
    settle().await;
    assert_eq!(fake.count("status"), stopped);
}

#[tokio::test(start_paused = true)]
async fn an_abort_the_backend_cannot_take_yet_is_asked_again_each_period() {
    let (i, fake, _c) = setup(true);
    i.start(A, INSPECTOR).await.unwrap();
    let (_, mut rx) = i.watch();
    *fake.abort_locked.lock().unwrap() = 2;
    // Ended at once: the conductor does not wait for inspector.
    let aborted = i.abort(A).await.unwrap();
    assert_eq!(aborted.state(), pb::InspectionState::Aborted);
    assert_eq!(rx.recv().await.unwrap(), aborted);
    let aborts = || fake.count(&format!("abort {A}"));
    assert_eq!(aborts(), 1);
    settle().await;
    let asked = aborts();
    tokio::time::advance(PERIOD).await;
    settle().await;
    assert_eq!(aborts(), asked + 1, "{:?}", fake.calls());
    tokio::time::advance(PERIOD).await;
    settle().await;
    assert_eq!(aborts(), 3, "locked twice, taken at the third ask");
    // Taken: never asked again, the status neither.
    let statuses = fake.count("status");
    tokio::time::advance(PERIOD * 3).await;
    settle().await;
    assert_eq!((aborts(), fake.count("status")), (3, statuses));
    assert_eq!(i.get(A).unwrap().state(), pb::InspectionState::Aborted);
}

#[tokio::test(start_paused = true)]
async fn an_abort_that_lost_the_race_with_the_result_answers_the_result() {
    let (i, fake, _c) = setup(true);
    i.start(A, INSPECTOR).await.unwrap();
    settle().await;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    *fake.abort_gate.lock().unwrap() = Some(gate.clone());
    let aborting = tokio::spawn({
        let i = i.clone();
        async move { i.abort(A).await }
    });
    settle().await;
    assert_eq!(fake.count(&format!("abort {A}")), 1, "in flight");
    // Meanwhile inspector ends the run (here: it could not power the node
    // on while the conductor held it) and the poller records that.
    fake.set(A, Status::Failed("Failed to power on the node".into()));
    tokio::time::advance(PERIOD).await;
    settle().await;
    assert_eq!(i.get(A).unwrap().state(), pb::InspectionState::Failed);
    gate.add_permits(1);
    let answered = aborting.await.unwrap().expect("answered, not an error");
    assert_eq!(answered.state(), pb::InspectionState::Failed);
    assert_eq!(answered.error, "Failed to power on the node");
}

#[tokio::test(start_paused = true)]
async fn a_second_start_while_the_first_is_with_the_backend_is_refused() {
    let (i, fake, _c) = setup(true);
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    *fake.start_gate.lock().unwrap() = Some(gate.clone());
    let first = tokio::spawn({
        let i = i.clone();
        async move { i.start(A, INSPECTOR).await }
    });
    settle().await;
    // Refused at once (without the mark it would reach the backend and wait).
    let second = tokio::time::timeout(Duration::from_secs(1), i.start(A, INSPECTOR)).await;
    assert!(
        matches!(second, Ok(Err(InspectError::AlreadyWaiting(_)))),
        "{second:?}"
    );
    gate.add_permits(1);
    first.await.unwrap().unwrap();
    assert_eq!(fake.count("start"), 1);
    // A start given up on (its caller went away) leaves no mark behind.
    i.abort(A).await.unwrap();
    let given_up = tokio::spawn({
        let i = i.clone();
        async move { i.start(A, INSPECTOR).await }
    });
    settle().await;
    given_up.abort();
    let _ = given_up.await;
    gate.add_permits(1);
    i.start(A, INSPECTOR).await.unwrap();
    assert_eq!(fake.count("start"), 3);
}

/// An `agent` inspection is never polled (nothing outside to ask); its own
/// `[agent] inspect_wait_timeout` fails it; a new start replaces a waiting
/// one (the conductor starts again only after its own timeout).
#[tokio::test(start_paused = true)]
async fn agent_inspections_wait_for_data_until_their_timeout() {
    let fake = Arc::new(FakeInspector::default());
    let cancel = CancellationToken::new();
    let timing = Timing {
        status_check_period: PERIOD,
        inspect_wait_timeout: TIMEOUT,
    };
    let agent = AgentConfig {
        inspect_wait_timeout: Duration::from_secs(30),
        ..AgentConfig::default()
    };
    let i = Inspections::with_agent(
        Some(fake.clone() as Arc<dyn Backend>),
        Some(agent),
        timing,
        &TaskTracker::new(),
        cancel.clone(),
        16,
    );
    i.start(A, AGENT).await.unwrap();
    i.start(A, AGENT).await.unwrap();
    tokio::time::sleep(Duration::from_secs(25)).await;
    settle().await;
    assert_eq!(i.get(A).unwrap().state(), pb::InspectionState::Waiting);
    tokio::time::sleep(Duration::from_secs(10)).await;
    settle().await;
    let shown = i.get(A).unwrap();
    assert_eq!(shown.state(), pb::InspectionState::Failed);
    assert!(
        shown.error.contains("inspect_wait_timeout = 30s"),
        "{}",
        shown.error
    );
    assert!(fake.calls().is_empty(), "{:?}", fake.calls());
    cancel.cancel();
}
