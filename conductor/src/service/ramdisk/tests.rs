//! The ramdisk secret and the ramdisk-facing operations against a real
//! store, with a deploy interface that waits for its callback and keeps
//! the token it was handed: issued per wait, never on the stored node,
//! refused when wrong (nothing recorded), dead once the wait ends.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use super::*;
use crate::config::Config;
use crate::provision::interfaces::{
    BoxFuture, CleanStep, DeployInterface, InterfaceError, Outcome, StepResult,
};
use crate::service::vendor::VendorAnswer;
use crate::service::{NodeCreate, PowerTiming};

/// Deploys wait for the callback; the token each deploy was handed is kept.
/// With `gate`, a deploy holds in `deploying` (token kept) until a permit.
#[derive(Default)]
struct Waits {
    tokens: Mutex<Vec<String>>,
    gate: Option<tokio::sync::Semaphore>,
}

impl DeployInterface for Waits {
    fn name(&self) -> &'static str {
        "waits"
    }
    fn deploy<'a>(&'a self, n: &'a Node, _: Option<&'a Value>) -> BoxFuture<'a, StepResult> {
        Box::pin(async move {
            let t = n.driver_internal_info[TOKEN_KEY]
                .as_str()
                .unwrap()
                .to_owned();
            self.tokens.lock().unwrap().push(t);
            if let Some(g) = &self.gate {
                g.acquire().await.unwrap().forget();
            }
            Ok(Outcome::Wait)
        })
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
    d: Arc<Waits>,
    _dir: tempfile::TempDir,
}

fn conductor() -> Rig {
    conductor_with(Waits::default())
}

fn conductor_with(waits: Waits) -> Rig {
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
    let d = Arc::new(waits);
    c.interfaces.deploy.insert(
        "fake".into(),
        d.clone() as Arc<dyn crate::provision::interfaces::DeployInterface>,
    );
    Rig {
        c: Arc::new(c),
        d,
        _dir: dir,
    }
}

