//! The local image cache (Ironic's `InstanceImageCache`): each image
//! source is downloaded once into `instance.cache_dir` (a file named after
//! the SHA-256 of the source, 0600), hashed on the way in and checked
//! against instance_info's checksums, and kept for the next deploy of the
//! same image. The cache has a size cap: before a download, images no
//! deploy is using are evicted, least recently used first; an image that
//! cannot fit even then is refused before it is downloaded (when the server
//! gives a length) or as soon as it outgrows the cap. A failed or refused
//! download leaves no file. The directory is emptied at start.
//!
//! Callers: [`super::Instances`] (ContinueDeploy), for the image and for a
//! boot ISO's kernel and ramdisk.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::AsyncWriteExt;

use super::digest::{DigestError, Expected, Hasher};
use super::source::{Download, SourceError, Sources};

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Digest(#[from] DigestError),
    #[error(
        "image {image} ({size} bytes) does not fit the image cache ({cap} bytes, {in_use} in use)"
    )]
    TooBig {
        image: String,
        size: u64,
        cap: u64,
        in_use: u64,
    },
    #[error("image cache {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

struct Entry {
    size: u64,
    last_used: Instant,
    users: usize,
    /// Digests computed at download, by algorithm.
    digests: Vec<(String, String)>,
}

struct Inner {
    dir: PathBuf,
    cap: u64,
    entries: Mutex<HashMap<String, Entry>>,
    /// One download per source at a time.
    fetching: tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// The cache; clones share it.
#[derive(Clone)]
pub struct ImageCache(Arc<Inner>);

/// An image in the cache, not evicted while held.
pub struct Cached {
    cache: ImageCache,
    key: String,
    pub path: PathBuf,
    pub size: u64,
}

impl Drop for Cached {
    fn drop(&mut self) {
        let mut entries = self.cache.0.entries.lock().expect("cache lock");
        if let Some(e) = entries.get_mut(&self.key) {
            e.users = e.users.saturating_sub(1);
            e.last_used = Instant::now();
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_owned(),
        source,
    }
}

impl ImageCache {
    /// The cache in `dir` (created 0700, emptied), holding at most `cap`
    /// bytes.
    pub fn open(dir: &Path, cap: u64) -> Result<ImageCache, CacheError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            if entry.file_type().map_err(io(dir))?.is_file() {
                std::fs::remove_file(entry.path()).map_err(io(dir))?;
            }
        }
        Ok(ImageCache(Arc::new(Inner {
            dir: dir.to_owned(),
            cap,
            entries: Mutex::default(),
            fetching: tokio::sync::Mutex::default(),
        })))
    }

    fn key(image_source: &str) -> String {
        let d = ring::digest::digest(&ring::digest::SHA256, image_source.as_bytes());
        crate::secret::hex(d.as_ref())
    }

    /// Bytes held now.
    pub fn held(&self) -> u64 {
        let entries = self.0.entries.lock().expect("cache lock");
        entries.values().map(|e| e.size).sum()
    }

    /// Whether `image_source` is in the cache.
    pub fn contains(&self, image_source: &str) -> bool {
        let entries = self.0.entries.lock().expect("cache lock");
        entries.contains_key(&Self::key(image_source))
    }

    /// The image, from the cache or downloaded now, checked against
    /// `expected` either way.
    pub async fn get(
        &self,
        sources: &Sources,
        image_source: &str,
        expected: &Expected,
    ) -> Result<Cached, CacheError> {
        let key = Self::key(image_source);
        let turn = {
            let mut f = self.0.fetching.lock().await;
            f.entry(key.clone()).or_default().clone()
        };
        let _turn = turn.lock().await;
        if let Some(c) = self.hit(&key, image_source, expected).await? {
            return Ok(c);
        }
        self.download(sources, &key, image_source, expected).await
    }

    /// The cached entry, checked; algorithms not computed at download are
    /// computed now from the file.
    async fn hit(
        &self,
        key: &str,
        image_source: &str,
        expected: &Expected,
    ) -> Result<Option<Cached>, CacheError> {
        let path = self.0.dir.join(key);
        let (size, missing) = {
            let mut entries = self.0.entries.lock().expect("cache lock");
            let Some(e) = entries.get_mut(key) else {
                return Ok(None);
            };
            e.users += 1;
            e.last_used = Instant::now();
            let missing: Vec<String> = expected
                .algorithms()
                .filter(|a| !e.digests.iter().any(|(d, _)| d == a))
                .map(str::to_owned)
                .collect();
            (e.size, missing)
        };
        let cached = Cached {
            cache: self.clone(),
            key: key.to_owned(),
            path: path.clone(),
            size,
        };
        if !missing.is_empty() {
            let computed = hash_file(&path, &missing).await?;
            let mut entries = self.0.entries.lock().expect("cache lock");
            if let Some(e) = entries.get_mut(key) {
                e.digests.extend(computed);
            }
        }
        let digests = {
            let entries = self.0.entries.lock().expect("cache lock");
            entries
                .get(key)
                .map(|e| e.digests.clone())
                .unwrap_or_default()
        };
        expected.check(image_source, &digests)?;
        Ok(Some(cached))
    }

