//! The continue step and what follows it against the in-process fake
//! ([`super::Fake`] also serves `InstanceDeployService`): ContinueDeploy's
//! request and stream (progress and the boot ISO recorded, a failure in the
//! service's words), tear down's power off and ReleaseBootIso, and the
//! boot ISO inserted again before a reboot.

use super::*;

fn progress(phase: &str, percent: f64) -> pb::DeployProgress {
    pb::DeployProgress {
        phase: phase.into(),
        bytes_written: (percent * 10.0) as u64,
        bytes_total: 1000,
        percent,
        result: None,
    }
}

fn done(boot_iso: &str, origin: &str) -> pb::DeployProgress {
    pb::DeployProgress {
        result: Some(pb::DeployResult {
            boot_iso: boot_iso.into(),
            boot_iso_origin: origin.into(),
            usage_count: 2,
            virtual_size: 1000,
            ..Default::default()
        }),
        ..progress("done", 100.0)
    }
}

/// A node in `wait call-back` with its target recorded, as
/// pass_deploy_info leaves it, with `instance_info` extras.
async fn called_back(r: &Rig, extra: serde_json::Value) -> (String, DeployCallback) {
    let u = available(&r.c).await;
    r.c.store
        .modify_node(&u, move |n: &mut Node| {
            if let serde_json::Value::Object(m) = extra {
                n.instance_info.extend(m);
            }
            n.instance_info
                .insert("capabilities".into(), json!({"boot_option": "netboot"}));
            n.provision_state = "deploying".into();
            Ok::<_, ServiceError>(())
        })
        .await
        .unwrap();
    let cb = DeployCallback {
        address: "10.0.0.7".parse().unwrap(),
        port: 3260,
        iqn: format!("iqn-{u}"),
        lun: 1,
    };
    (u, cb)
}

