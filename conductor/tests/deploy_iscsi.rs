//! Issue 14's acceptance, conductor side: `openstack baremetal node deploy
//! --wait` on `redfish` nodes (sushy-tools) with the `iscsi` deploy and
//! `redfish-virtual-media` boot interfaces, the built `deploy` binary with
//! the embedded store, tgtd for the node's disk, and this test as the deploy
//! ramdisk: it reads its floppy from what sushy downloaded, exports a blank
//! LUN (`peers::Iscsi`) as `iqn-<uuid>`, posts `pass_deploy_info` and
//! listens for `done` on the port the service is told to use.
//!
//! - Two nodes from the same image: both end `active`, each LUN holds the
//!   raw image's bytes (zeros after), the first built the boot ISO, the
//!   second shares it (usage_count 2); sushy's CD is that ISO.
//! - `node reboot` on the active node, its CD ejected behind the
//!   conductor's back: the ISO is inserted again and the node boots from it.
//! - `node undeploy --wait`: powered off, media ejected; the first leaves the
//!   ISO at usage_count 1, the second deletes it; no object, no partial
//!   download or secret file is left.
//! - Refusals before any write (image too large for root_gb, checksum
//!   mismatch, unreachable image URL): `deploy failed` with the reason,
//!   the LUN untouched, no `done`, media ejected, nothing stored.
//!
//! Peers as `deploy_vmedia.rs`, plus tgtd (`iscsi-up.sh`, under
//! `PeerLock "iscsi"`). Skips with a notice without them (fails with
//! `PORTHOLE_REQUIRE_PEERS`).

mod common;
#[path = "deploy_vmedia/harness.rs"]
#[allow(dead_code)] // deploy_vmedia.rs uses the rest
mod harness;
#[path = "deploy_iscsi/harness.rs"]
mod iscsi_harness;

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::eventually;
use harness::*;
use iscsi_harness::*;
use porthole_tests::peers::{Iscsi, Lun, Sushy, Swift};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_deploys_write_the_image_over_iscsi_share_the_boot_iso_and_undeploy_leaves_nothing(
) -> Result<()> {
    let _one = ONE.lock().await;
    let Some(run) = Run::start().await? else {
        return Ok(());
    };
    let Some(iscsi) =
        Iscsi::up(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("porthole-conductor-iscsi"))
    else {
        return Ok(());
    };
    let mut env = Env::start(run, iscsi, false).await?;

    let a = env.run.available_node("vm-a", 0).await?;
    let b = env.run.available_node("vm-b", 1).await?;
    let lun_a = env.iscsi.add(&format!("iqn-{a}"), "64M");
    let lun_b = env.iscsi.add(&format!("iqn-{b}"), "64M");
    env.instance_info("vm-a", &[]).await?;
    env.instance_info("vm-b", &[]).await?;

    let iso = two_nodes_share_one_boot_iso(&mut env, (&a, &lun_a), (&b, &lun_b)).await?;
    a_reboot_inserts_the_boot_iso_again(&env).await?;
    undeploys_release_the_iso_and_leave_nothing(&env, &iso).await?;
    drop((lun_a, lun_b));
    refusals_before_any_write(&mut env, &a).await?;

    let deploy_logs = env.svc.stop().await;
    env.run.assert_no_key_logged(&deploy_logs);
    drop(env.iscsi);
    env.run.cond.stop().await?;
    Ok(())
}

