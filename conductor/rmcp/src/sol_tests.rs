//! SOL tests against the in-memory BMC (which acks and echoes what the
//! node gets), tokio's clock paused.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, DuplexStream};

use super::*;
use crate::session::SessionConfig;
use crate::test_bmc::{self, Control, TestBmc};

struct Running {
    /// Our end of the console stream: keystrokes in, node output out.
    io: DuplexStream,
    brk: BreakSender,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<Result<()>>,
    ctl: Arc<Control>,
    _bmc: TestBmc,
}

async fn start_with(bmc_setup: impl FnOnce(&Control)) -> Running {
    let (t, bmc) = test_bmc::spawn(3, b"secret");
    bmc_setup(&bmc.ctl);
    let session = Session::open(t, &SessionConfig::new("admin", b"secret"))
        .await
        .unwrap();
    let sol = Sol::activate(session, SolConfig::default()).await.unwrap();
    let (io, mut theirs) = tokio::io::duplex(4096);
    let brk = sol.break_sender();
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    let task = tokio::spawn(async move { sol.run(&mut theirs, stop).await });
    Running {
        io,
        brk,
        cancel,
        task,
        ctl: bmc.ctl.clone(),
        _bmc: bmc,
    }
}

async fn read_n(out: &mut DuplexStream, n: usize) -> Vec<u8> {
    let mut got = vec![0; n];
    out.read_exact(&mut got).await.expect("SOL output ended");
    got
}

fn requests(ctl: &Control) -> Vec<(u8, u8)> {
    ctl.requests.lock().unwrap().clone()
}

#[test]
fn packet_layout() {
    let p = SolPacket {
        seq: 3,
        ack: 2,
        accepted: 5,
        ctl: op::BREAK,
        data: vec![0, 0xff],
    };
    assert_eq!(p.encode(), vec![3, 2, 5, 0x10, 0, 0xff]);
    assert_eq!(SolPacket::decode(&p.encode()).unwrap(), p);
    assert!(SolPacket::decode(&[1, 2]).is_err());
}

#[tokio::test(start_paused = true)]
async fn all_256_byte_values_round_trip_then_cancel_deactivates() {
    let mut r = start_with(|_| {}).await;
    let all: Vec<u8> = (0..=255u8).chain(0..=255u8).collect();
    for chunk in all.chunks(100) {
        r.io.write_all(chunk).await.unwrap();
    }
    assert_eq!(
        read_n(&mut r.io, all.len()).await,
        all,
        "echo is 8-bit clean and in order"
    );
    assert_eq!(*r.ctl.node_rx.lock().unwrap(), all);
    r.cancel.cancel();
    r.task.await.unwrap().unwrap();
    let reqs = requests(&r.ctl);
    assert_eq!(
        &reqs[reqs.len() - 2..],
        &[(6, 0x49), (6, 0x3c)],
        "deactivate, then close session"
    );
    assert!(!*r.ctl.sol_active.lock().unwrap());
}

#[tokio::test(start_paused = true)]
async fn already_active_is_deactivated_first() {
    let r = start_with(|c| *c.sol_active.lock().unwrap() = true).await;
    assert_eq!(
        requests(&r.ctl),
        vec![(6, 0x3b), (6, 0x48), (6, 0x49), (6, 0x48)]
    );
}

#[tokio::test(start_paused = true)]
async fn lost_packet_is_retransmitted_once_delivered() {
    let mut r = start_with(|_| {}).await;
    r.ctl.drop_in.store(2, Ordering::SeqCst);
    let start = Instant::now();
    r.io.write_all(b"hello").await.unwrap();
    assert_eq!(read_n(&mut r.io, 5).await, b"hello");
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(1000),
        "two 500 ms retransmit timeouts"
    );
    assert_eq!(*r.ctl.node_rx.lock().unwrap(), b"hello", "delivered once");
}

#[tokio::test(start_paused = true)]
async fn nack_then_partial_accept() {
    let mut r = start_with(|_| {}).await;
    r.ctl.nack_next.store(1, Ordering::SeqCst);
    r.ctl.accept_max.store(3, Ordering::SeqCst);
    r.io.write_all(b"abcdefgh").await.unwrap();
    assert_eq!(read_n(&mut r.io, 8).await, b"abcdefgh");
    assert_eq!(
        *r.ctl.node_rx.lock().unwrap(),
        b"abcdefgh",
        "the rest after each partial accept, nothing twice"
    );
}

#[tokio::test(start_paused = true)]
async fn break_sets_the_operation_bit() {
    let mut r = start_with(|_| {}).await;
    r.brk.send_break();
    r.io.write_all(b"x").await.unwrap();
    assert_eq!(read_n(&mut r.io, 1).await, b"x");
    assert!(r.ctl.sol_ops.lock().unwrap().contains(&op::BREAK));
}

