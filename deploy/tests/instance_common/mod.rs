//! What the ContinueDeploy rig tests share: the service in-process
//! (`deploy::run`, embedded store, cache in a temp dir), an image server,
//! a fake ramdisk's `done` port, tgtd LUNs and the stream reader.

#![allow(dead_code)] // each test binary uses its own part

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use deploy::config::Config;
use porthole_proto::deploy::v1::instance_deploy_service_client::InstanceDeployServiceClient;
use porthole_proto::deploy::v1::{
    ContinueDeployRequest, DeployNode, DeployProgress, DeployResult, InstanceImage, IscsiTarget,
};
use porthole_tests::peers::{Iscsi, Lun};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// The service in-process, with its cache and store in a temp dir.
pub struct Service {
    pub client: InstanceDeployServiceClient<Channel>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), deploy::RunError>>,
    dir: tempfile::TempDir,
}

impl Service {
    pub async fn start(configure: impl FnOnce(&mut Config)) -> Service {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.conductor.api_url = Some("http://192.0.2.1:6385".into());
        config.store.http_listen = "127.0.0.1:0".parse().unwrap();
        config.store.http_dir = dir.path().join("objects");
        config.instance.cache_dir = Some(dir.path().join("cache"));
        config.instance.cache_size_mib = 512;
        config.instance.write_timeout = Duration::from_secs(60);
        configure(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(deploy::run(listener, config, stop.clone()));
        let client = InstanceDeployServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        Service {
            client,
            stop,
            task,
            dir,
        }
    }

    /// Files in the image cache (images and partial downloads).
    pub fn cached(&self) -> Vec<PathBuf> {
        files(&self.dir.path().join("cache"))
    }

    /// Objects in the embedded store.
    pub fn stored(&self) -> Vec<PathBuf> {
        files(&self.dir.path().join("objects"))
    }

    pub async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }
}

pub fn files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Image files served over HTTP, GETs counted.
pub struct Images {
    pub url: String,
    pub dir: tempfile::TempDir,
    pub gets: Arc<AtomicUsize>,
}

pub async fn images() -> Images {
    let dir = tempfile::tempdir().unwrap();
    let gets = Arc::new(AtomicUsize::new(0));
    let root = dir.path().to_owned();
    let app = axum::Router::new()
        .route(
            "/{name}",
            axum::routing::get(
                |State((root, gets)): State<(PathBuf, Arc<AtomicUsize>)>,
                 UrlPath(name): UrlPath<String>| async move {
                    gets.fetch_add(1, Ordering::SeqCst);
                    match std::fs::read(root.join(name)) {
                        Ok(b) => b.into_response(),
                        Err(_) => StatusCode::NOT_FOUND.into_response(),
                    }
                },
            ),
        )
        .with_state((root, gets.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Images {
        url: format!("http://{addr}"),
        dir,
        gets,
    }
}

impl Images {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `size` random bytes as `name`.
    pub fn raw(&self, name: &str, size: usize) -> Vec<u8> {
        let mut b = vec![0u8; size];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
            .unwrap();
        std::fs::write(self.path(name), &b).unwrap();
        b
    }

    /// `name` as qcow2 from raw `bytes`.
    pub fn qcow2(&self, name: &str, bytes: &[u8]) {
        let raw = self.path(&format!("{name}.src"));
        std::fs::write(&raw, bytes).unwrap();
        qemu_img(
            &["convert", "-f", "raw", "-O", "qcow2"],
            &[&raw, &self.path(name)],
        );
    }

    pub fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.url)
    }
}

pub fn qemu_img(args: &[&str], paths: &[&Path]) {
    let out = std::process::Command::new("qemu-img")
        .args(args)
        .args(paths)
        .output()
        .expect("qemu-img");
    assert!(out.status.success(), "qemu-img {args:?}: {out:?}");
}

pub fn sha256(b: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, b);
    d.as_ref().iter().map(|x| format!("{x:02x}")).collect()
}

/// A fake deploy ramdisk's `done` port: what each connection sent.
pub async fn ramdisk() -> (u16, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got).await;
            let _ = tx.send(got);
        }
    });
    (port, rx)
}

pub fn iscsi() -> Option<Iscsi> {
    Iscsi::up(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("porthole-deploy-iscsi"))
}

pub fn iqn(test: &str, i: usize) -> String {
    format!("iqn.2026-12.org.porthole:{test}-{}-{i}", std::process::id())
}

pub fn request(lun: &Lun, image: InstanceImage, ramdisk_port: u16) -> ContinueDeployRequest {
    ContinueDeployRequest {
        node: Some(DeployNode {
            uuid: "1be26c0b-03f2-4d2e-ae87-c02d7f33c123".into(),
            boot_option: "local".into(),
            ..Default::default()
        }),
        target: Some(IscsiTarget {
            address: Iscsi::ADDRESS.into(),
            port: Iscsi::PORT.into(),
            iqn: lun.iqn.clone(),
            lun: 1,
            ..Default::default()
        }),
        image: Some(image),
        ramdisk_address: "127.0.0.1".into(),
        ramdisk_port: ramdisk_port.into(),
        skip_boot: true,
    }
}

/// Every progress message, and the result or the final status.
pub async fn run(
    client: &mut InstanceDeployServiceClient<Channel>,
    req: ContinueDeployRequest,
    mut on: impl FnMut(&DeployProgress),
) -> (Vec<DeployProgress>, Result<DeployResult, tonic::Status>) {
    let mut stream = match client.continue_deploy(req).await {
        Ok(r) => r.into_inner(),
        Err(s) => return (vec![], Err(s)),
    };
    let mut seen = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(p)) => {
                on(&p);
                seen.push(p);
            }
            Ok(None) => break,
            Err(s) => return (seen, Err(s)),
        }
    }
    let result = seen
        .last()
        .and_then(|p| p.result.clone())
        .ok_or_else(|| tonic::Status::internal("the stream ended without a result"));
    (seen, result)
}

/// The LUN's first `len` bytes and whether all after them are zero.
pub fn lun_bytes(lun: &Lun, len: usize) -> (Vec<u8>, bool) {
    let all = std::fs::read(&lun.backing).unwrap();
    let rest_zero = all[len..].iter().all(|&b| b == 0);
    (all[..len].to_vec(), rest_zero)
}

pub fn blank(lun: &Lun) -> bool {
    std::fs::read(&lun.backing).unwrap().iter().all(|&b| b == 0)
}

/// The status of a ContinueDeploy expected to fail.
pub async fn refused(svc: &mut Service, req: ContinueDeployRequest) -> tonic::Status {
    let (_, r) = run(&mut svc.client, req, |_| {}).await;
    r.expect_err("the deploy succeeded")
}
