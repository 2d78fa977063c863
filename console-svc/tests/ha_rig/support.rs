//! What the HA scenarios build on besides [`crate::replicas`]: their
//! replica options (127.0.0.2 and up, TTL 3 s), the rig BMC's console
//! (node `ha-node`), the checker that fails on two listeners at once, and
//! small probes of who serves.

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use porthole_proto::console::v1 as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::replicas::{enable_request, get, Client, Options, Ports, Rig};

pub const TTL: Duration = Duration::from_secs(3);

/// The node whose console the scenarios enable (on the rig's first BMC).
pub const NODE: &str = "ha-node";

pub fn rig() -> Option<Rig> {
    Rig::load("ha_rig")
}

/// `both_backends!(name)`: tests `name::native`, `name::socat` and `name::rmcp` that run
/// `async fn name(backend: &'static str)`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn native() {
                super::$name("native").await
            }
            #[tokio::test]
            async fn socat() {
                super::$name("socat").await
            }
            #[tokio::test]
            async fn rmcp() {
                super::$name("rmcp").await
            }
        }
    )+};
}

/// [`options`] with the serial backend `backend`.
pub fn options_for(backend: &'static str) -> Options {
    Options {
        backend,
        ..options()
    }
}

/// Replica `i` of a scenario listens on 127.0.0.`FIRST_IP + i`.
pub const FIRST_IP: u8 = 2;
/// The most replicas a scenario starts.
pub const MAX_REPLICAS: u8 = 3;

/// Replicas on 127.0.0.2 and up, ten console ports leased free, the native
/// backend, lease TTL [`TTL`].
pub fn options() -> Options {
    Options {
        ports: Ports::Free(10),
        backend: "native",
        ttl: TTL,
        claim_step: Duration::from_millis(300),
        enable_timeout: Duration::from_secs(4),
        first_ip: FIRST_IP,
        etcd_tag: "",
        dir_tag: "ha-",
    }
}

/// Enable the rig BMC's console (node `ha-node`) through `c`.
pub async fn enable(c: &mut Client, rig: &Rig) -> pb::Console {
    c.enable_console(enable_request(rig, 0, NODE))
        .await
        .expect("enable")
        .into_inner()
}

/// [`enable`], and the console is Running when Enable returns.
pub async fn enable_running(c: &mut Client, rig: &Rig) -> pb::Console {
    let con = enable(c, rig).await;
    assert_eq!(con.state, pb::ConsoleState::Running as i32, "{con:?}");
    con
}

/// Samples who listens on the console port; counts overlaps.
pub struct Checker {
    stop: Arc<AtomicBool>,
    overlaps: Arc<AtomicUsize>,
    samples: Arc<AtomicUsize>,
}

impl Checker {
    pub fn start(port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let overlaps = Arc::new(AtomicUsize::new(0));
        let samples = Arc::new(AtomicUsize::new(0));
        let (s, o, n) = (stop.clone(), overlaps.clone(), samples.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let listeners = listening(port);
                if listeners.len() > 1 {
                    eprintln!("checker: two replicas serve at once: {listeners:?}");
                    o.fetch_add(1, Ordering::SeqCst);
                }
                n.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Self {
            stop,
            overlaps,
            samples,
        }
    }

    /// Keep sampling a second longer (a replica coming back would show),
    /// then judge.
    pub async fn finish(self) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.stop.store(true, Ordering::SeqCst);
        let samples = self.samples.load(Ordering::SeqCst);
        assert!(samples >= 10, "checker took only {samples} samples");
        assert_eq!(
            self.overlaps.load(Ordering::SeqCst),
            0,
            "two owners at once"
        );
    }
}

