//! The `iscsi` deploy interface with the `ilo-virtual-media` boot
//! interface (alias `redfish-virtual-media`): the deploy service
//! (`deploy.v1` over gRPC) builds the virtual floppy, stores it, inserts it
//! and the deploy ISO through the BMC's Redfish virtual media and boots the
//! node once from CD; the conductor keeps the node's state and the deploy
//! key. [`GrpcIscsi`] implements [`DeployInterface`].
//!
//! ```text
//!  validate ── boot interface is virtual media? (sync)
//!  check_service ──Validate──▶ INVALID_ARGUMENT: 400 naming what is missing, node unchanged
//!  deploying ──PrepareRamdisk──▶ deployment_key kept as the node's ramdisk secret (sealed)
//!            ──▶ wait call-back (unlocked)
//!  pass_deploy_info (service::deploy_callback) ──▶ deploying ──ContinueDeploy (stream)──▶
//!            progress in driver_internal_info.deploy_progress (throttled)
//!            ──▶ done: instance_info.boot_iso, active | failed stream: deploy failed
//!  deploy failed / timeout / abort ──CleanUp──▶ media ejected, floppy deleted, key forgotten,
//!            ──ReleaseBootIso(instance_info.boot_iso)──▶ (when one was recorded)
//!  tear_down: powered off (service::provision) ──▶ CleanUp ──▶ ReleaseBootIso, cleared
//!  power on / reboot of an active node with a boot_iso ──BootInstance (no reset)──▶ reboot
//! ```
//!
//! The continue step, the boot ISO's release and the re-insert before a
//! reboot are in [`instance`].
//!
//! The floppy's `token` file (the service's second per-deploy secret) is
//! not kept: the ramdisk's callback is authenticated by the deployment key.
//!
//! Callers: `lib::open` builds the client from `[deploy]` and registers the
//! interface (`Interfaces::set_deploy_service`); `service::provision`,
//! `service::deploy_callback` and `periodic` drive it.

use std::time::Duration;

use pb::deploy_service_client::DeployServiceClient;
use pb::instance_deploy_service_client::InstanceDeployServiceClient;
use porthole_common::tls::ClientTls;
use porthole_proto::deploy::v1 as pb;
use serde_json::Value;
use tonic::transport::Channel;

use super::interfaces::{
    BoxFuture, CleanStep, DeployCallback, DeployInterface, InterfaceError, Outcome, StepResult,
};
use crate::config::DeploySvcConfig;
use crate::db::tokens::RamdiskToken;
use crate::db::Store;
use crate::drivers::Kind;
use crate::model::{Dict, Node};
use crate::provision::State;

/// The deploy interface's name.
pub const ISCSI: &str = "iscsi";

/// The boot interfaces the deploy service implements (Ironic's name and
/// the Redfish alias).
pub const VIRTUAL_MEDIA_BOOT: [&str; 2] = ["ilo-virtual-media", "redfish-virtual-media"];

#[derive(Debug, thiserror::Error)]
#[error("deploy.endpoint {endpoint:?}: {message}")]
pub struct DeployClientError {
    endpoint: String,
    message: String,
}

/// A lazily connecting client of the deploy service.
#[derive(Clone)]
pub struct DeployClient {
    endpoint: String,
    client: DeployServiceClient<Channel>,
    /// ContinueDeploy, ReleaseBootIso, BootInstance (same channel).
    instance: InstanceDeployServiceClient<Channel>,
}

impl DeployClient {
    /// A plaintext client (tests).
    pub fn new(endpoint: &str, timeout: Duration) -> Result<Self, DeployClientError> {
        Self::with_tls(endpoint, timeout, &ClientTls::default())
    }

    /// `[deploy] endpoint`, `timeout` and `tls_*` (as `[inspect]`'s).
    pub fn from_config(cfg: &DeploySvcConfig) -> Result<Self, DeployClientError> {
        let tls = ClientTls {
            ca_file: cfg.tls_ca.clone(),
            cert_file: cfg.tls_cert.clone(),
            key_file: cfg.tls_key.clone(),
            server_name: cfg.tls_domain.clone(),
        };
        let endpoint = cfg.endpoint.as_deref().unwrap_or_default();
        Self::with_tls(endpoint, cfg.timeout, &tls)
    }

    /// The conductor starts while the deploy service is down.
    fn with_tls(
        endpoint: &str,
        timeout: Duration,
        tls: &ClientTls,
    ) -> Result<Self, DeployClientError> {
        let channel = tls
            .lazy_channel(endpoint, timeout, ("deploy.tls_cert", "deploy.tls_key"))
            .map_err(|e| DeployClientError {
                endpoint: endpoint.into(),
                message: e.to_string(),
            })?;
        Ok(Self {
            endpoint: endpoint.into(),
            client: DeployServiceClient::new(channel.clone()),
            instance: InstanceDeployServiceClient::new(channel),
        })
    }

