//! The embedded store (`store.backend = "http"`, the default): the deploy
//! service keeps each object in a file of its own under `store.http_dir`
//! (mode 0600) and serves it over HTTP at
//! `<public_url>/objects/<random>?temp_url_expires=<t>&temp_url_sig=<hmac>`.
//! The path segment is 256 random bits chosen at each put, the signature an
//! HMAC-SHA256 under a key that lives only in this process; a GET after
//! `temp_url_expires`, with a bad signature or for an unknown object is a
//! plain 404 (no oracle). At the object's TTL a timer deletes the file.
//! Files left by an earlier run are deleted at start (their URLs' key died
//! with it).
//!
//! Callers: [`crate::run`] starts it; [`crate::deploy`] through [`Store`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{expires_at, now_unix, temp_url_sig, Metadata, Store, StoreError};
use crate::secret::hex;

struct Object {
    /// The random path segment (and file name).
    id: String,
    file: PathBuf,
    meta: Metadata,
}

struct Inner {
    dir: PathBuf,
    public_url: String,
    /// The URL-signing key, random per process.
    key: [u8; 32],
    /// name -> object.
    objects: Mutex<HashMap<String, Object>>,
    /// random id -> name, for GET.
    by_id: Mutex<HashMap<String, String>>,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

/// The store; clones share it.
#[derive(Clone)]
pub struct HttpStore(Arc<Inner>);

/// A running store: the store and where it listens.
pub struct Started {
    pub store: HttpStore,
    pub local_addr: std::net::SocketAddr,
}

impl HttpStore {
    /// Clear `dir` of earlier objects and serve on `listener` until
    /// `cancel`. `public_url` is how BMCs reach `listener`
    /// (`http://host:port`); `None`: `http://<listener's address>`.
    pub async fn start(
        dir: &Path,
        listener: TcpListener,
        public_url: Option<&str>,
        cancel: CancellationToken,
    ) -> Result<Started, StoreError> {
        let io = |source| StoreError::Io {
            path: dir.to_owned(),
            source,
        };
        let local_addr = listener.local_addr().map_err(io)?;
        sweep(dir).await.map_err(io)?;
        let mut key = [0u8; 32];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| StoreError::Malformed("the system RNG failed".into()))?;
        let public_url = public_url
            .map(|u| u.trim_end_matches('/').to_owned())
            .unwrap_or_else(|| format!("http://{local_addr}"));
        let store = HttpStore(Arc::new(Inner {
            dir: dir.to_owned(),
            public_url,
            key,
            objects: Mutex::default(),
            by_id: Mutex::default(),
            tasks: TaskTracker::new(),
            cancel: cancel.clone(),
        }));
        let app = Router::new()
            .route("/objects/{id}", get(serve_object))
            .fallback(|| async { not_found() })
            .with_state(store.clone());
        store.0.tasks.spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(cancel.cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "embedded store stopped serving");
            }
        });
        tracing::info!(%local_addr, public_url = %store.0.public_url, dir = %dir.display(), "embedded store serving");
        Ok(Started { store, local_addr })
    }

    /// Wait for the server and the expiry timers to end (after `cancel`).
    pub async fn stopped(&self) {
        self.0.tasks.close();
        self.0.tasks.wait().await;
    }

    /// Store `bytes` as `name` (a new file, a new random id), deleted at
    /// `ttl` when given; with `exclusive`, only when `name` is absent
    /// (`false` and nothing kept otherwise).
    async fn insert(
        &self,
        name: &str,
        bytes: Bytes,
        meta: Metadata,
        ttl: Option<Duration>,
        exclusive: bool,
    ) -> Result<bool, StoreError> {
        let mut raw = [0u8; 32];
        SystemRandom::new()
            .fill(&mut raw)
            .map_err(|_| StoreError::Malformed("the system RNG failed".into()))?;
        let id = hex(&raw);
        let file = self.0.dir.join(&id);
        write_private(&file, bytes).await?;
        let inserted = {
            let mut objects = self.0.objects.lock().expect("store lock");
            if exclusive && objects.contains_key(name) {
                None
            } else {
                let old = objects.insert(
                    name.to_owned(),
                    Object {
                        id: id.clone(),
                        file: file.clone(),
                        meta,
                    },
                );
                let mut by_id = self.0.by_id.lock().expect("store lock");
                if let Some(o) = &old {
                    by_id.remove(&o.id);
                }
                by_id.insert(id.clone(), name.to_owned());
                Some(old)
            }
        };
        let Some(old) = inserted else {
            remove_file(&file).await;
            return Ok(false);
        };
        if let Some(old) = old {
            remove_file(&old.file).await;
        }
        let Some(ttl) = ttl else {
            return Ok(true);
        };
        // Expiry: the bytes go at the TTL, whoever holds the URL.
        let (store, name, cancel) = (self.clone(), name.to_owned(), self.0.cancel.clone());
        self.0.tasks.spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(ttl) => {}
                () = cancel.cancelled() => {}
            }
            if let Some(file) = store.remove(&name, Some(&id)) {
                remove_file(&file).await;
                tracing::debug!(object = %name, "embedded store object expired");
            }
        });
        Ok(true)
    }

    fn remove(&self, name: &str, only_id: Option<&str>) -> Option<PathBuf> {
        let mut objects = self.0.objects.lock().expect("store lock");
        match (objects.get(name), only_id) {
            (Some(o), Some(id)) if o.id != id => return None,
            (None, _) => return None,
            _ => {}
        }
        let o = objects.remove(name)?;
        self.0.by_id.lock().expect("store lock").remove(&o.id);
        Some(o.file)
    }

    fn lookup(&self, id: &str) -> Option<PathBuf> {
        let name = self.0.by_id.lock().expect("store lock").get(id)?.clone();
        let objects = self.0.objects.lock().expect("store lock");
        objects.get(&name).map(|o| o.file.clone())
    }
}

