//! Virtual media and boot once against sushy-tools (the rig's
//! `redfish-up.sh`, fake system driver): the emulator really downloads what
//! is inserted into its media directory, so the test serves a floppy and a
//! CD image over HTTP on 127.0.0.1 and compares the bytes sushy holds.
//!
//! The emulator: porthole-tests' `peers::Sushy` (a running one named by
//! `PORTHOLE_REDFISH_URL`, or one started here where the rig is).

use std::path::Path;
use std::time::Duration;

use axum::routing::get;
use porthole_bmc::redfish::{Client, Endpoint, RedfishError};
use porthole_bmc::vmedia::Media;
use porthole_tests::peers::Sushy;
use serde_json::Value;

const SYSTEM: &str = "/redfish/v1/Systems/27946b59-9e44-4fa7-8e91-f3527a1ef094";

/// One test at a time: they share the emulator (and, when started here,
/// its state dir and venv).
static ONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn sushy() -> Option<Sushy> {
    Sushy::get(
        &Path::new(env!("CARGO_TARGET_TMPDIR")).join("porthole-bmc-sushy"),
        1,
    )
}

fn endpoint(sushy: &Sushy) -> Endpoint {
    let mut ep = Endpoint::new(&sushy.url);
    ep.system_id = Some(Sushy::system(0));
    ep
}

async fn resource(sushy: &Sushy, path: &str) -> Value {
    reqwest::get(format!("{}{path}", sushy.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
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
    let _one = ONE.lock().await;
    let Some(sushy) = sushy() else {
        return;
    };
    let ep = endpoint(&sushy);
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
        let v = resource(&sushy, &format!("{SYSTEM}/VirtualMedia/{dev}")).await;
        assert_eq!(v["Inserted"], true, "{dev}: {v}");
        assert_eq!(v["Image"], format!("{base}/{url}"), "{dev}: {v}");
    }
    let held = sushy.held();
    assert!(
        held.contains(&floppy),
        "sushy holds {} files, not the floppy",
        held.len()
    );
    assert!(
        held.contains(&cd),
        "sushy holds {} files, not the CD",
        held.len()
    );

    // Inserting again replaces (eject first): still one copy of each.
    client
        .insert_media(&ep, Media::Cd, &format!("{base}/deploy.iso"))
        .await
        .unwrap();
    assert_eq!(sushy.held().iter().filter(|b| **b == cd).count(), 1);

    client.boot_once(&ep, "Cd").await.unwrap();
    let sys = resource(&sushy, SYSTEM).await;
    // sushy-tools keeps BootSourceOverrideEnabled "Continuous" whatever is
    // sent (its code says so); the Once in the request is checked by the
    // unit test on a recording BMC.
    assert_eq!(sys["Boot"]["BootSourceOverrideTarget"], "Cd", "{sys}");

    client.eject_media(&ep, Media::Floppy).await.unwrap();
    client.eject_media(&ep, Media::Cd).await.unwrap();
    for dev in ["Floppy", "Cd"] {
        let v = resource(&sushy, &format!("{SYSTEM}/VirtualMedia/{dev}")).await;
        assert_eq!(v["Inserted"], false, "{dev}: {v}");
    }
    assert!(
        sushy.held().is_empty(),
        "sushy still holds media after eject"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_url_the_bmc_cannot_fetch_is_an_error_in_the_bmcs_words() {
    let _one = ONE.lock().await;
    let Some(sushy) = sushy() else {
        return;
    };
    let ep = endpoint(&sushy);
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
