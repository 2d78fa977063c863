//! The deploy service end to end over gRPC, in-process (`deploy::run`)
//! against sushy-tools, once with the embedded store and once with Swift:
//! PrepareRamdisk makes sushy download the floppy (read back here with
//! mtools: `parameters.txt` and `token` as the response says) and the
//! deploy ISO (byte for byte), boots once from CD and powers the node on;
//! CleanUp ejects both and deletes the floppy. Refusals and BMC failures
//! leave nothing behind.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use axum::routing::get;
use deploy::config::{Backend, Config};
use porthole_proto::deploy::v1::deploy_service_client::DeployServiceClient;
use porthole_proto::deploy::v1::{
    CleanUpRequest, DeployNode, PrepareRamdiskRequest, PrepareRamdiskResponse, RedfishAccess,
    ValidateRequest,
};
use porthole_tests::peers::{Sushy, Swift};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

const API_URL: &str = "http://192.0.2.1:6385";

/// Every log line of this test process (the service runs in-process), at
/// debug level, to look for secrets in.
static LOGS: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

struct LogSink;

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let sub = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(|| LogSink)
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(sub).unwrap();
    });
}

/// Neither per-deploy secret, nor the floppy URL's signature, was logged.
fn assert_not_logged(resp: &PrepareRamdiskResponse) {
    let logs = String::from_utf8_lossy(&LOGS.lock().unwrap()).into_owned();
    assert!(
        logs.contains("deploy ramdisk booting from virtual media"),
        "the capture saw no deploy log at all:\n{logs}"
    );
    let sig = resp
        .floppy_url
        .split("temp_url_sig=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    for (what, secret) in [
        ("deployment_key", resp.deployment_key.as_str()),
        ("token", resp.token.as_str()),
        ("floppy URL signature", sig),
    ] {
        assert!(!logs.contains(secret), "the {what} is in the logs");
    }
}

/// One test at a time: they share the emulator's node and Swift.
static ONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Service {
    client: DeployServiceClient<Channel>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), deploy::RunError>>,
    objects: PathBuf,
    _dir: tempfile::TempDir,
}

impl Service {
    async fn start(configure: impl FnOnce(&mut Config, &Path)) -> Service {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.conductor.api_url = Some(API_URL.into());
        config.store.http_listen = "127.0.0.1:0".parse().unwrap();
        config.store.http_dir = dir.path().join("objects");
        config.store.ttl = Duration::from_secs(120);
        configure(&mut config, dir.path());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(deploy::run(listener, config, stop.clone()));
        let client = DeployServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        Service {
            client,
            stop,
            task,
            objects: dir.path().join("objects"),
            _dir: dir,
        }
    }

