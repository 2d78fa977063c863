//! ContinueDeploy end to end over gRPC, in-process (`deploy::run`, the
//! embedded store) against the rig's tgtd (`iscsi-up.sh`, real LUNs) and a
//! local image server: raw and qcow2 whole-disk images land on the LUN
//! byte for byte (read from the LUN's backing file), the progress stream
//! reports the write, the fake ramdisk hears `done`; refusals (too large
//! for root_gb, checksum mismatch, unreachable URL) and target failures
//! (wrong IQN, target deleted mid-write) are clear errors and nothing is
//! written; deploys of one image share one boot ISO (usage_count), also
//! concurrently, and ReleaseBootIso deletes it at 0; with sushy-tools the
//! node gets the boot ISO as its CD and is booted from it.

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
    BootInstanceRequest, ContinueDeployRequest, DeployNode, DeployProgress, DeployResult,
    InstanceImage, IscsiTarget, RedfishAccess, ReleaseBootIsoRequest,
};
use porthole_tests::peers::{Iscsi, Lun, Sushy};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// The service in-process, with its cache and store in a temp dir.
struct Service {
    client: InstanceDeployServiceClient<Channel>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), deploy::RunError>>,
    dir: tempfile::TempDir,
}

impl Service {
    async fn start(configure: impl FnOnce(&mut Config)) -> Service {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.conductor.api_url = Some("http://192.0.2.1:6385".into());
        config.store.http_listen = "127.0.0.1:0".parse().unwrap();
        config.store.http_dir = dir.path().join("objects");
        config.instance.cache_dir = dir.path().join("cache");
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
    fn cached(&self) -> Vec<PathBuf> {
        files(&self.dir.path().join("cache"))
    }

    /// Objects in the embedded store.
    fn stored(&self) -> Vec<PathBuf> {
        files(&self.dir.path().join("objects"))
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }
}

fn files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Image files served over HTTP, GETs counted.
struct Images {
    url: String,
    dir: tempfile::TempDir,
    gets: Arc<AtomicUsize>,
}

async fn images() -> Images {
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
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `size` random bytes as `name`.
    fn raw(&self, name: &str, size: usize) -> Vec<u8> {
        let mut b = vec![0u8; size];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
            .unwrap();
        std::fs::write(self.path(name), &b).unwrap();
        b
    }

    /// `name` as qcow2 from raw `bytes`.
    fn qcow2(&self, name: &str, bytes: &[u8]) {
        let raw = self.path(&format!("{name}.src"));
        std::fs::write(&raw, bytes).unwrap();
        qemu_img(
            &["convert", "-f", "raw", "-O", "qcow2"],
            &[&raw, &self.path(name)],
        );
    }

    fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.url)
    }
}

fn qemu_img(args: &[&str], paths: &[&Path]) {
    let out = std::process::Command::new("qemu-img")
        .args(args)
        .args(paths)
        .output()
        .expect("qemu-img");
    assert!(out.status.success(), "qemu-img {args:?}: {out:?}");
}

fn sha256(b: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, b);
    d.as_ref().iter().map(|x| format!("{x:02x}")).collect()
}

