//! The socat backend's one viewer slot (`max-children=1`), issue 9 point 5:
//! a TCP connection that never sends a byte gives the console up to a
//! viewer that arrives once it has been silent for 5 s (it is told why and
//! closed); a viewer that types keeps the console, and the one that arrives
//! meanwhile waits its turn.
//!
//! ```text
//!  silent connection (its SOL session up) ── 5 s of nothing ──▶ a viewer arrives
//!     ─▶ silent one told "another viewer is waiting", closed ─▶ the viewer's keystrokes reach the node
//!  typing viewer ── a second viewer arrives ──▶ it waits (no session) ──▶ first leaves ──▶ its turn
//! ```

use std::time::{Duration, Instant};

use anyhow::ensure;
use porthole_tests::session::{self, establish, url_of};
use porthole_tests::{node_side, rig_or_skip, viewer, Backend, ConsoleSvc};

const BANNER: &[u8] = b"SOL Session operational";
/// How long a viewer may be silent before a waiting one takes its place.
const YIELD_AFTER: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_gives_the_socat_console_up_to_a_new_viewer() {
    porthole_tests::run(async {
        let rig = rig_or_skip!();
        let bmcs = rig.lease_bmcs(1).await?;
        let svc = ConsoleSvc::start(Backend::Socat).await?;
        let mut client = svc.client().await?;
        let node = session::node_id("slot");
        let console = session::enable(&mut client, bmcs[0].enable_request(&node)).await?;
        let url = url_of(&console)?;

        // A connection that never sends a byte, holding the one slot.
        let mut silent = viewer(&url).await?;
        silent.expect(BANNER, Duration::from_secs(15)).await?;
        tokio::time::sleep(YIELD_AFTER + Duration::from_millis(500)).await;

        let arrived = Instant::now();
        let mut v = viewer(&url).await?;
        let mut n = node_side(&bmcs[0]).await?;
        v.expect(BANNER, Duration::from_secs(5)).await?;
        let got_in = arrived.elapsed();
        establish(&mut v, &mut n).await?;
        eprintln!("the new viewer had the console after {got_in:?}");
        silent
            .expect(b"another viewer is waiting", Duration::from_secs(2))
            .await?;
        silent.expect_closed(Duration::from_secs(2)).await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typing_viewer_keeps_the_socat_console_and_the_next_waits_its_turn() {
    porthole_tests::run(async {
        let rig = rig_or_skip!();
        let bmcs = rig.lease_bmcs(1).await?;
        let svc = ConsoleSvc::start(Backend::Socat).await?;
        let mut client = svc.client().await?;
        let node = session::node_id("slot-typing");
        let console = session::enable(&mut client, bmcs[0].enable_request(&node)).await?;
        let url = url_of(&console)?;

        let mut first = viewer(&url).await?;
        let mut n = node_side(&bmcs[0]).await?;
        first.expect(BANNER, Duration::from_secs(15)).await?;
        establish(&mut first, &mut n).await?;
        let mut second = viewer(&url).await?;
        // Twice the silence bound, the first viewer typing every second.
        let until = Instant::now() + YIELD_AFTER * 2;
        let mut said = Vec::new();
        while Instant::now() < until {
            first.send(b"x").await?;
            said.extend(second.read_for(Duration::from_secs(1)).await?);
        }
        ensure!(
            porthole_tests::wire::find(&said, BANNER).is_none(),
            "the second viewer got a session while the first one typed: {}",
            porthole_tests::wire::show(&said)
        );
        establish(&mut first, &mut n).await?;
        drop(first);
        second.expect(BANNER, Duration::from_secs(10)).await?;
        establish(&mut second, &mut n).await?;
        Ok(())
    })
    .await
}