    /// A status as last_error text: the service's (and so the BMC's or the
    /// store's) own words without its "deploy failed: " prefix (the
    /// conductor says that), or that the service cannot be reached.
    fn describe(&self, s: &tonic::Status) -> InterfaceError {
        let transport =
            std::error::Error::source(s).is_some_and(|e| e.is::<tonic::transport::Error>());
        let unreachable = matches!(
            s.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
        ) && !s.message().starts_with("deploy failed: ");
        if transport || unreachable {
            return InterfaceError(format!(
                "the deploy service at {} is unavailable: {}",
                self.endpoint,
                crate::console::chain(s)
            ));
        }
        let m = s.message();
        InterfaceError(m.strip_prefix("deploy failed: ").unwrap_or(m).to_owned())
    }
}

/// The `iscsi` deploy interface over the deploy service.
pub struct GrpcIscsi {
    client: DeployClient,
    /// Ports (the MACs the service checks) and the deploy key.
    store: Store,
}

impl GrpcIscsi {
    pub fn new(client: DeployClient, store: Store) -> Self {
        Self { client, store }
    }

    /// The part of `node` the deploy service needs, with its ports.
    async fn request(&self, node: &Node) -> Result<pb::DeployNode, InterfaceError> {
        let ports = self
            .store
            .list_ports(Some(&node.uuid))
            .await
            .map_err(|e| InterfaceError(format!("cannot read the node's ports: {e}")))?;
        let mut n = deploy_node(node);
        n.port_addresses = ports.into_iter().map(|p| p.address).collect();
        Ok(n)
    }

    async fn call_clean_up(&self, node: &Node) -> Result<(), InterfaceError> {
        let req = pb::CleanUpRequest {
            node: Some(self.request(node).await?),
        };
        let mut c = self.client.client.clone();
        let cleaned = c
            .clean_up(req)
            .await
            .map(drop)
            .map_err(|s| self.client.describe(&s));
        // The key goes whatever the BMC said.
        if let Err(e) = self.store.drop_ramdisk_token(&node.uuid).await {
            tracing::warn!(node = %node.uuid, error = %e, "cannot drop the deploy key");
        }
        cleaned
    }
}

fn info_str<'a>(d: &'a Dict, key: &str) -> Option<&'a str> {
    d.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// driver_info's `*_verify_ca`: false (bool or string) turns checking off.
fn verify_ca(d: &Dict, key: &str) -> bool {
    match d.get(key) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(v)) => !v.eq_ignore_ascii_case("false"),
        _ => true,
    }
}

