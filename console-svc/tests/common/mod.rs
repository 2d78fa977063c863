//! Shared by console-svc's integration tests: `rig.json` (with the skip /
//! PORTHOLE_REQUIRE_PEERS rule), BMC leases shared with the tests crate's
//! pool, and for the VNC tests the rig's VNC server, a VNC console started
//! directly on the backend, and a small RFB client that reads a whole
//! framebuffer in Raw encoding.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use console_svc::backend::{ConsoleBackend, ConsoleContext, Health, RunningConsole};
use console_svc::coordinator::local::LocalCoordinator;
use console_svc::coordinator::{Coordinator, Fence};
use console_svc::process::ProcessTable;
use console_svc::secret::Secret;
use console_svc::spec::{NodeId, Target, VncTarget};
use console_svc::vnc::accept::{Scheme, ViewerSettings};
use console_svc::vnc::upstream::{Method, UpstreamSettings};
use console_svc::vnc::{VncBackend, VncSettings};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The rig's Xtigervnc.
pub struct RigVnc {
    pub host: String,
    pub port: u16,
    pub password: String,
    pub tls_cert: PathBuf,
}

/// The rig's `rig.json` from `PORTHOLE_RIG_JSON`. Unset: a notice and
/// `None` (the test passes without peers), unless `PORTHOLE_REQUIRE_PEERS`
/// is set (CI), where a missing rig fails the test.
pub fn rig_json(test: &str) -> Option<serde_json::Value> {
    let Some(path) = std::env::var_os("PORTHOLE_RIG_JSON") else {
        eprintln!("{test}: PORTHOLE_RIG_JSON is not set; skipping this real-peer test");
        assert!(
            std::env::var_os("PORTHOLE_REQUIRE_PEERS").is_none(),
            "a test peer is missing and PORTHOLE_REQUIRE_PEERS is set (CI): see the notice above"
        );
        return None;
    };
    let text = std::fs::read_to_string(path).expect("rig.json readable");
    Some(serde_json::from_str(&text).expect("rig.json is JSON"))
}

/// The rig's first etcd client URL.
pub fn rig_etcd_endpoint(test: &str) -> Option<String> {
    let rig = rig_json(test)?;
    let ep = rig["etcd"]["endpoints"][0].as_str().expect("etcd endpoint");
    Some(ep.to_owned())
}

/// An exclusive `flock` on a BMC's lock file (the tests crate's pool uses
/// the same files: a BMC allows one SOL session), held until dropped.
pub async fn lease_lock(path: &std::path::Path) -> nix::fcntl::Flock<std::fs::File> {
    use nix::fcntl::{Flock, FlockArg};
    std::fs::create_dir_all(path.parent().expect("lock dir")).expect("lock dir");
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    loop {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .expect("lock file");
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return lock,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err((_, e)) => panic!("cannot lease {}: {e}", path.display()),
        }
    }
}

pub fn rig_vnc(test: &str) -> Option<RigVnc> {
    let rig = rig_json(test)?;
    let vnc = &rig["vnc"];
    Some(RigVnc {
        host: vnc["host"].as_str().expect("vnc.host").to_owned(),
        port: vnc["port"].as_u64().expect("vnc.port") as u16,
        password: vnc["password"].as_str().expect("vnc.password").to_owned(),
        tls_cert: vnc["tls_cert"].as_str().expect("vnc.tls_cert").into(),
    })
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
}

pub fn settings(prefer: Vec<Method>, upstream_ca: Option<&std::path::Path>) -> VncSettings {
    VncSettings {
        viewer: ViewerSettings {
            schemes: vec![Scheme::None],
            tls: None,
            handshake_timeout: Duration::from_secs(60),
            max_handshake_bytes: 64 * 1024,
        },
        upstream: UpstreamSettings {
            prefer,
            tls: upstream_ca.map(|ca| console_svc::vnc::tls::client_config(ca).expect("CA")),
            timeout: Duration::from_secs(10),
        },
        exclusive: false,
        retry_max_backoff: Duration::from_secs(30),
    }
}

pub fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A VNC console served by the backend on a free 127.0.0.1 port.
pub struct Console {
    pub running: Box<dyn RunningConsole>,
    pub addr: SocketAddr,
    pub health: watch::Receiver<Health>,
    /// The process table's dir, removed on drop.
    _pids: tempfile::TempDir,
}

pub async fn start(settings: VncSettings, host: &str, port: u16, password: &str) -> Console {
    init_tracing();
    let pids = tempfile::Builder::new()
        .prefix("porthole-vnc-it-")
        .tempdir()
        .unwrap();
    let processes = Arc::new(ProcessTable::open(pids.path(), Duration::from_secs(1)).unwrap());
    let node = NodeId::parse("vnc-node").unwrap();
    let coordinator = Arc::new(LocalCoordinator::new("vnc-test"));
    let fence = Fence::new(
        coordinator.clone(),
        coordinator.acquire(&node).await.unwrap(),
    );
    let (health_tx, health) = watch::channel(Health::Ok);
    let addr = free_port();
    let target = VncTarget {
        host: host.into(),
        port,
        password: (!password.is_empty()).then(|| Secret::new(password)),
    };
    let ctx = ConsoleContext {
        node,
        target: Target::Vnc(target),
        listen: addr,
        health: health_tx,
        cancel: CancellationToken::new(),
        fence,
        processes,
    };
    let backend = VncBackend::with_settings(settings);
    let running = backend.start(ctx).await.expect("console starts");
    Console {
        running,
        addr,
        health,
        _pids: pids,
    }
}

