//! Virtual media and boot once against sushy-tools (the rig's
//! `redfish-up.sh`, fake system driver): the emulator really downloads what
//! is inserted into its media directory, so the test serves a floppy and a
//! CD image over HTTP on 127.0.0.1 and compares the bytes sushy holds.
//!
//! The emulator: `PORTHOLE_REDFISH_URL` (with `PORTHOLE_REDFISH_MEDIA_DIR`,
//! the TMPDIR it downloads into) when set; else, where the rig is
//! (`PORTHOLE_RIG_JSON`, as scripts/test.sh sets it), one started here on a
//! free port with its own state dir and stopped by pid.

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::routing::get;
use porthole_bmc::redfish::{Client, Endpoint, RedfishError};
use porthole_bmc::vmedia::Media;
use serde_json::Value;

const SYSTEM: &str = "/redfish/v1/Systems/27946b59-9e44-4fa7-8e91-f3527a1ef094";

struct Sushy {
    url: String,
    media: PathBuf,
    pid: Option<i32>,
}

impl Sushy {
    /// `None`: no emulator here (skipped, unless PORTHOLE_REQUIRE_PEERS).
    fn get(name: &str) -> Option<Sushy> {
        if let Some(url) = std::env::var_os("PORTHOLE_REDFISH_URL") {
            let media = std::env::var_os("PORTHOLE_REDFISH_MEDIA_DIR")
                .expect("PORTHOLE_REDFISH_MEDIA_DIR goes with PORTHOLE_REDFISH_URL");
            return Some(Sushy {
                url: url.to_string_lossy().into_owned(),
                media: media.into(),
                pid: None,
            });
        }
        if std::env::var_os("PORTHOLE_RIG_JSON").is_none() {
            eprintln!("notice: neither PORTHOLE_REDFISH_URL nor PORTHOLE_RIG_JSON is set; skipping");
            assert!(
                std::env::var_os("PORTHOLE_REQUIRE_PEERS").is_none(),
                "sushy-tools is missing and PORTHOLE_REQUIRE_PEERS is set"
            );
            return None;
        }
        let rig = std::env::var_os("PORTHOLE_RIG_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/rig"));
        let state = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("porthole-bmc-sushy-{name}"));
        let script = rig.join("redfish-up.sh");
        let _ = std::process::Command::new(&script)
            .arg("down")
            .env("RIG_STATE_DIR", &state)
            .output();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let out = std::process::Command::new(&script)
            .arg("up")
            .env("RIG_STATE_DIR", &state)
            .env("REDFISH_PORT", port.to_string())
            .output()
            .unwrap();
        assert!(out.status.success(), "redfish-up.sh: {out:?}");
        let pid = std::fs::read_to_string(state.join("redfish/sushy.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        Some(Sushy {
            url: format!("http://127.0.0.1:{port}"),
            media: state.join("redfish/media"),
            pid: Some(pid),
        })
    }

    fn endpoint(&self) -> Endpoint {
        let mut ep = Endpoint::new(&self.url);
        ep.system_id = Some(SYSTEM.into());
        ep
    }

    async fn resource(&self, path: &str) -> Value {
        reqwest::get(format!("{}{path}", self.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Every file sushy holds in its media directory.
    fn held(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for d in std::fs::read_dir(&self.media).into_iter().flatten() {
            let d = d.unwrap().path();
            for f in std::fs::read_dir(&d).into_iter().flatten() {
                out.push(std::fs::read(f.unwrap().path()).unwrap());
            }
        }
        out
    }
}

impl Drop for Sushy {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
}

/// Serve `floppy` at /floppy.img and `cd` at /deploy.iso on 127.0.0.1.
async fn media_server(floppy: Vec<u8>, cd: Vec<u8>) -> String {
    let app = axum::Router::new()
        .route("/floppy.img", get(move || async move { floppy }))
        .route("/deploy.iso", get(move || async move { cd }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn bytes(tag: u8, n: usize) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31) ^ tag).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sushy_downloads_both_media_boots_once_from_cd_and_ejects() {
    let Some(sushy) = Sushy::get("media") else {
        return;
    };
    let ep = sushy.endpoint();
    let client = Client::new(Duration::from_secs(30)).unwrap();
    let (floppy, cd) = (bytes(1, 100 * 1024), bytes(2, 300 * 1024));
    let base = media_server(floppy.clone(), cd.clone()).await;
    // Whatever an earlier run left inserted.
    client.eject_media(&ep, Media::Floppy).await.unwrap();
    client.eject_media(&ep, Media::Cd).await.unwrap();

    client
        .insert_media(&ep, Media::Floppy, &format!("{base}/floppy.img"))
        .await
        .unwrap();
    client
        .insert_media(&ep, Media::Cd, &format!("{base}/deploy.iso"))
        .await
        .unwrap();
    for (dev, url) in [("Floppy", "floppy.img"), ("Cd", "deploy.iso")] {
        let v = sushy.resource(&format!("{SYSTEM}/VirtualMedia/{dev}")).await;
        assert_eq!(v["Inserted"], true, "{dev}: {v}");
        assert_eq!(v["Image"], format!("{base}/{url}"), "{dev}: {v}");
    }
    let held = sushy.held();
    assert!(held.contains(&floppy), "sushy holds {} files, not the floppy", held.len());
    assert!(held.contains(&cd), "sushy holds {} files, not the CD", held.len());

    // Inserting again replaces (eject first): still one copy of each.
    client
        .insert_media(&ep, Media::Cd, &format!("{base}/deploy.iso"))
        .await
        .unwrap();
    assert_eq!(sushy.held().iter().filter(|b| **b == cd).count(), 1);

    client.boot_once(&ep, "Cd").await.unwrap();
    let sys = sushy.resource(SYSTEM).await;
    // sushy-tools keeps BootSourceOverrideEnabled "Continuous" whatever is
    // sent (its code says so); the Once in the request is checked by the
    // unit test on a recording BMC.
    assert_eq!(sys["Boot"]["BootSourceOverrideTarget"], "Cd", "{sys}");

    client.eject_media(&ep, Media::Floppy).await.unwrap();
    client.eject_media(&ep, Media::Cd).await.unwrap();
    for dev in ["Floppy", "Cd"] {
        let v = sushy.resource(&format!("{SYSTEM}/VirtualMedia/{dev}")).await;
        assert_eq!(v["Inserted"], false, "{dev}: {v}");
    }
    assert!(sushy.held().is_empty(), "sushy still holds media after eject");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_url_the_bmc_cannot_fetch_is_an_error_in_the_bmcs_words() {
    let Some(sushy) = Sushy::get("missing") else {
        return;
    };
    let ep = sushy.endpoint();
    let client = Client::new(Duration::from_secs(30)).unwrap();
    let base = media_server(vec![1], vec![2]).await;
    let err = client
        .insert_media(&ep, Media::Floppy, &format!("{base}/no-such.img"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RedfishError::Status { status, .. } if status.as_u16() == 400),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("insert floppy") && text.contains("Cannot download virtual media"),
        "{text}"
    );
}
