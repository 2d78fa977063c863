//! `[instance]`: the settings of ContinueDeploy (image cache, the iSCSI
//! write, the ramdisk's `done` port, the boot ISO's loaders), loaded with
//! the rest of [`crate::config::Config`] (`PORTHOLE_DEPLOY_INSTANCE_<KEY>`).
//!
//! Callers: [`crate::config`], [`super`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use porthole_common::config::ConfigError;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Instance {
    /// The local image cache (Ironic's `InstanceImageCache`); unset:
    /// `images` beside `store.http_dir` (see [`Instance::cache_dir`]).
    pub cache_dir: Option<PathBuf>,
    /// Its size cap; least recently used images not in use go first.
    pub cache_size_mib: u64,
    /// `qemu-img` (with qemu-block-extra's iscsi driver).
    pub qemu_img: PathBuf,
    /// Read the target back and compare it with the image after the write
    /// (costs a read of the whole image).
    pub verify: bool,
    /// The deploy ramdisk's port for `done`.
    pub ramdisk_port: u16,
    /// Bound on the image download, on the write, on the `done` notice.
    #[serde(with = "humantime_serde")]
    pub fetch_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// A write whose progress does not move for this long is ended (a
    /// target that went away: libiscsi reconnects silently for ever).
    #[serde(with = "humantime_serde")]
    pub write_stall_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub notify_timeout: Duration,
    /// syslinux's `isolinux.bin` and `ldlinux.c32` for built boot ISOs.
    pub isolinux_bin: PathBuf,
    pub ldlinux_c32: Option<PathBuf>,
    /// Extra kernel parameters of built boot ISOs (after `root=`).
    pub kernel_params: String,
    /// How long a boot ISO's usage_count lock may be held before another
    /// deploy takes it over (a crashed holder's lock object expires).
    #[serde(with = "humantime_serde")]
    pub lock_ttl: Duration,
}

impl Default for Instance {
    fn default() -> Self {
        Self {
            cache_dir: None,
            cache_size_mib: 20 * 1024,
            qemu_img: PathBuf::from("qemu-img"),
            verify: true,
            ramdisk_port: 10000,
            fetch_timeout: Duration::from_secs(1800),
            write_timeout: Duration::from_secs(3600),
            write_stall_timeout: Duration::from_secs(300),
            notify_timeout: Duration::from_secs(30),
            isolinux_bin: PathBuf::from("/usr/lib/ISOLINUX/isolinux.bin"),
            ldlinux_c32: Some(PathBuf::from("/usr/lib/syslinux/modules/bios/ldlinux.c32")),
            kernel_params: String::new(),
            lock_ttl: Duration::from_secs(60),
        }
    }
}

impl Instance {
    /// The cache directory: `cache_dir`, else `images` beside
    /// `http_dir` (`/var/lib/porthole/deploy/images` by default), so a
    /// configuration that moves the store's files moves the cache too.
    pub fn cache_dir(&self, http_dir: &Path) -> PathBuf {
        self.cache_dir
            .clone()
            .unwrap_or_else(|| http_dir.with_file_name("images"))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.into()));
        if self.cache_size_mib == 0 {
            return bad("instance.cache_size_mib must be at least 1");
        }
        if self.ramdisk_port == 0 {
            return bad("instance.ramdisk_port must not be 0");
        }
        if self.kernel_params.contains(['\n', '\r']) {
            return bad("instance.kernel_params must be one line");
        }
        if self.write_stall_timeout.is_zero() || self.write_timeout.is_zero() {
            return bad("instance.write_timeout and write_stall_timeout must not be 0");
        }
        if self.lock_ttl.as_secs() == 0 {
            return bad("instance.lock_ttl must be at least 1 s");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_sits_beside_the_store_unless_set() {
        let mut i = Instance::default();
        assert_eq!(
            i.cache_dir(Path::new("/var/lib/porthole/deploy/objects")),
            Path::new("/var/lib/porthole/deploy/images")
        );
        assert_eq!(
            i.cache_dir(Path::new("/tmp/t/objects")),
            Path::new("/tmp/t/images")
        );
        i.cache_dir = Some("/srv/cache".into());
        assert_eq!(
            i.cache_dir(Path::new("/tmp/t/objects")),
            Path::new("/srv/cache")
        );
    }
}