/// A fake deploy ramdisk's `done` port: what each connection sent.
async fn ramdisk() -> (u16, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
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

fn iscsi() -> Option<Iscsi> {
    Iscsi::up(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("porthole-deploy-iscsi"))
}

fn iqn(test: &str, i: usize) -> String {
    format!("iqn.2026-12.org.porthole:{test}-{}-{i}", std::process::id())
}

fn request(lun: &Lun, image: InstanceImage, ramdisk_port: u16) -> ContinueDeployRequest {
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
async fn run(
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
fn lun_bytes(lun: &Lun, len: usize) -> (Vec<u8>, bool) {
    let all = std::fs::read(&lun.backing).unwrap();
    let rest_zero = all[len..].iter().all(|&b| b == 0);
    (all[..len].to_vec(), rest_zero)
}

fn blank(lun: &Lun) -> bool {
    std::fs::read(&lun.backing).unwrap().iter().all(|&b| b == 0)
}

#[tokio::test]
async fn raw_and_qcow2_whole_disk_images_land_on_the_lun_and_the_ramdisk_hears_done() {
    let Some(tgt) = iscsi() else { return };
    let imgs = images().await;
    let raw = imgs.raw("disk.raw", 3 << 20);
    let other = {
        let mut b = imgs.raw("scratch", 5 << 20);
        b[..4096].fill(0); // a hole qcow2 keeps sparse
        b
    };
    imgs.qcow2("disk.qcow2", &other);
    let mut svc = Service::start(|_| {}).await;
    for (name, want, format) in [("disk.raw", &raw, "raw"), ("disk.qcow2", &other, "qcow2")] {
        let lun = tgt.add(&iqn("whole", want.len()), "16M");
        let (port, mut heard) = ramdisk().await;
        let image = InstanceImage {
            image_source: imgs.url(name),
            image_os_hash_algo: "sha256".into(),
            image_os_hash_value: sha256(&std::fs::read(imgs.path(name)).unwrap()),
            root_gb: 1,
            ..Default::default()
        };
        let (seen, result) = run(&mut svc.client, request(&lun, image, port), |_| {}).await;
        let result = result.unwrap_or_else(|s| panic!("{name}: {s:?}"));
        assert_eq!(result.image_format, format);
        assert_eq!(result.virtual_size, want.len() as u64);
        assert!(result.verified, "{name}: not read back");
        let (bytes, rest_zero) = lun_bytes(&lun, want.len());
        assert!(
            bytes == *want,
            "{name}: the LUN's bytes differ from the image"
        );
        assert!(rest_zero, "{name}: bytes written past the image");
        assert_eq!(heard.recv().await.unwrap(), b"done", "{name}");
        let phases: Vec<&str> = seen.iter().map(|p| p.phase.as_str()).collect();
        for p in ["fetch", "check", "write", "verify", "notify", "done"] {
            assert!(phases.contains(&p), "{name}: no {p} in {phases:?}");
        }
        let writes: Vec<&DeployProgress> = seen.iter().filter(|p| p.phase == "write").collect();
        assert!(
            writes.iter().any(|p| p.percent >= 100.0),
            "{name}: {writes:?}"
        );
        assert!(writes.iter().all(|p| p.bytes_total == want.len() as u64));
    }
    // Deployed again: from the cache, no second download.
    let gets = imgs.gets.load(Ordering::SeqCst);
    let lun = tgt.add(&iqn("whole-again", 0), "16M");
    let (port, _heard) = ramdisk().await;
    let image = InstanceImage {
        image_source: imgs.url("disk.raw"),
        ..Default::default()
    };
    run(&mut svc.client, request(&lun, image, port), |_| {})
        .await
        .1
        .unwrap();
    assert_eq!(imgs.gets.load(Ordering::SeqCst), gets, "downloaded again");
    assert!(lun_bytes(&lun, raw.len()).0 == raw);
    svc.stop().await;
}

/// The status of a ContinueDeploy expected to fail.
async fn refused(svc: &mut Service, req: ContinueDeployRequest) -> tonic::Status {
    let (_, r) = run(&mut svc.client, req, |_| {}).await;
    r.expect_err("the deploy succeeded")
}

#[tokio::test]
async fn too_large_bad_checksum_and_unreachable_images_are_refused_before_any_write() {
    let Some(tgt) = iscsi() else { return };
    let imgs = images().await;
    imgs.raw("disk.raw", 1 << 20);
    // `create` wants the size after the name.
    let out = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(imgs.path("big.qcow2"))
        .arg("2G")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut svc = Service::start(|_| {}).await;
    let lun = tgt.add(&iqn("refusals", 0), "16M");
    let (port, mut heard) = ramdisk().await;
    let cases = [
        (
            InstanceImage {
                image_source: imgs.url("big.qcow2"),
                root_gb: 1,
                ..Default::default()
            },
            "is too large for the node's root_gb: its virtual size is 2147483648 bytes, root_gb 1 is 1073741824 bytes",
        ),
        (
            InstanceImage {
                image_source: imgs.url("disk.raw"),
                image_checksum: "0123456789abcdef0123456789abcdef".into(),
                ..Default::default()
            },
            "image checksum mismatch: md5 of ",
        ),
        (
            InstanceImage {
                image_source: format!("http://{closed}/disk.raw"),
                ..Default::default()
            },
            "cannot download image http://",
        ),
        (
            InstanceImage {
                image_source: imgs.url("nothere.raw"),
                ..Default::default()
            },
            "the server answered 404",
        ),
        (
            // 16 MiB LUN, 2 GiB image, root_gb not set: the LUN's size.
            InstanceImage {
                image_source: imgs.url("big.qcow2"),
                ..Default::default()
            },
            "does not fit the target iscsi://127.0.0.1:3260/",
        ),
    ];
    for (image, want) in cases {
        let what = image.image_source.clone();
        let s = refused(&mut svc, request(&lun, image, port)).await;
        assert_eq!(s.code(), tonic::Code::FailedPrecondition, "{what}: {s:?}");
        assert!(
            s.message().starts_with("deploy failed: "),
            "{what}: {}",
            s.message()
        );
        assert!(s.message().contains(want), "{what}: {}", s.message());
        assert!(blank(&lun), "{what}: the LUN was written");
        assert!(
            heard.try_recv().is_err(),
            "{what}: the ramdisk was told done"
        );
    }
    // Only the images that passed their checks stay cached: none with a
    // checksum mismatch, no partial download.
    let cached = svc.cached();
    assert!(
        cached
            .iter()
            .all(|p| !p.to_string_lossy().ends_with(".part")),
        "{cached:?}"
    );
    assert_eq!(cached.len(), 1, "{cached:?}"); // big.qcow2, which downloaded fine
                                               // Missing fields: INVALID_ARGUMENT naming each.
    let mut req = request(&lun, InstanceImage::default(), port);
    req.target.as_mut().unwrap().iqn.clear();
    let s = refused(&mut svc, req).await;
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
    for f in ["target.iqn is required", "image.image_source is required"] {
        assert!(s.message().contains(f), "{}", s.message());
    }
    svc.stop().await;
}

#[tokio::test]
async fn a_wrong_iqn_and_a_target_gone_mid_write_are_deploy_failed_in_the_tools_words() {
    let Some(tgt) = iscsi() else { return };
    let imgs = images().await;
    imgs.raw("small.raw", 1 << 20);
    imgs.raw("big.raw", 160 << 20);
    let mut svc = Service::start(|c| {
        c.instance.write_stall_timeout = Duration::from_secs(3);
        c.instance.verify = false;
    })
    .await;
    let lun = tgt.add(&iqn("wrong", 0), "16M");
    let (port, mut heard) = ramdisk().await;
    let image = InstanceImage {
        image_source: imgs.url("small.raw"),
        ..Default::default()
    };
    let mut req = request(&lun, image, port);
    req.target.as_mut().unwrap().iqn = "iqn.2026-12.org.porthole:no-such-target".into();
    let s = refused(&mut svc, req).await;
    assert_eq!(s.code(), tonic::Code::FailedPrecondition, "{s:?}");
    assert!(
        s.message()
            .contains("iqn.2026-12.org.porthole:no-such-target")
            && s.message().contains("Target not found"),
        "{}",
        s.message()
    );
    assert!(heard.try_recv().is_err());

    let gone = tgt.add(&iqn("gone", 0), "192M");
    let image = InstanceImage {
        image_source: imgs.url("big.raw"),
        ..Default::default()
    };
    let mut removed = false;
    let (seen, r) = run(&mut svc.client, request(&gone, image, port), |p| {
        if p.phase == "write" && p.percent > 0.0 && !removed {
            gone.remove_target();
            removed = true;
        }
    })
    .await;
    let s = r.expect_err("the write to a deleted target succeeded");
    assert!(removed, "the write never reported progress: {seen:?}");
    assert_eq!(s.code(), tonic::Code::FailedPrecondition, "{s:?}");
    assert!(
        s.message()
            .starts_with("deploy failed: writing the image to iscsi://127.0.0.1:3260/")
            && s.message().contains("stalled at ")
            && s.message().contains("no progress for 3s"),
        "{}",
        s.message()
    );
    assert!(heard.try_recv().is_err(), "done after a failed write");
    svc.stop().await;
}

/// A whole-disk deploy that boots from a built ISO (netboot).
fn netboot(lun: &Lun, imgs: &Images, port: u16) -> ContinueDeployRequest {
    let mut req = request(
        lun,
        InstanceImage {
            image_source: imgs.url("disk.raw"),
            kernel: imgs.url("vmlinuz"),
            ramdisk: imgs.url("initrd"),
            ..Default::default()
        },
        port,
    );
    req.node.as_mut().unwrap().boot_option = "netboot".into();
    req
}

async fn release(svc: &mut Service, boot_iso: &str) -> (u64, bool) {
    let r = svc
        .client
        .release_boot_iso(ReleaseBootIsoRequest {
            boot_iso: boot_iso.into(),
        })
        .await
        .unwrap()
        .into_inner();
    (r.usage_count, r.deleted)
}

fn kernel_and_ramdisk(imgs: &Images) {
    std::fs::write(imgs.path("vmlinuz"), b"a kernel, as far as this test goes").unwrap();
    std::fs::write(imgs.path("initrd"), b"a ramdisk").unwrap();
}

#[tokio::test]
async fn deploys_of_one_image_share_one_boot_iso_and_release_deletes_it_at_zero() {
    if !Path::new("/usr/lib/ISOLINUX/isolinux.bin").exists() {
        eprintln!("notice: isolinux missing; skipping");
        return;
    }
    let Some(tgt) = iscsi() else { return };
    let imgs = images().await;
    imgs.raw("disk.raw", 1 << 20);
    kernel_and_ramdisk(&imgs);
    let mut svc = Service::start(|c| c.instance.verify = false).await;
    let luns: Vec<Lun> = (0..6).map(|i| tgt.add(&iqn("share", i), "4M")).collect();
    let (port, _heard) = ramdisk().await;

    let one = run(&mut svc.client, netboot(&luns[0], &imgs, port), |_| {}).await;
    let one = one.1.unwrap();
    assert_eq!(
        (one.boot_iso_origin.as_str(), one.usage_count),
        ("built", 1)
    );
    assert!(one.boot_iso.starts_with("store:boot-"), "{}", one.boot_iso);
    let two = run(&mut svc.client, netboot(&luns[1], &imgs, port), |_| {}).await;
    let two = two.1.unwrap();
    assert_eq!(
        (two.boot_iso_origin.as_str(), two.usage_count),
        ("shared", 2)
    );
    assert_eq!(two.boot_iso, one.boot_iso);
    assert_eq!(svc.stored().len(), 1, "{:?}", svc.stored());
    assert_eq!(release(&mut svc, &one.boot_iso).await, (1, false));
    assert_eq!(svc.stored().len(), 1);
    assert_eq!(release(&mut svc, &two.boot_iso).await, (0, true));
    assert!(svc.stored().is_empty(), "{:?}", svc.stored());

    // Four at once: counts 1..=4, one ISO, and four releases delete it.
    let runs = luns[2..].iter().map(|lun| {
        let mut client = svc.client.clone();
        let req = netboot(lun, &imgs, port);
        async move { run(&mut client, req, |_| {}).await.1.unwrap() }
    });
    let results = futures::future::join_all(runs).await;
    let mut counts: Vec<u64> = results.iter().map(|r| r.usage_count).collect();
    counts.sort();
    assert_eq!(counts, [1, 2, 3, 4]);
    assert_eq!(
        results
            .iter()
            .filter(|r| r.boot_iso_origin == "built")
            .count(),
        1
    );
    assert_eq!(svc.stored().len(), 1, "{:?}", svc.stored());
    let iso = results[0].boot_iso.clone();
    let mut left: Vec<(u64, bool)> = Vec::new();
    for _ in 0..4 {
        left.push(release(&mut svc, &iso).await);
    }
    assert_eq!(left, [(3, false), (2, false), (1, false), (0, true)]);
    assert!(svc.stored().is_empty());
    // A user's ISO is never ours to count.
    assert_eq!(
        release(&mut svc, "http://images/user.iso").await,
        (0, false)
    );
    svc.stop().await;
}

#[tokio::test]
async fn with_sushy_the_node_gets_the_boot_iso_as_its_cd_and_boots_from_it() {
    if !Path::new("/usr/lib/ISOLINUX/isolinux.bin").exists() {
        eprintln!("notice: isolinux missing; skipping");
        return;
    }
    let Some(tgt) = iscsi() else { return };
    let Some(sushy) = Sushy::get(
        &Path::new(env!("CARGO_TARGET_TMPDIR")).join("porthole-deploy-iscsi-sushy"),
        1,
    ) else {
        return;
    };
    let imgs = images().await;
    imgs.raw("disk.raw", 1 << 20);
    kernel_and_ramdisk(&imgs);
    let mut svc = Service::start(|_| {}).await;
    let lun = tgt.add(&iqn("boot", 0), "4M");
    let (port, mut heard) = ramdisk().await;
    let mut req = netboot(&lun, &imgs, port);
    req.skip_boot = false;
    req.node.as_mut().unwrap().bmc = Some(RedfishAccess {
        address: sushy.url.clone(),
        system_id: Sushy::system(0),
        ..Default::default()
    });
    let (seen, r) = run(&mut svc.client, req, |_| {}).await;
    let r = r.unwrap();
    assert!(seen.iter().any(|p| p.phase == "boot"));
    assert_eq!(heard.recv().await.unwrap(), b"done");
    // sushy downloaded the stored ISO: the same bytes as the store holds.
    let stored = svc.stored();
    assert_eq!(stored.len(), 1, "{stored:?}");
    let iso = std::fs::read(&stored[0]).unwrap();
    assert!(
        sushy.held().contains(&iso),
        "sushy does not hold the boot ISO"
    );
    let sys: serde_json::Value = reqwest::get(format!("{}{}", sushy.url, Sushy::system(0)))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sys["Boot"]["BootSourceOverrideTarget"], "Cd", "{sys}");

    // The BMC forgot the CD (as after a power cycle): BootInstance puts
    // the same ISO back and boots from it.
    let client = porthole_bmc::redfish::Client::new(Duration::from_secs(10)).unwrap();
    let mut ep = porthole_bmc::redfish::Endpoint::new(&sushy.url);
    ep.system_id = Some(Sushy::system(0));
    client
        .eject_media(&ep, porthole_bmc::vmedia::Media::Cd)
        .await
        .unwrap();
    assert!(!sushy.held().contains(&iso), "the eject did not take");
    let node = DeployNode {
        uuid: "1be26c0b-03f2-4d2e-ae87-c02d7f33c123".into(),
        bmc: Some(RedfishAccess {
            address: sushy.url.clone(),
            system_id: Sushy::system(0),
            ..Default::default()
        }),
        ..Default::default()
    };
    let b = svc
        .client
        .boot_instance(BootInstanceRequest {
            node: Some(node.clone()),
            boot_iso: r.boot_iso.clone(),
            persistent: true,
            skip_reset: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(["ForceRestart", "On"].contains(&b.reset.as_str()), "{b:?}");
    assert!(
        sushy.held().contains(&iso),
        "BootInstance did not re-insert the ISO"
    );
    // Without a BMC address: INVALID_ARGUMENT.
    let s = svc
        .client
        .boot_instance(BootInstanceRequest::default())
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
    assert_eq!(release(&mut svc, &r.boot_iso).await, (0, true));
    svc.stop().await;
}

#[tokio::test]
async fn a_chap_target_is_written_with_the_secret_in_a_file_that_is_gone_after() {
    let Some(tgt) = iscsi() else { return };
    let imgs = images().await;
    let raw = imgs.raw("disk.raw", 2 << 20);
    let mut svc = Service::start(|_| {}).await;
    let mut lun = tgt.add(&iqn("chap", 0), "8M");
    let user = format!("porthole{}", std::process::id());
    lun.require_chap(&user, "Chap-4242-secret");
    let (port, mut heard) = ramdisk().await;
    let image = InstanceImage {
        image_source: imgs.url("disk.raw"),
        ..Default::default()
    };
    let with = |password: &str| {
        let mut req = request(&lun, image.clone(), port);
        let t = req.target.as_mut().unwrap();
        t.chap_username = user.clone();
        t.chap_password = password.into();
        req
    };
    // Without CHAP, and with a wrong password: the target's refusal.
    for req in [request(&lun, image.clone(), port), with("wrong-password")] {
        let s = refused(&mut svc, req).await;
        assert_eq!(s.code(), tonic::Code::FailedPrecondition, "{s:?}");
        assert!(
            s.message().contains("Authentication failure"),
            "{}",
            s.message()
        );
    }
    assert!(blank(&lun));
    let r = run(&mut svc.client, with("Chap-4242-secret"), |_| {})
        .await
        .1;
    let r = r.unwrap();
    assert!(r.verified);
    assert!(
        lun_bytes(&lun, raw.len()).0 == raw,
        "the LUN differs from the image"
    );
    assert_eq!(heard.recv().await.unwrap(), b"done");
    // The secret files are gone; only the cached image is left.
    let cached = svc.cached();
    assert!(
        cached.iter().all(|p| !p
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("chap-")),
        "{cached:?}"
    );
    assert_eq!(cached.len(), 1, "{cached:?}");
    svc.stop().await;
}

/// `sfdisk --dump` of the LUN's backing file.
fn sfdisk(lun: &Lun) -> String {
    let out = std::process::Command::new("sfdisk")
        .arg("--dump")
        .arg(&lun.backing)
        .output()
        .expect("sfdisk");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `blkid -p` of the LUN at `offset`: TYPE and LABEL.
fn blkid(lun: &Lun, offset: u64) -> String {
    let out = std::process::Command::new("blkid")
        .args(["-p", "-o", "export", "-O", &offset.to_string()])
        .arg(&lun.backing)
        .output()
        .expect("blkid");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn a_partition_image_gets_ironics_layout_swap_ephemeral_and_the_image_in_root() {
    if std::process::Command::new("sfdisk")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("notice: sfdisk missing (Debian fdisk); skipping");
        assert!(
            std::env::var_os("PORTHOLE_REQUIRE_PEERS").is_none(),
            "sfdisk missing"
        );
        return;
    }
    let Some(tgt) = iscsi() else { return };
    let imgs = images().await;
    let root_fs = imgs.raw("root.raw", 2 << 20);
    let mut svc = Service::start(|_| {}).await;
    // 1 GiB ephemeral + 64 MiB swap + 1 GiB root + 1 MiB: a sparse 2.1 GiB LUN.
    let lun = tgt.add(&iqn("partition", 0), "2120M");
    let (port, mut heard) = ramdisk().await;
    let image = InstanceImage {
        image_source: imgs.url("root.raw"),
        image_type: "partition".into(),
        root_gb: 1,
        swap_mb: 64,
        ephemeral_gb: 1,
        ephemeral_format: "ext4".into(),
        ..Default::default()
    };
    let (_, r) = run(&mut svc.client, request(&lun, image.clone(), port), |_| {}).await;
    let r = r.unwrap();
    assert_eq!(r.root_partition, 3);
    assert!(r.verified);
    let table = sfdisk(&lun);
    let mib = 2048u64; // sectors
    let gib = 1024 * mib;
    for want in [
        "label: dos".to_owned(),
        format!("start=        {mib}, size=     {gib}, type=83"),
        format!("start=     {}, size=      {}, type=82", mib + gib, 64 * mib),
        format!(
            "start=     {}, size=     {gib}, type=83, bootable",
            mib + gib + 64 * mib
        ),
    ] {
        assert!(table.contains(&want), "no {want:?} in\n{table}");
    }
    let root_at = (mib + gib + 64 * mib) * 512;
    let all = std::fs::File::open(&lun.backing).unwrap();
    let mut got = vec![0u8; root_fs.len()];
    std::os::unix::fs::FileExt::read_exact_at(&all, &mut got, root_at).unwrap();
    assert!(got == root_fs, "the root partition does not hold the image");
    let swap = blkid(&lun, (mib + gib) * 512);
    assert!(swap.contains("TYPE=swap"), "{swap}");
    let eph = blkid(&lun, mib * 512);
    assert!(
        eph.contains("TYPE=ext4") && eph.contains("LABEL=ephemeral0"),
        "{eph}"
    );
    assert_eq!(heard.recv().await.unwrap(), b"done");
    // No scratch file (MBR, swap page, ephemeral file system) is left.
    assert_eq!(svc.cached().len(), 1, "{:?}", svc.cached());

    // Bad partition fields: INVALID_ARGUMENT, nothing written.
    let blank_lun = tgt.add(&iqn("partition-bad", 0), "8M");
    for (change, want) in [
        (
            (|i: &mut InstanceImage| i.root_gb = 0) as fn(&mut InstanceImage),
            "a partition image needs root_gb",
        ),
        (
            |i| i.ephemeral_format = "zfs".into(),
            "ephemeral_format \"zfs\" is not supported",
        ),
        (
            |i| i.image_type = "lvm".into(),
            "image.image_type \"lvm\" is neither",
        ),
    ] {
        let mut img = image.clone();
        change(&mut img);
        let s = refused(&mut svc, request(&blank_lun, img, port)).await;
        assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
        assert!(s.message().contains(want), "{}", s.message());
    }
    // The layout does not fit an 8 MiB LUN: refused before the write.
    let s = refused(&mut svc, request(&blank_lun, image, port)).await;
    assert!(
        s.message().contains("does not fit the target"),
        "{}",
        s.message()
    );
    assert!(blank(&blank_lun));
    svc.stop().await;
}

/// Processes whose command line mentions `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains(needle) && c.contains("qemu-img") {
                out.push(c);
            }
        }
    }
    out
}

#[tokio::test]
async fn a_caller_that_goes_away_mid_write_stops_the_write() {
    let Some(tgt) = iscsi() else { return };
    let imgs = images().await;
    imgs.raw("big.raw", 160 << 20);
    let mut svc = Service::start(|c| c.instance.verify = false).await;
    let lun = tgt.add(&iqn("dropped", 0), "192M");
    let (port, mut heard) = ramdisk().await;
    let image = InstanceImage {
        image_source: imgs.url("big.raw"),
        ..Default::default()
    };
    let mut stream = svc
        .client
        .continue_deploy(request(&lun, image, port))
        .await
        .unwrap()
        .into_inner();
    loop {
        let p = stream.message().await.unwrap().expect("the stream ended early");
        if p.phase == "write" && p.percent > 0.0 {
            break;
        }
    }
    assert!(!processes_with(&lun.iqn).is_empty(), "no qemu-img writing");
    drop(stream);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !processes_with(&lun.iqn).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "qemu-img still runs 5 s after the caller left: {:?}",
            processes_with(&lun.iqn)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(heard.try_recv().is_err(), "done after a cancelled write");
    svc.stop().await;
}
