//! Bytes through a console, both backends: a viewer on the console URL and
//! the node side of the BMC's serial line see each other's bytes, 8-bit
//! clean both ways, and two consoles on two BMCs work at the same time
//! without cross-talk.

use std::time::Duration;

use anyhow::{ensure, Result};
use porthole_tests::session::{self, binary_payload, establish, url_of};
use porthole_tests::wire::{find, show};
use porthole_tests::{both_backends, node_side, rig_or_skip, viewer, Backend, ConsoleSvc, Wire};

const BYTES_TIMEOUT: Duration = Duration::from_secs(15);

both_backends!(bytes_flow_both_ways_8bit_clean, two_consoles_at_once);

/// The rig's serial bridge forks a child per connection, all reading the
/// same pty; a closed connection's child drains for 0.5 s (CLOSE-WAIT) and
/// takes whatever the BMC writes meanwhile (bare ipmitool, no console-svc:
/// 56 of 227 typed bytes went to such a child). `node_side` waits it out,
/// so a byte lost in these tests is console-svc's.
#[tokio::test]
async fn node_side_waits_out_an_earlier_connection_of_the_bridge() {
    porthole_tests::run(async {
        let rig = rig_or_skip!();
        let bmcs = rig.lease_bmcs(1).await?;
        let earlier = node_side(&bmcs[0]).await?;
        drop(earlier);
        let n = node_side(&bmcs[0]).await?;
        let ours = n.local_port()?;
        let others = porthole_tests::wire::bridge_connections(bmcs[0].host_console.port, ours)?;
        ensure!(
            others == 0,
            "{others} other bridge connection(s) still read the line"
        );
        Ok(())
    })
    .await
}

async fn bytes_flow_both_ways_8bit_clean(backend: Backend) -> Result<()> {
    let rig = rig_or_skip!();
    let bmcs = rig.lease_bmcs(1).await?;
    let svc = ConsoleSvc::start(backend).await?;
    let mut client = svc.client().await?;
    let node = session::node_id("io");
    let console = session::enable(&mut client, bmcs[0].enable_request(&node)).await?;
    ensure!(
        console.backend == backend.as_str(),
        "backend reported: {console:?}"
    );
    let url = url_of(&console)?;
    ensure!(url.starts_with("tcp://127.0.0.1:"), "url {url}");

    let mut v = viewer(&url).await?;
    let mut n = node_side(&bmcs[0]).await?;
    establish(&mut v, &mut n).await?;
    round_trip(&mut v, &mut n, "a").await
}

/// Node output reaches the viewer and keystrokes reach the node, byte for
/// byte, with nothing else in between (so no cross-talk either).
async fn round_trip(v: &mut Wire, n: &mut Wire, tag: &str) -> Result<()> {
    let (out, end) = binary_payload(&format!("out-{tag}"));
    n.send(&out).await?;
    let got = v.expect(&end, BYTES_TIMEOUT).await?;
    ensure!(
        got == out,
        "viewer got {} instead of {}",
        show(&got),
        show(&out)
    );

    let (keys, end) = binary_payload(&format!("in-{tag}"));
    v.send(&keys).await?;
    let got = n.expect(&end, BYTES_TIMEOUT).await?;
    ensure!(
        got == keys,
        "node got {} instead of {}",
        show(&got),
        show(&keys)
    );
    Ok(())
}

async fn two_consoles_at_once(backend: Backend) -> Result<()> {
    let rig = rig_or_skip!();
    let bmcs = rig.lease_bmcs(2).await?;
    let svc = ConsoleSvc::start(backend).await?;
    let mut client = svc.client().await?;
    let (a, b) = (session::node_id("two-a"), session::node_id("two-b"));
    let ca = session::enable(&mut client, bmcs[0].enable_request(&a)).await?;
    let cb = session::enable(&mut client, bmcs[1].enable_request(&b)).await?;
    ensure!(ca.port != cb.port, "two consoles share port {}", ca.port);

    let (mut va, mut na) = (viewer(&url_of(&ca)?).await?, node_side(&bmcs[0]).await?);
    let (mut vb, mut nb) = (viewer(&url_of(&cb)?).await?, node_side(&bmcs[1]).await?);
    let (ea, eb) = tokio::join!(establish(&mut va, &mut na), establish(&mut vb, &mut nb));
    ea?;
    eb?;
    let (ra, rb) = tokio::join!(
        round_trip(&mut va, &mut na, "A"),
        round_trip(&mut vb, &mut nb, "B")
    );
    ra?;
    rb?;
    // Nothing of A's traffic leaked into B's line or the other way round.
    for (w, foreign) in [
        (&mut na, "-B"),
        (&mut nb, "-A"),
        (&mut va, "-B"),
        (&mut vb, "-A"),
    ] {
        let extra = w.read_for(Duration::from_millis(500)).await?;
        ensure!(
            find(&extra, foreign.as_bytes()).is_none(),
            "{} saw {}",
            w.name(),
            show(&extra)
        );
    }
    Ok(())
}
