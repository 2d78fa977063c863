//! Keystone v3 password auth against a REAL Keystone (PyPI's keystone
//! 26.1.1 in `.venv-keystone`, scripts/venv-keystone.sh), started by
//! scripts/keystone-up.sh in a temp dir (SQLite, db_sync, bootstrap, an
//! `object-store` service whose public endpoint is the rig's Swift
//! account URL and whose internal one names `localhost`). Port:
//! `PORTHOLE_KEYSTONE_PORT`, else a free one. Skips with a notice without
//! the venv; fails then under `PORTHOLE_REQUIRE_PEERS`.
//!
//! What it shows: a project-scoped token that Keystone itself validates,
//! the storage URL from the catalog by interface, `expires_at` as
//! configured; a wrong password, a region without an endpoint and a
//! stopped Keystone are errors that say so. The rig's Swift speaks
//! tempauth only, so it refuses Keystone's token: through the Swift store
//! that is a 401, one new token, a second 401 and an error naming
//! Keystone (storage operations themselves are covered on tempauth in
//! swift_store.rs and through a scripted Keystone in swift_keystone.rs).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use deploy::store::keystone::{self, KeystoneError, KeystoneSettings};
use deploy::store::swift::{SwiftAuth, SwiftSettings, SwiftStore};
use deploy::store::{Store, StoreError};
use porthole_bmc::Secret;
use porthole_tests::peers::Swift;

const PASSWORD: &str = "ks-Adm1n-7f3c-porthole";
const EXPIRATION_S: u64 = 1800;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The running Keystone; stopped (and its state removed) on drop.
struct Keystone {
    state: tempfile::TempDir,
    url: String,
}

impl Keystone {
    fn up() -> Option<Keystone> {
        let venv = std::env::var_os("PORTHOLE_VENV_KEYSTONE")
            .map(PathBuf::from)
            .unwrap_or_else(|| root().join(".venv-keystone"));
        if !venv.join("bin/keystone-manage").exists() {
            eprintln!(
                "notice: no {} (scripts/venv-keystone.sh); skipping this test",
                venv.display()
            );
            assert!(
                std::env::var_os("PORTHOLE_REQUIRE_PEERS").is_none(),
                "a test peer is missing and PORTHOLE_REQUIRE_PEERS is set: Keystone"
            );
            return None;
        }
        let port = std::env::var("PORTHOLE_KEYSTONE_PORT")
            .ok()
            .and_then(|p| p.parse::<u16>().ok())
            .unwrap_or_else(|| {
                std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .expect("a free port")
                    .port()
            });
        let state = tempfile::tempdir().expect("a temp dir");
        let pw = state.path().join("admin-password");
        std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
        let out = Command::new(root().join("scripts/keystone-up.sh"))
            .arg("up")
            .env("PORTHOLE_VENV_KEYSTONE", &venv)
            .env("KEYSTONE_STATE_DIR", state.path().join("ks"))
            .env("KEYSTONE_PORT", port.to_string())
            .env("KEYSTONE_PASSWORD_FILE", &pw)
            .env("KEYSTONE_TOKEN_EXPIRATION", EXPIRATION_S.to_string())
            .env(
                "KEYSTONE_SWIFT_INTERNAL_URL",
                "http://localhost:8080/v1/AUTH_$(project_id)s",
            )
            .output()
            .expect("running keystone-up.sh");
        std::fs::remove_file(&pw).unwrap();
        let ks = Keystone {
            state,
            url: format!("http://127.0.0.1:{port}/v3"),
        };
        assert!(
            out.status.success(),
            "keystone-up.sh: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            ks.log()
        );
        Some(ks)
    }

    fn down(&self) {
        let out = Command::new(root().join("scripts/keystone-up.sh"))
            .arg("down")
            .env("KEYSTONE_STATE_DIR", self.state.path().join("ks"))
            .output()
            .expect("running keystone-up.sh down");
        assert!(out.status.success(), "keystone-up.sh down: {out:?}");
    }

    /// The server's access log (one line per request).
    fn log(&self) -> String {
        std::fs::read_to_string(self.state.path().join("ks/keystone.out")).unwrap_or_default()
    }

    fn token_requests(&self) -> usize {
        self.log().matches("\"POST /v3/auth/tokens ").count()
    }

    fn settings(&self, password: &str) -> KeystoneSettings {
        KeystoneSettings {
            auth_url: self.url.clone(),
            user: "admin".into(),
            password: Secret::new(password),
            user_domain_name: "Default".into(),
            project_name: "admin".into(),
            project_domain_name: "Default".into(),
            region: None,
            interface: "public".into(),
        }
    }
}

