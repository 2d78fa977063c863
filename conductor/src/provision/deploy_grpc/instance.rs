//! The `iscsi` deploy interface's second half (issue 14) over
//! `deploy.v1.InstanceDeployService`: the continue step after
//! `pass_deploy_info` (ContinueDeploy with the recorded target and
//! instance_info's image fields, its progress stream written, throttled,
//! into `driver_internal_info.deploy_progress`; on `done` the boot ISO
//! kept in `instance_info.boot_iso`), the boot ISO's release at clean up
//! and tear down (ReleaseBootIso, only for an ISO the service built or
//! shared, never the user's), and the ISO re-inserted before a power on
//! or reboot of the active node (BootInstance with skip_reset; the power
//! service then resets the node itself).
//!
//! Callers: [`GrpcIscsi`]'s [`DeployInterface`](super::DeployInterface)
//! methods in `deploy_grpc.rs`.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use super::{capability, info_str, pb, GrpcIscsi};
use crate::db::DbError;
use crate::model::{Dict, Node};
use crate::provision::interfaces::{DeployCallback, InterfaceError, Outcome, StepResult};

/// driver_internal_info: the continue step's latest progress
/// (`{phase, bytes_written, bytes_total, percent}`).
pub const PROGRESS_KEY: &str = "deploy_progress";
/// instance_info: the ISO the instance boots from (Ironic's and the
/// design's name).
pub const BOOT_ISO_KEY: &str = "boot_iso";
/// driver_internal_info: where `instance_info.boot_iso` came from
/// (`built`, `shared`: the service's, released at tear down; `given`).
pub const BOOT_ISO_ORIGIN_KEY: &str = "boot_iso_origin";
/// Progress of one phase is written at most this often (a phase change
/// is written at once).
pub const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// A non-negative integer field of instance_info (a JSON number or a
/// decimal string, as nova and the CLI set them); absent or empty: 0.
fn number(d: &Dict, key: &str) -> Result<u64, InterfaceError> {
    let bad = |v: &Value| {
        InterfaceError(format!(
            "Invalid instance_info {key} {v}: a non-negative integer is expected."
        ))
    };
    match d.get(key) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(0),
        Some(v @ Value::Number(n)) => n.as_u64().ok_or_else(|| bad(v)),
        Some(v @ Value::String(s)) => s.trim().parse().map_err(|_| bad(v)),
        Some(v) => Err(bad(v)),
    }
}

/// The boot ISO this conductor recorded from the service's result and
/// must release (built or shared), if any.
pub fn owned_boot_iso(node: &Node) -> Option<&str> {
    let origin = node
        .driver_internal_info
        .get(BOOT_ISO_ORIGIN_KEY)
        .and_then(Value::as_str);
    matches!(origin, Some("built" | "shared"))
        .then(|| info_str(&node.instance_info, BOOT_ISO_KEY))
        .flatten()
}

/// instance_info's image fields as ContinueDeploy takes them. A boot_iso
/// the service chose for an earlier deploy (a rebuild) is not the user's.
pub fn instance_image(node: &Node) -> Result<pb::InstanceImage, InterfaceError> {
    let i = &node.instance_info;
    let s = |k: &str| info_str(i, k).unwrap_or_default().to_owned();
    let boot_iso = match owned_boot_iso(node) {
        Some(_) => String::new(),
        None => s(BOOT_ISO_KEY),
    };
    Ok(pb::InstanceImage {
        image_source: s("image_source"),
        image_checksum: s("image_checksum"),
        image_os_hash_algo: s("image_os_hash_algo"),
        image_os_hash_value: s("image_os_hash_value"),
        root_gb: number(i, "root_gb")?,
        kernel: s("kernel"),
        ramdisk: s("ramdisk"),
        boot_iso,
        root_device: String::new(),
        image_type: s("image_type"),
        swap_mb: number(i, "swap_mb")?,
        ephemeral_gb: number(i, "ephemeral_gb")?,
        ephemeral_format: s("ephemeral_format"),
    })
}

