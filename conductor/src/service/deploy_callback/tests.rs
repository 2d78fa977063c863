//! `pass_deploy_info` and the deploy's clean up against a real store,
//! with a test double behind the `iscsi` deploy interface (the continue
//! step of issue 14 is not written; the double records the hand-over):
//! the right key is accepted once, in `wait call-back` only; a bad body is
//! 400 and changes nothing; the ramdisk's error fails the deploy with its
//! words; every way into `deploy failed` (callback error, failed continue,
//! timeout, abort) runs the interface's clean up.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use super::*;
use crate::config::Config;
use crate::provision::interfaces::{
    BoxFuture, CleanStep, DeployInterface, InterfaceError, StepResult,
};
use crate::provision::vendor::{IscsiVendor, PASS_DEPLOY_INFO};
use crate::service::ramdisk::{Caller, BAD_TOKEN, TOKEN_KEY};
use crate::service::{NodeCreate, PowerTiming};

/// The `iscsi` double: deploy waits (keeping the token it was handed),
/// continue records the callback and answers `continued`, clean up counts.
struct Double {
    tokens: Mutex<Vec<String>>,
    callbacks: Mutex<Vec<DeployCallback>>,
    continued: Result<Outcome, InterfaceError>,
    clean_ups: Mutex<u32>,
}

impl DeployInterface for Double {
    fn name(&self) -> &'static str {
        "iscsi"
    }
    fn deploy<'a>(&'a self, n: &'a Node, _: Option<&'a Value>) -> BoxFuture<'a, StepResult> {
        let t = n.driver_internal_info[TOKEN_KEY]
            .as_str()
            .unwrap()
            .to_owned();
        self.tokens.lock().unwrap().push(t);
        Box::pin(async { Ok(Outcome::Wait) })
    }
    fn continue_deploy<'a>(
        &'a self,
        _: &'a Node,
        cb: &'a DeployCallback,
    ) -> BoxFuture<'a, StepResult> {
        self.callbacks.lock().unwrap().push(cb.clone());
        let r = self.continued.clone();
        Box::pin(async move { r })
    }
    fn clean_up<'a>(&'a self, _: &'a Node) -> BoxFuture<'a, Result<(), InterfaceError>> {
        *self.clean_ups.lock().unwrap() += 1;
        Box::pin(async { Ok(()) })
    }
    fn tear_down<'a>(&'a self, _: &'a Node) -> BoxFuture<'a, Result<(), InterfaceError>> {
        Box::pin(async { Ok(()) })
    }
    fn take_over<'a>(&'a self, _: &'a Node) -> BoxFuture<'a, Result<(), InterfaceError>> {
        Box::pin(async { Ok(()) })
    }
    fn clean_steps(&self, _: &Node) -> Vec<CleanStep> {
        Vec::new()
    }
    fn execute_clean_step<'a>(
        &'a self,
        _: &'a Node,
        _: &'a CleanStep,
    ) -> BoxFuture<'a, StepResult> {
        Box::pin(async { Ok(Outcome::Done) })
    }
}

struct Rig {
    c: Arc<Conductor>,
    d: Arc<Double>,
    _dir: tempfile::TempDir,
}

fn rig(continued: Result<Outcome, InterfaceError>) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let sealer = crate::seal::Sealer::load_or_create(&dir.path().join("k")).unwrap();
    let store = crate::db::Store::open(&dir.path().join("db"), sealer).unwrap();
    let consoles = crate::console::ConsoleClient::new(&Config::default().console).unwrap();
    let power =
        crate::power::PowerSettings::new("ipmitool".into(), Duration::from_secs(2)).unwrap();
    let timing = PowerTiming {
        state_timeout: Duration::from_secs(2),
        poll_interval: Duration::from_millis(50),
    };
    let mut c = Conductor::new(store, consoles, power, timing, Default::default());
    let d = Arc::new(Double {
        tokens: Mutex::default(),
        callbacks: Mutex::default(),
        continued,
        clean_ups: Mutex::default(),
    });
    c.interfaces.set_deploy_service(d.clone());
    c.vendors.iscsi = Some(Arc::new(IscsiVendor));
    Rig {
        c: Arc::new(c),
        d,
        _dir: dir,
    }
}

fn dict(v: Value) -> Dict {
    let Value::Object(m) = v else { unreachable!() };
    m
}

