//! The cache against an in-memory source that counts its downloads.

use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use bytes::Bytes;

use super::*;
use crate::instance::source::{Download, ImageSource};

/// `mem:<n>` is n bytes of `n as u8`; `nolen:<n>` the same without a length.
struct Mem(Arc<AtomicUsize>);

struct MemDownload(Option<Bytes>, bool);

#[async_trait]
impl Download for MemDownload {
    fn length(&self) -> Option<u64> {
        self.1
            .then(|| self.0.as_ref().map_or(0, |b| b.len() as u64))
    }
    async fn chunk(&mut self) -> Result<Option<Bytes>, SourceError> {
        Ok(self.0.take())
    }
}

#[async_trait]
impl ImageSource for Mem {
    fn handles(&self, s: &str) -> bool {
        s.starts_with("mem:") || s.starts_with("nolen:")
    }
    async fn open(&self, s: &str) -> Result<Box<dyn Download>, SourceError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        let (kind, n) = s.split_once(':').unwrap();
        let n: usize = n.parse().unwrap();
        Ok(Box::new(MemDownload(
            Some(Bytes::from(vec![n as u8; n])),
            kind == "mem",
        )))
    }
}

fn setup(cap: u64) -> (tempfile::TempDir, ImageCache, Sources, Arc<AtomicUsize>) {
    let dir = tempfile::tempdir().unwrap();
    let cache = ImageCache::open(&dir.path().join("c"), cap).unwrap();
    let opens = Arc::new(AtomicUsize::new(0));
    let sources = Sources(vec![Box::new(Mem(opens.clone()))]);
    (dir, cache, sources, opens)
}

fn files(dir: &tempfile::TempDir) -> usize {
    std::fs::read_dir(dir.path().join("c")).unwrap().count()
}

#[tokio::test]
async fn a_second_get_is_served_from_the_cache_and_checked_again() {
    let (dir, cache, sources, opens) = setup(1000);
    let md5_of_100 = {
        let mut h = Hasher::new("md5").unwrap();
        h.update(&[100u8; 100]);
        h.finish()
    };
    let ok = Expected::from_fields(&md5_of_100, "", "").unwrap();
    let a = cache.get(&sources, "mem:100", &ok).await.unwrap();
    assert_eq!(std::fs::read(&a.path).unwrap(), vec![100u8; 100]);
    drop(a);
    let _b = cache.get(&sources, "mem:100", &ok).await.unwrap();
    assert_eq!(opens.load(Ordering::SeqCst), 1, "downloaded twice");
    // A different checksum for the cached image is a mismatch, not a hit.
    let bad = Expected::from_fields("00", "", "").unwrap();
    let err = cache.get(&sources, "mem:100", &bad).await.err().unwrap();
    assert!(matches!(err, CacheError::Digest(_)), "{err}");
    // sha256 was not computed at download: computed from the file now.
    let sha = Expected::from_fields("", "sha256", "11").unwrap();
    let err = cache.get(&sources, "mem:100", &sha).await.err().unwrap();
    assert!(err.to_string().contains("sha256 of mem:100 is "), "{err}");
    assert_eq!(files(&dir), 1);
}

#[tokio::test]
async fn a_checksum_mismatch_on_download_leaves_no_file() {
    let (dir, cache, sources, _) = setup(1000);
    let bad = Expected::from_fields("", "sha256", "ab").unwrap();
    let err = cache.get(&sources, "mem:10", &bad).await.err().unwrap();
    assert!(
        err.to_string().starts_with("image checksum mismatch"),
        "{err}"
    );
    assert_eq!(files(&dir), 0);
    assert!(!cache.contains("mem:10"));
    assert_eq!(cache.held(), 0);
}

#[tokio::test]
async fn unused_images_are_evicted_oldest_first_and_used_ones_stay() {
    let (dir, cache, sources, _) = setup(250);
    let none = Expected::default();
    let a = cache.get(&sources, "mem:100", &none).await.unwrap();
    drop(cache.get(&sources, "mem:101", &none).await.unwrap());
    // a is in use, 101 is not: 40 more fit (241 of 250), 102 only once
    // 101 is evicted.
    let _c = cache.get(&sources, "mem:40", &none).await.unwrap();
    assert!(cache.contains("mem:101"));
    let _d = cache.get(&sources, "mem:102", &none).await.unwrap();
    assert!(!cache.contains("mem:101"), "the unused image was kept");
    assert!(cache.contains("mem:100"), "the image in use was evicted");
    assert_eq!(cache.held(), 100 + 40 + 102);
    assert_eq!(files(&dir), 3);
    drop(a);
}

#[tokio::test]
async fn an_image_bigger_than_the_cap_is_refused_with_or_without_a_length() {
    let (dir, cache, sources, _) = setup(50);
    for src in ["mem:60", "nolen:60"] {
        let err = cache
            .get(&sources, src, &Expected::default())
            .await
            .err()
            .unwrap();
        assert!(
            err.to_string().contains(&format!(
                "image {src} (60 bytes) does not fit the image cache (50 bytes"
            )),
            "{err}"
        );
        assert_eq!(files(&dir), 0, "{src}");
    }
}