/// An available fake-hardware node with a port, deployed: it waits in
/// `wait call-back`. Its UUID and the token its deploy was handed.
async fn waiting(r: &Rig, mac: &str) -> (String, String) {
    let c = &r.c;
    let Value::Object(m) = json!({"driver": "fake-hardware"}) else {
        unreachable!()
    };
    let u = c.create_node(NodeCreate(m)).await.unwrap().uuid;
    let Value::Object(p) = json!({"address": mac, "node_uuid": u}) else {
        unreachable!()
    };
    c.create_port(&p).await.unwrap();
    c.store
        .modify_node(&u, |n: &mut Node| {
            n.provision_state = "available".into();
            Ok::<_, ServiceError>(())
        })
        .await
        .unwrap();
    c.set_provision_state(&u, "active", None).await.unwrap();
    for _ in 0..500 {
        let n = c.store.get_node(&u).await.unwrap();
        if n.provision_state == "wait call-back" && !c.is_busy(&u) {
            let t = r.d.tokens.lock().unwrap().last().unwrap().clone();
            return (u, t);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never reached wait call-back");
}

fn args(v: Value) -> Dict {
    let Value::Object(m) = v else { unreachable!() };
    m
}

async fn callback(
    c: &Arc<Conductor>,
    u: &str,
    key: Option<&str>,
    who: Caller,
) -> Result<VendorAnswer, ServiceError> {
    let mut a = args(json!({"address": "10.0.0.5"}));
    if let Some(k) = key {
        a.insert("key".into(), json!(k));
    }
    c.vendor_passthru(u, "fake_callback", "post", a, who).await
}

#[tokio::test]
async fn the_secret_is_issued_per_wait_and_never_on_the_stored_node() {
    let r = conductor();
    let (u, token) = waiting(&r, "52:54:00:00:00:01").await;
    assert_eq!(token.len(), 43, "32 random bytes, URL-safe base64");
    let n = r.c.store.get_node(&u).await.unwrap();
    assert!(!n.driver_internal_info.contains_key(TOKEN_KEY));
    let shown = serde_json::to_string(&n.to_api("http://x")).unwrap();
    assert!(!shown.contains(&token), "the API never shows it");
    let stored = r.c.store.ramdisk_token(&u).await.unwrap().unwrap();
    assert_eq!(stored.wait_state, "wait call-back");
    assert_eq!(stored.token, token);
    let (_, other) = waiting(&r, "52:54:00:00:00:02").await;
    assert_ne!(token, other, "each operation its own secret");
}

#[tokio::test]
async fn a_wrong_or_missing_key_is_refused_and_changes_nothing() {
    let r = conductor();
    let c = &r.c;
    let (u, token) = waiting(&r, "52:54:00:00:00:03").await;
    let before = c.store.get_node(&u).await.unwrap();
    let mut wrong = token.clone();
    wrong.replace_range(0..1, if token.starts_with('A') { "B" } else { "A" });
    for key in [Some(wrong.as_str()), Some(""), None] {
        for who in [Caller::Anonymous, Caller::Operator] {
            let e = callback(c, &u, key, who).await.err().expect("refused");
            assert!(
                matches!(e, ServiceError::Invalid(_)),
                "{key:?} {who:?}: {e:?}"
            );
            assert_eq!(e.to_string(), BAD_TOKEN);
        }
    }
    assert_eq!(
        c.store.get_node(&u).await.unwrap(),
        before,
        "nothing recorded"
    );
    assert!(!c.is_busy(&u));

    let a = callback(c, &u, Some(&token), Caller::Anonymous)
        .await
        .unwrap();
    assert!(!a.is_async);
    assert_eq!(a.body["node_uuid"], json!(u));
    assert_eq!(a.body["provision_state"], "wait call-back");
    assert_eq!(
        a.body["args"],
        json!({"address": "10.0.0.5"}),
        "the key is never passed on"
    );
}

#[tokio::test]
async fn the_key_dies_with_the_wait() {
    let r = conductor();
    let c = &r.c;
    let (u, token) = waiting(&r, "52:54:00:00:00:04").await;
    callback(c, &u, Some(&token), Caller::Anonymous)
        .await
        .unwrap();
    c.set_provision_state(&u, "abort", None).await.unwrap();
    assert_eq!(
        c.store.get_node(&u).await.unwrap().provision_state,
        "deploy failed"
    );
    assert_eq!(
        c.store.ramdisk_token(&u).await.unwrap(),
        None,
        "invalidated"
    );
    let e = callback(c, &u, Some(&token), Caller::Anonymous)
        .await
        .err()
        .unwrap();
    assert!(matches!(e, ServiceError::Invalid(_)), "{e:?}");

    // A timeout ends the wait the same way.
    let (u, token) = waiting(&r, "52:54:00:00:00:05").await;
    c.advance(&u, crate::provision::Event::Fail, Some("timed out".into()))
        .await
        .unwrap();
    assert_eq!(c.store.ramdisk_token(&u).await.unwrap(), None);
    assert!(callback(c, &u, Some(&token), Caller::Anonymous)
        .await
        .is_err());
}

#[tokio::test]
async fn anonymous_callers_reach_ramdisk_methods_only() {
    let r = conductor();
    let c = &r.c;
    let (u, token) = waiting(&r, "52:54:00:00:00:06").await;
    let e = c
        .vendor_passthru(&u, "no_such", "POST", Dict::new(), Caller::Anonymous)
        .await
        .err()
        .unwrap();
    assert!(matches!(e, ServiceError::Unauthenticated), "{e:?}");
    let e = c
        .vendor_passthru(&u, "no_such", "POST", Dict::new(), Caller::Operator)
        .await
        .err()
        .unwrap();
    assert_eq!(e.to_string(), "No handler for method no_such");
    let mut a = Dict::new();
    a.insert("key".into(), json!(token));
    let e = c
        .vendor_passthru(&u, "fake_callback", "GET", a, Caller::Operator)
        .await
        .err()
        .unwrap();
    assert_eq!(
        e.to_string(),
        "The method fake_callback does not support HTTP GET"
    );
    let e = c
        .vendor_passthru(&u, "", "POST", Dict::new(), Caller::Operator)
        .await
        .err()
        .unwrap();
    assert_eq!(e.to_string(), "Method not specified");
    let m = c.vendor_methods(&u).await.unwrap();
    assert_eq!(m["fake_callback"]["http_methods"], json!(["POST"]));
    assert_eq!(m["fake_callback"]["async"], json!(false));

    let Value::Object(b) = json!({"driver": "ipmi"}) else {
        unreachable!()
    };
    let ipmi = c.create_node(NodeCreate(b)).await.unwrap().uuid;
    let e = c.vendor_methods(&ipmi).await.err().unwrap();
    assert_eq!(
        e.to_string(),
        "Driver ipmi does not support vendor interface (disabled or not implemented)."
    );
}

#[tokio::test]
async fn heartbeat_needs_the_token_and_records_the_agent_url() {
    let r = conductor();
    let c = &r.c;
    let (u, token) = waiting(&r, "52:54:00:00:00:07").await;
    let before = c.store.get_node(&u).await.unwrap();
    let bad = args(json!({"callback_url": "http://10.0.0.5:9999", "agent_token": "nope"}));
    let e = c.heartbeat(&u, &bad).await.unwrap_err();
    assert_eq!(e.to_string(), BAD_TOKEN);
    assert_eq!(
        c.store.get_node(&u).await.unwrap(),
        before,
        "nothing recorded"
    );
    let no_url = args(json!({"agent_token": token}));
    let e = c.heartbeat(&u, &no_url).await.unwrap_err();
    assert_eq!(e.to_string(), "Missing argument: \"callback_url\"");
    let ok = args(
        json!({"callback_url": "http://10.0.0.5:9999", "agent_token": token, "agent_version": "9.0"}),
    );
    c.heartbeat(&u, &ok).await.unwrap();
    let n = c.store.get_node(&u).await.unwrap();
    assert_eq!(n.driver_internal_info["agent_url"], "http://10.0.0.5:9999");
    assert_eq!(n.driver_internal_info["agent_version"], "9.0");
    assert!(!n.driver_internal_info.values().any(|v| v == &json!(token)));
}

#[tokio::test]
async fn lookup_finds_only_waiting_nodes_and_never_gives_the_token() {
    let r = conductor();
    let c = &r.c;
    let (u, token) = waiting(&r, "52:54:00:00:00:08").await;
    let found = c
        .lookup(&["52:54:00:00:00:08".into(), "garbage".into()], None)
        .await
        .unwrap();
    assert_eq!(found["node"]["uuid"], json!(u));
    assert_eq!(found["config"]["agent_token"], "******");
    assert!(!found.to_string().contains(&token));
    let by_uuid = c.lookup(&[], Some(&u)).await.unwrap();
    assert_eq!(by_uuid["node"]["uuid"], json!(u));

    c.set_provision_state(&u, "abort", None).await.unwrap();
    let e = c
        .lookup(&["52:54:00:00:00:08".into()], None)
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "Resource could not be found.");
    let e = c
        .lookup(&["52:54:00:00:00:99".into()], None)
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "Resource could not be found.", "same answer");
    let e = c.lookup(&["garbage".into()], None).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "At least one of 'addresses' and 'node_uuid' parameters is required"
    );
}

