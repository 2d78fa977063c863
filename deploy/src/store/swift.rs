//! The Swift store (`store.backend = "swift"`): objects in container
//! `swift.container` (Ironic's `swift_ilo_container`, default
//! `ironic_ilo_container`, created when missing) uploaded with
//! `X-Delete-After`, reached by the BMC through HMAC-SHA256 temp URLs
//! signed with the account's temp-URL key. Auth: tempauth (v1.0) or
//! Keystone v3 password ([`super::swift_auth`]); the token is fetched at first
//! use, again after a 401, and again shortly before the expiry its issuer
//! gave (Keystone's `expires_at`, tempauth's `X-Auth-Token-Expires`).
//!
//! Callers: [`crate::run`] builds it; [`crate::deploy`] through [`Store`].

use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use porthole_bmc::Secret;
use reqwest::{Method, StatusCode};
use tokio::sync::Mutex;

pub use super::swift_auth::SwiftAuth;
use super::{expires_at, temp_url_sig, Metadata, Store, StoreError};

/// How to reach the account.
#[derive(Clone, Debug)]
pub struct SwiftSettings {
    pub auth: SwiftAuth,
    pub container: String,
    /// The account's temp-URL key; `None`: read from the account
    /// (`X-Account-Meta-Temp-Url-Key`) at first use.
    pub temp_url_key: Option<Secret>,
    pub timeout: Duration,
}

#[derive(Default)]
struct Session {
    storage_url: String,
    token: Option<Secret>,
    /// When to fetch a new token before using this one again.
    renew_at: Option<Instant>,
    temp_url_key: Option<Secret>,
    container_made: bool,
}

pub struct SwiftStore {
    settings: SwiftSettings,
    http: reqwest::Client,
    session: Mutex<Session>,
}

impl SwiftStore {
    pub fn new(settings: SwiftSettings) -> Result<Self, StoreError> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .build()
            .map_err(|source| StoreError::Transport {
                what: "client".into(),
                source,
            })?;
        Ok(Self {
            session: Mutex::new(Session {
                temp_url_key: settings.temp_url_key.clone(),
                ..Session::default()
            }),
            settings,
            http,
        })
    }

    async fn authenticate(&self, s: &mut Session) -> Result<(), StoreError> {
        let (token, storage_url, expires) = self.settings.auth.token(&self.http).await?;
        tracing::debug!(auth = %self.settings.auth.describe(), %storage_url, "object store token");
        s.renew_at = super::keystone::renew_after(expires).map(|d| Instant::now() + d);
        s.storage_url = storage_url;
        s.token = Some(token);
        Ok(())
    }

    /// Whether the session needs a (new) token before its next request.
    fn stale(s: &Session) -> bool {
        s.token.is_none() || s.renew_at.is_some_and(|at| Instant::now() >= at)
    }

    /// The session's token and storage URL, fetching a token first when
    /// there is none or it is due for renewal. The lock is held only for
    /// that: requests themselves run at once, on the one token.
    async fn current(&self) -> Result<(Secret, String), StoreError> {
        let mut s = self.session.lock().await;
        if Self::stale(&s) {
            self.authenticate(&mut s).await?;
        }
        let token = s.token.clone().expect("authenticated");
        Ok((token, s.storage_url.clone()))
    }

    /// Drop `token` after a 401, unless another request already replaced it.
    async fn forget(&self, token: &Secret) {
        let mut s = self.session.lock().await;
        if s.token.as_ref().map(Secret::expose) == Some(token.expose()) {
            s.token = None;
        }
    }

    /// One authenticated request to `<storage_url><path>`, re-authenticating
    /// once on 401.
    async fn call(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Option<Bytes>,
        what: &str,
    ) -> Result<reqwest::Response, StoreError> {
        for attempt in 0..2 {
            let (token, storage_url) = self.current().await?;
            let mut r = self
                .http
                .request(method.clone(), format!("{storage_url}{path}"))
                .header("X-Auth-Token", token.expose());
            for (k, v) in headers {
                r = r.header(*k, v);
            }
            if let Some(b) = &body {
                r = r.body(b.clone());
            }
            let resp = r.send().await.map_err(|source| StoreError::Transport {
                what: what.to_owned(),
                source,
            })?;
            tracing::debug!(%method, path, status = %resp.status(), "object store request");
            if resp.status() == StatusCode::UNAUTHORIZED {
                self.forget(&token).await;
                if attempt == 0 {
                    tracing::info!(auth = %self.settings.auth.describe(), what, "object store answered 401; authenticating again");
                    continue;
                }
                let what = format!(
                    "{what} (with a fresh token from {})",
                    self.settings.auth.describe()
                );
                return check(resp, &what).await;
            }
            return Ok(resp);
        }
        unreachable!("the loop returns on its second pass")
    }

    async fn ensure_container(&self) -> Result<(), StoreError> {
        if self.session.lock().await.container_made {
            return Ok(());
        }
        let c = &self.settings.container;
        let what = format!("create container {c}");
        let resp = self
            .call(Method::PUT, &format!("/{c}"), &[], None, &what)
            .await?;
        check(resp, &what).await?;
        self.session.lock().await.container_made = true;
        Ok(())
    }

    async fn temp_url_key(&self) -> Result<Secret, StoreError> {
        if let Some(k) = self.session.lock().await.temp_url_key.clone() {
            return Ok(k);
        }
        let what = "read the account's temp-URL key";
        let resp = self.call(Method::HEAD, "", &[], None, what).await?;
        let resp = check(resp, what).await?;
        let key = resp
            .headers()
            .get("x-account-meta-temp-url-key")
            .and_then(|v| v.to_str().ok())
            .map(Secret::new)
            .ok_or_else(|| {
                StoreError::Malformed(
                    "the account has no X-Account-Meta-Temp-URL-Key; set one or swift.temp_url_key_file"
                        .into(),
                )
            })?;
        self.session.lock().await.temp_url_key = Some(key.clone());
        Ok(key)
    }

    fn object_path(&self, name: &str) -> String {
        format!("/{}/{name}", self.settings.container)
    }

    /// Replace the object's metadata (`X-Object-Meta-<k>`) keeping its
    /// expiry: a POST drops `X-Delete-At` unless it is sent again.
    pub async fn update_metadata(
        &self,
        name: &str,
        meta: &[(&str, &str)],
    ) -> Result<(), StoreError> {
        let path = self.object_path(name);
        let what = format!("read object {name}");
        let head = self.call(Method::HEAD, &path, &[], None, &what).await?;
        let head = check(head, &what).await?;
        let mut headers: Vec<(String, String)> = meta
            .iter()
            .map(|(k, v)| (format!("X-Object-Meta-{k}"), (*v).to_owned()))
            .collect();
        if let Some(at) = head
            .headers()
            .get("x-delete-at")
            .and_then(|v| v.to_str().ok())
        {
            headers.push(("X-Delete-At".into(), at.to_owned()));
        }
        let headers: Vec<(&str, String)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        let what = format!("update object {name}");
        let resp = self
            .call(Method::POST, &path, &headers, None, &what)
            .await?;
        check(resp, &what).await.map(drop)
    }

    /// The storage URL (after authenticating), for tests and logs.
    pub async fn storage_url(&self) -> Result<String, StoreError> {
        Ok(self.current().await?.1)
    }
}