/// Both deployed, one after the other: active, the image on each LUN,
/// `done` received, the same boot ISO (built, then shared with
/// usage_count 2) in instance_info and in sushy's CD. The ISO's name.
async fn two_nodes_share_one_boot_iso(
    env: &mut Env,
    (a, lun_a): (&str, &Lun),
    (b, lun_b): (&str, &Lun),
) -> Result<String> {
    let mut isos = Vec::new();
    let mut bytes = Vec::new();
    for (i, (name, uuid, lun, origin)) in
        [("vm-a", a, lun_a, "built"), ("vm-b", b, lun_b, "shared")]
            .into_iter()
            .enumerate()
    {
        ensure!(blank(lun)?, "the LUN starts blank");
        let (ok, n) = env.deploy(name, uuid).await?;
        ensure!(ok && n["provision_state"] == "active", "{n}");
        ensure!(n["last_error"].is_null(), "{n}");
        holds_image(lun, &env.image)?;
        let got = tokio::time::timeout(Duration::from_secs(10), env.done.rx.recv())
            .await?
            .context("the done port closed")?;
        ensure!(got == b"done", "the ramdisk got {got:?}");
        let boot_iso = n["instance_info"]["boot_iso"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        ensure!(boot_iso.starts_with("store:boot-"), "{n}");
        let dii = &n["driver_internal_info"];
        ensure!(dii["boot_iso_origin"] == origin, "{n}");
        ensure!(
            dii["deploy_progress"]["phase"] == "done"
                && dii["deploy_progress"]["percent"] == 100.0
                && dii["deploy_progress"]["bytes_written"] == env.image.len(),
            "{n}"
        );
        // sushy boots it from the ISO: inserted as its CD (a temp URL of
        // the store's object), floppy gone.
        let cd = cd(&env.run, i).await?;
        ensure!(cd["Inserted"] == true, "{cd}");
        bytes.push(iso9660(&env.run, &cd).await?);
        let floppy = format!(
            "{}{}/VirtualMedia/Floppy",
            env.run.sushy.url,
            Sushy::system(i)
        );
        let floppy: Value = env.run.http.get(floppy).send().await?.json().await?;
        ensure!(floppy["Inserted"] == false, "{floppy}");
        // The deploy service's reset returns at once and sushy's fake driver
        // applies it 1-11 s later (a rehearsal saw "Off" here): wait for it.
        let s = eventually(Duration::from_secs(30), "the node powered on", || async {
            let s = system(&env.run, i).await?;
            Ok((s["PowerState"] == "On").then_some(s))
        })
        .await?;
        ensure!(s["Boot"]["BootSourceOverrideTarget"] == "Cd", "{s}");
        isos.push(boot_iso);
    }
    ensure!(isos[0] == isos[1], "one shared ISO: {isos:?}");
    ensure!(bytes[0] == bytes[1], "both CDs are the same ISO");
    let logs = env.svc.logs();
    ensure!(
        logs.lines().any(|l| l.contains("boot ISO chosen")
            && l.contains("origin=\"shared\"")
            && l.contains("usage_count=2")),
        "no shared usage_count 2 in the service's log"
    );
    Ok(isos.remove(0))
}

/// The BMC forgot the CD (ejected behind the conductor's back); `node
/// reboot` inserts the boot ISO again and boots once from it.
async fn a_reboot_inserts_the_boot_iso_again(env: &Env) -> Result<()> {
    let bmc = porthole_bmc::redfish::Client::new(Duration::from_secs(10))?;
    let mut ep = porthole_bmc::redfish::Endpoint::new(&env.run.sushy.url);
    ep.system_id = Some(Sushy::system(0));
    bmc.eject_media(&ep, porthole_bmc::vmedia::Media::Cd)
        .await?;
    ensure!(cd(&env.run, 0).await?["Inserted"] == false);
    env.run.cli.ok(&["node", "reboot", "vm-a"]).await?;
    let cd_b = cd(&env.run, 1).await?;
    let cd = eventually(
        Duration::from_secs(30),
        "the ISO inserted again",
        || async {
            let v = cd(&env.run, 0).await?;
            Ok((v["Inserted"] == true).then_some(v))
        },
    )
    .await?;
    let again = iso9660(&env.run, &cd).await?;
    let before = iso9660(&env.run, &cd_b).await?;
    ensure!(again == before, "the CD inserted again is not the boot ISO");
    let n = eventually(Duration::from_secs(30), "the reboot settled", || async {
        let n = env.run.show("vm-a").await?;
        Ok(n["target_power_state"].is_null().then_some(n))
    })
    .await?;
    ensure!(
        n["power_state"] == "power on" && n["last_error"].is_null(),
        "{n}"
    );
    let s = system(&env.run, 0).await?;
    ensure!(s["Boot"]["BootSourceOverrideTarget"] == "Cd", "{s}");
    Ok(())
}

/// Undeploy one: powered off, its media ejected, the ISO kept (count 1,
/// the other node's CD still fetches it); undeploy the other: count 0,
/// deleted; the store holds nothing and the cache no partial or secret
/// file.
async fn undeploys_release_the_iso_and_leave_nothing(env: &Env, iso: &str) -> Result<()> {
    let iso_url = cd(&env.run, 1).await?["Image"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    for (i, name, left, deleted) in [(0, "vm-a", 1, false), (1, "vm-b", 0, true)] {
        let from = log_len();
        env.run
            .cli
            .ok(&["node", "undeploy", name, "--wait", "110"])
            .await?;
        let n = env.run.show(name).await?;
        ensure!(n["provision_state"] == "available", "{n}");
        ensure!(n["power_state"] == "power off", "{n}");
        ensure!(system(&env.run, i).await?["PowerState"] == "Off");
        ensure!(n["instance_info"].get("boot_iso").is_none(), "{n}");
        ensure!(
            n["driver_internal_info"].get("deploy_progress").is_none()
                && n["driver_internal_info"].get("iscsi_target").is_none(),
            "{n}"
        );
        for dev in ["Floppy", "Cd"] {
            let url = format!(
                "{}{}/VirtualMedia/{dev}",
                env.run.sushy.url,
                Sushy::system(i)
            );
            let v: Value = env.run.http.get(url).send().await?.json().await?;
            ensure!(v["Inserted"] == false, "{name} {dev} still inserted: {v}");
        }
        let logs = logged_since(from);
        let line = logs
            .lines()
            .find(|l| l.contains("boot ISO released"))
            .with_context(|| format!("no release logged for {name}"))?;
        ensure!(
            line.contains(iso)
                && line.contains(&format!("usage_count={left}"))
                && line.contains(&format!("deleted={deleted}")),
            "{line}"
        );
        let status = env.run.http.get(&iso_url).send().await?.status();
        ensure!(
            status.is_success() != deleted,
            "after {name}'s undeploy the ISO answers {status}"
        );
    }
    ensure!(env.run.sushy.held().is_empty(), "sushy still holds media");
    ensure!(
        env.svc.stored() == 0,
        "{} objects left in the store",
        env.svc.stored()
    );
    let cached = env.svc.cached();
    ensure!(
        !cached
            .iter()
            .any(|f| f.ends_with(".part") || f.starts_with("chap") || f.contains("secret")),
        "temporary files left in the cache: {cached:?}"
    );
    Ok(())
}

/// One deploy that must fail: what, instance_info over the good image's,
/// the words last_error must hold, whether the ramdisk exports its LUN.
struct Refusal {
    what: &'static str,
    extra: Vec<(&'static str, String)>,
    want: String,
    exported: bool,
}

/// Each refusal: deploy failed with the reason, nothing written, no
/// `done`, clean up done (media ejected, nothing stored). Last, a write
/// failure: the ramdisk's target is not there (a wrong IQN).
async fn refusals_before_any_write(env: &mut Env, a: &str) -> Result<()> {
    let wrong = sha256(b"another image");
    let cases = [
        Refusal {
            what: "too large for root_gb",
            extra: vec![
                ("image_source", format!("{}/big.qcow2", env.files)),
                ("image_os_hash_algo", String::new()),
                ("image_os_hash_value", String::new()),
            ],
            want: "is too large for the node's root_gb: its virtual size is 2147483648 bytes, root_gb 1 is 1073741824 bytes".into(),
            exported: true,
        },
        Refusal {
            what: "checksum mismatch",
            extra: vec![("image_os_hash_value", wrong.clone())],
            want: format!(
                "image checksum mismatch: sha256 of {}/disk.raw is {}, instance_info says {wrong}",
                env.files,
                sha256(&env.image)
            ),
            exported: true,
        },
        Refusal {
            what: "unreachable image URL",
            extra: vec![("image_source", "http://127.0.0.1:9/disk.raw".into())],
            want: "cannot download image http://127.0.0.1:9/disk.raw".into(),
            exported: true,
        },
        Refusal {
            what: "no such target",
            extra: vec![],
            want: format!("iqn-{a}/1': iSCSI: Failed to connect to LUN : Failed to log in to target. Status: Target not found"),
            exported: false,
        },
    ];
    for c in cases {
        let what = c.what;
        let lun = c
            .exported
            .then(|| env.iscsi.add(&format!("iqn-{a}"), "64M"));
        env.instance_info("vm-a", &c.extra).await?;
        let (ok, n) = env.deploy("vm-a", a).await?;
        ensure!(!ok, "{what}: the CLI's deploy --wait succeeded");
        ensure!(n["provision_state"] == "deploy failed", "{what}: {n}");
        let err = n["last_error"].as_str().unwrap_or_default();
        ensure!(
            err.starts_with("Deploy failed: ") && err.contains(&c.want),
            "{what}: {err}"
        );
        if let Some(lun) = &lun {
            ensure!(blank(lun)?, "{what}: the LUN was written");
        }
        ensure!(
            env.done.rx.try_recv().is_err(),
            "{what}: the ramdisk was told done"
        );
        env.run.ejected(0).await?;
        ensure!(
            env.svc.stored() == 0,
            "{what}: {} objects left",
            env.svc.stored()
        );
        ensure!(n["instance_info"].get("boot_iso").is_none(), "{what}: {n}");
        eprintln!("{what}: {err}");
        drop(lun);
    }
    Ok(())
}

/// With the Swift store (short: Swift's lock is machine-wide; the node is
/// made before it is taken): the built boot ISO is a Swift object
/// (`swift:<object>`), sushy's CD fetches it by a temp URL, the LUN holds
/// the image, and undeploy deletes the ISO.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_swift_the_boot_iso_is_a_swift_object_deleted_at_undeploy() -> Result<()> {
    let _one = ONE.lock().await;
    let Some(run) = Run::start().await? else {
        return Ok(());
    };
    let Some(iscsi) =
        Iscsi::up(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("porthole-conductor-iscsi"))
    else {
        return Ok(());
    };
    let uuid = run.available_node("vm-s", 0).await?;
    let lun = iscsi.add(&format!("iqn-{uuid}"), "64M");
    let Some(swift) =
        Swift::up(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("porthole-conductor-swift"))
    else {
        return Ok(());
    };
    let held = std::time::Instant::now();
    let mut env = Env::start(run, iscsi, true).await?;
    env.instance_info("vm-s", &[]).await?;
    let (ok, n) = env.deploy("vm-s", &uuid).await?;
    ensure!(ok && n["provision_state"] == "active", "{n}");
    holds_image(&lun, &env.image)?;
    let boot_iso = n["instance_info"]["boot_iso"].as_str().unwrap_or_default();
    ensure!(
        boot_iso.starts_with("swift:") && n["driver_internal_info"]["boot_iso_origin"] == "built",
        "{n}"
    );
    let cd = cd(&env.run, 0).await?;
    let url = cd["Image"].as_str().unwrap_or_default().to_owned();
    ensure!(
        url.contains("/v1/AUTH_test/") && url.contains("temp_url_sig="),
        "{cd}"
    );
    let iso = env.run.http.get(&url).send().await?.bytes().await?;
    ensure!(iso.get(0x8001..0x8006) == Some(&b"CD001"[..]), "not an ISO");
    env.run
        .cli
        .ok(&["node", "undeploy", "vm-s", "--wait", "110"])
        .await?;
    let status = env.run.http.get(&url).send().await?.status();
    ensure!(status == 404, "the boot ISO outlived undeploy: {status}");
    env.run.ejected(0).await?;
    let deploy_logs = env.svc.stop().await;
    drop(swift);
    eprintln!(
        "Swift (and its machine-wide lock) held for {:?}",
        held.elapsed()
    );
    env.run.assert_no_key_logged(&deploy_logs);
    drop(lun);
    env.run.cond.stop().await?;
    Ok(())
}
