//! Issue 13's acceptance, conductor side: a `redfish` node on sushy-tools
//! deployed with the `iscsi` deploy and `redfish-virtual-media` boot
//! interfaces, driven by the `openstack` CLI (`node create`, `port create`,
//! `manage`, `provide`, `deploy`) up to `wait call-back`, with the built
//! `deploy` binary (`target/debug/deploy`, or `PORTHOLE_TEST_DEPLOY_BIN`)
//! as the deploy service and the conductor in-process. Once with the
//! embedded store, once (short, under Swift's machine-wide lock) with the
//! rig's Swift.
//!
//! sushy-tools really downloads both media: the floppy it holds is read
//! with mtools (`parameters.txt`, `token`), the CD is the deploy ISO's
//! bytes. The test then plays the deploy ramdisk with what the floppy
//! says: a wrong key, a missing field and a call in the wrong state are
//! 400 and change nothing; the right key is accepted, recorded, and the
//! hand-over's ContinueDeploy refuses the node (a netboot instance without
//! kernel, ramdisk or boot ISO; the full deploy is `deploy_iscsi.rs`) with
//! the media ejected; `error` fails the deploy with its words; no call back fails it
//! after the (short) `deploy_callback_timeout`, media ejected; both times the
//! system is powered off (`[deploy] power_off_after_deploy_failure`). sushy's
//! failure modes (a deploy ISO URL that 404s, a system it does not know)
//! end in `deploy failed` with its words; a second sushy whose systems
//! have no floppy device (`SUSHY_EMULATOR_VMEDIA_DEVICES`) ends in
//! `deploy failed` before anything is stored. No deployment key is logged.
//!
//! Peers: `PORTHOLE_REDFISH_URL` + `PORTHOLE_REDFISH_MEDIA_DIR` name a
//! running emulator with 2 systems (else one is started where the rig is,
//! `PORTHOLE_RIG_JSON`); `.venv-clients`; Swift through
//! `porthole_tests::peers::Swift`. Skips with a notice without them (fails
//! with `PORTHOLE_REQUIRE_PEERS`).

mod common;
#[path = "deploy_vmedia/harness.rs"]
mod harness;

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Result};
use common::{clients, TestConductor};
use harness::*;
use porthole_tests::peers::Swift;
use serde_json::json;

/// What the continue step (ContinueDeploy) says for these nodes, whose
/// instance_info has an image_source but no kernel, ramdisk or boot_iso
/// (the full deploy is `deploy_iscsi.rs`).
const CONTINUE_REFUSED: &str = "ContinueDeploy: a netboot instance needs image.boot_iso, or image.kernel and image.ramdisk to build one from";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_deploy_on_sushy_with_the_embedded_store_then_the_ramdisks_callbacks() -> Result<()> {
    let _one = ONE.lock().await;
    let Some(mut run) = Run::start().await? else {
        return Ok(());
    };
    let svc = run.deploy_svc(false).await?;
    let uuid = run.available_node("vm-0", 0).await?;
    refused_up_front(&run).await?;
    let first_key = refusals_then_the_right_key(&mut run, &uuid).await?;
    the_ramdisks_error(&mut run, &first_key).await?;
    no_call_back(&mut run, &uuid).await?;
    sushys_failures(&run).await?;
    let deploy_logs = svc.stop().await;
    run.assert_no_key_logged(&deploy_logs);
    run.cond.stop().await?;
    Ok(())
}

/// The deploy service's Validate refuses a node without `deploy_iso` or
/// `image_source`: the CLI's deploy is a 400 naming both, in Ironic's
/// words, and the node stays `available` with nothing inserted.
async fn refused_up_front(run: &Run) -> Result<()> {
    let iso = format!("deploy_iso={}/deploy.iso", run.images);
    let before = unchanged_view(&run.show("vm-0").await?);
    run.cli
        .ok(&[
            "node",
            "unset",
            "vm-0",
            "--driver-info",
            "deploy_iso",
            "--instance-info",
            "image_source",
        ])
        .await?;
    let r = run.cli.run(&["node", "deploy", "vm-0"]).await?;
    ensure!(!r.ok, "deploy without deploy_iso was accepted");
    for want in [
        "Failed to validate deploy or power info for node",
        "Some parameters were missing in node's driver_info: [\"deploy_iso\"]",
        "Missing are: ['image_source']",
    ] {
        ensure!(r.stderr.contains(want), "{want} not in: {}", r.stderr);
    }
    let n = run.show("vm-0").await?;
    ensure!(
        n["provision_state"] == "available" && n["last_error"].is_null(),
        "{n}"
    );
    ensure!(
        run.sushy.held().is_empty(),
        "media inserted for a refused deploy"
    );
    run.cli
        .ok(&[
            "node",
            "set",
            "vm-0",
            "--driver-info",
            &iso,
            "--instance-info",
            "image_source=http://images/user.qcow2",
        ])
        .await?;
    ensure!(unchanged_view(&run.show("vm-0").await?)[0] == before[0]);
    Ok(())
}

