//! [`GrpcIscsi`] against an in-process deploy.v1 server that records what
//! it is asked and answers as told (the real service is driven by
//! `tests/deploy_vmedia.rs`): what a node becomes on the wire, the deploy
//! key kept sealed as the node's secret, the service's refusals as 400s
//! that leave the node alone, its failures as `deploy failed` in the
//! BMC's words, clean up; the continue step's stream (progress written,
//! throttled; the boot ISO recorded; a failure in the service's words),
//! the boot ISO released at tear down, and re-inserted before a reboot.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pb::deploy_service_server::{DeployService, DeployServiceServer};
use pb::instance_deploy_service_server::{InstanceDeployService, InstanceDeployServiceServer};
use serde_json::json;
use tonic::{Request, Response, Status};

use super::*;
use crate::config::Config;
use crate::service::{Conductor, NodeCreate, PowerTiming, ServiceError};

#[derive(Default)]
struct Fake {
    asked: Mutex<Vec<(String, pb::DeployNode)>>,
    /// Validate's / PrepareRamdisk's refusal, when set.
    invalid: Option<String>,
    failed: Option<String>,
    /// ContinueDeploy's messages, then its end (`None`: the stream ends).
    progress: Vec<pb::DeployProgress>,
    continue_fails: Option<String>,
    /// What ContinueDeploy, ReleaseBootIso and BootInstance were sent.
    continued: Mutex<Vec<pb::ContinueDeployRequest>>,
    released: Mutex<Vec<String>>,
    booted: Mutex<Vec<pb::BootInstanceRequest>>,
}

/// The server side of a [`Fake`].
struct Served(Arc<Fake>);

#[tonic::async_trait]
impl DeployService for Served {
    async fn validate(
        &self,
        r: Request<pb::ValidateRequest>,
    ) -> Result<Response<pb::ValidateResponse>, Status> {
        let n = r.into_inner().node.unwrap();
        self.0.asked.lock().unwrap().push(("validate".into(), n));
        match &self.0.invalid {
            Some(m) => Err(Status::invalid_argument(m.clone())),
            None => Ok(Response::new(pb::ValidateResponse {})),
        }
    }
    async fn prepare_ramdisk(
        &self,
        r: Request<pb::PrepareRamdiskRequest>,
    ) -> Result<Response<pb::PrepareRamdiskResponse>, Status> {
        let n = r.into_inner().node.unwrap();
        self.0.asked.lock().unwrap().push(("prepare".into(), n));
        if let Some(m) = &self.0.failed {
            return Err(Status::failed_precondition(format!("deploy failed: {m}")));
        }
        Ok(Response::new(pb::PrepareRamdiskResponse {
            deployment_key: "k3y-from-the-service-0123456789abcdef".into(),
            token: "floppy-token".into(),
            ..Default::default()
        }))
    }
    async fn clean_up(
        &self,
        r: Request<pb::CleanUpRequest>,
    ) -> Result<Response<pb::CleanUpResponse>, Status> {
        let n = r.into_inner().node.unwrap();
        self.0.asked.lock().unwrap().push(("clean_up".into(), n));
        Ok(Response::new(pb::CleanUpResponse {}))
    }
}

type Progress =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::DeployProgress, Status>> + Send>>;

#[tonic::async_trait]
impl InstanceDeployService for Served {
    type ContinueDeployStream = Progress;
    async fn continue_deploy(
        &self,
        r: Request<pb::ContinueDeployRequest>,
    ) -> Result<Response<Progress>, Status> {
        self.0.continued.lock().unwrap().push(r.into_inner());
        let mut items: Vec<Result<pb::DeployProgress, Status>> =
            self.0.progress.iter().cloned().map(Ok).collect();
        if let Some(m) = &self.0.continue_fails {
            items.push(Err(Status::failed_precondition(format!(
                "deploy failed: {m}"
            ))));
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }
    async fn release_boot_iso(
        &self,
        r: Request<pb::ReleaseBootIsoRequest>,
    ) -> Result<Response<pb::ReleaseBootIsoResponse>, Status> {
        self.0
            .released
            .lock()
            .unwrap()
            .push(r.into_inner().boot_iso);
        Ok(Response::new(pb::ReleaseBootIsoResponse::default()))
    }
    async fn boot_instance(
        &self,
        r: Request<pb::BootInstanceRequest>,
    ) -> Result<Response<pb::BootInstanceResponse>, Status> {
        self.0.booted.lock().unwrap().push(r.into_inner());
        Ok(Response::new(pb::BootInstanceResponse::default()))
    }
}

async fn serve(fake: Arc<Fake>) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(l);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(DeployServiceServer::new(Served(fake.clone())))
            .add_service(InstanceDeployServiceServer::new(Served(fake)))
            .serve_with_incoming(incoming),
    );
    addr
}