impl Drop for Keystone {
    fn drop(&mut self) {
        let _ = Command::new(root().join("scripts/keystone-up.sh"))
            .arg("down")
            .env("KEYSTONE_STATE_DIR", self.state.path().join("ks"))
            .output();
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_auth_against_a_real_keystone() {
    let Some(ks) = Keystone::up() else { return };
    let http = http();

    // The token: project-scoped, valid in Keystone's own eyes, expiring as
    // configured; the public endpoint is the rig's Swift account URL.
    let g = keystone::authenticate(&http, &ks.settings(PASSWORD))
        .await
        .expect("a token");
    let check = http
        .get(format!("{}/auth/tokens", ks.url))
        .header("X-Auth-Token", g.token.expose())
        .header("X-Subject-Token", g.token.expose())
        .send()
        .await
        .unwrap();
    assert_eq!(check.status(), 200, "Keystone does not know its own token");
    let body: serde_json::Value = check.json().await.unwrap();
    let project = body["token"]["project"]["id"].as_str().unwrap().to_owned();
    assert_eq!(body["token"]["project"]["name"], "admin");
    assert_eq!(
        g.storage_url,
        format!("http://127.0.0.1:8080/v1/AUTH_{project}")
    );
    let left = g
        .expires_at
        .expect("expires_at")
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(
        (Duration::from_secs(EXPIRATION_S - 120)..=Duration::from_secs(EXPIRATION_S + 5))
            .contains(&left),
        "expires in {left:?}"
    );

    // Interface: the internal endpoint.
    let internal = keystone::authenticate(
        &http,
        &KeystoneSettings {
            interface: "internal".into(),
            region: Some("RegionOne".into()),
            ..ks.settings(PASSWORD)
        },
    )
    .await
    .unwrap();
    assert_eq!(
        internal.storage_url,
        format!("http://localhost:8080/v1/AUTH_{project}")
    );

    // A wrong password: refused, named, and the password is not repeated.
    let err = keystone::authenticate(&http, &ks.settings("not-the-password"))
        .await
        .err()
        .expect("refused");
    assert!(matches!(err, KeystoneError::Refused { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!(
            "Keystone at {}/auth/tokens refused user \"admin\"",
            ks.url
        )) && msg.contains("401")
            && msg.contains("requires authentication")
            && msg.contains("wrong password"),
        "{msg}"
    );
    assert!(!msg.contains("not-the-password"), "{msg}");

    // No object-store endpoint in that region: says what there is.
    let err = keystone::authenticate(
        &http,
        &KeystoneSettings {
            region: Some("RegionTwo".into()),
            ..ks.settings(PASSWORD)
        },
    )
    .await
    .err()
    .expect("no endpoint");
    let msg = err.to_string();
    assert!(
        msg.contains("no object-store endpoint with interface \"public\" in region \"RegionTwo\"")
            && msg.contains("public in RegionOne, internal in RegionOne"),
        "{msg}"
    );

    // Through the Swift store: the rig's Swift (tempauth) refuses Keystone's
    // token, so the store asks Keystone once more, then gives up naming it.
    if let Some(swift) =
        Swift::up(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("porthole-deploy-swift"))
    {
        let store = SwiftStore::new(SwiftSettings {
            auth: SwiftAuth::Keystone(ks.settings(PASSWORD)),
            container: "ironic_ilo_container".into(),
            temp_url_key: None,
            timeout: Duration::from_secs(10),
        })
        .unwrap();
        let before = ks.token_requests();
        let err = store
            .put("image-ks", Bytes::from_static(b"x"), Duration::from_secs(5))
            .await
            .unwrap_err();
        drop(swift);
        let msg = err.to_string();
        assert!(
            matches!(err, StoreError::Status { status, .. } if status == 401)
                && msg.contains(&format!("with a fresh token from Keystone at {}", ks.url)),
            "{msg}"
        );
        assert_eq!(ks.token_requests() - before, 2, "{}", ks.log());
    }

    // Keystone down: unreachable, by its URL.
    ks.down();
    let err = keystone::authenticate(&http, &ks.settings(PASSWORD))
        .await
        .err()
        .expect("down");
    assert!(matches!(err, KeystoneError::Unreachable { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&format!(
            "Keystone at {}/auth/tokens cannot be reached",
            ks.url
        )),
        "{err}"
    );
}
