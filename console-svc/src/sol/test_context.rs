//! The [`ConsoleContext`] the backends' unit tests start a console with
//! (`sol::socat_tests`, `sol::native::backend_tests`): node `node-1` held
//! through a local coordinator, an IPMI target on 127.0.0.1:623, and a
//! process table under `dir`; and [`write_script`], how every unit test
//! here writes a stand-in executable.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::backend::{ConsoleContext, Health};
use crate::coordinator::local::LocalCoordinator;
use crate::coordinator::{Coordinator, Fence};
use crate::process::ProcessTable;
use crate::secret::Secret;
use crate::spec::{IpmiTarget, NodeId, PrivilegeLevel, Target};

/// A context for a console listening on `listen`, and its health.
pub(crate) async fn context(
    dir: &Path,
    listen: SocketAddr,
) -> (ConsoleContext, watch::Receiver<Health>) {
    let node = NodeId::parse("node-1").unwrap();
    let coordinator = Arc::new(LocalCoordinator::new("r1"));
    let fence = Fence::new(
        coordinator.clone(),
        coordinator.acquire(&node).await.unwrap(),
    );
    let (health_tx, health) = watch::channel(Health::Ok);
    let ctx = ConsoleContext {
        node,
        target: Target::Ipmi(IpmiTarget {
            address: "127.0.0.1".into(),
            port: 623,
            username: "admin".into(),
            password: Secret::new("pw-123"),
            cipher_suite: 3,
            privilege: PrivilegeLevel::Administrator,
        }),
        listen,
        health: health_tx,
        cancel: CancellationToken::new(),
        fence,
        processes: Arc::new(ProcessTable::open(dir.join("pids"), Duration::from_secs(1)).unwrap()),
    };
    (ctx, health)
}

/// Write an executable script at `path`, through a child `sh`: a write fd
/// opened in this process could be inherited by a parallel test's fork
/// before its exec, and the script's own exec then fails with ETXTBSY
/// ("Text file busy", seen in CI with porthole-bmc's fake ipmitool).
pub(crate) fn write_script(path: &Path, text: &str) {
    use std::io::Write;
    let mut sh = std::process::Command::new("sh")
        .args(["-c", "cat > \"$0\" && chmod 755 \"$0\""])
        .arg(path)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = sh.stdin.take().unwrap();
    stdin.write_all(text.as_bytes()).unwrap();
    drop(stdin);
    assert!(sh.wait().unwrap().success(), "writing {}", path.display());
}
