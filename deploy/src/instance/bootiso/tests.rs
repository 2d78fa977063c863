//! Counting on the embedded store (the real one, in-process).

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio_util::sync::CancellationToken;

use super::*;
use crate::store::http::HttpStore;

async fn store() -> (tempfile::TempDir, HttpStore, CancellationToken) {
    let dir = tempfile::tempdir().unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cancel = CancellationToken::new();
    let s = HttpStore::start(&dir.path().join("o"), l, None, cancel.clone())
        .await
        .unwrap();
    (dir, s.store, cancel)
}

fn isos(s: &HttpStore) -> BootIsos {
    BootIsos::new(Arc::new(s.clone()), Duration::from_secs(5))
}

#[tokio::test]
async fn two_deploys_share_one_iso_and_the_second_release_deletes_it() {
    let (_d, s, _c) = store().await;
    let b = isos(&s);
    let name = object_name("http://i/img", "http://i/k", "http://i/r");
    let builds = AtomicUsize::new(0);
    let build = || async {
        builds.fetch_add(1, Ordering::SeqCst);
        Ok::<_, BootIsoError>(b"ISO".to_vec())
    };
    let one = b.acquire(&name, build).await.unwrap();
    assert_eq!((one.origin, one.usage_count), (Origin::Built, 1));
    assert_eq!(one.boot_iso, format!("store:{name}"));
    let two = b.acquire(&name, build).await.unwrap();
    assert_eq!((two.origin, two.usage_count), (Origin::Shared, 2));
    assert_eq!(builds.load(Ordering::SeqCst), 1);
    let meta = s.metadata(&name).await.unwrap().unwrap();
    assert_eq!(meta[USAGE_COUNT], "2");
    assert_eq!(b.release(&one.boot_iso).await.unwrap(), (1, false));
    assert!(s.metadata(&name).await.unwrap().is_some());
    assert_eq!(b.release(&two.boot_iso).await.unwrap(), (0, true));
    assert!(
        s.metadata(&name).await.unwrap().is_none(),
        "not deleted at 0"
    );
    // Released again (a repeated clean up): nothing to do.
    assert_eq!(b.release(&two.boot_iso).await.unwrap(), (0, false));
}

#[tokio::test]
async fn concurrent_deploys_lose_no_count() {
    let (_d, s, _c) = store().await;
    // Two services on one store: only the lock object orders them.
    let services = [Arc::new(isos(&s)), Arc::new(isos(&s))];
    let name = object_name("img", "k", "r");
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let (b, name) = (services[i % 2].clone(), name.clone());
            tokio::spawn(async move {
                b.acquire(&name, || async { Ok::<_, BootIsoError>(vec![7u8; 4096]) })
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut built = 0;
    for t in tasks {
        if t.await.unwrap().origin == Origin::Built {
            built += 1;
        }
    }
    assert_eq!(built, 1, "more than one deploy stored the ISO");
    let meta = s.metadata(&name).await.unwrap().unwrap();
    assert_eq!(meta[USAGE_COUNT], "12");
    let releases: Vec<_> = (0..12)
        .map(|i| {
            let (b, r) = (services[i % 2].clone(), format!("store:{name}"));
            tokio::spawn(async move { b.release(&r).await.unwrap() })
        })
        .collect();
    let mut deleted = 0;
    for t in releases {
        if t.await.unwrap().1 {
            deleted += 1;
        }
    }
    assert_eq!(deleted, 1);
    assert!(s.metadata(&name).await.unwrap().is_none());
    assert!(s.metadata(&format!("{name}.lock")).await.unwrap().is_none());
}

#[tokio::test]
async fn a_given_iso_or_one_not_built_here_is_never_counted_or_deleted() {
    let (_d, s, _c) = store().await;
    let b = isos(&s);
    assert_eq!(
        b.release("http://images/user.iso").await.unwrap(),
        (0, false)
    );
    let meta = Metadata::from([(USAGE_COUNT.to_owned(), "1".to_owned())]);
    s.put_kept("boot-theirs", Bytes::from_static(b"x"), &meta)
        .await
        .unwrap();
    assert_eq!(b.release("store:boot-theirs").await.unwrap(), (0, false));
    assert!(s.metadata("boot-theirs").await.unwrap().is_some());
}

#[tokio::test]
async fn a_lock_left_by_a_crashed_holder_expires() {
    let (_d, s, _c) = store().await;
    let b = BootIsos::new(Arc::new(s.clone()), Duration::from_millis(300));
    let name = object_name("a", "b", "c");
    // A holder that died: its lock object, with the lock TTL.
    assert!(s
        .create_exclusive(&format!("{name}.lock"), Duration::from_millis(300))
        .await
        .unwrap());
    let t = Instant::now();
    let got = b
        .acquire(&name, || async { Ok::<_, BootIsoError>(b"I".to_vec()) })
        .await
        .unwrap();
    assert_eq!(got.usage_count, 1);
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );
}