/// What one progress message becomes in driver_internal_info.
fn progress_value(p: &pb::DeployProgress) -> Value {
    json!({
        "phase": p.phase,
        "bytes_written": p.bytes_written,
        "bytes_total": p.bytes_total,
        "percent": (p.percent * 10.0).round() / 10.0,
    })
}

/// Which progress messages reach the database: a new phase at once, the
/// same phase at most every [`PROGRESS_EVERY`]; the latest one held back
/// is written by [`Throttle::flush`].
#[derive(Default)]
pub struct Throttle {
    phase: String,
    written_at: Option<Instant>,
    pending: Option<Value>,
}

impl Throttle {
    /// `p` arrived at `now`: the value to write now, if any.
    pub fn offer(&mut self, p: &pb::DeployProgress, now: Instant) -> Option<Value> {
        let v = progress_value(p);
        let due = p.phase != self.phase
            || self
                .written_at
                .is_none_or(|t| now.duration_since(t) >= PROGRESS_EVERY);
        if !due {
            self.pending = Some(v);
            return None;
        }
        self.phase.clone_from(&p.phase);
        self.written_at = Some(now);
        self.pending = None;
        Some(v)
    }

    /// The last message held back, if any.
    pub fn flush(&mut self) -> Option<Value> {
        self.pending.take()
    }
}

impl GrpcIscsi {
    async fn write_progress(&self, uuid: &str, v: Value) {
        let r = self
            .store
            .modify_node(uuid, move |n: &mut Node| {
                n.driver_internal_info.insert(PROGRESS_KEY.into(), v);
                Ok::<_, DbError>(())
            })
            .await;
        if let Err(e) = r {
            tracing::warn!(node = %uuid, error = %e, "cannot record the deploy's progress");
        }
    }

    /// ContinueDeploy's stream read to its end: the result, or the
    /// service's words.
    async fn stream(
        &self,
        node: &Node,
        req: pb::ContinueDeployRequest,
    ) -> Result<pb::DeployResult, InterfaceError> {
        let mut c = self.client.instance.clone();
        let mut stream = c
            .continue_deploy(req)
            .await
            .map_err(|s| self.client.describe(&s))?
            .into_inner();
        let mut throttle = Throttle::default();
        let end = loop {
            match stream.message().await {
                Ok(Some(p)) => {
                    tracing::debug!(node = %node.uuid, phase = %p.phase, percent = p.percent, "deploy progress");
                    if let Some(v) = throttle.offer(&p, Instant::now()) {
                        self.write_progress(&node.uuid, v).await;
                    }
                    if let Some(r) = p.result.filter(|_| p.phase == "done") {
                        break Ok(r);
                    }
                }
                Ok(None) => {
                    break Err(InterfaceError(
                        "the deploy service ended ContinueDeploy without a result".into(),
                    ))
                }
                Err(s) => break Err(self.client.describe(&s)),
            }
        };
        if let Some(v) = throttle.flush() {
            self.write_progress(&node.uuid, v).await;
        }
        end
    }

    /// The continue step: ContinueDeploy, then the boot ISO recorded.
    pub(super) async fn continue_with(&self, node: &Node, cb: &DeployCallback) -> StepResult {
        let image = instance_image(node)?;
        let address = cb.address.to_string();
        let req = pb::ContinueDeployRequest {
            node: Some(self.request(node).await?),
            target: Some(pb::IscsiTarget {
                address: address.clone(),
                port: cb.port.into(),
                iqn: cb.iqn.clone(),
                lun: cb.lun,
                ..Default::default()
            }),
            image: Some(image),
            ramdisk_address: address,
            ramdisk_port: 0,
            skip_boot: false,
        };
        let result = self.stream(node, req).await?;
        self.record_boot_iso(node, &result).await?;
        tracing::info!(
            node = %node.uuid,
            boot_iso = %result.boot_iso,
            origin = %result.boot_iso_origin,
            usage_count = result.usage_count,
            bytes = result.virtual_size,
            write_s = result.write_seconds,
            verified = result.verified,
            "instance image written and booting"
        );
        Ok(Outcome::Done)
    }

