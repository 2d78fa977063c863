//! The Swift store against a real Swift (the rig's `swift-up.sh`: proxy
//! with tempauth and tempurl, 1-replica rings), from porthole-tests'
//! `peers::Swift`: its own state dir (`PORTHOLE_SWIFT_RIG_STATE_DIR`,
//! default under CARGO_TARGET_TMPDIR), one already running there used, what
//! it started stopped. Swift's ports are fixed (8080 and 6210-6212).
//!
//! What it shows: the container is created when missing; the object carries
//! `X-Delete-At` from `X-Delete-After`; its temp URL (HMAC-SHA256 under the
//! account's key, read from the account) GETs the bytes without a token and
//! answers 401 when tampered with; a metadata update keeps `X-Delete-At`;
//! after the TTL the temp URL answers 401 (expired) and the object 404
//! (gone, at a URL signed to outlive it), and after the rig's `expire` the
//! listing agrees; delete removes it at once.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use deploy::store::swift::{SwiftAuth, SwiftSettings, SwiftStore};
use deploy::store::Store;
use porthole_bmc::Secret;
use porthole_tests::peers::Swift;

const AUTH_URL: &str = Swift::AUTH_URL;

fn swift() -> Option<Swift> {
    Swift::up(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("porthole-deploy-swift"))
}

fn store(container: &str) -> SwiftStore {
    SwiftStore::new(settings_for(container)).unwrap()
}

/// One test at a time: each may start and stop the one Swift (fixed ports).
static SWIFT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// An authenticated request of our own (the test's view of Swift).
async fn admin(method: reqwest::Method, path: &str) -> reqwest::Response {
    let http = reqwest::Client::new();
    let auth = http
        .get(AUTH_URL)
        .header("X-Auth-User", "test:tester")
        .header("X-Auth-Key", "testing")
        .send()
        .await
        .unwrap();
    let h = |n| auth.headers()[n].to_str().unwrap().to_owned();
    let (url, token) = (h("x-storage-url"), h("x-auth-token"));
    http.request(method, format!("{url}{path}"))
        .header("X-Auth-Token", token)
        .send()
        .await
        .unwrap()
}