#[tokio::test]
async fn the_right_key_works_only_once_the_node_waits() {
    let r = conductor_with(Waits {
        gate: Some(tokio::sync::Semaphore::new(0)),
        ..Default::default()
    });
    let c = &r.c;
    let Value::Object(m) = json!({"driver": "fake-hardware"}) else {
        unreachable!()
    };
    let u = c.create_node(NodeCreate(m)).await.unwrap().uuid;
    c.store
        .modify_node(&u, |n: &mut Node| {
            n.provision_state = "available".into();
            Ok::<_, ServiceError>(())
        })
        .await
        .unwrap();
    c.set_provision_state(&u, "active", None).await.unwrap();
    let token = loop {
        if let Some(t) = r.d.tokens.lock().unwrap().last().cloned() {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        c.store.get_node(&u).await.unwrap().provision_state,
        "deploying"
    );
    let e = callback(c, &u, Some(&token), Caller::Anonymous)
        .await
        .err()
        .expect("refused while deploying");
    assert!(matches!(e, ServiceError::Invalid(_)), "{e:?}");
    r.d.gate.as_ref().unwrap().add_permits(1);
    // Up to 30 s: a loaded 2-core CI machine once took longer than 5.
    let mut waited = 0;
    while c.store.get_node(&u).await.unwrap().provision_state != "wait call-back" {
        assert!(waited < 3000, "the node never reached wait call-back");
        waited += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    callback(c, &u, Some(&token), Caller::Anonymous)
        .await
        .expect("accepted in wait call-back");
}
