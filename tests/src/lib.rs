//! Test harness: real peers from `../shared/rig`, console-svc processes,
//! clients.
//!
//! - [`rig`]: `rig.json` from `PORTHOLE_RIG_JSON`; tests return early with a
//!   notice when it is unset (scripts/test.sh always sets it).
//! - [`pki`]: CA, server and client certificates for TLS tests (rcgen).
//! - [`pool`]: exclusive BMC leases across threads and processes (`flock`),
//!   since each BMC allows one SOL session.
//! - [`ports`]: a gRPC port and console port range per console-svc.
//! - [`svc`]: [`ConsoleSvc`], a `console-svc serve` child stopped by pid.
//! - [`wire`]: viewers and the node side of a serial line, bounded reads.
//! - [`session`]: enable/wait helpers and [`session::establish`].
//! - [`procs`]: processes by pid and start time from `/proc`.
//! - [`metrics`]: `/metrics` scraped and read by Prometheus' own parser.
//! - [`peers`]: sushy-tools and Swift started by a test (deploy, porthole-bmc).
//! - [`k8s`]: the rendered Kubernetes manifests run process by process.
//!
//! A test is an `async fn(Backend) -> anyhow::Result<()>`;
//! [`both_backends!`] runs it once per serial backend.

pub mod k8s;
pub mod metrics;
pub mod peers;
pub mod pki;
pub mod pool;
pub mod ports;
pub mod procs;
pub mod rig;
pub mod session;
pub mod svc;
pub mod wire;

pub use rig::{Bmc, Rig};
pub use svc::{Backend, ConsoleSvc, SvcOptions};
pub use wire::{node_side, viewer, Wire};

/// Run a test body and turn its error, with the whole cause chain, into a
/// panic.
pub async fn run<F: std::future::Future<Output = anyhow::Result<()>>>(body: F) {
    if let Err(e) = body.await {
        panic!("{e:#}");
    }
}

/// `both_backends!(name)` makes `name::native`, `name::socat` and `name::rmcp` tests that
/// call `async fn name(Backend) -> anyhow::Result<()>`; `one_backend!(name,
/// Native)` makes just one.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn native() {
                $crate::run(super::$name($crate::Backend::Native)).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn socat() {
                $crate::run(super::$name($crate::Backend::Socat)).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn rmcp() {
                $crate::run(super::$name($crate::Backend::Rmcp)).await
            }
        }
    )+};
}

/// Load the rig or return `Ok(())` from the test (with a notice) when
/// `PORTHOLE_RIG_JSON` is unset.
#[macro_export]
macro_rules! rig_or_skip {
    () => {
        match $crate::Rig::from_env()? {
            Some(rig) => rig,
            None => return Ok(()),
        }
    };
}