fn now() -> u64 {
    deploy::store::now_unix()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swift_objects_expire_with_their_temp_urls() {
    let _one = SWIFT.lock().await;
    let Some(swift) = swift() else { return };
    let container = format!("ironic_ilo_container-{}", uuid::Uuid::new_v4().simple());
    let s = store(&container);
    let name = format!("image-{}", uuid::Uuid::new_v4());
    let body = Bytes::from(vec![7u8; 4096]);
    let ttl = Duration::from_secs(4);
    let before = now();
    s.put(&name, body.clone(), ttl).await.unwrap();

    // Created when missing, and the object carries X-Delete-At.
    assert_eq!(
        admin(reqwest::Method::HEAD, &format!("/{container}"))
            .await
            .status(),
        204
    );
    let head = admin(reqwest::Method::HEAD, &format!("/{container}/{name}")).await;
    assert_eq!(head.status(), 200);
    let delete_at: u64 = head.headers()["x-delete-at"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (before + 4..=now() + 4).contains(&delete_at),
        "X-Delete-At {delete_at}, put at {before}"
    );

    // The temp URL GETs the bytes without a token; tampering is refused.
    let url = s.temp_url(&name, ttl).await.unwrap();
    assert!(
        url.contains("temp_url_sig=") && url.contains("temp_url_expires="),
        "{url}"
    );
    let got = reqwest::get(&url).await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap(), body);
    let sig_at = url.find("temp_url_sig=").unwrap() + "temp_url_sig=".len();
    let mut bad = url.clone();
    let c = if &bad[sig_at..=sig_at] == "0" {
        "1"
    } else {
        "0"
    };
    bad.replace_range(sig_at..=sig_at, c);
    assert_eq!(reqwest::get(&bad).await.unwrap().status(), 401);

    // A metadata update keeps the expiry (a bare POST would drop it).
    s.update_metadata(&name, &[("usage_count", "1")])
        .await
        .unwrap();
    let head = admin(reqwest::Method::HEAD, &format!("/{container}/{name}")).await;
    assert_eq!(head.headers()["x-object-meta-usage-count"], "1");
    assert_eq!(
        head.headers()["x-delete-at"].to_str().unwrap(),
        delete_at.to_string()
    );

    let listing = admin(reqwest::Method::GET, &format!("/{container}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(listing.contains(&name), "not listed: {listing}");

    // A URL signed to outlive the object, to see the object's own expiry.
    let long_url = s.temp_url(&name, Duration::from_secs(600)).await.unwrap();

    // After the TTL: the URL made with the same TTL is refused by tempurl
    // itself (401: Swift's answer for an expired temp URL), and the object
    // is gone (404 at a URL still valid), and from the listing once the
    // expirer has run.
    tokio::time::sleep(Duration::from_secs(delete_at + 1 - now())).await;
    assert_eq!(reqwest::get(&url).await.unwrap().status(), 401);
    assert_eq!(reqwest::get(&long_url).await.unwrap().status(), 404);
    swift.expire();
    let listing = admin(reqwest::Method::GET, &format!("/{container}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(!listing.contains(&name), "still listed: {listing}");

    // Delete: at once, and again without an error.
    s.put(&name, body.clone(), Duration::from_secs(60))
        .await
        .unwrap();
    let url = s.temp_url(&name, Duration::from_secs(60)).await.unwrap();
    assert_eq!(reqwest::get(&url).await.unwrap().status(), 200);
    s.delete(&name).await.unwrap();
    assert_eq!(reqwest::get(&url).await.unwrap().status(), 404);
    s.delete(&name).await.unwrap();
    let _ = admin(reqwest::Method::DELETE, &format!("/{container}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_swift_key_is_a_clear_error_naming_tempauth() {
    let _one = SWIFT.lock().await;
    let Some(_swift) = swift() else { return };
    let s = SwiftStore::new(SwiftSettings {
        auth: SwiftAuth::TempAuth {
            auth_url: AUTH_URL.into(),
            user: "test:tester".into(),
            key: Secret::new("not-the-key"),
        },
        ..settings_for("ironic_ilo_container")
    })
    .unwrap();
    let err = s
        .put("image-x", Bytes::from_static(b"x"), Duration::from_secs(5))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("tempauth") && err.contains("401"), "{err}");
    assert!(!err.contains("not-the-key"), "{err}");
}

fn settings_for(container: &str) -> SwiftSettings {
    SwiftSettings {
        auth: SwiftAuth::TempAuth {
            auth_url: AUTH_URL.into(),
            user: "test:tester".into(),
            key: Secret::new("testing"),
        },
        container: container.into(),
        temp_url_key: None,
        timeout: Duration::from_secs(10),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_uploads_at_once_are_all_there() {
    let _one = SWIFT.lock().await;
    let Some(_swift) = swift() else { return };
    let container = format!("ironic_ilo_container-{}", uuid::Uuid::new_v4().simple());
    let s = store(&container);
    for round in 0..3 {
        let names: Vec<String> = (0..20).map(|i| format!("image-{i}")).collect();
        let puts = names.iter().map(|n| {
            let s = &s;
            async move {
                s.put(
                    n,
                    Bytes::from(vec![1u8; 100 * 1024]),
                    Duration::from_secs(60),
                )
                .await
                .unwrap();
                s.temp_url(n, Duration::from_secs(60)).await.unwrap()
            }
        });
        let urls = futures::future::join_all(puts).await;
        for (n, url) in names.iter().zip(&urls) {
            let got = reqwest::get(url).await.unwrap().status();
            assert_eq!(got, 200, "round {round}: {n}");
        }
        for n in &names {
            s.delete(n).await.unwrap();
        }
    }
    let _ = admin(reqwest::Method::DELETE, &format!("/{container}")).await;
}
