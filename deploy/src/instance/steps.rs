//! ContinueDeploy's request and steps, in order; see [`super`] for the
//! picture. Each step reports a [`DeployProgress`] before it starts.
//!
//! Callers: [`super::Instances::continue_deploy`].

use std::path::Path;
use std::time::Instant;

use porthole_bmc::redfish::Endpoint;
use porthole_bmc::vmedia::Media;
use porthole_bmc::Secret;
use porthole_proto::deploy::v1::{
    ContinueDeployRequest, DeployNode, DeployProgress, DeployResult, InstanceImage,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::bootiso::{object_name, Chosen, Origin};
use super::cache::Cached;
use super::digest::Expected;
use super::partition::{self, Kind, Layout, PartitionError};
use super::qemu::{ImageInfo, Region, Target, WriteLimits};
use super::{gib, phase, unless, InstanceError, Instances, TARGET_QUERY};
use crate::image::iso::{self, BootIso, Isolinux};

/// A checked ContinueDeploy request.
#[derive(Debug)]
pub struct Request {
    pub node: DeployNode,
    pub target: Target,
    pub image: InstanceImage,
    pub expected: Expected,
    /// Partition images: the disk layout; `None`: a whole-disk image.
    pub layout: Option<Layout>,
    pub ramdisk: (String, u16),
    pub skip_boot: bool,
}

impl Request {
    /// Every missing or bad field named at once.
    pub fn parse(r: ContinueDeployRequest, ramdisk_port: u16) -> Result<Request, InstanceError> {
        let node = r.node.unwrap_or_default();
        let t = r.target.unwrap_or_default();
        let image = r.image.unwrap_or_default();
        let mut missing = Vec::new();
        for (name, empty) in [
            ("node.uuid", node.uuid.is_empty()),
            ("target.address", t.address.is_empty()),
            ("target.iqn", t.iqn.is_empty()),
            ("image.image_source", image.image_source.is_empty()),
        ] {
            if empty {
                missing.push(format!("{name} is required"));
            }
        }
        if t.port > u32::from(u16::MAX) || r.ramdisk_port > u32::from(u16::MAX) {
            missing.push("ports must be below 65536".into());
        }
        if t.chap_username.is_empty() != t.chap_password.is_empty() {
            missing.push("target.chap_username and chap_password go together".into());
        }
        let expected = Expected::from_fields(
            &image.image_checksum,
            &image.image_os_hash_algo,
            &image.image_os_hash_value,
        )
        .map_err(|e| missing.push(e.to_string()))
        .unwrap_or_default();
        let layout = layout(&image)
            .map_err(|e| missing.push(e))
            .unwrap_or_default();
        if !missing.is_empty() {
            return Err(InstanceError::Invalid(format!(
                "ContinueDeploy: {}",
                missing.join("; ")
            )));
        }
        let chap = (!t.chap_username.is_empty()).then(|| {
            (
                t.chap_username.clone(),
                Secret::new(t.chap_password.clone()),
            )
        });
        let ramdisk_host = if r.ramdisk_address.is_empty() {
            t.address.clone()
        } else {
            r.ramdisk_address
        };
        let port = |p: u32, d: u16| if p == 0 { d } else { p as u16 };
        Ok(Request {
            target: Target {
                address: t.address,
                port: port(t.port, 3260),
                iqn: t.iqn,
                lun: if t.lun == 0 { 1 } else { t.lun },
                chap,
            },
            ramdisk: (ramdisk_host, port(r.ramdisk_port, ramdisk_port)),
            skip_boot: r.skip_boot,
            node,
            image,
            expected,
            layout,
        })
    }

    /// Where the image goes: the root partition, or the whole disk.
    pub fn root_region(&self, virtual_size: u64) -> Option<Region> {
        let (_, root) = self.layout.as_ref()?.get(Kind::Root)?;
        Some(Region {
            offset: root.start,
            size: virtual_size.min(root.size),
        })
    }
}

/// The partition layout of a partition image, checked.
fn layout(image: &InstanceImage) -> Result<Option<Layout>, String> {
    match image.image_type.as_str() {
        "" | "whole-disk" => Ok(None),
        "partition" => {
            let format = if image.ephemeral_format.is_empty() {
                "ext4"
            } else {
                &image.ephemeral_format
            };
            if image.ephemeral_gb > 0 && !partition::known_format(format) {
                return Err(PartitionError::Format(format.to_owned()).to_string());
            }
            Layout::new(image.root_gb, image.swap_mb, image.ephemeral_gb)
                .map(Some)
                .map_err(|e| e.to_string())
        }
        other => Err(format!(
            "image.image_type {other:?} is neither whole-disk nor partition"
        )),
    }
}

fn result(chosen: Option<Chosen>, info: ImageInfo, written: f64, verified: bool) -> DeployResult {
    let (boot_iso, origin, usage_count) = match chosen {
        Some(c) => (c.boot_iso, c.origin.as_str(), c.usage_count),
        None => (String::new(), "", 0),
    };
    DeployResult {
        boot_iso,
        boot_iso_origin: origin.into(),
        usage_count,
        virtual_size: info.virtual_size,
        image_format: info.format,
        write_seconds: written,
        verified,
        root_partition: 0,
    }
}

/// How the instance will boot, decided before anything is written.
enum Plan {
    /// boot_option local: from its disk.
    Local,
    /// The user's or the image's ISO.
    Given(String),
    /// The shared ISO built from the kernel and ramdisk.
    Shared { name: String },
}

impl Instances {
    pub(super) async fn steps(
        &self,
        req: &Request,
        progress: &mpsc::Sender<DeployProgress>,
        cancel: &CancellationToken,
    ) -> Result<DeployResult, InstanceError> {
        let m = crate::metrics::get();
        let plan = self.plan(req)?;
        let say = |p: DeployProgress| {
            let _ = progress.try_send(p);
        };

        say(phase("fetch"));
        let t = Instant::now();
        let image = unless(cancel, self.fetch(req, &plan)).await?;
        m.step("fetch", t.elapsed());

        say(phase("check"));
        let info = unless(cancel, self.check(req, &image.0)).await?;

        let written = unless(cancel, self.write(req, &image.0, &info, progress)).await?;
        let verified = unless(cancel, self.verify(req, &image.0, &info, &say)).await?;

        say(phase("notify"));
        let (host, port) = &req.ramdisk;
        let limit = self.config.instance.notify_timeout;
        unless(cancel, async {
            Ok(super::notify::notify(host, *port, limit).await?)
        })
        .await?;

        say(phase("boot_iso"));
        let chosen = self.boot_iso(req, &plan, image.1.as_ref()).await?;
        if !req.skip_boot {
            say(phase("boot"));
            if let Err(e) = self.boot(req, chosen.as_ref()).await {
                if let Some(c) = chosen.as_ref().filter(|c| c.origin != Origin::Given) {
                    if let Err(r) = self.isos.release(&c.boot_iso).await {
                        tracing::warn!(error = %r, "releasing the boot ISO after a failed boot failed too");
                    }
                }
                return Err(e);
            }
        }
        tracing::info!(node = %req.node.uuid, target = %req.target.url(), bytes = info.virtual_size, seconds = written, "instance image written");
        let mut result = result(chosen, info, written, verified);
        result.root_partition = req
            .layout
            .as_ref()
            .and_then(|l| l.get(Kind::Root))
            .map_or(0, |r| r.0 as u32);
        say(DeployProgress {
            phase: "done".into(),
            bytes_written: result.virtual_size,
            bytes_total: result.virtual_size,
            percent: 100.0,
            result: Some(result.clone()),
        });
        Ok(result)
    }

    fn plan(&self, req: &Request) -> Result<Plan, InstanceError> {
        let img = &req.image;
        if req.node.boot_option == "local" {
            return Ok(Plan::Local);
        }
        if !img.boot_iso.is_empty() {
            return Ok(Plan::Given(img.boot_iso.clone()));
        }
        if img.kernel.is_empty() || img.ramdisk.is_empty() {
            return Err(InstanceError::Invalid(
                "ContinueDeploy: a netboot instance needs image.boot_iso, or image.kernel and image.ramdisk to build one from".into(),
            ));
        }
        if req.node.boot_mode == "uefi" {
            return Err(InstanceError::Invalid(
                "ContinueDeploy: boot ISOs built here boot BIOS only; a uefi node needs image.boot_iso".into(),
            ));
        }
        Ok(Plan::Shared {
            name: object_name(&img.image_source, &img.kernel, &img.ramdisk),
        })
    }

    /// The image, and for a shared ISO the kernel and ramdisk: all fetched
    /// before the write, so an unreachable one is refused early.
    async fn fetch(
        &self,
        req: &Request,
        plan: &Plan,
    ) -> Result<(Cached, Option<(Cached, Cached)>), InstanceError> {
        let img = &req.image;
        let image = self
            .cache
            .get(&self.sources, &img.image_source, &req.expected)
            .await?;
        let parts = match plan {
            Plan::Shared { .. } => {
                let none = Expected::default();
                let k = self.cache.get(&self.sources, &img.kernel, &none).await?;
                let r = self.cache.get(&self.sources, &img.ramdisk, &none).await?;
                Some((k, r))
            }
            _ => None,
        };
        Ok((image, parts))
    }

    async fn check(&self, req: &Request, image: &Cached) -> Result<ImageInfo, InstanceError> {
        let info = self.qemu.image_info(&image.path).await?;
        let root_gb = req.image.root_gb;
        if root_gb > 0 && info.virtual_size > gib(root_gb) {
            return Err(InstanceError::TooLarge {
                image: req.image.image_source.clone(),
                virtual_size: info.virtual_size,
                root_gb,
                root_bytes: gib(root_gb),
            });
        }
        let target_size = self.qemu.target_size(&req.target, TARGET_QUERY).await?;
        let needed = req.layout.as_ref().map_or(info.virtual_size, Layout::end);
        if needed > target_size {
            return Err(InstanceError::TargetTooSmall {
                image: req.image.image_source.clone(),
                virtual_size: needed,
                target: req.target.url(),
                target_size,
            });
        }
        Ok(info)
    }

    /// The write; seconds it took.
    async fn write(
        &self,
        req: &Request,
        image: &Cached,
        info: &ImageInfo,
        progress: &mpsc::Sender<DeployProgress>,
    ) -> Result<f64, InstanceError> {
        let m = crate::metrics::get();
        let total = info.virtual_size;
        let at = |percent: f64| DeployProgress {
            phase: "write".into(),
            bytes_written: (total as f64 * percent / 100.0) as u64,
            bytes_total: total,
            percent,
            result: None,
        };
        let t = Instant::now();
        let i = &self.config.instance;
        let limit = WriteLimits {
            total: i.write_timeout,
            stall: i.write_stall_timeout,
        };
        if let Some(layout) = &req.layout {
            self.write_layout(req, layout, limit).await?;
        }
        let _ = progress.try_send(at(0.0));
        let region = req.root_region(total);
        let mut last = 0.0;
        let res = self
            .qemu
            .write(&image.path, &info.format, &req.target, region, limit, |p| {
                // One message per whole percent at most.
                if p >= last + 1.0 || p >= 100.0 {
                    last = p;
                    let _ = progress.try_send(at(p));
                }
            })
            .await;
        m.step("write", t.elapsed());
        m.write_result(if res.is_ok() { "success" } else { "failure" });
        res?;
        m.written(total);
        Ok(t.elapsed().as_secs_f64())
    }

    async fn verify(
        &self,
        req: &Request,
        image: &Cached,
        info: &ImageInfo,
        say: &impl Fn(DeployProgress),
    ) -> Result<bool, InstanceError> {
        if !self.config.instance.verify {
            return Ok(false);
        }
        say(DeployProgress {
            phase: "verify".into(),
            bytes_written: info.virtual_size,
            bytes_total: info.virtual_size,
            percent: 100.0,
            result: None,
        });
        let t = Instant::now();
        let limit = self.config.instance.write_timeout;
        self.qemu
            .compare(
                &image.path,
                &info.format,
                &req.target,
                req.root_region(info.virtual_size),
                limit,
            )
            .await?;
        crate::metrics::get().step("verify", t.elapsed());
        Ok(true)
    }

    async fn boot_iso(
        &self,
        req: &Request,
        plan: &Plan,
        parts: Option<&(Cached, Cached)>,
    ) -> Result<Option<Chosen>, InstanceError> {
        match (plan, parts) {
            (Plan::Local, _) => Ok(None),
            (Plan::Given(iso), _) => Ok(Some(Chosen {
                boot_iso: iso.clone(),
                origin: Origin::Given,
                usage_count: 0,
            })),
            (Plan::Shared { name }, Some((k, r))) => {
                let root = match (&req.image.root_device, &req.layout) {
                    (d, _) if !d.is_empty() => d.clone(),
                    (_, Some(l)) => format!("/dev/sda{}", l.get(Kind::Root).map_or(1, |r| r.0)),
                    _ => "/dev/sda".to_owned(),
                };
                let params = format!("root={root} {}", self.config.instance.kernel_params);
                let build = || self.build_iso(&k.path, &r.path, params.trim().to_owned());
                Ok(Some(self.isos.acquire(name, build).await?))
            }
            (Plan::Shared { .. }, None) => unreachable!("fetch() fetched the kernel and ramdisk"),
        }
    }

    async fn build_iso(
        &self,
        kernel: &Path,
        ramdisk: &Path,
        params: String,
    ) -> Result<Vec<u8>, InstanceError> {
        let t = Instant::now();
        let i = &self.config.instance;
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| InstanceError::Loader(format!("{}: {e}", p.display())))
        };
        let (kernel, ramdisk) = (read(kernel)?, read(ramdisk)?);
        let loader = read(&i.isolinux_bin)?;
        let ldlinux = i.ldlinux_c32.as_deref().map(read).transpose()?;
        let bytes = tokio::task::spawn_blocking(move || {
            iso::build(&BootIso {
                kernel: &kernel,
                ramdisk: &ramdisk,
                kernel_params: &params,
                bios: Some(Isolinux {
                    loader: &loader,
                    ldlinux: ldlinux.as_deref(),
                }),
                uefi_loader: None,
                volume: "BOOT",
            })
        })
        .await
        .map_err(|e| InstanceError::Loader(e.to_string()))??;
        crate::metrics::get().step("boot_iso_build", t.elapsed());
        Ok(bytes)
    }

    /// Eject the deploy media, insert the boot ISO (none: local boot),
    /// boot once from it and reboot.
    async fn boot(&self, req: &Request, chosen: Option<&Chosen>) -> Result<(), InstanceError> {
        let ep: Endpoint = crate::deploy::endpoint(&req.node);
        self.redfish.eject_media(&ep, Media::Floppy).await?;
        let how = Boot {
            persistent: false,
            reset: true,
        };
        let iso = chosen.map(|c| c.boot_iso.as_str());
        self.boot_node(&req.node, iso, how).await.map(drop)
    }

    /// Eject the CD, insert `boot_iso` (a store object by a fresh temp
    /// URL; `None`: boot from the disk), set the boot override and, with
    /// `how.reset`, reboot; the reset used.
    pub(super) async fn boot_node(
        &self,
        node: &DeployNode,
        boot_iso: Option<&str>,
        how: Boot,
    ) -> Result<&'static str, InstanceError> {
        let ep: Endpoint = crate::deploy::endpoint(node);
        self.redfish.eject_media(&ep, Media::Cd).await?;
        let target = match boot_iso {
            Some(iso) => {
                let url = match self.isos.object_of(iso) {
                    Some(object) => self.store.temp_url(object, self.config.store.ttl).await?,
                    None => iso.to_owned(),
                };
                self.redfish.insert_media(&ep, Media::Cd, &url).await?;
                "Cd"
            }
            None => "Hdd",
        };
        if how.persistent {
            let path = self.redfish.system_path(&ep).await?;
            let body = serde_json::json!({"Boot": {
                "BootSourceOverrideTarget": target,
                "BootSourceOverrideEnabled": "Continuous"
            }});
            let what = format!("set boot continuously to {target}");
            self.redfish.patch(&ep, &path, &body, &what).await?;
        } else {
            self.redfish.boot_once(&ep, target).await?;
        }
        if !how.reset {
            return Ok("");
        }
        let (_, system) = self.redfish.system(&ep).await?;
        let reset = match system["PowerState"].as_str() {
            Some("On") => "ForceRestart",
            _ => "On",
        };
        self.redfish.reset(&ep, reset).await?;
        tracing::info!(node = %node.uuid, boot = target, reset, persistent = how.persistent, "instance booting");
        Ok(reset)
    }
}

/// How [`Instances::boot_node`] boots.
#[derive(Clone, Copy, Debug)]
pub struct Boot {
    /// Continuous instead of Once.
    pub persistent: bool,
    /// Reboot (or power on) after.
    pub reset: bool,
}
