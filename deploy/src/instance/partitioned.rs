//! Writing a partition image's layout before its root partition: the MBR,
//! the swap signature and the ephemeral file system, each made as a small
//! (or sparse) 0600 file in the cache directory, written to its region of
//! the target by `qemu-img`, and removed.
//!
//! Callers: [`super::steps`] (the write step of a partition image).

use std::path::PathBuf;

use ring::rand::SecureRandom;

use super::partition::{self, Kind, Layout};
use super::qemu::{Region, WriteLimits};
use super::steps::Request;
use super::{InstanceError, Instances};

/// A scratch file removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Instances {
    fn scratch(&self, what: &str) -> Scratch {
        let id = crate::secret::DeployKey::generate();
        Scratch(
            self.cache_dir
                .join(format!("{what}-{}", &id.expose()[..16])),
        )
    }

    fn write_private(&self, what: &str, bytes: &[u8]) -> Result<Scratch, InstanceError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let s = self.scratch(what);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&s.0)
            .and_then(|mut f| f.write_all(bytes))
            .map_err(|e| InstanceError::Loader(format!("{}: {e}", s.0.display())))?;
        Ok(s)
    }

    /// The MBR, then swap's signature, then the ephemeral file system.
    pub(super) async fn write_layout(
        &self,
        req: &Request,
        layout: &Layout,
        limits: WriteLimits,
    ) -> Result<(), InstanceError> {
        let rng = ring::rand::SystemRandom::new();
        let mut id = [0u8; 20];
        rng.fill(&mut id)
            .map_err(|_| InstanceError::Loader("the system RNG failed".into()))?;
        let disk_id = u32::from_le_bytes(id[..4].try_into().expect("4 bytes"));
        let mbr = self.write_private("mbr", &layout.mbr(disk_id))?;
        self.put(
            req,
            &mbr,
            Region {
                offset: 0,
                size: 512,
            },
            limits,
        )
        .await?;
        if let Some((_, swap)) = layout.get(Kind::Swap) {
            let uuid: [u8; 16] = id[4..].try_into().expect("16 bytes");
            let header = self.write_private("swap", &partition::swap_header(swap.size, uuid))?;
            let region = Region {
                offset: swap.start,
                size: 4096,
            };
            self.put(req, &header, region, limits).await?;
        }
        if let Some((_, eph)) = layout.get(Kind::Ephemeral) {
            let fs = self.scratch("ephemeral");
            let format = match req.image.ephemeral_format.as_str() {
                "" => "ext4",
                f => f,
            };
            partition::ephemeral_fs(&fs.0, eph.size, format).await?;
            let region = Region {
                offset: eph.start,
                size: eph.size,
            };
            self.put(req, &fs, region, limits).await?;
        }
        tracing::info!(node = %req.node.uuid, partitions = layout.parts.len(), "partition table, swap and ephemeral written");
        Ok(())
    }

    async fn put(
        &self,
        req: &Request,
        file: &Scratch,
        region: Region,
        limits: WriteLimits,
    ) -> Result<(), InstanceError> {
        self.qemu
            .write(&file.0, "raw", &req.target, Some(region), limits, |_| {})
            .await?;
        Ok(())
    }
}