    /// The result's boot ISO kept in instance_info (its count released
    /// again if that fails); a rebuild's earlier ISO released.
    async fn record_boot_iso(
        &self,
        node: &Node,
        result: &pb::DeployResult,
    ) -> Result<(), InterfaceError> {
        let previous = owned_boot_iso(node).map(str::to_owned);
        let (iso, origin) = (result.boot_iso.clone(), result.boot_iso_origin.clone());
        let kept = self
            .store
            .modify_node(&node.uuid, move |n: &mut Node| {
                if iso.is_empty() {
                    n.instance_info.remove(BOOT_ISO_KEY);
                    n.driver_internal_info.remove(BOOT_ISO_ORIGIN_KEY);
                } else {
                    n.instance_info.insert(BOOT_ISO_KEY.into(), iso.into());
                    n.driver_internal_info
                        .insert(BOOT_ISO_ORIGIN_KEY.into(), origin.into());
                }
                Ok::<_, DbError>(())
            })
            .await;
        if let Err(e) = kept {
            // The count the service took must not leak.
            if matches!(result.boot_iso_origin.as_str(), "built" | "shared") {
                let _ = self.release(&node.uuid, &result.boot_iso).await;
            }
            return Err(InterfaceError(format!("cannot record the boot ISO: {e}")));
        }
        // A rebuild: the earlier deploy's ISO count goes back.
        if let Some(old) = previous {
            if let Err(e) = self.release(&node.uuid, &old).await {
                tracing::warn!(node = %node.uuid, error = %e, "cannot release the earlier deploy's boot ISO");
            }
        }
        Ok(())
    }

    async fn release(&self, uuid: &str, boot_iso: &str) -> Result<(), InterfaceError> {
        let mut c = self.client.instance.clone();
        let r = c
            .release_boot_iso(pb::ReleaseBootIsoRequest {
                boot_iso: boot_iso.to_owned(),
            })
            .await
            .map_err(|s| self.client.describe(&s))?
            .into_inner();
        tracing::info!(node = %uuid, boot_iso, usage_count = r.usage_count, deleted = r.deleted, "boot ISO released");
        Ok(())
    }

    /// ReleaseBootIso for the ISO the service chose for `node` (none for a
    /// user's ISO), then `instance_info.boot_iso` cleared so a retry
    /// cannot release it twice.
    pub(super) async fn release_boot_iso(&self, node: &Node) -> Result<(), InterfaceError> {
        let Some(iso) = owned_boot_iso(node) else {
            return Ok(());
        };
        self.release(&node.uuid, iso).await?;
        self.store
            .modify_node(&node.uuid, |n: &mut Node| {
                n.instance_info.remove(BOOT_ISO_KEY);
                n.driver_internal_info.remove(BOOT_ISO_ORIGIN_KEY);
                Ok::<_, DbError>(())
            })
            .await
            .map(drop)
            .map_err(|e| InterfaceError(format!("cannot forget the boot ISO: {e}")))
    }

    /// Tear down's last part: what the deploy left in driver_internal_info.
    pub(super) async fn forget_deploy(&self, node: &Node) -> Result<(), InterfaceError> {
        self.store
            .modify_node(&node.uuid, |n: &mut Node| {
                for k in [
                    PROGRESS_KEY,
                    BOOT_ISO_ORIGIN_KEY,
                    crate::service::deploy_callback::ISCSI_TARGET_KEY,
                ] {
                    n.driver_internal_info.remove(k);
                }
                n.instance_info.remove(BOOT_ISO_KEY);
                Ok::<_, DbError>(())
            })
            .await
            .map(drop)
            .map_err(|e| InterfaceError(format!("cannot forget the deploy: {e}")))
    }

