//! The test BMC over real loopback UDP, as the bench's farm runs it.

use super::*;
use crate::session::{cmd, Session, SessionConfig};
use crate::sol::{Sol, SolConfig};
use crate::transport;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// The farm's case: console-svc's SOL session stays usable while an
/// ipmitool-like probe opens and closes a second session on the same
/// BMC; steady output reaches the SOL session only while switched on.
#[tokio::test]
async fn a_second_session_leaves_sol_working_and_output_follows_the_switch() {
    let output = Output {
        every: Duration::from_millis(10),
        bytes: 24,
    };
    let (addr, bmc) = spawn_udp(3, b"secret", Some(output)).await.unwrap();
    let ctl = bmc.ctl.clone();
    let login = SessionConfig::new("admin", b"secret");
    let s = Session::open(transport::udp(addr).await.unwrap(), &login)
        .await
        .unwrap();
    let sol_cfg = SolConfig {
        session_port: Some(addr.port()),
        ..SolConfig::default()
    };
    let sol = Sol::activate(s, sol_cfg).await.unwrap();
    let (mut io, mut theirs) = tokio::io::duplex(4096);
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    let run = tokio::spawn(async move { sol.run(&mut theirs, stop).await });

    let mut probe = Session::open(transport::udp(addr).await.unwrap(), &login)
        .await
        .unwrap();
    probe
        .request(cmd::NETFN_APP, cmd::GET_DEVICE_ID, &[])
        .await
        .unwrap();
    probe.close().await.unwrap();

    let wait = Duration::from_secs(5);
    io.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    tokio::time::timeout(wait, io.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"ping", "SOL still echoes after the probe");
    assert!(*ctl.sol_active.lock().unwrap());
    assert_eq!(ctl.output_bytes.load(Ordering::SeqCst), 0, "output is off");

    ctl.output_on.send_replace(true);
    let mut out = [0u8; 24];
    tokio::time::timeout(wait, io.read_exact(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&out, b"farm output 0123456789\r\n");
    ctl.output_on.send_replace(false);

    cancel.cancel();
    run.await.unwrap().unwrap();
    assert!(!*ctl.sol_active.lock().unwrap(), "deactivated on cancel");
}
