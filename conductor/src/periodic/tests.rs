//! The provision timeouts on tokio's paused clock against a real store:
//! each wait state fails after its timeout with Ironic's last_error, not
//! before; 0 disables; locked and maintenance nodes are skipped; the
//! handle stops the task.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::*;
use crate::config::Config;
use crate::model::now;
use crate::service::{NodeCreate, PowerTiming};

struct Rig {
    c: Arc<Conductor>,
    _dir: tempfile::TempDir,
}

fn conductor() -> Rig {
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
    let c = Conductor::new(store, consoles, power, timing, Default::default());
    Rig {
        c: Arc::new(c),
        _dir: dir,
    }
}

/// A fake-hardware node put straight into `state` (heading for `target`)
/// now, as the provision service leaves it.
async fn waiting(c: &Arc<Conductor>, state: &str, target: &str) -> String {
    let Value::Object(m) = json!({"driver": "fake-hardware"}) else {
        unreachable!()
    };
    let uuid = c.create_node(NodeCreate(m)).await.unwrap().uuid;
    let (state, target) = (state.to_owned(), target.to_owned());
    c.store
        .modify_node(&uuid, move |n: &mut Node| {
            n.provision_state = state;
            n.target_provision_state = Some(target);
            n.provision_updated_at = Some(now());
            n.inspection_started_at = Some(now());
            Ok::<_, ServiceError>(())
        })
        .await
        .unwrap();
    uuid
}

fn ironic_defaults() -> Timeouts {
    Timeouts::from_config(&crate::config::ConductorConfig::default())
}

async fn state_of(c: &Conductor, uuid: &str) -> Node {
    c.store.get_node(uuid).await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn each_wait_fails_after_its_timeout_with_ironics_last_error() {
    let r = conductor();
    let c = &r.c;
    let deploy = waiting(c, "wait call-back", "active").await;
    let inspect = waiting(c, "inspect wait", "manageable").await;
    let clean = waiting(c, "clean wait", "available").await;
    let resting = waiting(c, "active", "active").await;
    let t = ironic_defaults();
    assert_eq!(t.interval, Some(Duration::from_secs(60)));
    let task = ProvisionTimeouts::start(c.clone(), t, CancellationToken::new()).unwrap();

    // 29 minutes in: nothing has timed out.
    tokio::time::sleep(Duration::from_secs(29 * 60)).await;
    for u in [&deploy, &inspect, &clean] {
        let n = state_of(c, u).await;
        assert!(n.provision_state.contains("wait"), "{}", n.provision_state);
        assert_eq!(n.last_error, None);
    }
    // Past 1800 s plus one interval: all three failed.
    tokio::time::sleep(Duration::from_secs(3 * 60)).await;
    let n = state_of(c, &deploy).await;
    assert_eq!(n.provision_state, "deploy failed");
    assert_eq!(n.target_provision_state.as_deref(), Some("active"));
    assert_eq!(
        n.last_error,
        Some(format!(
            "Timeout reached while waiting for callback for node {deploy}"
        ))
    );
    let n = state_of(c, &inspect).await;
    assert_eq!(n.provision_state, "inspect failed");
    assert_eq!(n.target_provision_state.as_deref(), Some("manageable"));
    assert_eq!(
        n.last_error.as_deref(),
        Some("timeout reached while inspecting the node")
    );
    let n = state_of(c, &clean).await;
    assert_eq!(n.provision_state, "clean failed");
    assert_eq!(n.target_provision_state.as_deref(), Some("available"));
    assert_eq!(
        n.last_error.as_deref(),
        Some("Timeout reached while cleaning the node. Please check if the ramdisk responsible for the cleaning is running on the node. Failed on step {}.")
    );
    assert!(
        n.maintenance,
        "a failed clean puts the node into maintenance"
    );
    assert_eq!(n.maintenance_reason, n.last_error);
    assert!(!state_of(c, &deploy).await.maintenance);
    let n = state_of(c, &resting).await;
    assert_eq!((n.provision_state.as_str(), n.last_error), ("active", None));
    task.stop().await;
}

#[tokio::test(start_paused = true)]
async fn zero_disables_a_check_or_all_of_them() {
    let r = conductor();
    let c = &r.c;
    let deploy = waiting(c, "wait call-back", "active").await;
    let clean = waiting(c, "clean wait", "available").await;
    let mut cfg = crate::config::ConductorConfig {
        deploy_callback_timeout: 0,
        ..Default::default()
    };
    let task = ProvisionTimeouts::start(c.clone(), Timeouts::from_config(&cfg), Default::default())
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4 * 3600)).await;
    assert_eq!(state_of(c, &deploy).await.provision_state, "wait call-back");
    assert_eq!(state_of(c, &clean).await.provision_state, "clean failed");
    task.stop().await;

    cfg.check_provision_state_interval = 0;
    assert!(
        ProvisionTimeouts::start(c.clone(), Timeouts::from_config(&cfg), Default::default())
            .is_none()
    );
    let none = crate::config::ConductorConfig {
        deploy_callback_timeout: 0,
        inspect_wait_timeout: 0,
        clean_callback_timeout: 0,
        check_provision_state_interval: 60,
        ..Default::default()
    };
    assert!(
        ProvisionTimeouts::start(c.clone(), Timeouts::from_config(&none), Default::default())
            .is_none(),
        "no timeout on: no task"
    );
}

#[tokio::test(start_paused = true)]
async fn locked_and_maintenance_nodes_wait_for_a_later_round() {
    let r = conductor();
    let c = &r.c;
    let locked = waiting(c, "wait call-back", "active").await;
    let maint = waiting(c, "wait call-back", "active").await;
    c.store
        .modify_node(&maint, |n: &mut Node| {
            n.maintenance = true;
            Ok::<_, ServiceError>(())
        })
        .await
        .unwrap();
    let t = ironic_defaults();
    let clock = Clock::start();
    let guard = c.reserve(&locked).unwrap();
    tokio::time::sleep(Duration::from_secs(1801)).await;
    let failed = check_once(c, &t, clock.now()).await.unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(state_of(c, &locked).await.provision_state, "wait call-back");
    assert_eq!(state_of(c, &maint).await.provision_state, "wait call-back");
    drop(guard);
    let failed = check_once(c, &t, clock.now()).await.unwrap();
    assert_eq!(failed, vec![locked.clone()]);
    assert!(!c.is_busy(&locked), "the round let the lock go");
}

#[tokio::test(start_paused = true)]
async fn the_handle_stops_the_task() {
    let r = conductor();
    let c = &r.c;
    let u = waiting(c, "wait call-back", "active").await;
    let cancel = CancellationToken::new();
    let task = ProvisionTimeouts::start(c.clone(), ironic_defaults(), cancel.clone()).unwrap();
    task.stop().await;
    assert!(cancel.is_cancelled());
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(state_of(c, &u).await.provision_state, "wait call-back");
}

#[test]
fn stored_times_parse() {
    let t = parse_time(&now()).unwrap();
    let d = SystemTime::now().duration_since(t).unwrap();
    assert!(d < Duration::from_secs(2), "{d:?}");
    assert!(parse_time("yesterday").is_none());
}
