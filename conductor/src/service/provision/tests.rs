//! Provision actions against a real store (SQLite in a temp dir) and
//! scripted deploy/inspect interfaces: each verb's path, Ironic's refusals
//! with nothing recorded, the lock while work runs and not while waiting.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::Semaphore;

use super::*;
use crate::config::Config;
use crate::provision::interfaces::{
    BoxFuture, CleanStep, DeployInterface, Fake, InspectInterface, StepResult,
};
use crate::service::{NodeCreate, PowerTiming, HOST};

/// A deploy interface whose answers the test sets; `gate`, when closed,
/// holds deploy until the test adds a permit.
#[derive(Default)]
struct Scripted {
    deploy: Mutex<Vec<StepResult>>,
    clean_step: bool,
    clean_fails: bool,
    cleaned: AtomicUsize,
    gate: Option<Semaphore>,
}

impl DeployInterface for Scripted {
    fn name(&self) -> &'static str {
        "scripted"
    }
    fn deploy<'a>(&'a self, _: &'a Node, cd: Option<&'a Value>) -> BoxFuture<'a, StepResult> {
        Box::pin(async move {
            if let Some(g) = &self.gate {
                g.acquire().await.unwrap().forget();
            }
            assert_eq!(
                cd,
                Some(&json!({"user_data": "hi"})),
                "configdrive reaches deploy"
            );
            self.deploy
                .lock()
                .unwrap()
                .pop()
                .unwrap_or(Ok(Outcome::Done))
        })
    }
    fn tear_down<'a>(&'a self, _: &'a Node) -> BoxFuture<'a, Result<(), InterfaceError>> {
        Box::pin(async { Ok(()) })
    }
    fn take_over<'a>(&'a self, _: &'a Node) -> BoxFuture<'a, Result<(), InterfaceError>> {
        Box::pin(async { Ok(()) })
    }
    fn clean_steps(&self, _: &Node) -> Vec<CleanStep> {
        let step = |name: &str, priority| CleanStep {
            interface: "deploy",
            step: name.into(),
            priority,
            args: Dict::new(),
        };
        if self.clean_step {
            vec![step("erase_devices", 10), step("manual_only", 0)]
        } else {
            Vec::new()
        }
    }
    fn execute_clean_step<'a>(
        &'a self,
        _: &'a Node,
        s: &'a CleanStep,
    ) -> BoxFuture<'a, StepResult> {
        Box::pin(async move {
            assert_eq!(
                s.step, "erase_devices",
                "priority 0 steps are not automated"
            );
            self.cleaned.fetch_add(1, Ordering::SeqCst);
            if self.clean_fails {
                Err(InterfaceError("disk on fire".into()))
            } else {
                Ok(Outcome::Done)
            }
        })
    }
}

struct Rig {
    c: Arc<Conductor>,
    _dir: tempfile::TempDir,
}

fn conductor(deploy: Option<Arc<Scripted>>) -> Rig {
    let dir = tempfile::tempdir().unwrap();
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
    let mut c = Conductor::new(store, consoles, power, timing, Default::default());
    if let Some(d) = deploy {
        c.interfaces.deploy.insert("fake".into(), d);
    }
    c.interfaces
        .inspect
        .insert("fake".into(), Arc::new(Fake) as Arc<dyn InspectInterface>);
    Rig {
        c: Arc::new(c),
        _dir: dir,
    }
}

async fn node(c: &Arc<Conductor>, body: Value) -> String {
    let Value::Object(m) = body else { panic!() };
    c.create_node(NodeCreate(m)).await.unwrap().uuid
}