/// A fake-hardware node on the `iscsi` deploy, deployed to `wait
/// call-back`: its UUID and the key its deploy was handed.
async fn waiting(r: &Rig) -> (String, String) {
    let c = &r.c;
    let body = json!({"driver": "fake-hardware", "deploy_interface": "iscsi",
                      "vendor_interface": "ipmitool"});
    let u = c.create_node(NodeCreate(dict(body))).await.unwrap().uuid;
    c.store
        .modify_node(&u, |n: &mut Node| {
            n.provision_state = "available".into();
            Ok::<_, ServiceError>(())
        })
        .await
        .unwrap();
    c.set_provision_state(&u, "active", None).await.unwrap();
    settled(c, &u, "wait call-back").await;
    let key = r.d.tokens.lock().unwrap().last().unwrap().clone();
    (u, key)
}

/// Wait until `u` rests in `state`, unlocked.
async fn settled(c: &Arc<Conductor>, u: &str, state: &str) -> Node {
    for _ in 0..500 {
        let n = c.store.get_node(u).await.unwrap();
        if n.provision_state == state && !c.is_busy(u) {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "{u} never rested in {state}: {:?}",
        c.store.get_node(u).await.unwrap().provision_state
    );
}

fn body(u: &str, key: &str) -> Dict {
    dict(
        json!({"address": "10.1.2.3", "iqn": format!("iqn-{u}"), "key": key,
                "error": ""}),
    )
}

async fn call(c: &Arc<Conductor>, u: &str, args: Dict) -> Result<VendorAnswer, ServiceError> {
    c.vendor_passthru(u, PASS_DEPLOY_INFO, "POST", args, Caller::Anonymous)
        .await
}

#[tokio::test]
async fn the_right_key_hands_over_to_the_continue_step_with_the_target_recorded() {
    let r = rig(Ok(Outcome::Done));
    let (u, key) = waiting(&r).await;
    let mut a = body(&u, &key);
    a.insert("port".into(), json!("3261"));
    a.insert("lun".into(), json!(0));
    let answer = call(&r.c, &u, a).await.unwrap();
    assert!(answer.is_async, "202, as Ironic's passthru");
    let n = settled(&r.c, &u, "active").await;
    assert_eq!(
        n.driver_internal_info[ISCSI_TARGET_KEY],
        json!({"address": "10.1.2.3", "port": 3261, "iqn": format!("iqn-{u}"), "lun": 0})
    );
    assert_eq!(n.last_error, None);
    let cbs = r.d.callbacks.lock().unwrap().clone();
    assert_eq!(cbs.len(), 1);
    assert_eq!(cbs[0].address.to_string(), "10.1.2.3");
    assert_eq!((cbs[0].port, cbs[0].lun), (3261, 0));
    assert_eq!(
        r.c.store.ramdisk_token(&u).await.unwrap(),
        None,
        "key forgotten"
    );
    assert_eq!(*r.d.clean_ups.lock().unwrap(), 0);
    // Once: the key died with the wait, and the state is not a wait.
    let e = call(&r.c, &u, body(&u, &key)).await.err().unwrap();
    assert_eq!(e.to_string(), BAD_TOKEN);
}

#[tokio::test]
async fn wrong_key_bad_fields_and_wrong_state_are_400_and_change_nothing() {
    let r = rig(Ok(Outcome::Done));
    let (u, key) = waiting(&r).await;
    let before = r.c.store.get_node(&u).await.unwrap();
    let mut wrong = key.clone();
    wrong.replace_range(0..1, if key.starts_with('A') { "B" } else { "A" });
    let iqn = format!("iqn-{u}");
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"address": "10.1.2.3", "iqn": iqn, "key": wrong}),
            BAD_TOKEN,
        ),
        (json!({"address": "10.1.2.3", "iqn": iqn}), BAD_TOKEN),
        (
            json!({"iqn": iqn, "key": key}),
            "Parameters ['address'] were not passed to ironic for deploy.",
        ),
        (
            json!({"key": key, "error": ""}),
            "Parameters ['address', 'iqn'] were not passed",
        ),
        (
            json!({"address": "node-7", "iqn": iqn, "key": key}),
            "Invalid address \"node-7\"",
        ),
        (
            json!({"address": "10.1.2.3", "iqn": "iqn-other", "key": key}),
            "Invalid iqn \"iqn-other\"",
        ),
        (
            json!({"address": "10.1.2.3", "iqn": iqn, "key": key, "port": 70000}),
            "Invalid port 70000",
        ),
        (
            json!({"address": "10.1.2.3", "iqn": iqn, "key": key, "port": "x"}),
            "Invalid port \"x\"",
        ),
        (
            json!({"address": "10.1.2.3", "iqn": iqn, "key": key, "lun": -1}),
            "Invalid lun -1",
        ),
        (
            json!({"address": "10.1.2.3", "iqn": iqn, "key": key, "error": 5}),
            "Invalid error 5",
        ),
    ];
    for (args, want) in cases {
        let e = call(&r.c, &u, dict(args.clone()))
            .await
            .err()
            .expect("refused");
        assert!(matches!(e, ServiceError::Invalid(_)), "{args}: {e:?}");
        assert!(e.to_string().contains(want), "{args}: {e}");
    }
    assert_eq!(
        r.c.store.get_node(&u).await.unwrap(),
        before,
        "nothing recorded"
    );
    assert!(
        r.c.store.ramdisk_token(&u).await.unwrap().is_some(),
        "still waiting"
    );
    assert!(r.d.callbacks.lock().unwrap().is_empty());
    assert!(!r.c.is_busy(&u));

    // Not waiting (deploy failed): the right key is refused too.
    r.c.set_provision_state(&u, "abort", None).await.unwrap();
    let before = r.c.store.get_node(&u).await.unwrap();
    let e = call(&r.c, &u, body(&u, &key)).await.err().unwrap();
    assert_eq!(e.to_string(), BAD_TOKEN);
    assert_eq!(r.c.store.get_node(&u).await.unwrap(), before);
}

