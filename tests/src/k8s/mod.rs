//! The Kubernetes rehearsal without a cluster: the rendered `deploy-k8s`
//! manifests (`scripts/k8s-check.sh` writes them to
//! `$PORTHOLE_K8S_RENDERED/<overlay>.json`) started process by process as
//! a kubelet, kube-proxy and the cluster's DNS would run them.
//!
//! - [`manifest`], [`container`]: the objects the rehearsal acts on;
//! - [`expand`]: `$(VAR)` expansion, DNS names, mount paths;
//! - [`pod`], [`tracker`], [`probe`]: a pod's process, probes and deletion;
//! - [`proxy`]: Services' cluster IPs;
//! - [`cluster`]: all of it, with evictions against the budgets;
//! - [`secrets`]: the Secrets an operator would create;
//! - [`observe`]: the conductor's API, metrics and listeners, from outside.

pub mod cluster;
pub mod container;
pub mod expand;
pub mod manifest;
pub mod observe;
pub mod pod;
pub mod probe;
pub mod proxy;
pub mod secrets;
pub mod tracker;

use std::path::PathBuf;

/// The directory with the rendered overlays.
pub const RENDERED_ENV: &str = "PORTHOLE_K8S_RENDERED";

/// `$PORTHOLE_K8S_RENDERED/<overlay>.json`, or `None` (with a notice) when
/// the variable is unset: plain `cargo test` skips; scripts/test.sh sets it.
pub fn rendered(overlay: &str) -> Option<PathBuf> {
    let Some(dir) = std::env::var_os(RENDERED_ENV) else {
        eprintln!("notice: {RENDERED_ENV} is not set; skipping this rehearsal (scripts/test.sh sets it after scripts/k8s-check.sh)");
        assert!(
            std::env::var_os("PORTHOLE_REQUIRE_PEERS").is_none(),
            "the rendered manifests are missing and PORTHOLE_REQUIRE_PEERS is set (CI)"
        );
        return None;
    };
    Some(PathBuf::from(dir).join(format!("{overlay}.json")))
}

/// Where the workspace's binaries are: `$PORTHOLE_TEST_BIN_DIR`, else
/// `target/debug` beside this crate.
pub fn bin_dir() -> PathBuf {
    std::env::var_os("PORTHOLE_TEST_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug"))
}