/// Wait (up to 5 s) until the node rests in `want` with its lock free.
async fn settles(c: &Conductor, uuid: &str, want: &str) -> Node {
    for _ in 0..500 {
        let n = c.store.get_node(uuid).await.unwrap();
        if n.provision_state == want && !c.is_busy(uuid) {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let n = c.store.get_node(uuid).await.unwrap();
    panic!(
        "node never settled in {want}: {} / {:?}",
        n.provision_state, n.last_error
    );
}

/// Put `uuid` straight into provision state `state` (a test's starting point).
async fn set_state(c: &Conductor, uuid: &str, state: &str) {
    let state = state.to_owned();
    c.store
        .modify_node(uuid, move |n: &mut Node| {
            n.provision_state = state;
            Ok::<_, ServiceError>(())
        })
        .await
        .unwrap();
}

async fn put(c: &Arc<Conductor>, uuid: &str, verb: &str) -> Result<String, ServiceError> {
    c.set_provision_state(uuid, verb, None).await
}

#[tokio::test]
async fn fake_hardware_goes_round_the_machine() {
    let r = conductor(None);
    let c = &r.c;
    let u = node(c, json!({"driver": "fake-hardware", "name": "f1"})).await;
    put(c, "f1", "manage").await.unwrap();
    let n = settles(c, &u, "manageable").await;
    assert_eq!(n.target_provision_state, None);
    assert!(n.provision_updated_at.is_some() && n.last_error.is_none());

    put(c, &u, "inspect").await.unwrap();
    let n = settles(c, &u, "manageable").await;
    assert!(n.inspection_started_at.is_some() && n.inspection_finished_at.is_some());

    put(c, &u, "provide").await.unwrap();
    settles(c, &u, "available").await;
    c.store
        .modify_node(&u, |n: &mut Node| {
            n.instance_uuid = Some("inst-1".into());
            n.instance_info.insert("image_source".into(), json!("img"));
            Ok::<_, ServiceError>(())
        })
        .await
        .unwrap();
    c.set_provision_state(&u, "active", Some(json!("H4sI")))
        .await
        .unwrap();
    let n = settles(c, &u, "active").await;
    assert_eq!(n.instance_uuid.as_deref(), Some("inst-1"));

    put(c, &u, "rebuild").await.unwrap();
    settles(c, &u, "active").await;
    put(c, &u, "deleted").await.unwrap();
    let n = settles(c, &u, "available").await;
    assert!(
        n.instance_uuid.is_none() && n.instance_info.is_empty(),
        "tear down forgets the instance"
    );

    put(c, &u, "manage").await.unwrap();
    settles(c, &u, "manageable").await;
    put(c, &u, "adopt").await.unwrap();
    let n = settles(c, &u, "active").await;
    assert_eq!(n.target_provision_state, None);
    put(c, &u, "undeploy").await.unwrap();
    settles(c, &u, "available").await;
}

#[tokio::test]
async fn a_refused_verb_has_ironics_message_and_records_nothing() {
    let r = conductor(None);
    let c = &r.c;
    let u = node(c, json!({"driver": "fake-hardware"})).await;
    let before = c.store.get_node(&u).await.unwrap();
    for verb in [
        "provide", "active", "deleted", "abort", "rebuild", "inspect", "nonsense",
    ] {
        let e = put(c, &u, verb).await.unwrap_err();
        assert!(matches!(e, ServiceError::Invalid(_)), "{verb}: {e:?}");
        assert_eq!(
            e.to_string(),
            format!("The requested action \"{verb}\" can not be performed on node \"{u}\" while it is in state \"enroll\".")
        );
    }
    let e = put(c, &u, "rescue").await.unwrap_err().to_string();
    assert!(e.contains("\"rescue\" is not supported"), "{e}");
    let e = c
        .set_provision_state(&u, "manage", Some(json!("H4sI")))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("Adding a config drive is only supported"),
        "{e}"
    );
    assert_eq!(
        c.store.get_node(&u).await.unwrap(),
        before,
        "nothing recorded"
    );
    assert!(!c.is_busy(&u), "a refusal leaves no lock behind");
}

#[tokio::test]
async fn one_action_at_a_time_409_while_it_runs() {
    let d = Arc::new(Scripted {
        gate: Some(Semaphore::new(0)),
        ..Default::default()
    });
    let r = conductor(Some(d.clone()));
    let c = &r.c;
    let u = node(c, json!({"driver": "fake-hardware"})).await;
    set_state(c, &u, "available").await;
    c.set_provision_state(&u, "active", Some(json!({"user_data": "hi"})))
        .await
        .unwrap();
    let n = c.store.get_node(&u).await.unwrap();
    assert_eq!(n.provision_state, "deploying");
    assert_eq!(n.target_provision_state.as_deref(), Some("active"));
    assert_eq!(c.reservation(&u).as_deref(), Some(HOST));
    for verb in ["deleted", "manage", "active"] {
        let e = put(c, &u, verb).await.unwrap_err();
        assert!(matches!(e, ServiceError::Locked(_)), "{verb}: {e:?}");
        assert_eq!(
            e.to_string(),
            format!("Node {u} is locked by host porthole-conductor, please retry after the current operation is completed.")
        );
    }
    let e = c
        .set_power(&u, crate::service::power::PowerAction::On)
        .await
        .unwrap_err();
    assert!(
        matches!(e, ServiceError::Locked(_)),
        "power waits too: {e:?}"
    );
    let e = c
        .patch_node(&u, &json!([{"op": "add", "path": "/extra/x", "value": 1}]))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ServiceError::Locked(_)),
        "PATCH waits too: {e:?}"
    );
    d.gate.as_ref().unwrap().add_permits(1);
    settles(c, &u, "active").await;
    assert_eq!(c.reservation(&u), None);
}