    /// Before a power on / reboot of an active node with a boot ISO:
    /// BootInstance without a reset (eject, insert, boot once from CD).
    pub(super) async fn reinsert_boot_iso(&self, node: &Node) -> Result<(), InterfaceError> {
        let Some(iso) = info_str(&node.instance_info, BOOT_ISO_KEY) else {
            return Ok(());
        };
        if node.provision_state != "active" || capability(node, "boot_option") == "local" {
            return Ok(());
        }
        let req = pb::BootInstanceRequest {
            node: Some(super::deploy_node(node)),
            boot_iso: iso.to_owned(),
            persistent: false,
            skip_reset: true,
        };
        let mut c = self.client.instance.clone();
        c.boot_instance(req)
            .await
            .map_err(|s| self.client.describe(&s))?;
        tracing::info!(node = %node.uuid, boot_iso = iso, "boot ISO inserted again before the power action");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(phase: &str, percent: f64) -> pb::DeployProgress {
        pb::DeployProgress {
            phase: phase.into(),
            bytes_written: percent as u64,
            bytes_total: 100,
            percent,
            result: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn progress_is_written_per_phase_and_at_most_every_two_seconds() {
        let mut t = Throttle::default();
        let t0 = Instant::now();
        let ms = |m: u64| t0 + Duration::from_millis(m);
        assert!(t.offer(&at("fetch", 0.0), ms(0)).is_some());
        assert!(t.offer(&at("write", 0.0), ms(10)).is_some(), "new phase");
        // 100 messages within 1.99 s: none written.
        for i in 1..100 {
            assert_eq!(t.offer(&at("write", i as f64), ms(10 + i * 20)), None);
        }
        let v = t.offer(&at("write", 99.5), ms(2010)).expect("2 s later");
        assert_eq!(v["percent"], 99.5);
        assert_eq!(v["phase"], "write");
        assert_eq!(t.offer(&at("write", 100.0), ms(2020)), None);
        assert_eq!(t.flush().unwrap()["percent"], 100.0);
        assert_eq!(t.flush(), None);
        assert!(t.offer(&at("verify", 100.0), ms(2030)).is_some());
    }

    #[test]
    fn instance_info_becomes_the_image_and_bad_numbers_are_named() {
        let mut n = Node {
            instance_info: Dict::from_iter([
                ("image_source".to_owned(), json!("http://i/u.raw")),
                ("image_os_hash_algo".to_owned(), json!("sha256")),
                ("image_os_hash_value".to_owned(), json!("ab")),
                ("root_gb".to_owned(), json!("10")),
                ("swap_mb".to_owned(), json!(512)),
                ("kernel".to_owned(), json!("http://i/k")),
                ("ramdisk".to_owned(), json!("http://i/r")),
                ("boot_iso".to_owned(), json!("http://i/user.iso")),
            ]),
            ..Default::default()
        };
        let img = instance_image(&n).unwrap();
        assert_eq!((img.root_gb, img.swap_mb, img.ephemeral_gb), (10, 512, 0));
        assert_eq!(img.boot_iso, "http://i/user.iso", "the user's ISO");
        assert_eq!(owned_boot_iso(&n), None, "the user's is never released");
        // The service's ISO from an earlier deploy is not passed as given.
        n.driver_internal_info
            .insert(BOOT_ISO_ORIGIN_KEY.into(), json!("shared"));
        assert_eq!(instance_image(&n).unwrap().boot_iso, "");
        assert_eq!(owned_boot_iso(&n), Some("http://i/user.iso"));
        n.instance_info.insert("root_gb".into(), json!("ten"));
        let e = instance_image(&n).unwrap_err().0;
        assert_eq!(
            e,
            "Invalid instance_info root_gb \"ten\": a non-negative integer is expected."
        );
    }
}