struct Rig {
    c: Arc<Conductor>,
    fake: Arc<Fake>,
    _dir: tempfile::TempDir,
}

async fn rig(fake: Fake) -> Rig {
    let fake = Arc::new(fake);
    let addr = serve(fake.clone()).await;
    rig_at(&format!("http://{addr}"), fake)
}

fn rig_at(endpoint: &str, fake: Arc<Fake>) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let sealer = crate::seal::Sealer::load_or_create(&dir.path().join("k")).unwrap();
    let store = crate::db::Store::open(&dir.path().join("db"), sealer).unwrap();
    let consoles = crate::console::ConsoleClient::new(&Config::default().console).unwrap();
    let power =
        crate::power::PowerSettings::new("ipmitool".into(), Duration::from_secs(2)).unwrap();
    let timing = PowerTiming {
        state_timeout: Duration::from_secs(2),
        poll_interval: Duration::from_millis(50),
    };
    let mut c = Conductor::new(store.clone(), consoles, power, timing, Default::default());
    let client = DeployClient::new(endpoint, Duration::from_secs(5)).unwrap();
    c.interfaces
        .set_deploy_service(Arc::new(GrpcIscsi::new(client, store)));
    Rig {
        c: Arc::new(c),
        fake,
        _dir: dir,
    }
}

/// An available redfish node on `iscsi` + `redfish-virtual-media` with a port.
async fn available(c: &Arc<Conductor>) -> String {
    let serde_json::Value::Object(m) = json!({
        "driver": "redfish", "deploy_interface": "iscsi",
        "boot_interface": "redfish-virtual-media",
        "driver_info": {"redfish_address": "http://127.0.0.1:8000",
            "redfish_system_id": "/redfish/v1/Systems/1", "redfish_username": "admin",
            "redfish_password": "s3cret-bmc", "redfish_verify_ca": "False",
            "deploy_iso": "http://images/deploy.iso"},
        "instance_info": {"image_source": "http://images/user.qcow2",
            "capabilities": "{\"boot_option\": \"local\", \"boot_mode\": \"uefi\"}"},
    }) else {
        unreachable!()
    };
    let u = c.create_node(NodeCreate(m)).await.unwrap().uuid;
    let serde_json::Value::Object(p) = json!({"address": "52:54:00:12:34:56", "node_uuid": u})
    else {
        unreachable!()
    };
    c.create_port(&p).await.unwrap();
    c.store
        .modify_node(&u, |n: &mut Node| {
            n.provision_state = "available".into();
            // Tear down powers off: the `fake` power interface records it.
            n.set_interface(Kind::Power, "fake".into());
            Ok::<_, ServiceError>(())
        })
        .await
        .unwrap();
    u
}

