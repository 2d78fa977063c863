//! Where the deploy's media live while the BMC fetches them, behind one
//! trait: [`swift`] (an object with `X-Delete-After` and an HMAC temp URL)
//! or [`http`] (the default: this service serves the bytes itself at an
//! unguessable, signed URL and deletes them at expiry). Either way a URL
//! handed to a BMC stops working after the TTL, and so do the bytes.
//!
//! Callers: [`crate::deploy`] (the floppy), [`crate::run`] (which store).

pub mod http;
pub mod keystone;
pub mod swift;
pub mod swift_auth;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object store {what}: {source}")]
    Transport {
        what: String,
        source: reqwest::Error,
    },
    #[error("object store {what} answered {status}: {body}")]
    Status {
        what: String,
        status: reqwest::StatusCode,
        body: String,
    },
    #[error("object store: {0}")]
    Malformed(String),
    #[error("object store: {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("object store: no object {0}")]
    NotFound(String),
    #[error("object store {store}: {what} is not supported")]
    Unsupported {
        store: &'static str,
        what: &'static str,
    },
    #[error("object store: {0}")]
    Keystone(Box<keystone::KeystoneError>),
}

impl From<keystone::KeystoneError> for StoreError {
    fn from(e: keystone::KeystoneError) -> Self {
        Self::Keystone(Box::new(e))
    }
}

/// An object's user metadata (Swift's `X-Object-Meta-*`), lower-case keys.
pub type Metadata = std::collections::BTreeMap<String, String>;

/// An object store for deploy media.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Which one, for logs and metrics (`swift`, `http`).
    fn kind(&self) -> &'static str;
    /// Store `bytes` as `name` (replacing it), removed by the store `ttl`
    /// from now.
    async fn put(&self, name: &str, bytes: Bytes, ttl: Duration) -> Result<(), StoreError>;
    /// A URL that GETs `name` without credentials until `ttl` from now.
    async fn temp_url(&self, name: &str, ttl: Duration) -> Result<String, StoreError>;
    /// Remove `name`; an object already gone is not an error.
    async fn delete(&self, name: &str) -> Result<(), StoreError>;

    // Kept objects and their metadata (the shared boot ISOs, issue 14).

    /// Store `bytes` as `name` with `meta` and no expiry.
    async fn put_kept(&self, name: &str, bytes: Bytes, meta: &Metadata) -> Result<(), StoreError> {
        let _ = (name, bytes, meta);
        Err(StoreError::Unsupported {
            store: self.kind(),
            what: "an object without expiry",
        })
    }
    /// `name`'s metadata; `None` when there is no such object.
    async fn metadata(&self, name: &str) -> Result<Option<Metadata>, StoreError> {
        let _ = name;
        Err(StoreError::Unsupported {
            store: self.kind(),
            what: "object metadata",
        })
    }
    /// Replace `name`'s metadata (its expiry, if any, is kept).
    async fn set_metadata(&self, name: &str, meta: &Metadata) -> Result<(), StoreError> {
        let _ = (name, meta);
        Err(StoreError::Unsupported {
            store: self.kind(),
            what: "object metadata",
        })
    }
    /// Create an empty `name` with metadata `meta`, expiring after `ttl`,
    /// only when no object of that name exists (a lock); `false` when one
    /// does. See [`Store::exclusive_is_atomic`].
    async fn create_exclusive(
        &self,
        name: &str,
        meta: &Metadata,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let _ = (name, meta, ttl);
        Err(StoreError::Unsupported {
            store: self.kind(),
            what: "a conditional create",
        })
    }
    /// Whether two overlapping `create_exclusive` calls can never both
    /// succeed. Swift's `If-None-Match: *` is checked when a PUT starts,
    /// so two PUTs at the same instant both get 201 (the newer wins): a
    /// caller must read the lock back after a pause to know it holds it.
    fn exclusive_is_atomic(&self) -> bool {
        false
    }
}

/// Seconds since the epoch, `ttl` from now (temp URLs' `temp_url_expires`).
pub fn expires_at(ttl: Duration) -> u64 {
    (SystemTime::now() + ttl)
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Seconds since the epoch now.
pub fn now_unix() -> u64 {
    expires_at(Duration::ZERO)
}

/// Hex HMAC-SHA256 of Swift's temp URL string `METHOD\nexpires\npath`.
pub fn temp_url_sig(key: &[u8], method: &str, expires: u64, path: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let tag = ring::hmac::sign(&key, format!("{method}\n{expires}\n{path}").as_bytes());
    crate::secret::hex(tag.as_ref())
}

/// The object name of a node's floppy, as Ironic's iLO driver names it.
pub fn floppy_object(node_uuid: &str) -> String {
    format!("image-{node_uuid}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_url_signature_matches_swifts_documented_form() {
        // HMAC-SHA256("mykey", "GET\n1440619048\n/v1/AUTH_account/container/object"),
        // computed independently with Python's hmac module.
        assert_eq!(
            temp_url_sig(
                b"mykey",
                "GET",
                1440619048,
                "/v1/AUTH_account/container/object"
            ),
            "9ef8c448d4184fd16dd4013a1e3349149f895555655621dbf6d6a166f585af72"
        );
    }
}
