//! ContinueDeploy's boot ISO over gRPC against tgtd (and sushy-tools):
//! deploys of one image share one ISO whose usage_count counts them, also
//! when they run at once; ReleaseBootIso deletes it at 0 and leaves a
//! user's ISO alone; with sushy the node gets the ISO as its CD and is
//! booted from it, and BootInstance puts an ejected ISO back.

mod instance_common;

use std::path::Path;
use std::time::Duration;

use instance_common::*;
use porthole_proto::deploy::v1::{
    BootInstanceRequest, ContinueDeployRequest, DeployNode, InstanceImage, RedfishAccess,
    ReleaseBootIsoRequest,
};
use porthole_tests::peers::{Lun, Sushy};

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