/// Up to wait call-back (sushy holds both media, the floppy says what it
/// should); refused callbacks change nothing; the right key is accepted,
/// recorded, and the hand-over's refusal fails it, cleaned up; a second call
/// (wrong state now) is refused. The key used.
async fn refusals_then_the_right_key(run: &mut Run, uuid: &str) -> Result<String> {
    run.deploy_to_wait("vm-0").await?;
    let (params, _token) = run.media()?;
    check_params(&params, run, uuid)?;
    let floppy_url = run.image(0, "Floppy").await?;
    ensure!(
        floppy_url.contains("/objects/"),
        "embedded store URL: {floppy_url}"
    );
    ensure!(run.image(0, "Cd").await? == format!("{}/deploy.iso", run.images));
    let key = params["deployment_key"].clone();
    let iqn = params["iscsi_target_iqn"].clone();

    let before = unchanged_view(&run.show("vm-0").await?);
    let mut wrong = key.clone();
    wrong.replace_range(0..1, if key.starts_with('a') { "b" } else { "a" });
    let bad_token = "Invalid or missing agent token received.";
    for (body, want) in [
        (
            json!({"address": "127.0.0.1", "iqn": iqn, "key": wrong, "error": ""}),
            bad_token,
        ),
        (
            json!({"address": "127.0.0.1", "iqn": iqn, "error": ""}),
            bad_token,
        ),
        (
            json!({"address": "127.0.0.1", "key": key, "error": ""}),
            "Parameters ['iqn'] were not passed to ironic for deploy.",
        ),
        (
            json!({"address": "not-an-ip", "iqn": iqn, "key": key}),
            "Invalid address \"not-an-ip\"",
        ),
    ] {
        let (status, answer) = run.callback(&params, body.clone()).await?;
        ensure!(status == 400, "{body}: {status} {answer}");
        let fault = common::faultstring(&answer)?;
        ensure!(fault.contains(want), "{body}: {fault}");
    }
    ensure!(
        unchanged_view(&run.show("vm-0").await?) == before,
        "a refused callback changed the node"
    );

    let body = json!({"address": "127.0.0.1", "iqn": iqn, "key": key, "error": "", "port": 3260, "lun": 1});
    let (status, answer) = run.callback(&params, body).await?;
    ensure!(status == 202, "{status} {answer}");
    let n = run
        .rests_in("vm-0", "deploy failed", Duration::from_secs(30))
        .await?;
    let err = n["last_error"].as_str().unwrap_or_default();
    ensure!(
        err.starts_with("Deploy failed: ") && err.contains(CONTINUE_REFUSED),
        "{err}"
    );
    ensure!(
        n["driver_internal_info"]["iscsi_target"]
            == json!({"address": "127.0.0.1", "port": 3260, "iqn": iqn, "lun": 1}),
        "{n}"
    );
    run.ejected(0).await?;
    let after = run.http.get(&floppy_url).send().await?.status();
    ensure!(after == 404, "floppy outlived clean up: {after}");

    // Wrong state now (the key died with the wait): 400, nothing changes.
    let before = unchanged_view(&n);
    let body = json!({"address": "127.0.0.1", "iqn": iqn, "key": key});
    let (status, _) = run.callback(&params, body).await?;
    ensure!(status == 400, "{status}");
    ensure!(unchanged_view(&run.show("vm-0").await?) == before);
    Ok(key)
}

