//! Console evidence: the text functions on crafted terminal output, and
//! [`Conductor::advance`] against an in-memory console-svc (a tonic server
//! in this process; the rig test is `tests/evidence.rs`): evidence for a
//! failure of a node with a serial console, none without one or for a
//! success, and a note when console-svc keeps no log, is down, or does not
//! answer (the latter on tokio's paused clock).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pb::console_service_server::{ConsoleService, ConsoleServiceServer};
use porthole_proto::console::v1 as pb;
use serde_json::{json, Value};
use tonic::{Request, Response, Status};

use super::*;
use crate::config::{Config, Layered as _};
use crate::model::now;
use crate::service::{NodeCreate, PowerTiming, ServiceError};

#[test]
fn escapes_are_dropped_and_overwrites_applied() {
    let raw = b"\x1b[0;32mOK\x1b[0m booted\r\n\x1b]0;title\x07\x1b(Bplain\r\n";
    assert_eq!(strip_escapes(raw), "OK booted\nplain\n");
    // A progress line keeps its last state; CR then shorter text overwrites.
    assert_eq!(
        strip_escapes(b"10%\r50%\r100% done\n"),
        "100% done\n",
        "carriage return"
    );
    assert_eq!(strip_escapes(b"abcdef\rXY\n"), "XYcdef\n");
    assert_eq!(
        strip_escapes(b"abcdef\rXY\x1b[K\n"),
        "XY\n",
        "erase in line"
    );
    assert_eq!(strip_escapes(b"ab\x08\x08cd\n"), "cd\n", "backspace");
    // Cursor addressing (ISOLINUX's redraw), DCS, C1 CSI, bell, NUL.
    assert_eq!(
        strip_escapes("/vm\x1b[05;15Hlinuz\x1bP1$r\x1b\\\u{9b}1m\x07\0!".as_bytes()),
        "/vmlinuz!"
    );
    // Invalid UTF-8 is replaced, not lost with the rest.
    assert_eq!(strip_escapes(b"a\xffb"), "a\u{fffd}b");
    // An escape cut off at the end of the log.
    assert_eq!(strip_escapes(b"end\x1b["), "end");
}

#[test]
fn last_lines_are_bounded_in_count_and_bytes() {
    let text = "one\ntwo\nthree\nfour\n\n\n";
    assert_eq!(last_lines(text, 2, 100), "three\nfour");
    assert_eq!(last_lines(text, 10, 100), "one\ntwo\nthree\nfour");
    assert_eq!(
        last_lines(text, 10, 10),
        "three\nfour",
        "older lines go first"
    );
    assert_eq!(last_lines("", 5, 100), "");
    // One huge line keeps its end, at a character boundary.
    let long = format!("{}END", "é".repeat(5000));
    let cut = last_lines(&long, 20, 64);
    assert!(
        cut.len() <= 64 && cut.starts_with('…') && cut.ends_with("END"),
        "{cut}"
    );
    let shown_text = shown(&"x\n".repeat(10_000), 20_000);
    assert!(
        shown_text.len() <= MAX_EVIDENCE_BYTES + 100,
        "{}",
        shown_text.len()
    );
    assert_eq!(
        shown("\n\n", 5),
        "The node's serial console printed nothing."
    );
    assert_eq!(
        shown("a\nb\n", 5),
        "Last 2 lines of the node's serial console:\na\nb"
    );
}

/// console-svc in memory: GetConsoleLog answers `log` (or UNIMPLEMENTED,
/// as the socat backend); every call is counted.
#[derive(Clone, Default)]
struct FakeSvc {
    log: Option<Vec<u8>>,
    asked: Arc<Mutex<Vec<pb::GetConsoleLogRequest>>>,
}

#[tonic::async_trait]
impl ConsoleService for FakeSvc {
    async fn enable_console(
        &self,
        _: Request<pb::EnableConsoleRequest>,
    ) -> Result<Response<pb::Console>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn disable_console(
        &self,
        _: Request<pb::DisableConsoleRequest>,
    ) -> Result<Response<pb::Console>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn get_console(
        &self,
        _: Request<pb::GetConsoleRequest>,
    ) -> Result<Response<pb::Console>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn list_consoles(
        &self,
        _: Request<pb::ListConsolesRequest>,
    ) -> Result<Response<pb::ListConsolesResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    type WatchConsolesStream = tokio_stream::Empty<Result<pb::ConsoleEvent, Status>>;
    async fn watch_consoles(
        &self,
        _: Request<pb::WatchConsolesRequest>,
    ) -> Result<Response<Self::WatchConsolesStream>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn get_console_log(
        &self,
        r: Request<pb::GetConsoleLogRequest>,
    ) -> Result<Response<pb::GetConsoleLogResponse>, Status> {
        self.asked.lock().unwrap().push(r.into_inner());
        match &self.log {
            Some(data) => Ok(Response::new(pb::GetConsoleLogResponse {
                data: data.clone(),
                truncated: false,
            })),
            None => Err(Status::unimplemented(
                "the socat backend keeps no console log",
            )),
        }
    }
    async fn drain_replica(
        &self,
        _: Request<pb::DrainReplicaRequest>,
    ) -> Result<Response<pb::DrainReplicaResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

/// A console-svc endpoint serving `svc`.
async fn serve(svc: FakeSvc) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ConsoleServiceServer::new(svc))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    url
}

