//! The shared boot ISO's `usage_count` on the rig's real Swift (held under
//! the machine-wide `PeerLock`, kept short): two stores standing for two
//! deploy services count six concurrent deploys of one image through the
//! `If-None-Match: *` lock object, the count is Swift object metadata
//! (`X-Object-Meta-Usage-Count`), the ISO has no expiry, and six releases
//! delete it at 0 with no lock object left behind.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use deploy::instance::bootiso::{object_name, BootIsoError, BootIsos, Origin};
use deploy::store::swift::{SwiftAuth, SwiftSettings, SwiftStore};
use deploy::store::Store;
use porthole_bmc::Secret;
use porthole_tests::peers::Swift;

fn settings(container: &str) -> SwiftSettings {
    SwiftSettings {
        auth: SwiftAuth::TempAuth {
            auth_url: Swift::AUTH_URL.into(),
            user: Swift::USER.into(),
            key: Secret::new(Swift::KEY),
        },
        container: container.into(),
        temp_url_key: None,
        timeout: Duration::from_secs(10),
    }
}

/// HEAD of an object, as the test sees it (status, headers).
async fn head(store: &SwiftStore, container: &str, name: &str) -> reqwest::Response {
    let http = reqwest::Client::new();
    let auth = http
        .get(Swift::AUTH_URL)
        .header("X-Auth-User", Swift::USER)
        .header("X-Auth-Key", Swift::KEY)
        .send()
        .await
        .unwrap();
    let token = auth.headers()["x-auth-token"].to_str().unwrap().to_owned();
    let url = store.storage_url().await.unwrap();
    http.head(format!("{url}/{container}/{name}"))
        .header("X-Auth-Token", token)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_deploys_on_swift_keep_the_usage_count_and_the_last_release_deletes() {
    let Some(_swift) =
        Swift::up(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("porthole-deploy-swift"))
    else {
        return;
    };
    let container = format!("porthole-iso-{}", std::process::id());
    let stores: Vec<Arc<SwiftStore>> = (0..2)
        .map(|_| Arc::new(SwiftStore::new(settings(&container)).unwrap()))
        .collect();
    let services: Vec<Arc<BootIsos>> = stores
        .iter()
        .map(|s| {
            let s: Arc<dyn Store> = s.clone();
            Arc::new(BootIsos::new(s, Duration::from_secs(30)))
        })
        .collect();
    let name = object_name("swift:img.qcow2", "http://k", "http://r");
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let (b, name) = (services[i % 2].clone(), name.clone());
            tokio::spawn(async move {
                b.acquire(&name, || async {
                    Ok::<_, BootIsoError>(vec![0x42; 64 << 10])
                })
                .await
                .unwrap()
            })
        })
        .collect();
    let mut chosen = Vec::new();
    for t in tasks {
        chosen.push(t.await.unwrap());
    }
    let mut counts: Vec<u64> = chosen.iter().map(|c| c.usage_count).collect();
    counts.sort();
    assert_eq!(counts, [1, 2, 3, 4, 5, 6]);
    assert_eq!(
        chosen.iter().filter(|c| c.origin == Origin::Built).count(),
        1
    );
    assert!(chosen.iter().all(|c| c.boot_iso == format!("swift:{name}")));
    let h = head(&stores[0], &container, &name).await;
    assert_eq!(h.status(), 200);
    assert_eq!(h.headers()["x-object-meta-usage-count"], "6");
    assert!(
        h.headers().get("x-delete-at").is_none(),
        "the boot ISO expires"
    );
    assert_eq!(
        h.headers()["content-length"],
        (64 << 10).to_string().as_str()
    );

    let mut left = Vec::new();
    for i in 0..6 {
        left.push(services[i % 2].release(&chosen[0].boot_iso).await.unwrap());
    }
    assert_eq!(
        left,
        [
            (5, false),
            (4, false),
            (3, false),
            (2, false),
            (1, false),
            (0, true)
        ]
    );
    assert_eq!(head(&stores[0], &container, &name).await.status(), 404);
    let lock = format!("{name}.lock");
    assert_eq!(head(&stores[0], &container, &lock).await.status(), 404);
}
