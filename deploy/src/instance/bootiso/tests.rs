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
        .create_exclusive(
            &format!("{name}.lock"),
            &Metadata::new(),
            Duration::from_millis(300)
        )
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

/// A store whose conditional create is as weak as Swift's under
/// overlapping PUTs: it always succeeds and the newest write wins.
struct LastWriterWins(HttpStore);

#[async_trait::async_trait]
impl Store for LastWriterWins {
    fn kind(&self) -> &'static str {
        "weak"
    }
    async fn put(&self, n: &str, b: Bytes, ttl: Duration) -> Result<(), StoreError> {
        self.0.put(n, b, ttl).await
    }
    async fn temp_url(&self, n: &str, ttl: Duration) -> Result<String, StoreError> {
        self.0.temp_url(n, ttl).await
    }
    async fn delete(&self, n: &str) -> Result<(), StoreError> {
        self.0.delete(n).await
    }
    async fn put_kept(&self, n: &str, b: Bytes, m: &Metadata) -> Result<(), StoreError> {
        self.0.put_kept(n, b, m).await
    }
    async fn metadata(&self, n: &str) -> Result<Option<Metadata>, StoreError> {
        self.0.metadata(n).await
    }
    async fn set_metadata(&self, n: &str, m: &Metadata) -> Result<(), StoreError> {
        self.0.set_metadata(n, m).await
    }
    async fn create_exclusive(
        &self,
        n: &str,
        m: &Metadata,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        // Checked when the PUT starts, landed a while later.
        if self.0.metadata(n).await?.is_some() {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        self.0.put(n, Bytes::new(), ttl).await?;
        self.0.set_metadata(n, m).await?;
        Ok(true)
    }
}

#[tokio::test]
async fn with_a_non_atomic_conditional_create_the_read_back_keeps_the_count() {
    let (_d, s, _c) = store().await;
    let weak: Arc<dyn Store> = Arc::new(LastWriterWins(s.clone()));
    // Two services, so the local mutex does not order them.
    let services = [
        Arc::new(BootIsos::new(weak.clone(), Duration::from_secs(10))),
        Arc::new(BootIsos::new(weak, Duration::from_secs(10))),
    ];
    let name = object_name("weak", "k", "r");
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let (b, name) = (services[i % 2].clone(), name.clone());
            tokio::spawn(async move {
                b.acquire(&name, || async { Ok::<_, BootIsoError>(vec![1u8; 16]) })
                    .await
                    .unwrap()
                    .usage_count
            })
        })
        .collect();
    let mut counts = Vec::new();
    for t in tasks {
        counts.push(t.await.unwrap());
    }
    counts.sort();
    assert_eq!(counts, (1..=8).collect::<Vec<u64>>());
}
