//! The deploy operations: PrepareRamdisk (validate, floppy, store, virtual
//! media, boot once from CD, power) and CleanUp (eject, delete the floppy).
//! A failed PrepareRamdisk deletes the floppy it stored and ejects what it
//! inserted, so a refused or failed deploy leaves no object behind.
//!
//! The two per-deploy secrets are generated here and go only to the floppy
//! (in memory) and back to the caller; nothing logs them.
//!
//! Callers: [`crate::grpc`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use porthole_bmc::redfish::{Client, Endpoint, RedfishError};
use porthole_bmc::vmedia::Media;
use porthole_bmc::Secret;
use porthole_proto::deploy::v1::DeployNode;

use crate::config::Config;
use crate::image::vfat::{self, Floppy, VfatError};
use crate::metrics;
use crate::secret::DeployKey;
use crate::store::{floppy_object, Store, StoreError};
use crate::validate::{validate, Invalid};

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("deploy failed: {0}")]
    Floppy(#[from] VfatError),
    #[error("deploy failed: {0}")]
    Store(#[from] StoreError),
    #[error("deploy failed: {0}")]
    Bmc(#[from] RedfishError),
}

/// What PrepareRamdisk hands back.
#[derive(Debug)]
pub struct Prepared {
    /// pass_deploy_info's `key` (the floppy's `deployment_key`).
    pub deployment_key: DeployKey,
    /// The floppy's `token` file: the ramdisk's credential for its calls.
    pub token: DeployKey,
    pub floppy_url: String,
    pub floppy_build: Duration,
    pub upload: Duration,
    pub insert: Duration,
    pub power: Duration,
}

pub struct Deployer {
    config: Arc<Config>,
    store: Arc<dyn Store>,
    redfish: Client,
}

impl Deployer {
    pub fn new(config: Arc<Config>, store: Arc<dyn Store>, redfish: Client) -> Self {
        Self {
            config,
            store,
            redfish,
        }
    }

    pub fn validate(&self, node: &DeployNode) -> Result<(), Invalid> {
        validate(node, &self.config)
    }

    /// The `parameters.txt` lines for `node`, as Ironic's iscsi deploy
    /// builds the ramdisk's options.
    pub fn parameters(&self, node: &DeployNode, key: &DeployKey) -> Vec<(String, String)> {
        let or = |v: &str, d: &str| {
            if v.is_empty() {
                d.to_owned()
            } else {
                v.to_owned()
            }
        };
        vec![
            (
                "ironic_api_url".into(),
                self.config.conductor.api_url.clone().unwrap_or_default(),
            ),
            ("deployment_id".into(), node.uuid.clone()),
            ("deployment_key".into(), key.expose().to_owned()),
            ("iscsi_target_iqn".into(), format!("iqn-{}", node.uuid)),
            ("boot_option".into(), or(&node.boot_option, "netboot")),
            ("boot_mode".into(), or(&node.boot_mode, "bios")),
        ]
    }

    pub async fn prepare(&self, node: &DeployNode) -> Result<Prepared, DeployError> {
        if let Err(e) = self.validate(node) {
            metrics::get().prepared("invalid");
            return Err(e.into());
        }
        let ep = endpoint(node);
        // The design's "validate the feature": a BMC without both devices
        // is refused before anything is stored.
        for media in [Media::Floppy, Media::Cd] {
            if let Err(e) = self.redfish.virtual_media(&ep, media).await {
                metrics::get().prepared("failure");
                return Err(e.into());
            }
        }
        let name = floppy_object(&node.uuid);
        let result = self.prepare_steps(node, &ep, &name).await;
        match &result {
            Ok(_) => metrics::get().prepared("success"),
            Err(e) => {
                metrics::get().prepared("failure");
                tracing::warn!(node = %node.uuid, error = %e, "PrepareRamdisk failed; cleaning up");
                if let Err(c) = self.clean_up_at(&ep, &name).await {
                    tracing::warn!(node = %node.uuid, error = %c, "clean up after the failure failed too");
                }
            }
        }
        result
    }

    async fn prepare_steps(
        &self,
        node: &DeployNode,
        ep: &Endpoint,
        name: &str,
    ) -> Result<Prepared, DeployError> {
        let m = metrics::get();
        let ttl = self.config.store.ttl;
        let t = Instant::now();
        let deployment_key = DeployKey::generate();
        let token = DeployKey::generate();
        let params = self.parameters(node, &deployment_key);
        let image = vfat::build(&Floppy {
            parameters: &params,
            token: Some(&token),
            size_kib: self.config.store.floppy_size_kib,
        })?;
        let floppy_build = t.elapsed();
        m.step("floppy_build", floppy_build);

        let t = Instant::now();
        self.store.put(name, Bytes::from(image), ttl).await?;
        let floppy_url = self.store.temp_url(name, ttl).await?;
        let upload = t.elapsed();
        m.step("upload", upload);

        let t = Instant::now();
        self.redfish
            .insert_media(ep, Media::Floppy, &floppy_url)
            .await?;
        self.redfish
            .insert_media(ep, Media::Cd, &node.deploy_iso)
            .await?;
        let insert = t.elapsed();
        m.step("insert", insert);

        let t = Instant::now();
        let reset = self.boot_from_cd(ep).await?;
        let power = t.elapsed();
        m.step("power", power);
        tracing::info!(node = %node.uuid, store = self.store.kind(), reset, "deploy ramdisk booting from virtual media");
        Ok(Prepared {
            deployment_key,
            token,
            floppy_url,
            floppy_build,
            upload,
            insert,
            power,
        })
    }

    /// Boot once from the CD: the override, then power on (or a reboot of
    /// a node that is on); returns the reset used.
    async fn boot_from_cd(&self, ep: &Endpoint) -> Result<&'static str, DeployError> {
        self.redfish.boot_once(ep, "Cd").await?;
        let (_, system) = self.redfish.system(ep).await?;
        let reset = match system["PowerState"].as_str() {
            Some("On") => "ForceRestart",
            _ => "On",
        };
        self.redfish.reset(ep, reset).await?;
        Ok(reset)
    }

    /// Eject both media and delete the floppy; every step is tried, the
    /// first error is returned.
    pub async fn clean_up(&self, node: &DeployNode) -> Result<(), DeployError> {
        self.clean_up_at(&endpoint(node), &floppy_object(&node.uuid))
            .await
    }

    async fn clean_up_at(&self, ep: &Endpoint, name: &str) -> Result<(), DeployError> {
        let deleted = self.store.delete(name).await.map_err(DeployError::from);
        let mut first = deleted.err();
        for media in [Media::Floppy, Media::Cd] {
            if let Err(e) = self.redfish.eject_media(ep, media).await {
                first.get_or_insert(e.into());
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// The node's Redfish endpoint; the password lives in a [`Secret`].
pub(crate) fn endpoint(node: &DeployNode) -> Endpoint {
    let bmc = node.bmc.clone().unwrap_or_default();
    let mut ep = Endpoint::new(&bmc.address);
    ep.system_id = Some(bmc.system_id).filter(|s| !s.is_empty());
    ep.username = Some(bmc.username).filter(|s| !s.is_empty());
    ep.password = Some(Secret::new(bmc.password)).filter(|s| !s.is_empty());
    ep.verify_ca = !bmc.insecure;
    ep
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use axum::http::{Method, StatusCode, Uri};
    use axum::response::IntoResponse;
    use axum::routing::any;
    use porthole_proto::deploy::v1::RedfishAccess;
    use serde_json::json;

    use super::*;

    /// An in-memory store that records what was asked of it.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    #[async_trait]
    impl Store for Recorder {
        fn kind(&self) -> &'static str {
            "memory"
        }
        async fn put(&self, name: &str, b: Bytes, _: Duration) -> Result<(), StoreError> {
            self.0
                .lock()
                .unwrap()
                .push(format!("put {name} {}", b.len()));
            Ok(())
        }
        async fn temp_url(&self, name: &str, _: Duration) -> Result<String, StoreError> {
            Ok(format!("http://store/{name}"))
        }
        async fn delete(&self, name: &str) -> Result<(), StoreError> {
            self.0.lock().unwrap().push(format!("delete {name}"));
            Ok(())
        }
    }

    /// A BMC with virtual media whose InsertMedia answers `status` with a
    /// Redfish error body (as a BMC's gateway or firmware would); with
    /// `cd: false` it has a floppy only.
    async fn failing_bmc(status: StatusCode, cd: bool) -> String {
        let app = axum::Router::new().fallback(any(move |method: Method, uri: Uri| async move {
            let body = match uri.path() {
                "/redfish/v1" => json!({"Systems": {"@odata.id": "/s"}}),
                "/s" => json!({"Members": [{"@odata.id": "/s/1"}]}),
                "/s/1" => json!({"VirtualMedia": {"@odata.id": "/s/1/vm"}, "PowerState": "Off"}),
                "/s/1/vm" if cd => {
                    json!({"Members": [{"@odata.id": "/s/1/vm/f"}, {"@odata.id": "/s/1/vm/c"}]})
                }
                "/s/1/vm" => json!({"Members": [{"@odata.id": "/s/1/vm/f"}]}),
                "/s/1/vm/f" => json!({"MediaTypes": ["Floppy"], "Inserted": false}),
                "/s/1/vm/c" => json!({"MediaTypes": ["CD", "DVD"], "Inserted": false}),
                p if method == Method::POST && p.ends_with("InsertMedia") => {
                    let err = json!({"error": {"code": "Base.1.0.GeneralError",
                        "message": format!("firmware says no ({status})")}});
                    return (status, axum::Json(err)).into_response();
                }
                _ => json!({}),
            };
            axum::Json(body).into_response()
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    fn deployer(store: Arc<Recorder>) -> Deployer {
        let mut config = Config::default();
        config.conductor.api_url = Some("http://192.0.2.1:6385".into());
        Deployer::new(
            Arc::new(config),
            store,
            Client::new(Duration::from_secs(5)).unwrap(),
        )
    }

    fn node(bmc: &str) -> DeployNode {
        DeployNode {
            uuid: "1be26c0b-03f2-4d2e-ae87-c02d7f33c123".into(),
            bmc: Some(RedfishAccess {
                address: bmc.into(),
                ..Default::default()
            }),
            deploy_iso: "http://images/deploy.iso".into(),
            image_source: "http://images/user.qcow2".into(),
            port_addresses: vec!["52:54:00:12:34:56".into()],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn bmc_errors_become_deploy_failed_with_the_bmcs_words_and_the_floppy_goes() {
        for status in [
            StatusCode::NOT_FOUND,
            StatusCode::BAD_REQUEST,
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::BAD_GATEWAY,
        ] {
            let store = Arc::new(Recorder::default());
            let d = deployer(store.clone());
            let err = d
                .prepare(&node(&failing_bmc(status, true).await))
                .await
                .unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, DeployError::Bmc(_)), "{status}: {err:?}");
            assert!(text.starts_with("deploy failed: "), "{text}");
            assert!(
                text.contains(&format!("firmware says no ({status})")),
                "{text}"
            );
            assert!(text.contains(&status.as_u16().to_string()), "{text}");
            let asked = store.0.lock().unwrap().clone();
            let name = "image-1be26c0b-03f2-4d2e-ae87-c02d7f33c123";
            assert_eq!(
                asked,
                [format!("put {name} 102400"), format!("delete {name}")],
                "{status}"
            );
        }
    }

    #[tokio::test]
    async fn a_bmc_without_a_cd_device_is_refused_before_anything_is_stored() {
        let store = Arc::new(Recorder::default());
        let d = deployer(store.clone());
        let bmc = failing_bmc(StatusCode::OK, false).await;
        let err = d.prepare(&node(&bmc)).await.unwrap_err().to_string();
        assert!(
            err.starts_with("deploy failed: ") && err.contains("no virtual media device for cd"),
            "{err}"
        );
        assert!(
            store.0.lock().unwrap().is_empty(),
            "{:?}",
            store.0.lock().unwrap()
        );
    }

    #[tokio::test]
    async fn an_invalid_node_touches_neither_store_nor_bmc() {
        let store = Arc::new(Recorder::default());
        let d = deployer(store.clone());
        let mut n = node("http://127.0.0.1:9");
        n.port_addresses.clear();
        let err = d.prepare(&n).await.unwrap_err();
        assert!(matches!(err, DeployError::Invalid(_)), "{err:?}");
        assert!(store.0.lock().unwrap().is_empty());
    }

    #[test]
    fn parameters_default_boot_option_and_mode_as_ironic_does() {
        let d = deployer(Arc::new(Recorder::default()));
        let key = DeployKey::generate();
        let p = d.parameters(&node("http://bmc"), &key);
        let get = |k: &str| p.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("boot_option").as_deref(), Some("netboot"));
        assert_eq!(get("boot_mode").as_deref(), Some("bios"));
        assert_eq!(get("deployment_key").as_deref(), Some(key.expose()));
    }
}
