//! ContinueDeploy end to end over gRPC, in-process (`deploy::run`, the
//! embedded store) against the rig's tgtd (`iscsi-up.sh`, real LUNs) and a
//! local image server: raw and qcow2 whole-disk images land on the LUN
//! byte for byte (read from the LUN's backing file), the progress stream
//! reports the write, the fake ramdisk hears `done`; refusals (too large
//! for root_gb, checksum mismatch, unreachable URL) and target failures
//! (wrong IQN, target deleted mid-write, CHAP refused) are clear errors
//! and nothing is written; a partition image gets its table, swap,
//! ephemeral file system and root; a caller that leaves stops the write.
//! The boot ISO's tests are in `continue_deploy_boot.rs`.

mod instance_common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use instance_common::*;
use porthole_proto::deploy::v1::{DeployProgress, InstanceImage};
use porthole_tests::peers::Lun;

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
        let p = stream
            .message()
            .await
            .unwrap()
            .expect("the stream ended early");
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