    async fn download(
        &self,
        sources: &Sources,
        key: &str,
        image_source: &str,
        expected: &Expected,
    ) -> Result<Cached, CacheError> {
        let mut hashers: Vec<(String, Hasher)> = Vec::new();
        for algo in expected.algorithms() {
            if !hashers.iter().any(|(a, _)| a == algo) {
                hashers.push((algo.to_owned(), Hasher::new(algo)?));
            }
        }
        let mut dl = sources.open(image_source).await?;
        if let Some(len) = dl.length() {
            self.make_room(image_source, len)?;
        }
        let part = self.0.dir.join(format!("{key}.part"));
        let result = self
            .stream_to(&part, dl.as_mut(), image_source, &mut hashers)
            .await;
        let size = match result {
            Ok(size) => size,
            Err(e) => {
                let _ = tokio::fs::remove_file(&part).await;
                return Err(e);
            }
        };
        let digests: Vec<(String, String)> =
            hashers.into_iter().map(|(a, h)| (a, h.finish())).collect();
        if let Err(e) = expected.check(image_source, &digests) {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(e.into());
        }
        let path = self.0.dir.join(key);
        tokio::fs::rename(&part, &path).await.map_err(io(&path))?;
        self.0.entries.lock().expect("cache lock").insert(
            key.to_owned(),
            Entry {
                size,
                last_used: Instant::now(),
                users: 1,
                digests,
            },
        );
        tracing::info!(image = %image_source, size, "image downloaded into the cache");
        Ok(Cached {
            cache: self.clone(),
            key: key.to_owned(),
            path,
            size,
        })
    }

    /// Write the download into `part` (0600), hashing and keeping within
    /// the cap as it comes; its size.
    async fn stream_to(
        &self,
        part: &Path,
        dl: &mut dyn Download,
        image_source: &str,
        hashers: &mut [(String, Hasher)],
    ) -> Result<u64, CacheError> {
        let mut file = create_private(part).await?;
        let mut size = 0u64;
        while let Some(chunk) = dl.chunk().await? {
            size += chunk.len() as u64;
            if dl.length().is_none() {
                self.make_room(image_source, size)?;
            }
            for (_, h) in hashers.iter_mut() {
                h.update(&chunk);
            }
            file.write_all(&chunk).await.map_err(io(part))?;
        }
        file.sync_all().await.map_err(io(part))?;
        Ok(size)
    }

    /// Evict unused images, oldest first, until `size` more bytes fit;
    /// refuse when they cannot.
    fn make_room(&self, image_source: &str, size: u64) -> Result<(), CacheError> {
        let mut entries = self.0.entries.lock().expect("cache lock");
        loop {
            let held: u64 = entries.values().map(|e| e.size).sum();
            if held + size <= self.0.cap {
                return Ok(());
            }
            let victim = entries
                .iter()
                .filter(|(_, e)| e.users == 0)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone());
            let Some(victim) = victim else {
                return Err(CacheError::TooBig {
                    image: image_source.to_owned(),
                    size,
                    cap: self.0.cap,
                    in_use: held,
                });
            };
            entries.remove(&victim);
            let path = self.0.dir.join(&victim);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(file = %path.display(), error = %e, "cannot delete an evicted image");
            }
            tracing::info!(file = %path.display(), "image evicted from the cache");
        }
    }
}

async fn create_private(path: &Path) -> Result<tokio::fs::File, CacheError> {
    tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .await
        .map_err(io(path))
}

async fn hash_file(path: &Path, algos: &[String]) -> Result<Vec<(String, String)>, CacheError> {
    let (path, algos) = (path.to_owned(), algos.to_owned());
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut hashers = algos
            .iter()
            .map(|a| Ok((a.clone(), Hasher::new(a)?)))
            .collect::<Result<Vec<_>, DigestError>>()?;
        let mut f = std::fs::File::open(&path).map_err(io(&path))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).map_err(io(&path))?;
            if n == 0 {
                break;
            }
            for (_, h) in &mut hashers {
                h.update(&buf[..n]);
            }
        }
        Ok(hashers.into_iter().map(|(a, h)| (a, h.finish())).collect())
    })
    .await
    .map_err(|e| CacheError::Io {
        path: PathBuf::new(),
        source: std::io::Error::other(e),
    })?
}

#[cfg(test)]
mod tests;
