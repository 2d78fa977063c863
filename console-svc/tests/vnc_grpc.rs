//! A VNC console end to end through the service: console-svc runs
//! in-process (`console_svc::run`), `EnableConsole` with kind VNC names the
//! rig's TigerVNC, and a viewer on the reported host/port reads the
//! 1024x768 framebuffer; a wrong password makes the console FAILED with a
//! readable last_error; `console-svc enable --kind vnc` (the binary, its
//! password from a file) asks for the same console. Needs
//! `PORTHOLE_RIG_JSON`; skips otherwise.
//!
//! Console ports come from 32100..32700 (clear of the rig layouts and of
//! the test harness's 28000..31999).

mod common;

use console_svc::config::Layered as _;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use common::{none_handshake, read_frame, rig_vnc};
use console_svc::config::Config;
use pb::console_service_client::ConsoleServiceClient;
use porthole_proto::console::v1 as pb;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// `n` consecutive ports that can be bound now (each call its own).
fn free_range(n: u16) -> u16 {
    static CALLS: AtomicU16 = AtomicU16::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let start = 32100 + (std::process::id() % 50) as u16 * 8 + call * n;
    (start..32700)
        .step_by(usize::from(n))
        .find(|base| {
            (*base..base + n).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        })
        .expect("a free port range")
}

async fn service() -> (ConsoleServiceClient<Channel>, CancellationToken) {
    let (client, shutdown, _) = service_at().await;
    (client, shutdown)
}