/// The viewer's half of RFB 3.8 with security None; returns the
/// SecurityResult and, when it failed, the reason.
pub async fn none_handshake<S: AsyncRead + AsyncWrite + Unpin>(io: &mut S) -> Result<(), String> {
    let mut version = [0u8; 12];
    io.read_exact(&mut version)
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(&version, b"RFB 003.008\n");
    io.write_all(&version).await.unwrap();
    let n = io.read_u8().await.unwrap() as usize;
    let mut types = vec![0u8; n];
    io.read_exact(&mut types).await.unwrap();
    assert!(types.contains(&1), "None is offered: {types:?}");
    io.write_all(&[1]).await.unwrap();
    match io.read_u32().await.unwrap() {
        0 => Ok(()),
        _ => {
            let len = io.read_u32().await.unwrap() as usize;
            let mut reason = vec![0u8; len];
            io.read_exact(&mut reason).await.unwrap();
            Err(String::from_utf8_lossy(&reason).into_owned())
        }
    }
}

/// A whole framebuffer, Raw-encoded in the server's pixel format.
pub struct Frame {
    pub width: u16,
    pub height: u16,
    pub bytes_per_pixel: usize,
    pub pixels: Vec<u8>,
    pub name: String,
}

impl Frame {
    pub fn distinct_pixels(&self) -> usize {
        let mut seen = std::collections::HashSet::new();
        for px in self.pixels.chunks(self.bytes_per_pixel) {
            seen.insert(px.to_vec());
        }
        seen.len()
    }
}

/// ClientInit (shared), ServerInit, then one full non-incremental update.
pub async fn read_frame<S: AsyncRead + AsyncWrite + Unpin>(io: &mut S) -> Frame {
    io.write_all(&[1]).await.unwrap();
    let width = io.read_u16().await.unwrap();
    let height = io.read_u16().await.unwrap();
    let mut format = [0u8; 16];
    io.read_exact(&mut format).await.unwrap();
    let bytes_per_pixel = usize::from(format[0] / 8);
    let len = io.read_u32().await.unwrap() as usize;
    let mut name = vec![0u8; len];
    io.read_exact(&mut name).await.unwrap();
    // SetEncodings [Raw], FramebufferUpdateRequest for everything.
    let mut req = vec![2, 0, 0, 1, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0];
    req.extend_from_slice(&width.to_be_bytes());
    req.extend_from_slice(&height.to_be_bytes());
    io.write_all(&req).await.unwrap();
    let mut frame = Frame {
        width,
        height,
        bytes_per_pixel,
        pixels: vec![0; usize::from(width) * usize::from(height) * bytes_per_pixel],
        name: String::from_utf8_lossy(&name).into_owned(),
    };
    let mut covered = 0usize;
    while covered < usize::from(width) * usize::from(height) {
        covered += read_message(io, &mut frame).await;
    }
    frame
}

/// One server message; returns the pixels it covered.
async fn read_message<S: AsyncRead + Unpin>(io: &mut S, frame: &mut Frame) -> usize {
    match io.read_u8().await.unwrap() {
        0 => {
            let _pad = io.read_u8().await.unwrap();
            let rects = io.read_u16().await.unwrap();
            let mut covered = 0;
            for _ in 0..rects {
                covered += read_rect(io, frame).await;
            }
            covered
        }
        2 => 0, // Bell
        3 => {
            let mut pad = [0u8; 3];
            io.read_exact(&mut pad).await.unwrap();
            let len = io.read_u32().await.unwrap() as usize;
            let mut text = vec![0u8; len];
            io.read_exact(&mut text).await.unwrap();
            0
        }
        other => panic!("unexpected server message type {other}"),
    }
}

async fn read_rect<S: AsyncRead + Unpin>(io: &mut S, frame: &mut Frame) -> usize {
    let x = usize::from(io.read_u16().await.unwrap());
    let y = usize::from(io.read_u16().await.unwrap());
    let w = usize::from(io.read_u16().await.unwrap());
    let h = usize::from(io.read_u16().await.unwrap());
    let encoding = io.read_i32().await.unwrap();
    assert_eq!(encoding, 0, "only Raw was asked for");
    let bpp = frame.bytes_per_pixel;
    let mut row = vec![0u8; w * bpp];
    for r in 0..h {
        io.read_exact(&mut row).await.unwrap();
        let start = ((y + r) * usize::from(frame.width) + x) * bpp;
        frame.pixels[start..start + row.len()].copy_from_slice(&row);
    }
    w * h
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as
/// PEM files `ca.pem`, `server.pem`, `server-key.pem`, `client.pem`,
/// `client-key.pem` in a fresh directory.
pub fn make_certs(tag: &str) -> PathBuf {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let dir = std::env::temp_dir().join(format!("porthole-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, format!("porthole test CA {tag}"));
    let ca = ca.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    for name in ["server", "client"] {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("porthole test {name}"));
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}-key.pem")), key.serialize_pem()).unwrap();
    }
    dir
}