struct Rig {
    c: Arc<Conductor>,
    _dir: tempfile::TempDir,
}

fn conductor(console_svc: &str) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let sealer = crate::seal::Sealer::load_or_create(&dir.path().join("k")).unwrap();
    let store = crate::db::Store::open(&dir.path().join("db"), sealer).unwrap();
    let mut cfg = Config::default().console;
    cfg.endpoint = console_svc.into();
    let consoles = crate::console::ConsoleClient::new(&cfg).unwrap();
    let power =
        crate::power::PowerSettings::new("ipmitool".into(), Duration::from_secs(2)).unwrap();
    let timing = PowerTiming {
        state_timeout: Duration::from_secs(2),
        poll_interval: Duration::from_millis(50),
    };
    let mut c = Conductor::new(store, consoles, power, timing, Default::default());
    c.evidence = Settings {
        lines: 3,
        timeout: Duration::from_secs(2),
    };
    // The evidence's own cost is what these tests time; the power off
    // after a failed deploy (to an ipmitool address nobody answers) has
    // its tests in `service::provision`.
    c.power_off_after_deploy_failure = false;
    Rig {
        c: Arc::new(c),
        _dir: dir,
    }
}

/// An ipmi node in `state` (heading for `target`), its console enabled or not.
async fn node_in(c: &Arc<Conductor>, state: &str, target: &str, console: bool) -> String {
    let Value::Object(m) = json!({"driver": "ipmi", "driver_info": {
        "ipmi_address": "127.0.0.1", "ipmi_username": "u", "ipmi_password": "p"}})
    else {
        unreachable!()
    };
    let uuid = c.create_node(NodeCreate(m)).await.unwrap().uuid;
    let (state, target) = (state.to_owned(), target.to_owned());
    c.store
        .modify_node(&uuid, move |n: &mut Node| {
            n.provision_state = state;
            n.target_provision_state = Some(target);
            n.provision_updated_at = Some(now());
            n.console_interface = "ipmitool-socat".into();
            n.console_enabled = console;
            Ok::<_, ServiceError>(())
        })
        .await
        .unwrap();
    uuid
}

async fn fail(c: &Arc<Conductor>, uuid: &str, msg: &str) -> Node {
    c.advance(uuid, Event::Fail, Some(msg.into()))
        .await
        .unwrap();
    c.store.get_node(uuid).await.unwrap()
}

const LOG: &[u8] = b"boot 1\r\nboot 2\r\n\x1b[31mERROR\x1b[0m: no disks\r\nlast words\r\n";

#[tokio::test]
async fn a_failure_carries_the_console_tail_and_a_success_asks_nothing() {
    let svc = FakeSvc {
        log: Some(LOG.to_vec()),
        ..Default::default()
    };
    let asked = svc.asked.clone();
    let rig = conductor(&serve(svc).await);
    let c = &rig.c;
    for (state, target, failed) in [
        ("inspect wait", "manageable", "inspect failed"),
        ("wait call-back", "active", "deploy failed"),
        ("clean wait", "available", "clean failed"),
    ] {
        let uuid = node_in(c, state, target, true).await;
        let n = fail(c, &uuid, "it broke").await;
        assert_eq!(n.provision_state, failed);
        assert_eq!(
            n.last_error.as_deref(),
            Some(
                "it broke\nLast 3 lines of the node's serial console:\nboot 2\nERROR: no disks\nlast words"
            ),
            "{state}"
        );
    }
    let asked_now = asked.lock().unwrap().clone();
    assert_eq!(asked_now.len(), 3);
    assert!(asked_now.iter().all(|r| r.max_bytes == FETCH_BYTES));

    // No console, a success, and a fail that is not a deploy/inspect/clean
    // failure (verifying → enroll): nothing asked, the message as it was.
    let quiet = node_in(c, "inspect wait", "manageable", false).await;
    assert_eq!(
        fail(c, &quiet, "it broke").await.last_error.as_deref(),
        Some("it broke")
    );
    let done = node_in(c, "inspect wait", "manageable", true).await;
    c.advance(&done, Event::Done, None).await.unwrap();
    let verifying = node_in(c, "verifying", "manageable", true).await;
    let n = fail(c, &verifying, "bad creds").await;
    assert_eq!(
        (n.provision_state.as_str(), n.last_error.as_deref()),
        ("enroll", Some("bad creds"))
    );
    assert_eq!(
        asked.lock().unwrap().len(),
        3,
        "asked for a node without evidence due"
    );
}