#[async_trait]
impl Store for HttpStore {
    fn kind(&self) -> &'static str {
        "http"
    }

    async fn put(&self, name: &str, bytes: Bytes, ttl: Duration) -> Result<(), StoreError> {
        self.insert(name, bytes, Metadata::new(), Some(ttl), false)
            .await
            .map(drop)
    }

    async fn put_kept(&self, name: &str, bytes: Bytes, meta: &Metadata) -> Result<(), StoreError> {
        self.insert(name, bytes, meta.clone(), None, false)
            .await
            .map(drop)
    }

    async fn metadata(&self, name: &str) -> Result<Option<Metadata>, StoreError> {
        let objects = self.0.objects.lock().expect("store lock");
        Ok(objects.get(name).map(|o| o.meta.clone()))
    }

    async fn set_metadata(&self, name: &str, meta: &Metadata) -> Result<(), StoreError> {
        let mut objects = self.0.objects.lock().expect("store lock");
        let o = objects
            .get_mut(name)
            .ok_or_else(|| StoreError::NotFound(name.to_owned()))?;
        o.meta = meta.clone();
        Ok(())
    }

    async fn create_exclusive(
        &self,
        name: &str,
        meta: &Metadata,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.insert(name, Bytes::new(), meta.clone(), Some(ttl), true)
            .await
    }

    /// The check and the insert happen under one mutex.
    fn exclusive_is_atomic(&self) -> bool {
        true
    }

    async fn temp_url(&self, name: &str, ttl: Duration) -> Result<String, StoreError> {
        let id = {
            let objects = self.0.objects.lock().expect("store lock");
            objects
                .get(name)
                .map(|o| o.id.clone())
                .ok_or_else(|| StoreError::NotFound(name.to_owned()))?
        };
        let expires = expires_at(ttl);
        let path = format!("/objects/{id}");
        let sig = temp_url_sig(&self.0.key, "GET", expires, &path);
        Ok(format!(
            "{}{path}?temp_url_expires={expires}&temp_url_sig={sig}",
            self.0.public_url
        ))
    }

    async fn delete(&self, name: &str) -> Result<(), StoreError> {
        if let Some(file) = self.remove(name, None) {
            remove_file(&file).await;
        }
        Ok(())
    }
}

#[derive(serde::Deserialize)]
struct Signed {
    temp_url_expires: Option<u64>,
    temp_url_sig: Option<String>,
}

async fn serve_object(
    State(store): State<HttpStore>,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<Signed>,
) -> Response {
    let (Some(expires), Some(sig)) = (q.temp_url_expires, q.temp_url_sig) else {
        return not_found();
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &store.0.key);
    let msg = format!("GET\n{expires}\n/objects/{id}");
    let sig_ok = decode_hex(&sig)
        .map(|tag| ring::hmac::verify(&key, msg.as_bytes(), &tag).is_ok())
        .unwrap_or(false);
    if !sig_ok || expires <= now_unix() {
        return not_found();
    }
    let Some(file) = store.lookup(&id) else {
        return not_found();
    };
    match tokio::fs::File::open(&file).await {
        Ok(f) => {
            let len = f.metadata().await.map(|m| m.len()).ok();
            let body = Body::from_stream(tokio_util::io::ReaderStream::new(f));
            let mut resp = Response::new(body);
            resp.headers_mut().insert(
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static("application/octet-stream"),
            );
            if let Some(len) = len {
                resp.headers_mut()
                    .insert(axum::http::header::CONTENT_LENGTH, len.into());
            }
            resp
        }
        // Deleted between the lookup and the open (expiry, delete).
        Err(_) => not_found(),
    }
}

/// The one answer for anything not served: unknown, expired, bad signature.
fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "Not Found\n").into_response()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Create `dir` (0700) and delete what an earlier run left in it.
async fn sweep(dir: &Path) -> std::io::Result<()> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    })
    .await
    .map_err(std::io::Error::other)?
}

async fn write_private(file: &Path, bytes: Bytes) -> Result<(), StoreError> {
    let path = file.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(&bytes)?;
        f.sync_all()
    })
    .await
    .map_err(std::io::Error::other)
    .and_then(|r| r)
    .map_err(|source| StoreError::Io {
        path: file.to_owned(),
        source,
    })
}

async fn remove_file(file: &Path) {
    match tokio::fs::remove_file(file).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "cannot delete a stored object")
        }
    }
}