#[tokio::test]
async fn continue_sends_target_and_image_records_progress_and_the_boot_iso() {
    let mut steps = vec![progress("fetch", 0.0), progress("check", 0.0)];
    steps.extend((0..=100).map(|p| progress("write", p as f64)));
    steps.push(progress("notify", 100.0));
    steps.push(done("store:boot-abc.iso", "shared"));
    let r = rig(Fake {
        progress: steps,
        ..Default::default()
    })
    .await;
    let (u, cb) = called_back(
        &r,
        json!({"image_checksum": "d41d8cd98f00b204e9800998ecf8427e", "root_gb": "10",
               "swap_mb": 0, "kernel": "http://images/k", "ramdisk": "http://images/r"}),
    )
    .await;
    let before = r.c.store.get_node(&u).await.unwrap().updated_at;
    let n = r.c.store.get_node(&u).await.unwrap();
    let iscsi = r.c.interfaces.for_node(&n).deploy;
    assert_eq!(iscsi.continue_deploy(&n, &cb).await, Ok(Outcome::Done));

    let sent = r.fake.continued.lock().unwrap()[0].clone();
    let t = sent.target.unwrap();
    assert_eq!(
        (t.address.as_str(), t.port, t.iqn.as_str(), t.lun),
        ("10.0.0.7", 3260, format!("iqn-{u}").as_str(), 1)
    );
    assert_eq!(sent.ramdisk_address, "10.0.0.7");
    assert!(!sent.skip_boot, "the service boots the instance");
    let img = sent.image.unwrap();
    assert_eq!(img.image_source, "http://images/user.qcow2");
    assert_eq!(img.image_checksum, "d41d8cd98f00b204e9800998ecf8427e");
    assert_eq!((img.root_gb, img.kernel.as_str()), (10, "http://images/k"));
    assert_eq!(sent.node.unwrap().boot_option, "netboot");

    let n = r.c.store.get_node(&u).await.unwrap();
    assert_eq!(n.instance_info["boot_iso"], "store:boot-abc.iso");
    assert_eq!(n.driver_internal_info["boot_iso_origin"], "shared");
    assert_eq!(
        n.driver_internal_info["deploy_progress"],
        json!({"phase": "done", "bytes_written": 1000, "bytes_total": 1000, "percent": 100.0})
    );
    assert!(n.updated_at >= before);
    assert!(r.fake.released.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_failed_stream_is_the_services_words_and_nothing_is_recorded() {
    let words = "image http://images/user.qcow2 is too large for the node's root_gb: its virtual size is 2147483648 bytes, root_gb 1 is 1073741824 bytes";
    let r = rig(Fake {
        progress: vec![progress("fetch", 0.0), progress("check", 0.0)],
        continue_fails: Some(words.into()),
        ..Default::default()
    })
    .await;
    let (u, cb) = called_back(&r, json!({})).await;
    let n = r.c.store.get_node(&u).await.unwrap();
    let iscsi = r.c.interfaces.for_node(&n).deploy;
    let e = iscsi.continue_deploy(&n, &cb).await.unwrap_err();
    assert_eq!(e.0, words);
    let n = r.c.store.get_node(&u).await.unwrap();
    assert_eq!(n.driver_internal_info["deploy_progress"]["phase"], "check");
    assert!(!n.instance_info.contains_key("boot_iso"));
    // A stream that ends without `done` is a failure too.
    let r = rig(Fake {
        progress: vec![progress("fetch", 0.0)],
        ..Default::default()
    })
    .await;
    let (u, cb) = called_back(&r, json!({})).await;
    let n = r.c.store.get_node(&u).await.unwrap();
    let iscsi = r.c.interfaces.for_node(&n).deploy;
    let e = iscsi.continue_deploy(&n, &cb).await.unwrap_err();
    assert!(e.0.contains("without a result"), "{e}");
}

/// Undeploy of an active node: powered off, CleanUp, ReleaseBootIso of
/// the service's ISO, everything the deploy recorded forgotten. A user's
/// ISO is never released.
#[tokio::test]
async fn tear_down_powers_off_cleans_up_and_releases_the_services_boot_iso() {
    for (origin, released) in [("shared", true), ("given", false)] {
        let r = rig(Fake::default()).await;
        let u = available(&r.c).await;
        r.c.store
            .modify_node(&u, move |n: &mut Node| {
                n.provision_state = "active".into();
                n.power_state = Some("power on".into());
                n.instance_info
                    .insert("boot_iso".into(), json!("store:boot-abc.iso"));
                n.driver_internal_info
                    .insert("boot_iso_origin".into(), json!(origin));
                n.driver_internal_info
                    .insert("deploy_progress".into(), json!({"phase": "done"}));
                Ok::<_, ServiceError>(())
            })
            .await
            .unwrap();
        r.c.set_provision_state(&u, "deleted", None).await.unwrap();
        let n = settled(&r.c, &u, "available").await;
        assert_eq!(n.power_state.as_deref(), Some("power off"));
        assert_eq!(calls(&r.fake), ["clean_up"]);
        let want: Vec<String> = if released {
            vec!["store:boot-abc.iso".into()]
        } else {
            vec![]
        };
        assert_eq!(*r.fake.released.lock().unwrap(), want, "{origin}");
        assert!(n.instance_info.get("boot_iso").is_none());
        assert!(n.driver_internal_info.get("deploy_progress").is_none());
        assert!(n.driver_internal_info.get("boot_iso_origin").is_none());
    }
}

/// A reboot of the active node re-inserts its boot ISO (no reset: the
/// conductor reboots it); a node without one, or not active, is not sent.
#[tokio::test]
async fn a_reboot_of_the_active_node_inserts_its_boot_iso_first() {
    let r = rig(Fake::default()).await;
    let u = available(&r.c).await;
    r.c.store
        .modify_node(&u, |n: &mut Node| {
            n.provision_state = "active".into();
            n.instance_info
                .insert("boot_iso".into(), json!("store:boot-abc.iso"));
            n.instance_info
                .insert("capabilities".into(), json!({"boot_option": "netboot"}));
            Ok::<_, ServiceError>(())
        })
        .await
        .unwrap();
    let n = r.c.store.get_node(&u).await.unwrap();
    let iscsi = r.c.interfaces.for_node(&n).deploy;
    iscsi.prepare_power_on(&n).await.unwrap();
    let sent = r.fake.booted.lock().unwrap().clone();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].boot_iso, "store:boot-abc.iso");
    assert!(sent[0].skip_reset && !sent[0].persistent);
    assert_eq!(
        sent[0].node.as_ref().unwrap().bmc.as_ref().unwrap().address,
        "http://127.0.0.1:8000"
    );
    let mut deploying = n.clone();
    deploying.provision_state = "deploying".into();
    iscsi.prepare_power_on(&deploying).await.unwrap();
    let mut no_iso = n.clone();
    no_iso.instance_info.remove("boot_iso");
    iscsi.prepare_power_on(&no_iso).await.unwrap();
    assert_eq!(r.fake.booted.lock().unwrap().len(), 1);
}

/// A rebuild of a node whose boot ISO the service chose: the earlier ISO
/// is not sent as the user's, and its count is released once the new one
/// is recorded.
#[tokio::test]
async fn a_rebuild_releases_the_earlier_deploys_boot_iso() {
    let r = rig(Fake {
        progress: vec![done("store:boot-new.iso", "built")],
        ..Default::default()
    })
    .await;
    let (u, cb) = called_back(&r, json!({"boot_iso": "store:boot-old.iso"})).await;
    r.c.store
        .modify_node(&u, |n: &mut Node| {
            n.driver_internal_info
                .insert("boot_iso_origin".into(), json!("shared"));
            Ok::<_, ServiceError>(())
        })
        .await
        .unwrap();
    let n = r.c.store.get_node(&u).await.unwrap();
    let iscsi = r.c.interfaces.for_node(&n).deploy;
    assert_eq!(iscsi.continue_deploy(&n, &cb).await, Ok(Outcome::Done));
    let sent = r.fake.continued.lock().unwrap()[0].clone();
    assert_eq!(sent.image.unwrap().boot_iso, "", "not the user's ISO");
    assert_eq!(*r.fake.released.lock().unwrap(), ["store:boot-old.iso"]);
    let n = r.c.store.get_node(&u).await.unwrap();
    assert_eq!(n.instance_info["boot_iso"], "store:boot-new.iso");
    assert_eq!(n.driver_internal_info["boot_iso_origin"], "built");
}