#[tokio::test]
async fn no_log_down_or_graphical_fails_with_a_note_or_nothing() {
    // socat backend: UNIMPLEMENTED.
    let rig = conductor(&serve(FakeSvc::default()).await);
    let uuid = node_in(&rig.c, "inspect wait", "manageable", true).await;
    let e = fail(&rig.c, &uuid, "timeout reached while inspecting the node")
        .await
        .last_error
        .unwrap();
    assert!(
        e.starts_with("timeout reached while inspecting the node\nNo console log: the console service keeps no log of this console (its socat backend keeps none)"),
        "{e}"
    );

    // console-svc down: refused at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let rig = conductor(&format!("http://127.0.0.1:{port}"));
    let uuid = node_in(&rig.c, "wait call-back", "active", true).await;
    let t0 = std::time::Instant::now();
    let e = fail(&rig.c, &uuid, "Timeout reached")
        .await
        .last_error
        .unwrap();
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert!(
        e.starts_with(&format!("Timeout reached\nNo console log: the console service at http://127.0.0.1:{port} is unavailable")),
        "{e}"
    );

    // A graphical console has no text log: nothing asked, nothing added.
    let uuid = node_in(&rig.c, "inspect wait", "manageable", true).await;
    rig.c
        .store
        .modify_node(&uuid, |n: &mut Node| {
            n.console_interface = "fake-graphical".into();
            Ok::<_, ServiceError>(())
        })
        .await
        .unwrap();
    assert_eq!(
        fail(&rig.c, &uuid, "x").await.last_error.as_deref(),
        Some("x")
    );
}

/// console-svc accepts the connection and never answers: the failure is
/// recorded at the timeout, with the note.
#[tokio::test(start_paused = true)]
async fn a_silent_console_service_costs_the_timeout_only() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            open.push(s);
        }
    });
    let rig = conductor(&format!("http://{addr}"));
    let uuid = node_in(&rig.c, "inspect wait", "manageable", true).await;
    let t0 = tokio::time::Instant::now();
    let e = fail(&rig.c, &uuid, "it broke").await.last_error.unwrap();
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(
        e,
        format!("it broke\nNo console log: the console service at http://{addr} did not answer within 2s.")
    );
    held.abort();
}

#[test]
fn settings_come_from_conductor_options_and_a_zero_timeout_is_refused() {
    let var = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    let c = Config::load(None, Vec::new(), &[]).unwrap();
    assert_eq!(
        Settings::from_config(&c.conductor),
        Settings {
            lines: 20,
            timeout: Duration::from_secs(3)
        }
    );
    let env = vec![
        var(
            "PORTHOLE_CONDUCTOR_CONDUCTOR_FAILURE_CONSOLE_LOG_LINES",
            "0",
        ),
        var(
            "PORTHOLE_CONDUCTOR_CONDUCTOR_FAILURE_CONSOLE_LOG_TIMEOUT",
            "7",
        ),
    ];
    let c = Config::load(None, env, &[]).unwrap();
    assert_eq!(
        Settings::from_config(&c.conductor),
        Settings {
            lines: 0,
            timeout: Duration::from_secs(7)
        }
    );
    let env = vec![var(
        "PORTHOLE_CONDUCTOR_CONDUCTOR_FAILURE_CONSOLE_LOG_TIMEOUT",
        "0",
    )];
    let err = Config::load(None, env, &[]).unwrap_err().to_string();
    assert!(
        err.contains("conductor.failure_console_log_timeout must be above 0"),
        "{err}"
    );
}

/// `failure_console_log_lines = 0`: nothing asked, the message alone.
#[tokio::test]
async fn zero_lines_turns_evidence_off() {
    let svc = FakeSvc {
        log: Some(LOG.to_vec()),
        ..Default::default()
    };
    let asked = svc.asked.clone();
    let mut rig = conductor(&serve(svc).await);
    Arc::get_mut(&mut rig.c).unwrap().evidence.lines = 0;
    let uuid = node_in(&rig.c, "wait call-back", "active", true).await;
    assert_eq!(
        fail(&rig.c, &uuid, "x").await.last_error.as_deref(),
        Some("x")
    );
    assert!(asked.lock().unwrap().is_empty());
}