#[async_trait]
impl Store for SwiftStore {
    fn kind(&self) -> &'static str {
        "swift"
    }

    async fn put(&self, name: &str, bytes: Bytes, ttl: Duration) -> Result<(), StoreError> {
        self.ensure_container().await?;
        let what = format!("upload object {name}");
        let headers = [
            ("X-Delete-After", ttl.as_secs().max(1).to_string()),
            ("Content-Type", "application/octet-stream".to_owned()),
        ];
        let resp = self
            .call(
                Method::PUT,
                &self.object_path(name),
                &headers,
                Some(bytes),
                &what,
            )
            .await?;
        check(resp, &what).await.map(drop)
    }

    async fn temp_url(&self, name: &str, ttl: Duration) -> Result<String, StoreError> {
        let key = self.temp_url_key().await?;
        let base = self.storage_url().await?;
        let url = url::Url::parse(&base)
            .map_err(|e| StoreError::Malformed(format!("storage URL {base}: {e}")))?;
        let path = format!(
            "{}{}",
            url.path().trim_end_matches('/'),
            self.object_path(name)
        );
        let expires = expires_at(ttl);
        let sig = temp_url_sig(key.expose().as_bytes(), "GET", expires, &path);
        let origin = url.origin().ascii_serialization();
        Ok(format!(
            "{origin}{path}?temp_url_sig={sig}&temp_url_expires={expires}"
        ))
    }

    async fn delete(&self, name: &str) -> Result<(), StoreError> {
        let what = format!("delete object {name}");
        let resp = self
            .call(Method::DELETE, &self.object_path(name), &[], None, &what)
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(());
        }
        check(resp, &what).await.map(drop)
    }

    // Kept objects, metadata and the lock object (issue 14's boot ISOs).
    // Metadata keys travel as `X-Object-Meta-<key with - for _>`.

    async fn put_kept(&self, name: &str, bytes: Bytes, meta: &Metadata) -> Result<(), StoreError> {
        self.ensure_container().await?;
        let what = format!("upload object {name}");
        let mut headers = meta_headers(meta);
        headers.push(("Content-Type".into(), "application/octet-stream".into()));
        let headers: Vec<(&str, String)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        let path = self.object_path(name);
        let resp = self
            .call(Method::PUT, &path, &headers, Some(bytes), &what)
            .await?;
        check(resp, &what).await.map(drop)
    }

    async fn metadata(&self, name: &str) -> Result<Option<Metadata>, StoreError> {
        let what = format!("read object {name}");
        let path = self.object_path(name);
        let resp = self.call(Method::HEAD, &path, &[], None, &what).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = check(resp, &what).await?;
        let meta = resp
            .headers()
            .iter()
            .filter_map(|(k, v)| {
                let key = k.as_str().strip_prefix("x-object-meta-")?;
                Some((key.replace('-', "_"), v.to_str().ok()?.to_owned()))
            })
            .collect();
        Ok(Some(meta))
    }

    async fn set_metadata(&self, name: &str, meta: &Metadata) -> Result<(), StoreError> {
        let pairs: Vec<(String, String)> = meta
            .iter()
            .map(|(k, v)| (k.replace('_', "-"), v.clone()))
            .collect();
        let pairs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.update_metadata(name, &pairs).await
    }

    async fn create_exclusive(
        &self,
        name: &str,
        meta: &Metadata,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.ensure_container().await?;
        let what = format!("create lock object {name}");
        let mut headers = meta_headers(meta);
        headers.extend([
            ("If-None-Match".to_owned(), "*".to_owned()),
            (
                "X-Delete-After".to_owned(),
                ttl.as_secs().max(1).to_string(),
            ),
            // reqwest sends none for an empty body; Swift answers 411.
            ("Content-Length".to_owned(), "0".to_owned()),
        ]);
        let headers: Vec<(&str, String)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        let path = self.object_path(name);
        let resp = self
            .call(Method::PUT, &path, &headers, Some(Bytes::new()), &what)
            .await?;
        if resp.status() == StatusCode::PRECONDITION_FAILED {
            return Ok(false);
        }
        check(resp, &what).await.map(|_| true)
    }
}

