//! TCP_NODELAY on the conductor's sockets: the API connections it accepts
//! and its gRPC connection to console-svc. Without it a small reply can wait
//! on Nagle and the peer's delayed ACK (about 40 ms). Checked on the
//! conductor's own side of each connection: the conductor runs in this
//! process, so its sockets are found among this process's file descriptors
//! by their addresses and asked with getsockopt. Needs no rig.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::os::fd::BorrowedFd;
use std::time::Duration;

use anyhow::{ensure, Result};
use common::{eventually, TestConductor};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_and_grpc_sockets_have_nodelay() {
    porthole_tests::run(body()).await
}

/// This process's TCP sockets as (local, peer, TCP_NODELAY).
#[expect(
    unsafe_code,
    reason = "BorrowedFd::borrow_raw of a descriptor listed in /proc/self/fd"
)]
fn tcp_sockets() -> Vec<(SocketAddr, SocketAddr, bool)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return out;
    };
    for entry in dir.flatten() {
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"));
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if !is_socket {
            continue;
        }
        // SAFETY: fd was open a moment ago; it is only duplicated here (the
        // duplicate is closed on drop, the original is untouched). If it was
        // closed in between, the dup fails or names another socket, which
        // the address checks below then skip.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let Ok(owned) = borrowed.try_clone_to_owned() else {
            continue;
        };
        let s = TcpStream::from(owned);
        if let (Ok(l), Ok(p), Ok(n)) = (s.local_addr(), s.peer_addr(), s.nodelay()) {
            out.push((l, p, n));
        }
    }
    out
}

async fn body() -> Result<()> {
    // A stand-in console-svc: accepts TCP and never answers, so the
    // conductor's gRPC connection to it stays open to be looked at.
    let fake_svc = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let svc_addr = fake_svc.local_addr()?;
    let _accepting = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = fake_svc.accept().await {
            held.push(s);
        }
    });
    let mut cond = TestConductor::start(&format!("http://{svc_addr}")).await?;
    let api: SocketAddr = cond.url.trim_start_matches("http://").parse()?;

    let http = reqwest::Client::new();
    let url = cond.url.clone();
    eventually(Duration::from_secs(10), "the API answers", || {
        let (http, url) = (http.clone(), url.clone());
        async move { Ok(http.get(&url).send().await.ok().map(drop)) }
    })
    .await?;
    // The conductor's side of the API connection: local = the API address.
    let accepted: Vec<_> = tcp_sockets()
        .into_iter()
        .filter(|(l, _, _)| *l == api)
        .collect();
    ensure!(!accepted.is_empty(), "no accepted API socket found");
    ensure!(
        accepted.iter().all(|(_, _, nodelay)| *nodelay),
        "accepted API sockets without TCP_NODELAY: {accepted:?}"
    );

    // The conductor's side of its gRPC connection: peer = console-svc. The
    // client sets TCP_NODELAY just after its connect completes, so a socket
    // seen in between has it off for a moment: look again until it is on
    // (seen once in CI), and fail if it stays off.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let grpc = loop {
        let found: Vec<_> = tcp_sockets()
            .into_iter()
            .filter(|(_, p, _)| *p == svc_addr)
            .collect();
        if !found.is_empty() && found.iter().all(|(_, _, nodelay)| *nodelay) {
            break found;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "gRPC client sockets without TCP_NODELAY (or none) for 10 s: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "TCP_NODELAY on {} API and {} gRPC sockets",
        accepted.len(),
        grpc.len()
    );
    cond.stop().await?;
    Ok(())
}