#[tokio::test(start_paused = true)]
async fn keepalive_detects_a_dead_bmc() {
    let r = start_with(|_| {}).await;
    tokio::time::sleep(Duration::from_secs(16)).await;
    assert!(
        requests(&r.ctl).contains(&(6, 0x01)),
        "a Get Device ID keep-alive went out"
    );
    r.ctl.silent.store(true, Ordering::SeqCst);
    let start = Instant::now();
    let err = r.task.await.unwrap().unwrap_err();
    assert!(matches!(err, RmcpError::Timeout { .. }), "{err}");
    // Keep-alives at 30, 45 and 60 s go unanswered; at 75 s the third miss ends it.
    assert_eq!(start.elapsed(), Duration::from_secs(75 - 16));
}

#[tokio::test(start_paused = true)]
async fn bmc_side_deactivation_ends_the_run_and_closes_the_session() {
    let mut r = start_with(|_| {}).await;
    r.ctl.deactivating.store(true, Ordering::SeqCst);
    r.io.write_all(b"x").await.unwrap();
    let err = r.task.await.unwrap().unwrap_err();
    assert!(matches!(err, RmcpError::SolDeactivated), "{err}");
    let reqs = requests(&r.ctl);
    assert_eq!(reqs.last(), Some(&(6, 0x3c)), "closed: {reqs:?}");
    assert!(
        !reqs.contains(&(6, 0x49)),
        "no deactivate of an inactive payload: {reqs:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_retransmitted_bmc_packet_is_acked_but_delivered_once() {
    let mut r = start_with(|_| {}).await;
    r.ctl.duplicate_out.store(1, Ordering::SeqCst);
    r.io.write_all(b"once").await.unwrap();
    r.io.write_all(b"-next").await.unwrap();
    assert_eq!(read_n(&mut r.io, 9).await, b"once-next");
    let mut more = [0u8; 1];
    let late = tokio::time::timeout(Duration::from_millis(100), r.io.read(&mut more)).await;
    assert!(late.is_err(), "nothing delivered twice: {late:?}");
}

#[tokio::test(start_paused = true)]
async fn sequence_numbers_wrap_from_15_to_1() {
    let mut r = start_with(|_| {}).await;
    // 40 packets, one at a time: our sequence and the BMC's wrap twice.
    for i in 0..40u8 {
        r.io.write_all(&[i]).await.unwrap();
        assert_eq!(read_n(&mut r.io, 1).await, vec![i]);
    }
    assert_eq!(*r.ctl.node_rx.lock().unwrap(), (0..40).collect::<Vec<u8>>());
}

#[tokio::test(start_paused = true)]
async fn a_bmc_asking_for_another_sol_port_is_refused() {
    let (t, bmc) = test_bmc::spawn(3, b"secret");
    let session = Session::open(t, &SessionConfig::new("admin", b"secret"))
        .await
        .unwrap();
    let cfg = SolConfig {
        session_port: Some(624),
        ..SolConfig::default()
    };
    let err = Sol::activate(session, cfg).await.err().unwrap();
    assert!(
        matches!(err, RmcpError::SolOtherPort { port: 623 }),
        "{err}"
    );
    assert!(!*bmc.ctl.sol_active.lock().unwrap(), "deactivated again");
    let (t, _bmc) = test_bmc::spawn(3, b"secret");
    let session = Session::open(t, &SessionConfig::new("admin", b"secret"))
        .await
        .unwrap();
    let cfg = SolConfig {
        session_port: Some(623),
        ..SolConfig::default()
    };
    assert!(Sol::activate(session, cfg).await.is_ok());
}

/// Buffers on demand (issue 16): a session waiting for the BMC holds no
/// receive buffer, so an idle always-on console's SOL future stays small
/// (it held a 1500-byte datagram buffer while waiting before).
#[tokio::test(start_paused = true)]
async fn a_waiting_session_holds_no_receive_buffer() {
    let (t, _bmc) = test_bmc::spawn(3, b"secret");
    let mut session = Session::open(t, &SessionConfig::new("admin", b"secret"))
        .await
        .unwrap();
    let recv = std::mem::size_of_val(&session.recv());
    let request = std::mem::size_of_val(&session.request_raw(6, 1, &[]));
    let sol = Sol::activate(session, SolConfig::default()).await.unwrap();
    let (_io, mut theirs) = tokio::io::duplex(64);
    let state = std::mem::size_of_val(&sol);
    let run = std::mem::size_of_val(&sol.run(&mut theirs, CancellationToken::new()));
    println!("future sizes: Session::recv {recv} B, request_raw {request} B, Sol::run {run} B (Sol itself {state} B)");
    assert!(recv < 512, "Session::recv's future is {recv} bytes");
    assert!(
        request < 1024,
        "Session::request_raw's future is {request} bytes"
    );
    // 3008 bytes with a receive buffer held while waiting; about 1.5 KiB
    // without: a 1500-byte buffer back in it would cross 2 KiB.
    assert!(run < 2048, "Sol::run's future is {run} bytes");
}
