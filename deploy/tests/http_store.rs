//! The embedded store served for real on 127.0.0.1 and fetched with a real
//! HTTP client (reqwest): the bytes at the temp URL, 404 for a wrong
//! signature, a guessed path, a URL past its expiry, after delete and after
//! the TTL (when the file is gone from disk too); a restart clears what an
//! earlier run left.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use deploy::store::http::HttpStore;
use deploy::store::Store;
use tokio_util::sync::CancellationToken;

async fn start(dir: &Path) -> (HttpStore, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cancel = CancellationToken::new();
    let started = HttpStore::start(dir, listener, None, cancel.clone())
        .await
        .unwrap();
    (started.store, cancel)
}

async fn get(url: &str) -> (u16, Bytes) {
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap())
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn temp_url_serves_the_bytes_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let (store, cancel) = start(dir.path()).await;
    let body = Bytes::from_static(b"floppy bytes \x00\x01\xff");
    store
        .put("image-n1", body.clone(), Duration::from_secs(60))
        .await
        .unwrap();
    let url = store
        .temp_url("image-n1", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(get(&url).await, (200, body.clone()));
    // The object's name is not in the URL; the path is 64 hex digits.
    assert!(!url.contains("image-n1"), "{url}");
    let u = url::Url::parse(&url).unwrap();
    let id = u.path().strip_prefix("/objects/").unwrap();
    assert_eq!(id.len(), 64, "{url}");
    // The file is private to the service.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join(id))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // A changed signature, expiry or path: 404, the same answer each time.
    let sig = u
        .query_pairs()
        .find(|(k, _)| k == "temp_url_sig")
        .unwrap()
        .1
        .into_owned();
    let mut flipped = sig.clone();
    flipped.replace_range(0..1, if sig.starts_with('0') { "1" } else { "0" });
    let later = u
        .query_pairs()
        .find(|(k, _)| k == "temp_url_expires")
        .unwrap()
        .1
        .parse::<u64>()
        .unwrap()
        + 3600;
    let origin = u.origin().ascii_serialization();
    for bad in [
        url.replace(&sig, &flipped),
        url.replace(
            &format!("expires={}", later - 3600),
            &format!("expires={later}"),
        ),
        format!("{origin}/objects/{id}"),
        format!("{origin}/objects/{}?{}", "0".repeat(64), u.query().unwrap()),
        format!("{origin}/image-n1"),
    ] {
        let (status, body) = get(&bad).await;
        assert_eq!((status, &body[..]), (404, &b"Not Found\n"[..]), "{bad}");
    }
    // Still served to the right URL.
    assert_eq!(get(&url).await.0, 200);

    store.delete("image-n1").await.unwrap();
    assert_eq!(get(&url).await.0, 404);
    assert!(files(dir.path()).is_empty());
    // Deleting again is fine.
    store.delete("image-n1").await.unwrap();
    cancel.cancel();
    store.stopped().await;
}

#[tokio::test]
async fn after_the_ttl_the_url_is_404_and_the_bytes_are_gone_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (store, cancel) = start(dir.path()).await;
    store
        .put("image-n2", Bytes::from_static(b"x"), Duration::from_secs(2))
        .await
        .unwrap();
    let url = store
        .temp_url("image-n2", Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(get(&url).await.0, 200);
    assert_eq!(files(dir.path()).len(), 1);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(get(&url).await.0, 404);
    assert!(files(dir.path()).is_empty(), "{:?}", files(dir.path()));
    cancel.cancel();
    store.stopped().await;
}

#[tokio::test]
async fn a_url_past_its_expiry_is_404_while_the_object_lives() {
    let dir = tempfile::tempdir().unwrap();
    let (store, cancel) = start(dir.path()).await;
    store
        .put(
            "image-n3",
            Bytes::from_static(b"y"),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let url = store
        .temp_url("image-n3", Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(get(&url).await.0, 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(get(&url).await.0, 404);
    // A fresh URL for the same object still works.
    let again = store
        .temp_url("image-n3", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(get(&again).await.0, 200);
    cancel.cancel();
    store.stopped().await;
}

#[tokio::test]
async fn a_put_replaces_the_object_and_its_old_url_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let (store, cancel) = start(dir.path()).await;
    let ttl = Duration::from_secs(60);
    store
        .put("n", Bytes::from_static(b"one"), ttl)
        .await
        .unwrap();
    let old = store.temp_url("n", ttl).await.unwrap();
    store
        .put("n", Bytes::from_static(b"two"), ttl)
        .await
        .unwrap();
    let new = store.temp_url("n", ttl).await.unwrap();
    assert_eq!(get(&old).await.0, 404);
    assert_eq!(get(&new).await, (200, Bytes::from_static(b"two")));
    assert_eq!(files(dir.path()).len(), 1);
    cancel.cancel();
    store.stopped().await;
}

#[tokio::test]
async fn a_restart_deletes_what_an_earlier_run_left() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("leftover"), b"old secret floppy").unwrap();
    let (store, cancel) = start(dir.path()).await;
    assert!(files(dir.path()).is_empty());
    assert!(store
        .temp_url("anything", Duration::from_secs(5))
        .await
        .is_err());
    cancel.cancel();
    store.stopped().await;
}
