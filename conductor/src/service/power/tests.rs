//! Power actions against a real store and a BMC that settles slowly
//! (`power::slow`) on tokio's paused clock: the lock is held for the BMC
//! command only, never for the wait, and an overtaken action records
//! nothing.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::*;
use crate::config::Config;
use crate::power::slow::SlowBmc;
use crate::service::{NodeCreate, PowerTiming};

struct Rig {
    c: Arc<Conductor>,
    bmc: Arc<SlowBmc>,
    _dir: tempfile::TempDir,
}

/// A conductor whose `slow-test` nodes' power settles `settle` after each
/// command; states polled every second, for at most a minute.
fn conductor(settle: Duration) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let sealer = crate::seal::Sealer::load_or_create(&dir.path().join("k")).unwrap();
    let store = crate::db::Store::open(&dir.path().join("db"), sealer).unwrap();
    let consoles = crate::console::ConsoleClient::new(&Config::default().console).unwrap();
    let mut power =
        crate::power::PowerSettings::new("ipmitool".into(), Duration::from_secs(2)).unwrap();
    let bmc = Arc::new(SlowBmc::new(settle));
    power.slow = Some(bmc.clone());
    let timing = PowerTiming {
        state_timeout: Duration::from_secs(60),
        poll_interval: Duration::from_secs(1),
    };
    let c = Conductor::new(store, consoles, power, timing, Default::default());
    Rig {
        c: Arc::new(c),
        bmc,
        _dir: dir,
    }
}

/// A node on the slow BMC (made as fake-hardware, then its power
/// interface moved over in the store, so no create-time check is involved).
async fn slow_node(c: &Arc<Conductor>) -> String {
    let serde_json::Value::Object(m) = json!({"driver": "fake-hardware"}) else {
        unreachable!()
    };
    let uuid = c.create_node(NodeCreate(m)).await.unwrap().uuid;
    c.store
        .modify_node(&uuid, |n: &mut Node| {
            n.set_interface(crate::drivers::Kind::Power, "slow-test".into());
            Ok::<_, ServiceError>(())
        })
        .await
        .unwrap();
    uuid
}

#[tokio::test(start_paused = true)]
async fn the_settle_holds_no_lock_and_a_second_call_is_accepted() {
    let r = conductor(Duration::from_secs(8));
    let c = &r.c;
    let u = slow_node(c).await;

    c.set_power(&u, PowerAction::On).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let n = c.store.get_node(&u).await.unwrap();
    assert_eq!(n.target_power_state.as_deref(), Some("power on"));
    assert_eq!(n.power_state, None, "not settled yet");
    assert_eq!(c.reservation(&u), None, "the settle holds no lock");

    // ironic-inspector's power off during an inspection, say.
    c.set_power(&u, PowerAction::Off)
        .await
        .expect("a power call during the settle is accepted");
    let n = c.store.get_node(&u).await.unwrap();
    assert_eq!(n.target_power_state.as_deref(), Some("power off"));

    // Past the state timeout too: the overtaken action must not time out.
    tokio::time::sleep(Duration::from_secs(90)).await;
    let n = c.store.get_node(&u).await.unwrap();
    assert_eq!(n.power_state.as_deref(), Some("power off"));
    assert_eq!(n.target_power_state, None);
    assert_eq!(
        n.last_error, None,
        "the overtaken power on recorded nothing (no timeout, no error)"
    );
    assert_eq!(r.bmc.commands(), vec![Power::On, Power::Off]);
}

#[tokio::test(start_paused = true)]
async fn a_settle_records_the_state_when_the_bmc_reports_it() {
    let r = conductor(Duration::from_secs(8));
    let c = &r.c;
    let u = slow_node(c).await;
    c.set_power(&u, PowerAction::On).await.unwrap();
    tokio::time::sleep(Duration::from_secs(7)).await;
    let n = c.store.get_node(&u).await.unwrap();
    assert_eq!(
        (n.power_state, n.target_power_state.as_deref()),
        (None, Some("power on"))
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let n = c.store.get_node(&u).await.unwrap();
    assert_eq!(n.power_state.as_deref(), Some("power on"));
    assert_eq!(n.target_power_state, None);
    assert_eq!(n.last_error, None);
}

/// An `agent` inspection's power off (under the node's lock) while an API
/// power on still settles takes the next power sequence number as any
/// power action: the power on is overtaken and records nothing (no
/// timeout in last_error), the node ends off.
#[tokio::test(start_paused = true)]
async fn an_inspections_power_off_overtakes_a_settling_power_on() {
    let r = conductor(Duration::from_secs(8));
    let c = &r.c;
    let u = slow_node(c).await;
    c.store
        .modify_node(&u, |n: &mut Node| {
            n.set_interface(Kind::Inspect, "agent".into());
            Ok::<_, ServiceError>(())
        })
        .await
        .unwrap();
    c.set_power(&u, PowerAction::On).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let node = c.store.get_node(&u).await.unwrap();
    c.clean_up_agent_inspection(&node, false).await;
    let n = c.store.get_node(&u).await.unwrap();
    assert_eq!(n.power_state.as_deref(), Some("power off"));

    // Past the power on's state timeout: it must not time out.
    tokio::time::sleep(Duration::from_secs(90)).await;
    let n = c.store.get_node(&u).await.unwrap();
    assert_eq!(n.power_state.as_deref(), Some("power off"));
    assert_eq!(n.target_power_state, None);
    assert_eq!(
        n.last_error, None,
        "the overtaken power on recorded nothing (no timeout, no error)"
    );
    assert_eq!(r.bmc.commands(), vec![Power::On, Power::Off]);
}
