//! Where instance images come from, behind [`ImageSource`]: an HTTP(S) URL
//! ([`HttpSource`]) or an object of the service's own store
//! (`swift:<object>` / `store:<object>`, [`StoreSource`], fetched through
//! the store's temp URL). Glance would be one more implementation.
//!
//! A source only streams bytes; the cache ([`super::cache`]) writes them,
//! hashes them and checks the checksums.
//!
//! Callers: [`super::cache`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("image_source {0:?} is neither an http(s) URL nor swift:<object>")]
    Unsupported(String),
    #[error("cannot download image {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("cannot download image {url}: the server answered {status}")]
    Status { url: String, status: u16 },
    #[error("cannot download image {0}: {1}")]
    Store(String, crate::store::StoreError),
}

/// An open download: its length when the server said, and its chunks.
#[async_trait]
pub trait Download: Send {
    /// Its length, when the server said.
    fn length(&self) -> Option<u64>;
    /// The next chunk, `None` at the end.
    async fn chunk(&mut self) -> Result<Option<Bytes>, SourceError>;
}

/// One way of turning an `image_source` into bytes.
#[async_trait]
pub trait ImageSource: Send + Sync {
    /// Whether `image_source` is this source's to fetch.
    fn handles(&self, image_source: &str) -> bool;
    async fn open(&self, image_source: &str) -> Result<Box<dyn Download>, SourceError>;
}

/// `http://` and `https://` URLs.
pub struct HttpSource {
    client: reqwest::Client,
}

impl HttpSource {
    pub fn new(timeout: Duration) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .timeout(timeout)
            .build()
            .expect("a reqwest client with a timeout builds");
        Self { client }
    }
}

struct HttpDownload {
    url: String,
    resp: reqwest::Response,
}

#[async_trait]
impl Download for HttpDownload {
    fn length(&self) -> Option<u64> {
        self.resp.content_length()
    }
    async fn chunk(&mut self) -> Result<Option<Bytes>, SourceError> {
        self.resp
            .chunk()
            .await
            .map_err(|e| SourceError::Unreachable {
                url: self.url.clone(),
                reason: error_chain(&e),
            })
    }
}

/// reqwest's error with its causes ("error sending request: … Connection
/// refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[async_trait]
impl ImageSource for HttpSource {
    fn handles(&self, image_source: &str) -> bool {
        image_source.starts_with("http://") || image_source.starts_with("https://")
    }

    async fn open(&self, url: &str) -> Result<Box<dyn Download>, SourceError> {
        let resp = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| SourceError::Unreachable {
                url: url.to_owned(),
                reason: error_chain(&e),
            })?;
        if !resp.status().is_success() {
            return Err(SourceError::Status {
                url: url.to_owned(),
                status: resp.status().as_u16(),
            });
        }
        Ok(Box::new(HttpDownload {
            url: url.to_owned(),
            resp,
        }))
    }
}

/// `swift:<object>` (or `store:<object>`): an object in the service's own
/// store, fetched through a temp URL.
pub struct StoreSource {
    store: Arc<dyn Store>,
    http: HttpSource,
}

impl StoreSource {
    pub fn new(store: Arc<dyn Store>, timeout: Duration) -> Self {
        Self {
            store,
            http: HttpSource::new(timeout),
        }
    }
}

/// The object name of a `swift:` / `store:` image source.
pub fn store_object(image_source: &str) -> Option<&str> {
    image_source
        .strip_prefix("swift:")
        .or_else(|| image_source.strip_prefix("store:"))
        .map(|o| o.trim_start_matches('/'))
        .filter(|o| !o.is_empty())
}

#[async_trait]
impl ImageSource for StoreSource {
    fn handles(&self, image_source: &str) -> bool {
        store_object(image_source).is_some()
    }

    async fn open(&self, image_source: &str) -> Result<Box<dyn Download>, SourceError> {
        let name = store_object(image_source)
            .ok_or_else(|| SourceError::Unsupported(image_source.to_owned()))?;
        let url = self
            .store
            .temp_url(name, Duration::from_secs(300))
            .await
            .map_err(|e| SourceError::Store(image_source.to_owned(), e))?;
        self.http.open(&url).await.map_err(|e| match e {
            // The temp URL carries a signature: name the object instead.
            SourceError::Status { status, .. } => SourceError::Status {
                url: image_source.to_owned(),
                status,
            },
            SourceError::Unreachable { reason, .. } => SourceError::Unreachable {
                url: image_source.to_owned(),
                reason,
            },
            other => other,
        })
    }
}

/// The sources in the order they are asked.
pub struct Sources(pub Vec<Box<dyn ImageSource>>);

impl Sources {
    pub async fn open(&self, image_source: &str) -> Result<Box<dyn Download>, SourceError> {
        match self.0.iter().find(|s| s.handles(image_source)) {
            Some(s) => s.open(image_source).await,
            None => Err(SourceError::Unsupported(image_source.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_objects_are_named_after_the_prefix() {
        assert_eq!(store_object("swift:images/a.qcow2"), Some("images/a.qcow2"));
        assert_eq!(store_object("store:a"), Some("a"));
        assert_eq!(store_object("swift:"), None);
        assert_eq!(store_object("http://x/a"), None);
    }

    #[tokio::test]
    async fn an_unknown_scheme_is_refused_by_name() {
        let s = Sources(vec![Box::new(HttpSource::new(Duration::from_secs(5)))]);
        let err = s.open("glance://1234").await.err().unwrap().to_string();
        assert!(err.contains("\"glance://1234\" is neither"), "{err}");
    }

    #[tokio::test]
    async fn a_refused_connection_is_unreachable_with_the_reason() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/img.raw", l.local_addr().unwrap());
        drop(l);
        let s = HttpSource::new(Duration::from_secs(5));
        let err = s.open(&url).await.err().unwrap().to_string();
        assert!(
            err.starts_with(&format!("cannot download image {url}: ")),
            "{err}"
        );
        assert!(err.to_lowercase().contains("refused"), "{err}");
    }
}