/// [`service`], and the address its gRPC listens on.
async fn service_at() -> (
    ConsoleServiceClient<Channel>,
    CancellationToken,
    std::net::SocketAddr,
) {
    common::init_tracing();
    let base = free_range(4);
    let scratch = tempfile::Builder::new()
        .prefix("porthole-vnc-grpc-")
        .tempdir()
        .unwrap();
    let pid_dir = scratch.path().join("pids");
    let env = vec![
        (
            "PORTHOLE_CONSOLE_SVC_CONSOLE_PORT_RANGE".to_owned(),
            format!("{base}:{}", base + 4),
        ),
        (
            "PORTHOLE_CONSOLE_SVC_CONSOLE_TERMINAL_PID_DIR".to_owned(),
            pid_dir.display().to_string(),
        ),
        (
            "PORTHOLE_CONSOLE_SVC_VNC_UPSTREAM_SECURITY".to_owned(),
            "vncauth".to_owned(),
        ),
    ];
    let config = Config::load(None, env, &[]).expect("config");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let run = console_svc::run(listener, config, shutdown.clone());
    tokio::spawn(async move {
        let _scratch = scratch; // the pid dir lives as long as the service
        run.await
    });
    for _ in 0..100 {
        if let Ok(client) = ConsoleServiceClient::connect(format!("http://{addr}")).await {
            return (client, shutdown, addr);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("console-svc did not serve");
}

fn enable(node: &str, host: &str, port: u16, password: &str) -> pb::EnableConsoleRequest {
    pb::EnableConsoleRequest {
        node_id: node.into(),
        kind: pb::ConsoleKind::Vnc as i32,
        ipmi: None,
        port: 0,
        vnc: Some(pb::VncTarget {
            host: host.into(),
            port: u32::from(port),
            password: password.into(),
        }),
    }
}

/// GetConsole until `want` holds (10 s at most).
async fn until(
    client: &mut ConsoleServiceClient<Channel>,
    node: &str,
    want: impl Fn(&pb::Console) -> bool,
) -> pb::Console {
    for _ in 0..200 {
        let c = client
            .get_console(pb::GetConsoleRequest {
                node_id: node.into(),
            })
            .await
            .unwrap()
            .into_inner();
        if want(&c) {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("console {node} never reached the wanted state");
}

#[tokio::test]
async fn enable_a_vnc_console_and_view_it() {
    let Some(rig) = rig_vnc("vnc_grpc") else {
        return;
    };
    let (mut client, shutdown) = service().await;
    let info = client
        .enable_console(enable("vnc-ok", &rig.host, rig.port, &rig.password))
        .await
        .expect("EnableConsole")
        .into_inner();
    eprintln!(
        "vnc_grpc: enabled: kind={} state={} url={} host={} port={} backend={}",
        info.kind, info.state, info.url, info.host, info.port, info.backend
    );
    assert_eq!(info.kind, pb::ConsoleKind::Vnc as i32);
    assert_eq!(info.backend, "vnc");
    let mut io = TcpStream::connect((info.host.as_str(), info.port as u16))
        .await
        .unwrap();
    none_handshake(&mut io).await.expect("SecurityResult OK");
    let frame = read_frame(&mut io).await;
    assert_eq!((frame.width, frame.height), (1024, 768));
    let running = until(&mut client, "vnc-ok", |c| {
        c.state == pb::ConsoleState::Running as i32
    })
    .await;
    assert!(running.last_error.is_empty(), "{}", running.last_error);
    client
        .disable_console(pb::DisableConsoleRequest {
            node_id: "vnc-ok".into(),
        })
        .await
        .unwrap();
    shutdown.cancel();
}

/// The operator's CLI: `enable --kind vnc --vnc-host --vnc-port
/// --vnc-password-file` gives a VNC console a viewer can log in to.
#[tokio::test]
async fn the_cli_enables_a_vnc_console() {
    let Some(rig) = rig_vnc("vnc_grpc") else {
        return;
    };
    let (mut client, shutdown, addr) = service_at().await;
    let server = format!("http://{addr}");
    let mut pw = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut pw, format!("{}\n", rig.password).as_bytes()).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_console-svc"))
        .args([
            "enable",
            "vnc-cli",
            "--kind",
            "vnc",
            "--vnc-host",
            &rig.host,
        ])
        .args(["--vnc-port", &rig.port.to_string()])
        .arg("--vnc-password-file")
        .arg(pw.path())
        .args(["--server", &server, "--json"])
        .env_remove("PORTHOLE_SERVER")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "console-svc enable --kind vnc: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(shown["kind"], "vnc", "{shown}");
    assert_eq!(shown["backend"], "vnc", "{shown}");
    assert!(
        !stdout.contains(&rig.password),
        "the password was echoed: {stdout}"
    );
    let port = shown["port"].as_u64().expect("a console port") as u16;
    let host = shown["host"].as_str().expect("a console host");
    let mut io = TcpStream::connect((host, port)).await.unwrap();
    none_handshake(&mut io).await.expect("SecurityResult OK");
    let frame = read_frame(&mut io).await;
    assert_eq!((frame.width, frame.height), (1024, 768));
    let running = until(&mut client, "vnc-cli", |c| {
        c.state == pb::ConsoleState::Running as i32
    })
    .await;
    assert!(running.last_error.is_empty(), "{}", running.last_error);
    client
        .disable_console(pb::DisableConsoleRequest {
            node_id: "vnc-cli".into(),
        })
        .await
        .unwrap();
    shutdown.cancel();
}

#[tokio::test]
async fn a_wrong_vnc_password_fails_the_console_with_a_reason() {
    let Some(rig) = rig_vnc("vnc_grpc") else {
        return;
    };
    let (mut client, shutdown) = service().await;
    client
        .enable_console(enable("vnc-bad", &rig.host, rig.port, "wrong-pw"))
        .await
        .expect("EnableConsole");
    let failed = until(&mut client, "vnc-bad", |c| {
        c.state == pb::ConsoleState::Failed as i32
    })
    .await;
    eprintln!(
        "vnc_grpc: wrong password → last_error: {}",
        failed.last_error
    );
    assert!(
        failed.last_error.contains("authentication failed"),
        "{}",
        failed.last_error
    );
    assert!(!failed.last_error.contains("wrong-pw"));
    client
        .disable_console(pb::DisableConsoleRequest {
            node_id: "vnc-bad".into(),
        })
        .await
        .unwrap();
    shutdown.cancel();
    // A correct login clears TigerVNC's failure count for this address.
    let mut io = TcpStream::connect((rig.host.as_str(), rig.port))
        .await
        .unwrap();
    let password = console_svc::secret::Secret::new(rig.password.clone());
    let target = console_svc::vnc::upstream::UpstreamTarget {
        host: &rig.host,
        password: Some(&password),
    };
    let s = common::settings(vec![console_svc::vnc::upstream::Method::VncAuth], None);
    let _ = console_svc::vnc::upstream::handshake(&mut io, &target, &s.upstream)
        .await
        .expect("direct login");
}