async fn settled(c: &Arc<Conductor>, u: &str, state: &str) -> Node {
    for _ in 0..500 {
        let n = c.store.get_node(u).await.unwrap();
        if n.provision_state == state && !c.is_busy(u) {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{u} never rested in {state}");
}

fn calls(f: &Fake) -> Vec<String> {
    f.asked
        .lock()
        .unwrap()
        .iter()
        .map(|(c, _)| c.clone())
        .collect()
}

#[tokio::test]
async fn deploy_sends_the_node_keeps_the_services_key_sealed_and_waits() {
    let r = rig(Fake::default()).await;
    let u = available(&r.c).await;
    r.c.set_provision_state(&u, "active", None).await.unwrap();
    settled(&r.c, &u, "wait call-back").await;
    assert_eq!(calls(&r.fake), ["validate", "prepare"]);
    let sent = r.fake.asked.lock().unwrap()[1].1.clone();
    let bmc = sent.bmc.clone().unwrap();
    assert_eq!(
        (
            bmc.address.as_str(),
            bmc.system_id.as_str(),
            bmc.username.as_str()
        ),
        ("http://127.0.0.1:8000", "/redfish/v1/Systems/1", "admin")
    );
    assert_eq!(bmc.password, "s3cret-bmc");
    assert!(bmc.insecure, "redfish_verify_ca False");
    assert_eq!(sent.deploy_iso, "http://images/deploy.iso");
    assert_eq!(sent.image_source, "http://images/user.qcow2");
    assert_eq!(
        (sent.boot_option.as_str(), sent.boot_mode.as_str()),
        ("local", "uefi")
    );
    assert_eq!(sent.port_addresses, ["52:54:00:12:34:56"]);
    let t = r.c.store.ramdisk_token(&u).await.unwrap().unwrap();
    assert_eq!(t.token, "k3y-from-the-service-0123456789abcdef");
    assert_eq!(t.wait_state, "wait call-back");
    let n = r.c.store.get_node(&u).await.unwrap();
    let shown = serde_json::to_string(&n.to_api("http://x")).unwrap();
    assert!(
        !shown.contains("k3y-from") && !shown.contains("floppy-token"),
        "{shown}"
    );

    // Undeploy from the wait: tear down cleans up (and the key goes).
    r.c.set_provision_state(&u, "deleted", None).await.unwrap();
    settled(&r.c, &u, "available").await;
    assert_eq!(calls(&r.fake), ["validate", "prepare", "clean_up"]);
    assert_eq!(r.c.store.ramdisk_token(&u).await.unwrap(), None);
}

#[tokio::test]
async fn the_services_refusal_is_a_400_with_its_words_and_the_node_stays() {
    let why = "Node x does not have any port associated with it.; Some parameters were missing in node's driver_info: [\"deploy_iso\"].";
    let r = rig(Fake {
        invalid: Some(why.into()),
        ..Default::default()
    })
    .await;
    let u = available(&r.c).await;
    let before = r.c.store.get_node(&u).await.unwrap();
    let e =
        r.c.set_provision_state(&u, "active", None)
            .await
            .unwrap_err();
    assert!(matches!(e, ServiceError::Invalid(_)), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!("Failed to validate deploy or power info for node {u}. Error: {why}")
    );
    assert_eq!(r.c.store.get_node(&u).await.unwrap(), before);
    assert_eq!(calls(&r.fake), ["validate"]);
    // `node validate` says the same for deploy and boot.
    let v = r.c.validate(&u).await.unwrap();
    assert_eq!(v["deploy"], json!({"result": false, "reason": why}));
    assert_eq!(v["boot"]["result"], false);
}

#[tokio::test]
async fn a_bmc_failure_is_deploy_failed_in_its_words_and_cleans_up() {
    let words =
        "redfish insert cd: HTTP 404 Not Found: Cannot download virtual media: got error 404";
    let r = rig(Fake {
        failed: Some(words.into()),
        ..Default::default()
    })
    .await;
    let u = available(&r.c).await;
    r.c.set_provision_state(&u, "active", None).await.unwrap();
    let n = settled(&r.c, &u, "deploy failed").await;
    assert_eq!(n.last_error.unwrap(), format!("Deploy failed: {words}"));
    assert_eq!(calls(&r.fake), ["validate", "prepare", "clean_up"]);
    assert_eq!(r.c.store.ramdisk_token(&u).await.unwrap(), None);
}

#[tokio::test]
async fn an_unreachable_service_is_named_and_the_node_is_not_moved() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let r = rig_at(&format!("http://127.0.0.1:{port}"), Arc::default());
    let u = available(&r.c).await;
    let e =
        r.c.set_provision_state(&u, "active", None)
            .await
            .unwrap_err();
    assert!(
        e.to_string().contains(&format!(
            "the deploy service at http://127.0.0.1:{port} is unavailable"
        )),
        "{e}"
    );
    assert_eq!(
        r.c.store.get_node(&u).await.unwrap().provision_state,
        "available"
    );
}

#[tokio::test]
async fn validate_needs_a_virtual_media_boot() {
    let r = rig(Fake::default()).await;
    let u = available(&r.c).await;
    r.c.store
        .modify_node(&u, |n: &mut Node| {
            n.set_interface(Kind::Boot, "pxe".into());
            Ok::<_, ServiceError>(())
        })
        .await
        .unwrap();
    let e =
        r.c.set_provision_state(&u, "active", None)
            .await
            .unwrap_err();
    assert!(
        e.to_string()
            .contains("set boot_interface to ilo-virtual-media or redfish-virtual-media"),
        "{e}"
    );
    assert!(
        calls(&r.fake).is_empty(),
        "refused before the service is asked"
    );
}

#[test]
fn an_ilo_node_reaches_its_ilo_over_https_redfish() {
    let n = Node {
        uuid: "u".into(),
        driver: "ilo".into(),
        driver_info: crate::model::Dict::from_iter([
            ("ilo_address".to_owned(), json!("10.0.0.9")),
            ("ilo_username".to_owned(), json!("Administrator")),
            ("ilo_password".to_owned(), json!("pw")),
            ("ilo_deploy_iso".to_owned(), json!("https://img/deploy.iso")),
        ]),
        ..Default::default()
    };
    let d = deploy_node(&n);
    let bmc = d.bmc.unwrap();
    assert_eq!(bmc.address, "https://10.0.0.9");
    assert_eq!(
        (bmc.username.as_str(), bmc.password.as_str()),
        ("Administrator", "pw")
    );
    assert!(!bmc.insecure);
    assert_eq!(d.deploy_iso, "https://img/deploy.iso");
}

#[test]
fn a_bad_endpoint_is_refused_naming_the_option() {
    let e = DeployClient::new("not a uri", Duration::from_secs(1))
        .err()
        .expect("refused")
        .to_string();
    assert!(e.starts_with("deploy.endpoint \"not a uri\": "), "{e}");
}

mod instance;