/// `X-Object-Meta-*` headers for `meta`.
fn meta_headers(meta: &Metadata) -> Vec<(String, String)> {
    meta.iter()
        .map(|(k, v)| (format!("X-Object-Meta-{}", k.replace('_', "-")), v.clone()))
        .collect()
}

/// The response when 2xx, else the status and the start of the body.
pub(super) async fn check(
    resp: reqwest::Response,
    what: &str,
) -> Result<reqwest::Response, StoreError> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    Err(StoreError::Status {
        what: what.to_owned(),
        status,
        body: body.chars().take(300).collect(),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::{get, put};

    use super::*;

    /// A fake Swift (tempauth): counts token requests and the most object
    /// PUTs in flight at once (each takes 100 ms).
    #[derive(Default)]
    struct Fake {
        auths: AtomicUsize,
        in_flight: AtomicUsize,
        most: AtomicUsize,
    }

    async fn fake_swift() -> (String, Arc<Fake>) {
        let fake = Arc::new(Fake::default());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        let storage = format!("{base}/v1/AUTH_t");
        let (f1, f2) = (fake.clone(), fake.clone());
        let app = axum::Router::new()
            .route(
                "/auth/v1.0",
                get(move || async move {
                    f1.auths.fetch_add(1, Ordering::SeqCst);
                    let mut h = HeaderMap::new();
                    h.insert("x-storage-url", storage.parse().unwrap());
                    h.insert("x-auth-token", "tok".parse().unwrap());
                    (StatusCode::OK, h)
                }),
            )
            .route("/v1/AUTH_t/{c}", put(|| async { StatusCode::CREATED }))
            .route(
                "/v1/AUTH_t/{c}/{o}",
                put(move || async move {
                    let now = f2.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    f2.most.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    f2.in_flight.fetch_sub(1, Ordering::SeqCst);
                    StatusCode::CREATED.into_response()
                }),
            );
        tokio::spawn(async move { axum::serve(l, app).await });
        (format!("{base}/auth/v1.0"), fake)
    }

    #[tokio::test]
    async fn uploads_for_different_nodes_run_at_once_on_one_token() {
        let (auth_url, fake) = fake_swift().await;
        let store = SwiftStore::new(SwiftSettings {
            auth: SwiftAuth::TempAuth {
                auth_url,
                user: "t:u".into(),
                key: Secret::new("k"),
            },
            container: "c".into(),
            temp_url_key: None,
            timeout: Duration::from_secs(10),
        })
        .unwrap();
        let puts = (0..5).map(|i| {
            let store = &store;
            async move {
                store
                    .put(
                        &format!("image-{i}"),
                        Bytes::from_static(b"x"),
                        Duration::from_secs(60),
                    )
                    .await
            }
        });
        for r in futures::future::join_all(puts).await {
            r.unwrap();
        }
        assert_eq!(
            fake.most.load(Ordering::SeqCst),
            5,
            "uploads were serialized"
        );
        assert_eq!(fake.auths.load(Ordering::SeqCst), 1, "one token for all");
    }
}