#[tokio::test]
async fn the_ramdisks_error_fails_the_deploy_in_its_words_and_cleans_up() {
    let r = rig(Ok(Outcome::Done));
    let (u, key) = waiting(&r).await;
    let mut a = body(&u, &key);
    a.insert("error".into(), json!("no disk found: /dev/sda"));
    assert!(call(&r.c, &u, a).await.unwrap().is_async);
    let n = settled(&r.c, &u, "deploy failed").await;
    assert_eq!(
        n.last_error.as_deref(),
        Some("Error returned from deploy ramdisk: no disk found: /dev/sda")
    );
    assert!(!n.driver_internal_info.contains_key(ISCSI_TARGET_KEY));
    assert!(r.d.callbacks.lock().unwrap().is_empty(), "no hand-over");
    assert_eq!(*r.d.clean_ups.lock().unwrap(), 1);
    assert_eq!(r.c.store.ramdisk_token(&u).await.unwrap(), None);
}

#[tokio::test]
async fn a_continue_step_that_fails_ends_in_deploy_failed_and_cleans_up() {
    let r = rig(Err(InterfaceError(
        "checksum mismatch for http://images/user.qcow2".into(),
    )));
    let (u, key) = waiting(&r).await;
    call(&r.c, &u, body(&u, &key)).await.unwrap();
    let n = settled(&r.c, &u, "deploy failed").await;
    let e = n.last_error.unwrap();
    assert!(
        e.starts_with("Deploy failed: checksum mismatch for http://images/user.qcow2"),
        "{e}"
    );
    assert_eq!(*r.d.clean_ups.lock().unwrap(), 1);
}

#[tokio::test]
async fn the_callback_timeout_and_an_abort_clean_up() {
    let r = rig(Ok(Outcome::Done));
    let (u, _) = waiting(&r).await;
    let t = crate::periodic::Timeouts {
        deploy_callback: Some(Duration::from_secs(5)),
        inspect_wait: None,
        clean_callback: None,
        interval: Some(Duration::from_secs(1)),
    };
    let later = std::time::SystemTime::now() + Duration::from_secs(6);
    let failed = crate::periodic::check_once(&r.c, &t, later).await.unwrap();
    assert_eq!(failed, std::slice::from_ref(&u));
    let n = r.c.store.get_node(&u).await.unwrap();
    assert_eq!(n.provision_state, "deploy failed");
    assert_eq!(
        n.last_error.unwrap(),
        format!("Timeout reached while waiting for callback for node {u}")
    );
    assert_eq!(*r.d.clean_ups.lock().unwrap(), 1);

    let (u, _) = waiting(&r).await;
    r.c.set_provision_state(&u, "abort", None).await.unwrap();
    assert_eq!(*r.d.clean_ups.lock().unwrap(), 2);
}

#[test]
fn parse_defaults_port_and_lun_as_ironic() {
    let n = Node {
        uuid: "1be26c0b-03f2-4d2e-ae87-c02d7f33c123".into(),
        ..Default::default()
    };
    let a = dict(json!({"address": "fe80::1", "iqn": format!("iqn-{}", n.uuid)}));
    let Callback::Ready(cb) = parse(&n, &a).unwrap() else {
        panic!()
    };
    assert_eq!((cb.port, cb.lun), (3260, 1));
    assert_eq!(cb.address.to_string(), "fe80::1");
    let mut a = a;
    a.insert("error".into(), json!("  "));
    assert!(
        matches!(parse(&n, &a).unwrap(), Callback::Ready(_)),
        "blank error: none"
    );
}