/// Deployed again (a fresh key); the ramdisk reports an error: deploy
/// failed in its words, cleaned up.
async fn the_ramdisks_error(run: &mut Run, first_key: &str) -> Result<()> {
    run.deploy_to_wait("vm-0").await?;
    let (params, _) = run.media()?;
    ensure!(
        params["deployment_key"] != first_key,
        "a fresh key per deploy"
    );
    let body = json!({"address": "127.0.0.1", "iqn": params["iscsi_target_iqn"],
                      "key": params["deployment_key"], "error": "no disk found: /dev/sda"});
    run.sushy_on(0).await?;
    let (status, _) = run.callback(&params, body).await?;
    ensure!(status == 202, "{status}");
    let n = run
        .rests_in("vm-0", "deploy failed", Duration::from_secs(30))
        .await?;
    ensure!(
        n["last_error"] == "Error returned from deploy ramdisk: no disk found: /dev/sda",
        "{n}"
    );
    run.ejected(0).await?;
    run.powered_off("vm-0", 0).await
}

/// Deployed again; no call back: the timeout fails it (not early) and
/// cleans up.
async fn no_call_back(run: &mut Run, uuid: &str) -> Result<()> {
    run.deploy_to_wait("vm-0").await?;
    run.media()?;
    let t0 = std::time::Instant::now();
    run.sushy_on(0).await?;
    let within = Duration::from_secs(CALLBACK_TIMEOUT_S + 20);
    let n = run.rests_in("vm-0", "deploy failed", within).await?;
    let want = format!("Timeout reached while waiting for callback for node {uuid}");
    ensure!(n["last_error"] == want, "{n}");
    ensure!(
        t0.elapsed() + Duration::from_secs(3) >= Duration::from_secs(CALLBACK_TIMEOUT_S),
        "failed too early: {:?}",
        t0.elapsed()
    );
    run.ejected(0).await?;
    run.powered_off("vm-0", 0).await
}

