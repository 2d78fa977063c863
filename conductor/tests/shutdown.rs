//! SIGTERM stops the conductor within a bound even when clients do not
//! cooperate: an HTTP/2 client that sent its preface and never answers the
//! GOAWAY (nor its ping), and an HTTP/1 request whose head never ends.
//! The conductor binary as a process; needs no rig.

mod common;

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use common::ConductorProc;
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_within_the_grace_despite_silent_clients() {
    porthole_tests::run(body()).await
}

async fn body() -> Result<()> {
    let mut cond = ConductorProc::start("http://127.0.0.1:9").await?;
    let addr = cond.url.trim_start_matches("http://").to_owned();
    // HTTP/2 prior knowledge: preface and an empty SETTINGS frame, then silence.
    let mut h2 = tokio::net::TcpStream::connect(&addr).await?;
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
    h2.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await?;
    // HTTP/1: a request head that never ends.
    let mut h1 = tokio::net::TcpStream::connect(&addr).await?;
    h1.write_all(b"GET /v1/nodes HTTP/1.1\r\nHost: x\r\n")
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let start = Instant::now();
    let exited = tokio::task::block_in_place(|| cond.terminate(Duration::from_secs(15)))?;
    let took = start.elapsed();
    ensure!(
        exited.is_some(),
        "SIGTERM: the conductor was still running after 15 s with silent clients"
    );
    ensure!(
        exited.is_some_and(|s| s.success()),
        "SIGTERM: exit status {exited:?}"
    );
    ensure!(
        took < conductor::SHUTDOWN_GRACE + Duration::from_secs(3),
        "SIGTERM took {took:?}"
    );
    eprintln!("stopped {took:?} after SIGTERM");
    drop((h1, h2));
    Ok(())
}
