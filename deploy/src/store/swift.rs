//! The Swift store (`store.backend = "swift"`): objects in container
//! `swift.container` (Ironic's `swift_ilo_container`, default
//! `ironic_ilo_container`, created when missing) uploaded with
//! `X-Delete-After`, reached by the BMC through HMAC-SHA256 temp URLs
//! signed with the account's temp-URL key. Auth: tempauth (v1.0); the token
//! is fetched once and again after a 401.
//!
//! Callers: [`crate::run`] builds it; [`crate::deploy`] through [`Store`].

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use porthole_bmc::Secret;
use reqwest::{Method, StatusCode};
use tokio::sync::Mutex;

use super::{expires_at, temp_url_sig, Metadata, Store, StoreError};

/// How to reach the account.
#[derive(Clone, Debug)]
pub struct SwiftSettings {
    /// tempauth's `http://host:port/auth/v1.0`.
    pub auth_url: String,
    /// `account:user`.
    pub user: String,
    pub key: Secret,
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
        let what = format!("tempauth at {}", self.settings.auth_url);
        let resp = self
            .http
            .get(&self.settings.auth_url)
            .header("X-Auth-User", &self.settings.user)
            .header("X-Auth-Key", self.settings.key.expose())
            .send()
            .await
            .map_err(|source| StoreError::Transport {
                what: what.clone(),
                source,
            })?;
        let resp = check(resp, &what).await?;
        let header = |n: &str| {
            resp.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
                .ok_or_else(|| StoreError::Malformed(format!("{what}: no {n} in the answer")))
        };
        s.storage_url = header("x-storage-url")?.trim_end_matches('/').to_owned();
        s.token = Some(Secret::new(header("x-auth-token")?));
        Ok(())
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
        let mut s = self.session.lock().await;
        for attempt in 0..2 {
            if s.token.is_none() {
                self.authenticate(&mut s).await?;
            }
            let token = s.token.as_ref().expect("authenticated").expose().to_owned();
            let mut r = self
                .http
                .request(method.clone(), format!("{}{path}", s.storage_url))
                .header("X-Auth-Token", token);
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
            if resp.status() == StatusCode::UNAUTHORIZED && attempt == 0 {
                s.token = None;
                continue;
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
        let mut s = self.session.lock().await;
        if s.token.is_none() {
            self.authenticate(&mut s).await?;
        }
        Ok(s.storage_url.clone())
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
async fn check(resp: reqwest::Response, what: &str) -> Result<reqwest::Response, StoreError> {
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