/// A deploy ISO URL that 404s, then a system sushy does not know: deploy
/// failed in sushy's words, nothing left inserted.
async fn sushys_failures(run: &Run) -> Result<()> {
    let gone = format!("deploy_iso={}/gone.iso", run.images);
    run.cli
        .ok(&["node", "set", "vm-0", "--driver-info", &gone])
        .await?;
    run.cli.ok(&["node", "deploy", "vm-0"]).await?;
    let n = run
        .rests_in("vm-0", "deploy failed", Duration::from_secs(60))
        .await?;
    let err = n["last_error"].as_str().unwrap_or_default();
    ensure!(
        err.starts_with("Deploy failed: ")
            && err.contains("Cannot download virtual media: got error 404"),
        "{err}"
    );
    run.ejected(0).await?;
    let iso = format!("deploy_iso={}/deploy.iso", run.images);
    let system = "redfish_system_id=/redfish/v1/Systems/no-such-system";
    run.cli
        .ok(&[
            "node",
            "set",
            "vm-0",
            "--driver-info",
            &iso,
            "--driver-info",
            system,
        ])
        .await?;
    run.cli.ok(&["node", "deploy", "vm-0"]).await?;
    let n = run
        .rests_in("vm-0", "deploy failed", Duration::from_secs(60))
        .await?;
    let err = n["last_error"].as_str().unwrap_or_default();
    ensure!(
        err.starts_with("Deploy failed: ")
            && err.contains("404")
            && err.contains("Fake system no-such-system was not found"),
        "{err}"
    );
    run.ejected(0).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_deploy_on_sushy_with_swift_then_the_right_key() -> Result<()> {
    let _one = ONE.lock().await;
    let Some(mut run) = Run::start().await? else {
        return Ok(());
    };
    // Everything that needs no Swift first: its lock is machine-wide.
    let uuid = run.available_node("vm-1", 1).await?;
    let Some(swift) =
        Swift::up(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("porthole-conductor-swift"))
    else {
        return Ok(());
    };
    let held = std::time::Instant::now();
    let svc = run.deploy_svc(true).await?;
    run.deploy_to_wait("vm-1").await?;
    let (params, _) = run.media()?;
    check_params(&params, &run, &uuid)?;
    let floppy_url = run.image(1, "Floppy").await?;
    ensure!(
        floppy_url.contains(&format!("/v1/AUTH_test/ironic_ilo_container/image-{uuid}"))
            && floppy_url.contains("temp_url_sig="),
        "{floppy_url}"
    );
    let (status, answer) = run
        .callback(&params, json!({"address": "127.0.0.1", "iqn": params["iscsi_target_iqn"], "key": params["deployment_key"]}))
        .await?;
    ensure!(status == 202, "{status} {answer}");
    let n = run
        .rests_in("vm-1", "deploy failed", Duration::from_secs(30))
        .await?;
    ensure!(
        n["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains(CONTINUE_REFUSED),
        "{n}"
    );
    run.ejected(1).await?;
    ensure!(
        run.http.get(&floppy_url).send().await?.status() == 404,
        "the Swift object outlived clean up"
    );
    let deploy_logs = svc.stop().await;
    drop(swift);
    eprintln!(
        "Swift (and its machine-wide lock) held for {:?}",
        held.elapsed()
    );
    run.assert_no_key_logged(&deploy_logs);
    run.cond.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bmc_without_a_floppy_device_ends_in_deploy_failed_and_stores_nothing() -> Result<()> {
    let _one = ONE.lock().await;
    let Some(mut run) = Run::start().await? else {
        return Ok(());
    };
    let cd_only = CdOnlySushy::start(&run.sushy).await?;
    let svc = run.deploy_svc(false).await?;
    run.available_node_at("cd-only", &cd_only.url, 0).await?;
    run.cli.ok(&["node", "deploy", "cd-only"]).await?;
    let n = run
        .rests_in("cd-only", "deploy failed", Duration::from_secs(60))
        .await?;
    let err = n["last_error"].as_str().unwrap_or_default();
    ensure!(
        err.starts_with("Deploy failed: ") && err.contains("no virtual media device for floppy"),
        "{err}"
    );
    ensure!(
        svc.stored() == 0,
        "a floppy was stored for a BMC without a floppy device"
    );
    svc.stop().await;
    run.cond.stop().await?;
    Ok(())
}

/// `[deploy] tls_*` as `[inspect]`'s: over mutual TLS the service's
/// Validate answers (`node validate`: deploy true; then false with its
/// words for a node without ports); without a client certificate the
/// handshake is refused and the conductor says the service is unavailable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conductor_reaches_the_deploy_service_over_mutual_tls() -> Result<()> {
    let Some(bin) = clients() else {
        return Ok(());
    };
    let pki = porthole_tests::pki::Pki::new()?;
    let (server, client) = (pki.server(), pki.client());
    let port = free_port()?;
    let tls = format!(
        "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\ntls_client_ca_file = \"{}\"\n",
        server.cert.display(),
        server.key.display(),
        pki.ca().display()
    );
    let svc = DeploySvc::start(port, "http://127.0.0.1:6385", false, &tls).await?;
    let s = |p: &Path| toml::Value::String(p.display().to_string());
    let endpoint = toml::Value::String(format!("https://127.0.0.1:{port}"));
    for with_cert in [true, false] {
        let mut extra = vec![
            ("deploy", "endpoint", endpoint.clone()),
            ("deploy", "tls_ca", s(&pki.ca())),
        ];
        if with_cert {
            extra.push(("deploy", "tls_cert", s(&client.cert)));
            extra.push(("deploy", "tls_key", s(&client.key)));
        }
        let mut cond = TestConductor::start_with(NO_CONSOLE_SVC, extra).await?;
        let cli = cond.cli(bin.clone());
        cli.ok(&[
            "node",
            "create",
            "--driver",
            "redfish",
            "--name",
            "t1",
            "--deploy-interface",
            "iscsi",
            "--boot-interface",
            "redfish-virtual-media",
            "--driver-info",
            "redfish_address=http://127.0.0.1:9",
            "--driver-info",
            "deploy_iso=http://images/deploy.iso",
        ])
        .await?;
        cli.ok(&[
            "node",
            "set",
            "t1",
            "--instance-info",
            "image_source=http://images/u.qcow2",
        ])
        .await?;
        let (ok, reason) = deploy_row(&cli, "t1").await?;
        if with_cert {
            ensure!(
                !ok && reason.contains("does not have any port associated with it"),
                "{reason}"
            );
            let uuid = cli.json(&["node", "show", "t1"]).await?["uuid"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            cli.ok(&["port", "create", "52:54:00:aa:bb:01", "--node", &uuid])
                .await?;
            let (ok, reason) = deploy_row(&cli, "t1").await?;
            ensure!(ok, "the service's Validate over mTLS: {reason}");
        } else {
            ensure!(
                !ok && reason.contains(&format!(
                    "the deploy service at https://127.0.0.1:{port} is unavailable"
                )),
                "{reason}"
            );
        }
        cond.stop().await?;
    }
    svc.stop().await;
    Ok(())
}