#[tokio::test]
async fn a_wait_state_holds_no_lock_and_abort_fails_it() {
    let d = Arc::new(Scripted {
        deploy: Mutex::new(vec![Ok(Outcome::Wait)]),
        ..Default::default()
    });
    let r = conductor(Some(d));
    let c = &r.c;
    let u = node(c, json!({"driver": "fake-hardware"})).await;
    set_state(c, &u, "available").await;
    c.set_provision_state(&u, "active", Some(json!({"user_data": "hi"})))
        .await
        .unwrap();
    let n = settles(c, &u, "wait call-back").await;
    assert_eq!(n.target_provision_state.as_deref(), Some("active"));
    // Unlocked: a power call during the wait goes through.
    c.set_power(&u, crate::service::power::PowerAction::On)
        .await
        .unwrap();
    assert_eq!(
        c.store.get_node(&u).await.unwrap().power_state.as_deref(),
        Some("power on")
    );
    put(c, &u, "abort").await.unwrap();
    let n = settles(c, &u, "deploy failed").await;
    assert_eq!(n.target_provision_state.as_deref(), Some("active"));
    assert_eq!(
        n.last_error.as_deref(),
        Some("By request, the deploy operation was aborted")
    );
    put(c, &u, "deleted").await.unwrap();
    let n = settles(c, &u, "available").await;
    assert_eq!(n.last_error, None);
}

#[tokio::test]
async fn a_failed_deploy_says_why_and_rebuild_recovers() {
    let d = Arc::new(Scripted {
        deploy: Mutex::new(vec![
            Ok(Outcome::Done),
            Err(InterfaceError("no image".into())),
        ]),
        ..Default::default()
    });
    let r = conductor(Some(d));
    let c = &r.c;
    let u = node(c, json!({"driver": "fake-hardware"})).await;
    set_state(c, &u, "available").await;
    let cd = Some(json!({"user_data": "hi"}));
    c.set_provision_state(&u, "active", cd.clone())
        .await
        .unwrap();
    let n = settles(c, &u, "deploy failed").await;
    assert_eq!(n.last_error.as_deref(), Some("Deploy failed: no image"));
    assert_eq!(n.target_provision_state.as_deref(), Some("active"));
    c.set_provision_state(&u, "rebuild", cd).await.unwrap();
    let n = settles(c, &u, "active").await;
    assert_eq!(n.last_error, None);
}

/// A node that is on when its deploy fails.
async fn failing_deploy_node(c: &Arc<Conductor>, body: Value) -> String {
    let u = node(c, body).await;
    set_state(c, &u, "available").await;
    c.store
        .modify_node(&u, |n: &mut Node| {
            n.power_state = Some("power on".into());
            Ok::<_, ServiceError>(())
        })
        .await
        .unwrap();
    c.set_provision_state(&u, "active", Some(json!({"user_data": "hi"})))
        .await
        .unwrap();
    u
}

fn failing_deploy() -> Arc<Scripted> {
    Arc::new(Scripted {
        deploy: Mutex::new(vec![Err(InterfaceError("no image".into()))]),
        ..Default::default()
    })
}

#[tokio::test]
async fn a_failed_deploy_powers_the_node_off_unless_configured_not_to() {
    let r = conductor(Some(failing_deploy()));
    let c = &r.c;
    let u = failing_deploy_node(c, json!({"driver": "fake-hardware"})).await;
    let n = settles(c, &u, "deploy failed").await;
    assert_eq!(n.power_state.as_deref(), Some("power off"));
    assert_eq!(n.target_power_state, None);
    assert_eq!(n.last_error.as_deref(), Some("Deploy failed: no image"));

    let mut r = conductor(Some(failing_deploy()));
    Arc::get_mut(&mut r.c)
        .unwrap()
        .power_off_after_deploy_failure = false;
    let c = &r.c;
    let u = failing_deploy_node(c, json!({"driver": "fake-hardware"})).await;
    let n = settles(c, &u, "deploy failed").await;
    assert_eq!(n.power_state.as_deref(), Some("power on"), "left on");
}

#[tokio::test]
async fn a_power_off_that_fails_after_a_failed_deploy_is_only_logged() {
    let r = conductor(Some(failing_deploy()));
    let c = &r.c;
    // No ipmi_address: the power interface cannot be driven.
    let body = json!({"driver": "fake-hardware", "power_interface": "ipmitool"});
    let u = failing_deploy_node(c, body).await;
    let n = settles(c, &u, "deploy failed").await;
    assert_eq!(n.last_error.as_deref(), Some("Deploy failed: no image"));
    assert_eq!(
        n.power_state.as_deref(),
        Some("power on"),
        "not recorded off"
    );
}