    fn stored(&self) -> usize {
        std::fs::read_dir(&self.objects)
            .map(|d| d.count())
            .unwrap_or(0)
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// The emulator, with whatever an earlier (failed) run left inserted
/// ejected.
async fn sushy() -> Option<Sushy> {
    let sushy = Sushy::get(
        &Path::new(env!("CARGO_TARGET_TMPDIR")).join("porthole-deploy-sushy"),
        1,
    )?;
    let client = porthole_bmc::redfish::Client::new(Duration::from_secs(10)).unwrap();
    let mut ep = porthole_bmc::redfish::Endpoint::new(&sushy.url);
    ep.system_id = Some(Sushy::system(0));
    for m in [
        porthole_bmc::vmedia::Media::Floppy,
        porthole_bmc::vmedia::Media::Cd,
    ] {
        client.eject_media(&ep, m).await.unwrap();
    }
    assert!(sushy.held().is_empty(), "sushy holds media after eject");
    Some(sushy)
}

/// The deploy ISO, served on 127.0.0.1 (as an image server would).
async fn iso_server(iso: Vec<u8>) -> String {
    let app = axum::Router::new().route("/deploy.iso", get(move || async move { iso }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/deploy.iso")
}

fn node(sushy: &Sushy, deploy_iso: &str) -> DeployNode {
    DeployNode {
        uuid: "1be26c0b-03f2-4d2e-ae87-c02d7f33c123".into(),
        bmc: Some(RedfishAccess {
            address: sushy.url.clone(),
            system_id: Sushy::system(0),
            ..Default::default()
        }),
        deploy_iso: deploy_iso.into(),
        image_source: "http://images/user.qcow2".into(),
        boot_option: "local".into(),
        boot_mode: "uefi".into(),
        port_addresses: vec!["52:54:00:12:34:56".into()],
    }
}

async fn resource(sushy: &Sushy, path: &str) -> Value {
    reqwest::get(format!("{}{path}", sushy.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// sushy's fake driver applies a power change 1-11 s after the request.
async fn wait_power(sushy: &Sushy, want: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let sys = resource(sushy, &Sushy::system(0)).await;
        if sys["PowerState"] == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "PowerState {} after 20 s, not {want}",
            sys["PowerState"]
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `mtype` of one file of a floppy image.
fn mtype(img: &[u8], file: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("floppy.img");
    std::fs::write(&path, img).unwrap();
    let out = Command::new("mtype")
        .args(["-i", path.to_str().unwrap(), &format!("::{file}")])
        .output()
        .expect("mtype (mtools; scripts/setup.sh installs it)");
    assert!(out.status.success(), "mtype {file}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// The flow every store shares; returns the response.
async fn prepare_and_check(svc: &mut Service, sushy: &Sushy) -> PrepareRamdiskResponse {
    capture_logs();
    let iso: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    let iso_url = iso_server(iso.clone()).await;
    let n = node(sushy, &iso_url);
    // Power off first, so PrepareRamdisk has to power on.
    reqwest::Client::new()
        .post(format!(
            "{}{}/Actions/ComputerSystem.Reset",
            sushy.url,
            Sushy::system(0)
        ))
        .json(&serde_json::json!({"ResetType": "ForceOff"}))
        .send()
        .await
        .unwrap();
    wait_power(sushy, "Off").await;
    svc.client
        .validate(ValidateRequest {
            node: Some(n.clone()),
        })
        .await
        .unwrap();
    let resp = svc
        .client
        .prepare_ramdisk(PrepareRamdiskRequest {
            node: Some(n.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.deployment_key.len(), 64);
    assert_eq!(resp.token.len(), 64);
    assert_ne!(resp.deployment_key, resp.token);

    // sushy downloaded both: the CD is the ISO's bytes, the floppy reads
    // back with mtools.
    let held = sushy.held();
    assert!(
        held.contains(&iso),
        "the CD sushy holds is not the deploy ISO"
    );
    let floppy = held
        .iter()
        .find(|b| b.len() == 100 * 1024)
        .expect("sushy holds the floppy");
    let params = mtype(floppy, "parameters.txt");
    let lines: Vec<&str> = params.lines().collect();
    assert_eq!(
        lines,
        [
            format!("ironic_api_url={API_URL}"),
            format!("deployment_id={}", n.uuid),
            format!("deployment_key={}", resp.deployment_key),
            format!("iscsi_target_iqn=iqn-{}", n.uuid),
            "boot_option=local".to_owned(),
            "boot_mode=uefi".to_owned(),
        ]
    );
    assert_eq!(mtype(floppy, "token"), resp.token);

    let fl = resource(sushy, &format!("{}/VirtualMedia/Floppy", Sushy::system(0))).await;
    assert_eq!(fl["Image"], resp.floppy_url.as_str(), "{fl}");
    assert_eq!(fl["Inserted"], true);
    let cd = resource(sushy, &format!("{}/VirtualMedia/Cd", Sushy::system(0))).await;
    assert_eq!(cd["Image"], iso_url.as_str(), "{cd}");
    let sys = resource(sushy, &Sushy::system(0)).await;
    assert_eq!(sys["Boot"]["BootSourceOverrideTarget"], "Cd", "{sys}");
    wait_power(sushy, "On").await;
    // The floppy is at its temp URL until CleanUp.
    assert_eq!(reqwest::get(&resp.floppy_url).await.unwrap().status(), 200);

    svc.client
        .clean_up(CleanUpRequest {
            node: Some(n.clone()),
        })
        .await
        .unwrap();
    for dev in ["Floppy", "Cd"] {
        let v = resource(sushy, &format!("{}/VirtualMedia/{dev}", Sushy::system(0))).await;
        assert_eq!(v["Inserted"], false, "{dev}: {v}");
    }
    assert!(sushy.held().is_empty(), "sushy still holds media");
    let after = reqwest::get(&resp.floppy_url).await.unwrap().status();
    assert!(
        after == 404 || after == 401,
        "floppy URL after CleanUp: {after}"
    );
    // Twice is fine.
    svc.client
        .clean_up(CleanUpRequest { node: Some(n) })
        .await
        .unwrap();
    assert_not_logged(&resp);
    resp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_floppy_and_iso_reach_sushy_and_clean_up_removes_them() {
    let _one = ONE.lock().await;
    let Some(sushy) = sushy().await else { return };
    let mut svc = Service::start(|_, _| {}).await;
    let resp = prepare_and_check(&mut svc, &sushy).await;
    assert!(resp.floppy_url.contains("/objects/"), "{}", resp.floppy_url);
    assert_eq!(reqwest::get(&resp.floppy_url).await.unwrap().status(), 404);
    assert_eq!(svc.stored(), 0, "the floppy's file outlived CleanUp");
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swift_store_floppy_reaches_sushy_through_a_temp_url() {
    let _one = ONE.lock().await;
    let Some(sushy) = sushy().await else { return };
    let Some(_swift) =
        Swift::up(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("porthole-deploy-swift"))
    else {
        return;
    };
    let mut svc = Service::start(|c, dir| {
        let key = dir.join("swift-key");
        std::fs::write(&key, format!("{}\n", Swift::KEY)).unwrap();
        c.store.backend = Backend::Swift;
        c.swift.auth_url = Some(Swift::AUTH_URL.into());
        c.swift.user = Some(Swift::USER.into());
        c.swift.key_file = Some(key);
    })
    .await;
    let resp = prepare_and_check(&mut svc, &sushy).await;
    assert!(
        resp.floppy_url
            .contains("/v1/AUTH_test/ironic_ilo_container/image-1be26c0b-")
            && resp.floppy_url.contains("temp_url_sig="),
        "{}",
        resp.floppy_url
    );
    // The object is gone from Swift (a fresh signature would not help).
    assert_eq!(reqwest::get(&resp.floppy_url).await.unwrap().status(), 404);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_node_is_invalid_argument_and_nothing_is_stored_or_inserted() {
    let _one = ONE.lock().await;
    let Some(sushy) = sushy().await else { return };
    let mut svc = Service::start(|_, _| {}).await;
    let mut n = node(&sushy, "");
    n.port_addresses.clear();
    n.image_source.clear();
    for call in ["validate", "prepare"] {
        let err = match call {
            "validate" => svc
                .client
                .validate(ValidateRequest {
                    node: Some(n.clone()),
                })
                .await
                .unwrap_err(),
            _ => svc
                .client
                .prepare_ramdisk(PrepareRamdiskRequest {
                    node: Some(n.clone()),
                })
                .await
                .unwrap_err(),
        };
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{call}: {err:?}");
        for want in [
            "does not have any port",
            "[\"deploy_iso\"]",
            "['image_source']",
        ] {
            assert!(
                err.message().contains(want),
                "{call}: {want} not in {}",
                err.message()
            );
        }
    }
    let err = svc
        .client
        .prepare_ramdisk(PrepareRamdiskRequest { node: None })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(svc.stored(), 0);
    assert!(sushy.held().is_empty());
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_iso_the_bmc_cannot_fetch_fails_in_its_words_and_leaves_nothing() {
    let _one = ONE.lock().await;
    let Some(sushy) = sushy().await else { return };
    let mut svc = Service::start(|_, _| {}).await;
    let iso_url = iso_server(vec![0; 10])
        .await
        .replace("deploy.iso", "gone.iso");
    let err = svc
        .client
        .prepare_ramdisk(PrepareRamdiskRequest {
            node: Some(node(&sushy, &iso_url)),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().starts_with("deploy failed: ")
            && err.message().contains("insert cd")
            && err
                .message()
                .contains("Cannot download virtual media: got error 404"),
        "{}",
        err.message()
    );
    // The floppy was stored and inserted before the CD failed: both undone.
    assert_eq!(svc.stored(), 0, "the floppy outlived the failure");
    let fl = resource(&sushy, &format!("{}/VirtualMedia/Floppy", Sushy::system(0))).await;
    assert_eq!(fl["Inserted"], false, "{fl}");
    assert!(sushy.held().is_empty());
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_system_is_deploy_failed_with_sushys_404_and_nothing_stored() {
    let _one = ONE.lock().await;
    let Some(sushy) = sushy().await else { return };
    let mut svc = Service::start(|_, _| {}).await;
    let mut n = node(&sushy, "http://127.0.0.1:9/deploy.iso");
    n.bmc.as_mut().unwrap().system_id = "/redfish/v1/Systems/no-such-system".into();
    let err = svc
        .client
        .prepare_ramdisk(PrepareRamdiskRequest { node: Some(n) })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().starts_with("deploy failed: ")
            && err.message().contains("404")
            && err
                .message()
                .contains("Fake system no-such-system was not found"),
        "{}",
        err.message()
    );
    assert_eq!(svc.stored(), 0);
    assert!(sushy.held().is_empty());
    svc.stop().await;
}
