//! ContinueDeploy and ReleaseBootIso (issue 14): after the ramdisk's
//! pass_deploy_info, fetch the user's image (through the cache, checksums
//! checked), check it fits `root_gb` and the target, write it over iSCSI
//! with `qemu-img` (no kernel initiator, no root), read it back, tell the
//! ramdisk `done`, choose or build the boot ISO and boot the node from it.
//!
//! ```text
//!  fetch (cache) ─▶ check (qemu-img info: format, virtual size ≤ root_gb, ≤ LUN)
//!    ─▶ write (qemu-img convert -n -O raw, progress) ─▶ verify (qemu-img compare)
//!    ─▶ notify (`done` to the ramdisk) ─▶ boot_iso (given | shared | built)
//!    ─▶ boot (eject, insert the ISO, boot once from CD, reboot) ─▶ done
//! ```
//!
//! Every refusal (missing fields, checksum, size, unreachable URL, no way
//! to a boot ISO) comes before the first byte is written. A failure after
//! the boot ISO was counted releases the count again.
//!
//! Callers: [`crate::grpc`] (`InstanceDeployService`), [`crate::run`].

pub mod bootiso;
pub mod cache;
pub mod config;
pub mod digest;
pub mod notify;
pub mod partition;
mod partitioned;
pub mod qemu;
pub mod source;
mod steps;

use std::sync::Arc;
use std::time::Duration;

use porthole_bmc::redfish::{Client, RedfishError};
use porthole_proto::deploy::v1::{DeployProgress, DeployResult};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::image::iso::IsoError;
use crate::store::Store;
use bootiso::{BootIsoError, BootIsos};
use cache::{CacheError, ImageCache};
use qemu::{QemuError, QemuImg};
use source::{HttpSource, Sources, StoreSource};

pub use steps::{Boot, Request};

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// The request lacks what the deploy needs (INVALID_ARGUMENT).
    #[error("{0}")]
    Invalid(String),
    #[error("deploy failed: {0}")]
    Image(#[from] CacheError),
    #[error("deploy failed: image {image} is too large for the node's root_gb: its virtual size is {virtual_size} bytes, root_gb {root_gb} is {root_bytes} bytes")]
    TooLarge {
        image: String,
        virtual_size: u64,
        root_gb: u64,
        root_bytes: u64,
    },
    #[error("deploy failed: image {image} ({virtual_size} bytes) does not fit the target {target} ({target_size} bytes)")]
    TargetTooSmall {
        image: String,
        virtual_size: u64,
        target: String,
        target_size: u64,
    },
    #[error("deploy failed: {0}")]
    Qemu(#[from] QemuError),
    #[error("deploy failed: {0}")]
    Notify(#[from] notify::NotifyError),
    #[error("deploy failed: {0}")]
    BootIso(#[from] BootIsoError),
    #[error("deploy failed: building the boot ISO: {0}")]
    Iso(#[from] IsoError),
    #[error("deploy failed: {0}")]
    Loader(String),
    #[error("deploy failed: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("deploy failed: {0}")]
    Bmc(#[from] RedfishError),
    #[error("deploy failed: {0}")]
    Partition(#[from] partition::PartitionError),
    #[error("deploy failed: cancelled")]
    Cancelled,
}

/// ContinueDeploy's shared parts.
pub struct Instances {
    config: Arc<Config>,
    /// The image cache's directory (also the scratch and secret files').
    cache_dir: std::path::PathBuf,
    store: Arc<dyn Store>,
    redfish: Client,
    cache: ImageCache,
    sources: Sources,
    qemu: QemuImg,
    isos: BootIsos,
}

impl Instances {
    /// Opens (and empties) the image cache.
    pub fn new(
        config: Arc<Config>,
        store: Arc<dyn Store>,
        redfish: Client,
    ) -> Result<Instances, CacheError> {
        let i = &config.instance;
        let cache_dir = i.cache_dir(&config.store.http_dir);
        let cache = ImageCache::open(&cache_dir, i.cache_size_mib.saturating_mul(1 << 20))?;
        let sources = Sources(vec![
            Box::new(HttpSource::new(i.fetch_timeout)),
            Box::new(StoreSource::new(store.clone(), i.fetch_timeout)),
        ]);
        let qemu = QemuImg {
            tool: i.qemu_img.clone(),
            secret_dir: cache_dir.clone(),
        };
        let isos = BootIsos::new(store.clone(), i.lock_ttl);
        Ok(Instances {
            cache_dir,
            config,
            store,
            redfish,
            cache,
            sources,
            qemu,
            isos,
        })
    }

    pub fn cache(&self) -> &ImageCache {
        &self.cache
    }

    /// The deploy, reporting each step on `progress` (a closed receiver is
    /// not an error). `cancel` stops it until the boot ISO step (the write
    /// included); from there it runs to its end.
    pub async fn continue_deploy(
        &self,
        req: Request,
        progress: mpsc::Sender<DeployProgress>,
        cancel: CancellationToken,
    ) -> Result<DeployResult, InstanceError> {
        let m = crate::metrics::get();
        let result = self.steps(&req, &progress, &cancel).await;
        match &result {
            Ok(_) => m.continued("success"),
            Err(InstanceError::Invalid(_)) => m.continued("invalid"),
            Err(e) => {
                m.continued("failure");
                tracing::warn!(node = %req.node.uuid, error = %e, "ContinueDeploy failed");
            }
        }
        result
    }

    /// BootInstance: the boot ISO (or the disk) inserted again and booted;
    /// the reset used.
    pub async fn boot_instance(
        &self,
        node: &porthole_proto::deploy::v1::DeployNode,
        boot_iso: &str,
        how: Boot,
    ) -> Result<&'static str, InstanceError> {
        if node.bmc.as_ref().is_none_or(|b| b.address.is_empty()) {
            return Err(InstanceError::Invalid(
                "BootInstance: node.bmc.address is required".into(),
            ));
        }
        let iso = Some(boot_iso).filter(|s| !s.is_empty());
        self.boot_node(node, iso, how).await
    }

    /// ReleaseBootIso: `(usage_count left, deleted)`.
    pub async fn release_boot_iso(&self, boot_iso: &str) -> Result<(u64, bool), InstanceError> {
        Ok(self.isos.release(boot_iso).await?)
    }
}

/// `phase` with no byte counts.
fn phase(p: &str) -> DeployProgress {
    DeployProgress {
        phase: p.to_owned(),
        ..Default::default()
    }
}

/// `f` unless `cancel` comes first.
async fn unless<T>(
    cancel: &CancellationToken,
    f: impl std::future::Future<Output = Result<T, InstanceError>>,
) -> Result<T, InstanceError> {
    tokio::select! {
        r = f => r,
        () = cancel.cancelled() => Err(InstanceError::Cancelled),
    }
}

/// Bytes in `gb` GiB.
fn gib(gb: u64) -> u64 {
    gb.saturating_mul(1 << 30)
}

/// Bound on the target's size query and comparison setup.
const TARGET_QUERY: Duration = Duration::from_secs(60);
