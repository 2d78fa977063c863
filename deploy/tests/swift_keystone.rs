//! The Swift store with `auth_type = password` doing real storage
//! operations on the rig's Swift. The rig's Swift speaks tempauth only and
//! refuses Keystone's tokens (keystone_real.rs shows that against a real
//! Keystone), so Keystone here is SCRIPTED, in this test: an HTTP server on
//! 127.0.0.1 answering `POST /v3/auth/tokens` as Keystone v3 does (password
//! checked, `X-Subject-Token`, `expires_at`, a catalog whose `object-store`
//! endpoint is the rig's account) and handing out tempauth tokens it gets
//! from Swift, or a revoked one when told to.
//!
//! What it shows: a 401 from Swift costs one new token and the operation
//! succeeds; upload, temp URL (with the account's key read using the
//! Keystone-issued token), GET without a token and delete work; a token is
//! renewed before its `expires_at` without waiting for a 401; a wrong
//! password is refused naming Keystone.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use deploy::store::keystone::KeystoneSettings;
use deploy::store::swift::{SwiftAuth, SwiftSettings, SwiftStore};
use deploy::store::Store;
use porthole_bmc::Secret;
use porthole_tests::peers::Swift;

const PASSWORD: &str = "scripted-ks-pw-4711";

#[derive(Default)]
struct Scripted {
    issued: AtomicUsize,
    /// Hand out a token Swift does not know, once.
    revoked_next: AtomicBool,
    life_s: AtomicU64,
}

async fn tempauth_token() -> String {
    let r = reqwest::Client::new()
        .get(Swift::AUTH_URL)
        .header("X-Auth-User", Swift::USER)
        .header("X-Auth-Key", Swift::KEY)
        .send()
        .await
        .unwrap();
    r.headers()["x-auth-token"].to_str().unwrap().to_owned()
}

async fn tokens(
    axum::extract::State(ks): axum::extract::State<Arc<Scripted>>,
    body: String,
) -> Response {
    let req: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let user = &req["auth"]["identity"]["password"]["user"];
    let scoped = req["auth"]["scope"]["project"]["name"] == "service";
    if user["password"] != PASSWORD || user["name"] != "ironic" || !scoped {
        let body = r#"{"error":{"code":401,"message":"The request you have made requires authentication.","title":"Unauthorized"}}"#;
        return (StatusCode::UNAUTHORIZED, body).into_response();
    }
    ks.issued.fetch_add(1, Ordering::SeqCst);
    let token = if ks.revoked_next.swap(false, Ordering::SeqCst) {
        "gAAAA-revoked".to_owned()
    } else {
        tempauth_token().await
    };
    let expires = SystemTime::now() + Duration::from_secs(ks.life_s.load(Ordering::SeqCst));
    let body = serde_json::json!({"token": {
        "methods": ["password"],
        "expires_at": humantime::format_rfc3339_micros(expires).to_string(),
        "project": {"name": "service", "id": "test"},
        "catalog": [
            {"type": "identity", "name": "keystone", "endpoints": [
                {"interface": "public", "region_id": "RegionOne", "url": "http://127.0.0.1/v3"}]},
            {"type": "object-store", "name": "swift", "endpoints": [
                {"interface": "public", "region_id": "RegionOne", "region": "RegionOne",
                 "url": "http://127.0.0.1:8080/v1/AUTH_test"}]}
        ]
    }});
    let mut h = HeaderMap::new();
    h.insert("x-subject-token", token.parse().unwrap());
    (StatusCode::CREATED, h, body.to_string()).into_response()
}

async fn scripted_keystone() -> (String, Arc<Scripted>) {
    let ks = Arc::new(Scripted::default());
    ks.life_s.store(3600, Ordering::SeqCst);
    let app = axum::Router::new()
        .route("/v3/auth/tokens", post(tokens))
        .with_state(ks.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v3", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, ks)
}

fn store(auth_url: &str, password: &str, container: &str) -> SwiftStore {
    SwiftStore::new(SwiftSettings {
        auth: SwiftAuth::Keystone(KeystoneSettings {
            auth_url: auth_url.into(),
            user: "ironic".into(),
            password: Secret::new(password),
            user_domain_name: "Default".into(),
            project_name: "service".into(),
            project_domain_name: "Default".into(),
            region: Some("RegionOne".into()),
            interface: "public".into(),
        }),
        container: container.into(),
        temp_url_key: None,
        timeout: Duration::from_secs(10),
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swift_operations_with_a_keystone_token() {
    let Some(_swift) =
        Swift::up(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("porthole-deploy-swift"))
    else {
        return;
    };
    let (url, ks) = scripted_keystone().await;
    let container = format!("ironic_ilo_container-{}", uuid::Uuid::new_v4().simple());
    let name = format!("image-{}", uuid::Uuid::new_v4());
    let body = Bytes::from(vec![5u8; 2048]);

    // The first token is one Swift does not know: 401, a new token, done.
    ks.revoked_next.store(true, Ordering::SeqCst);
    let s = store(&url, PASSWORD, &container);
    s.put(&name, body.clone(), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(ks.issued.load(Ordering::SeqCst), 2);
    assert_eq!(
        s.storage_url().await.unwrap(),
        "http://127.0.0.1:8080/v1/AUTH_test"
    );
    let temp = s.temp_url(&name, Duration::from_secs(60)).await.unwrap();
    let got = reqwest::get(&temp).await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap(), body);
    assert_eq!(
        ks.issued.load(Ordering::SeqCst),
        2,
        "a valid token was kept"
    );

    // Tokens that live 2 s: the next call after that fetches a new one
    // before using the old (which Swift would still take: no 401 here).
    ks.life_s.store(2, Ordering::SeqCst);
    let short = store(&url, PASSWORD, &container);
    short
        .put(&name, body.clone(), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(ks.issued.load(Ordering::SeqCst), 3);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    short.delete(&name).await.unwrap();
    assert_eq!(ks.issued.load(Ordering::SeqCst), 4, "renewed at expires_at");
    assert_eq!(reqwest::get(&temp).await.unwrap().status(), 404);

    // A wrong password: Keystone's 401, named.
    let err = store(&url, "wrong", &container)
        .put(&name, body, Duration::from_secs(5))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!(
            "Keystone at {url}/auth/tokens refused user \"ironic\""
        )) && err.contains("401 Unauthorized: The request you have made requires authentication"),
        "{err}"
    );
    assert!(!err.contains("wrong\""), "{err}");
    let _ = s.delete(&name).await;
    let http = reqwest::Client::new();
    let _ = http
        .delete(format!("http://127.0.0.1:8080/v1/AUTH_test/{container}"))
        .header("X-Auth-Token", tempauth_token().await)
        .send()
        .await;
}