/// A capability of `instance_info.capabilities` (a dict, or its JSON text).
fn capability(node: &Node, key: &str) -> String {
    let caps = match node.instance_info.get("capabilities") {
        Some(Value::String(s)) => serde_json::from_str(s).unwrap_or(Value::Null),
        Some(v) => v.clone(),
        None => Value::Null,
    };
    caps.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// `node` as deploy.v1 sees it (no ports): the BMC's Redfish access from
/// `redfish_*` driver_info (an `ilo` node: `ilo_address`, https, and
/// `ilo_username`/`ilo_password`, iLO 5/6 speaking Redfish), `deploy_iso`
/// (or `ilo_deploy_iso` / `redfish_deploy_iso`), `instance_info`'s
/// image_source and capabilities.
pub fn deploy_node(node: &Node) -> pb::DeployNode {
    let d = &node.driver_info;
    let s = |k: &str| info_str(d, k).unwrap_or_default().to_owned();
    let bmc = if node.driver == "ilo" {
        let address = match info_str(d, "ilo_address") {
            Some(a) if a.contains("://") => a.to_owned(),
            Some(a) => format!("https://{a}"),
            None => String::new(),
        };
        pb::RedfishAccess {
            address,
            system_id: String::new(),
            username: s("ilo_username"),
            password: s("ilo_password"),
            insecure: !verify_ca(d, "ilo_verify_ca"),
        }
    } else {
        pb::RedfishAccess {
            address: s("redfish_address"),
            system_id: s("redfish_system_id"),
            username: s("redfish_username"),
            password: s("redfish_password"),
            insecure: !verify_ca(d, "redfish_verify_ca"),
        }
    };
    let iso = ["deploy_iso", "ilo_deploy_iso", "redfish_deploy_iso"]
        .iter()
        .find_map(|k| info_str(d, k))
        .unwrap_or_default();
    pb::DeployNode {
        uuid: node.uuid.clone(),
        bmc: Some(bmc),
        deploy_iso: iso.to_owned(),
        image_source: info_str(&node.instance_info, "image_source")
            .unwrap_or_default()
            .to_owned(),
        boot_option: capability(node, "boot_option"),
        boot_mode: capability(node, "boot_mode"),
        port_addresses: Vec::new(),
    }
}

impl DeployInterface for GrpcIscsi {
    fn name(&self) -> &'static str {
        ISCSI
    }

    /// The boot side must be the deploy service's virtual media.
    fn validate(&self, node: &Node) -> Result<(), InterfaceError> {
        let boot = node.interface(Kind::Boot);
        if VIRTUAL_MEDIA_BOOT.contains(&boot) {
            return Ok(());
        }
        Err(InterfaceError(format!(
            "The iscsi deploy interface boots the deploy ramdisk from virtual media: set boot_interface to ilo-virtual-media or redfish-virtual-media (the node has \"{boot}\", which this conductor cannot boot a ramdisk with)."
        )))
    }

    fn check_service<'a>(&'a self, node: &'a Node) -> BoxFuture<'a, Result<(), InterfaceError>> {
        Box::pin(async move {
            let req = pb::ValidateRequest {
                node: Some(self.request(node).await?),
            };
            let mut c = self.client.client.clone();
            c.validate(req)
                .await
                .map(drop)
                .map_err(|s| self.client.describe(&s))
        })
    }

    fn deploy<'a>(&'a self, node: &'a Node, _: Option<&'a Value>) -> BoxFuture<'a, StepResult> {
        Box::pin(async move {
            let req = pb::PrepareRamdiskRequest {
                node: Some(self.request(node).await?),
            };
            let mut c = self.client.client.clone();
            let prepared = c
                .prepare_ramdisk(req)
                .await
                .map_err(|s| self.client.describe(&s))?
                .into_inner();
            // The callback must present this key: it replaces the secret
            // the provision service issued for the wait.
            let key = RamdiskToken {
                wait_state: State::DeployWait.as_str().to_owned(),
                token: prepared.deployment_key,
            };
            if let Err(e) = self.store.put_ramdisk_token(&node.uuid, key).await {
                let _ = self.call_clean_up(node).await;
                return Err(InterfaceError(format!("cannot keep the deploy key: {e}")));
            }
            tracing::info!(
                node = %node.uuid,
                floppy_build_s = prepared.floppy_build_seconds,
                upload_s = prepared.upload_seconds,
                insert_s = prepared.insert_seconds,
                power_s = prepared.power_seconds,
                "deploy ramdisk booting; waiting for its callback"
            );
            Ok(Outcome::Wait)
        })
    }

    /// ContinueDeploy: the image written over iSCSI, the boot ISO chosen
    /// and the node booted from it ([`instance`]).
    fn continue_deploy<'a>(
        &'a self,
        node: &'a Node,
        callback: &'a DeployCallback,
    ) -> BoxFuture<'a, StepResult> {
        Box::pin(self.continue_with(node, callback))
    }

    /// After a failed deploy: CleanUp, and the boot ISO it recorded (if
    /// any) released.
    fn clean_up<'a>(&'a self, node: &'a Node) -> BoxFuture<'a, Result<(), InterfaceError>> {
        Box::pin(async move {
            let cleaned = self.call_clean_up(node).await;
            let released = self.release_boot_iso(node).await;
            cleaned.and(released)
        })
    }

    /// The node is already off (`powers_off_at_tear_down`): CleanUp, then
    /// the boot ISO released and forgotten.
    fn tear_down<'a>(&'a self, node: &'a Node) -> BoxFuture<'a, Result<(), InterfaceError>> {
        Box::pin(async move {
            self.call_clean_up(node).await?;
            self.release_boot_iso(node).await?;
            self.forget_deploy(node).await
        })
    }

    fn powers_off_at_tear_down(&self) -> bool {
        true
    }

    fn prepare_power_on<'a>(&'a self, node: &'a Node) -> BoxFuture<'a, Result<(), InterfaceError>> {
        Box::pin(self.reinsert_boot_iso(node))
    }

    /// Adopting writes nothing: the node keeps what it runs.
    fn take_over<'a>(&'a self, _: &'a Node) -> BoxFuture<'a, Result<(), InterfaceError>> {
        Box::pin(async { Ok(()) })
    }

    fn clean_steps(&self, _: &Node) -> Vec<CleanStep> {
        Vec::new()
    }

    fn execute_clean_step<'a>(
        &'a self,
        _: &'a Node,
        step: &'a CleanStep,
    ) -> BoxFuture<'a, StepResult> {
        let e = InterfaceError(format!(
            "The iscsi deploy interface has no clean step {}.",
            step.step
        ));
        Box::pin(async move { Err(e) })
    }
}

mod instance;

#[cfg(test)]
mod tests;