#[tokio::test]
async fn automated_clean_runs_declared_steps_unless_disabled() {
    let d = Arc::new(Scripted {
        clean_step: true,
        ..Default::default()
    });
    let r = conductor(Some(d.clone()));
    let c = &r.c;
    let u = node(c, json!({"driver": "fake-hardware"})).await;
    put(c, &u, "manage").await.unwrap();
    settles(c, &u, "manageable").await;
    put(c, &u, "provide").await.unwrap();
    let n = settles(c, &u, "available").await;
    assert_eq!(
        d.cleaned.load(Ordering::SeqCst),
        1,
        "the priority-10 step ran once"
    );
    assert!(n.clean_step.is_empty(), "clean_step cleared when done");

    put(c, &u, "manage").await.unwrap();
    settles(c, &u, "manageable").await;
    c.store
        .modify_node(&u, |n: &mut Node| {
            n.automated_clean = Some(false);
            Ok::<_, ServiceError>(())
        })
        .await
        .unwrap();
    put(c, &u, "provide").await.unwrap();
    settles(c, &u, "available").await;
    assert_eq!(
        d.cleaned.load(Ordering::SeqCst),
        1,
        "automated_clean false: no step"
    );
}

#[tokio::test]
async fn a_failed_clean_step_leaves_clean_failed_then_manage() {
    let d = Arc::new(Scripted {
        clean_step: true,
        clean_fails: true,
        ..Default::default()
    });
    let r = conductor(Some(d));
    let c = &r.c;
    let u = node(c, json!({"driver": "fake-hardware"})).await;
    put(c, &u, "manage").await.unwrap();
    settles(c, &u, "manageable").await;
    put(c, &u, "provide").await.unwrap();
    let n = settles(c, &u, "clean failed").await;
    assert_eq!(n.target_provision_state.as_deref(), Some("available"));
    let err = n.last_error.unwrap();
    assert!(
        err.contains("failed step deploy.erase_devices: disk on fire"),
        "{err}"
    );
    put(c, &u, "manage").await.unwrap();
    settles(c, &u, "manageable").await;
}

#[tokio::test]
async fn verify_failure_goes_back_to_enroll_with_last_error() {
    let r = conductor(None);
    let c = &r.c;
    let u = node(
        c,
        json!({"driver": "ipmi", "driver_info": {"ipmi_username": "x"}}),
    )
    .await;
    put(c, &u, "manage").await.unwrap();
    let n = settles(c, &u, "enroll").await;
    assert_eq!(n.target_provision_state, None);
    let err = n.last_error.unwrap();
    assert!(
        err.starts_with(&format!(
            "Failed to validate power driver interface for node {u}. Error: "
        )),
        "{err}"
    );
}

#[tokio::test]
async fn nodes_without_deploy_interfaces_are_refused_up_front() {
    let r = conductor(None);
    let c = &r.c;
    let u = node(c, json!({"driver": "redfish"})).await;
    set_state(c, &u, "available").await;
    let before = c.store.get_node(&u).await.unwrap();
    let e = put(c, &u, "active").await.unwrap_err().to_string();
    assert!(e.contains("deploy interface \"direct\""), "{e}");
    assert_eq!(c.store.get_node(&u).await.unwrap(), before);
    // Cleaning needs no interface: manage and provide work for any node.
    put(c, &u, "manage").await.unwrap();
    settles(c, &u, "manageable").await;
}

#[tokio::test]
async fn work_cut_short_by_a_stop_fails_at_start() {
    let r = conductor(None);
    let c = &r.c;
    let u = node(c, json!({"driver": "fake-hardware"})).await;
    let v = node(c, json!({"driver": "fake-hardware"})).await;
    set_state(c, &u, "deploying").await;
    set_state(c, &v, "wait call-back").await;
    c.fail_stuck_provisioning().await.unwrap();
    let n = c.store.get_node(&u).await.unwrap();
    assert_eq!(n.provision_state, "deploy failed");
    assert!(n.last_error.unwrap().contains("\"deploying\""));
    let n = c.store.get_node(&v).await.unwrap();
    assert_eq!(
        n.provision_state, "wait call-back",
        "a wait survives a restart"
    );
}

#[tokio::test]
async fn an_active_node_cannot_be_deleted_unless_in_maintenance() {
    let r = conductor(None);
    let c = &r.c;
    let u = node(c, json!({"driver": "fake-hardware"})).await;
    set_state(c, &u, "active").await;
    let e = c.delete_node(&u).await.unwrap_err();
    assert!(matches!(e, ServiceError::Conflict(_)), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!("Can not delete node \"{u}\" while it is in provision state \"active\". Valid provision states to perform deletion are: \"('manageable', 'enroll', 'adopt failed', 'available')\", or set the node into maintenance mode")
    );
    assert!(c.store.get_node(&u).await.is_ok(), "still there");
    c.store
        .modify_node(&u, |n: &mut Node| {
            n.maintenance = true;
            Ok::<_, ServiceError>(())
        })
        .await
        .unwrap();
    c.delete_node(&u).await.unwrap();
    assert!(
        c.store.get_node(&u).await.is_err(),
        "deleted in maintenance"
    );
}
