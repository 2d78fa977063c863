//! TCP_NODELAY on every socket console-svc accepts: its gRPC connections
//! (served over a listener stream, where tonic does not apply its own
//! nodelay setting) and a native console's viewers. Without it a reply
//! written in pieces waits for the peer's delayed ACK (about 40 ms).
//!
//! console-svc runs in-process (`console_svc::run`, native backend,
//! `ipmitool_path = "true"`, no BMC needed), so the accepted sockets are
//! this process's own descriptors, looked at in `/proc/self/fd`.

use std::mem::ManuallyDrop;
use std::net::TcpStream;
use std::os::fd::FromRawFd;
use std::time::Duration;

use console_svc::config::Config;
use pb::console_service_client::ConsoleServiceClient;
use porthole_proto::console::v1 as pb;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// TCP_NODELAY of every socket of this process bound to `port` that has a
/// peer (accepted or connected from that port, not the listener).
#[expect(
    unsafe_code,
    reason = "TcpStream::from_raw_fd of a socket listed in /proc/self/fd, kept open by ManuallyDrop"
)]
fn connected_nodelay(port: u16) -> Vec<bool> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        if !target.to_string_lossy().starts_with("socket:") {
            continue;
        }
        // SAFETY: the descriptor is only borrowed for getsockname,
        // getpeername and getsockopt; ManuallyDrop keeps it open.
        let sock = ManuallyDrop::new(unsafe { TcpStream::from_raw_fd(fd) });
        let local = sock.local_addr().map(|a| a.port()).ok();
        if local == Some(port) && sock.peer_addr().is_ok() {
            found.push(sock.nodelay().unwrap_or(false));
        }
    }
    found
}

/// `n` consecutive ports on 127.0.0.1 that can be bound now.
fn free_range(n: u16) -> u16 {
    let seed = 33000 + (std::process::id() % 100) as u16 * 10;
    (seed..40000)
        .step_by(usize::from(n))
        .find(|b| (*b..b + n).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()))
        .expect("free ports")
}

async fn service() -> (
    ConsoleServiceClient<tonic::transport::Channel>,
    u16,
    CancellationToken,
) {
    let base = free_range(4);
    let mut config = Config::default();
    config.console.port_range = format!("{base}:{}", base + 4).parse().unwrap();
    config.console.ipmitool_path = "true".into();
    config.console.terminal_pid_dir =
        std::env::temp_dir().join(format!("porthole-accepted-{}", std::process::id()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let shutdown = CancellationToken::new();
    tokio::spawn(console_svc::run(listener, config, shutdown.clone()));
    for _ in 0..100 {
        if let Ok(c) = ConsoleServiceClient::connect(format!("http://127.0.0.1:{port}")).await {
            return (c, port, shutdown);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("console-svc did not serve");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_connections_and_viewers_have_tcp_nodelay() {
    let (mut client, grpc_port, shutdown) = service().await;
    client
        .list_consoles(pb::ListConsolesRequest::default())
        .await
        .expect("ListConsoles");
    let grpc = connected_nodelay(grpc_port);
    assert!(
        !grpc.is_empty(),
        "the accepted gRPC connection was not found"
    );
    assert!(
        grpc.iter().all(|n| *n),
        "accepted gRPC sockets without TCP_NODELAY: {grpc:?}"
    );

    let console = client
        .enable_console(pb::EnableConsoleRequest {
            node_id: "nodelay-1".into(),
            kind: pb::ConsoleKind::Serial as i32,
            ipmi: Some(pb::IpmiTarget {
                address: "127.0.0.1".into(),
                port: 9,
                username: "admin".into(),
                password: "pw".into(),
                cipher_suite: Some(3),
                privilege_level: String::new(),
            }),
            port: 0,
            vnc: None,
        })
        .await
        .expect("enable")
        .into_inner();
    let console_port = u16::try_from(console.port).unwrap();
    let _viewer = tokio::net::TcpStream::connect(("127.0.0.1", console_port))
        .await
        .unwrap();
    let mut viewers = Vec::new();
    for _ in 0..50 {
        viewers = connected_nodelay(console_port);
        if !viewers.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(viewers, [true], "the accepted viewer socket");
    shutdown.cancel();
}