/// Addresses of this suite's replicas (127.0.0.2 .. .4) listening on
/// `port`; another program's listener (any address, 0.0.0.0 included) is
/// not a replica serving.
pub fn listening(port: u16) -> Vec<String> {
    let ours: Vec<String> = (FIRST_IP..FIRST_IP + MAX_REPLICAS)
        .map(|i| format!("127.0.0.{i}:{port}"))
        .collect();
    let out = Command::new("ss")
        .args(["-Hltn", &format!("sport = :{port}")])
        .output()
        .expect("ss");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_owned))
        .filter(|a| ours.contains(a))
        .collect()
}

/// Sample [`listening`] every `poll` until `done` holds for the sample;
/// fails with `why` (and who listens) once `within` has passed since
/// `since`.
async fn until_listeners(
    port: u16,
    since: Instant,
    within: Duration,
    poll: Duration,
    done: impl Fn(&[String]) -> bool,
    why: &str,
) {
    loop {
        let listeners = listening(port);
        if done(&listeners) {
            return;
        }
        assert!(since.elapsed() < within, "{why}: {listeners:?}");
        tokio::time::sleep(poll).await;
    }
}

/// Wait (sampling every 5 ms, for the handover gap) until nothing listens
/// on `port` under the address `ip` any more.
pub async fn until_let_go(port: u16, ip: &str, within: Duration) {
    let addr = format!("{ip}:{port}");
    let not_ip = |l: &[String]| !l.contains(&addr);
    let poll = Duration::from_millis(5);
    until_listeners(
        port,
        Instant::now(),
        within,
        poll,
        not_ip,
        "the owner never let go",
    )
    .await;
}

/// Wait (sampling every 10 ms) until nobody listens on `port`, which must
/// happen less than `within` after `since` (etcd was lost then).
pub async fn until_nobody_listens(port: u16, since: Instant, within: Duration) {
    let nobody = |l: &[String]| l.is_empty();
    let poll = Duration::from_millis(10);
    until_listeners(
        port,
        since,
        within,
        poll,
        nobody,
        "still serving without etcd",
    )
    .await;
}

/// Wait `quiet`, then nobody listens on `port` still.
pub async fn still_nobody_listens_after(port: u16, quiet: Duration, why: &str) {
    tokio::time::sleep(quiet).await;
    assert!(listening(port).is_empty(), "{why}");
}

/// Every console, as ListConsoles on `c` has them.
pub async fn list(c: &mut Client) -> Vec<pb::Console> {
    c.list_consoles(pb::ListConsolesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .consoles
}

/// Wait until a replica other than `not` serves the console; returns it.
pub async fn served_elsewhere(c: &mut Client, not: &str, within: Duration) -> pb::Console {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(con) = get(c, NODE).await {
            let up = con.state == pb::ConsoleState::Running as i32 && con.owner != not;
            if up && accepts(&con).await {
                return con;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no survivor served within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn accepts(con: &pb::Console) -> bool {
    TcpStream::connect((con.host.as_str(), con.port as u16))
        .await
        .is_ok()
}

/// The node side of the rig BMC's serial line, and a viewer on `con`'s
/// port, connected in that order.
pub async fn connect_node_and_viewer(rig: &Rig, con: &pb::Console) -> (TcpStream, TcpStream) {
    let hc = &rig.bmc(0)["host_console"];
    let node_addr = format!(
        "{}:{}",
        hc["host"].as_str().unwrap(),
        hc["port"].as_u64().unwrap()
    );
    let node = TcpStream::connect(node_addr).await.expect("host console");
    let viewer = TcpStream::connect((con.host.as_str(), con.port as u16))
        .await
        .expect("console port");
    (node, viewer)
}

/// Type through the console and read it on the node side.
pub async fn typing_reaches_the_node(rig: &Rig, con: &pb::Console) {
    let (mut node, mut viewer) = connect_node_and_viewer(rig, con).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        viewer.write_all(b"\rha-typed\r").await.unwrap();
        let mut buf = [0u8; 4096];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(500), node.read(&mut buf)).await
        {
            seen.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&seen).contains("ha-typed") {
                return;
            }
        }
    }
    panic!(
        "typing never reached the node: {:?}",
        String::from_utf8_lossy(&seen)
    );
}
