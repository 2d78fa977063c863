//! How the Swift store gets its token and storage URL ([`SwiftAuth`]):
//! tempauth v1.0 (`GET auth_url` with `X-Auth-User` / `X-Auth-Key`; the
//! storage URL and `X-Auth-Token-Expires` in the answer) or Keystone v3
//! password ([`super::keystone`]; the catalog's `object-store` endpoint).
//!
//! Callers: [`super::swift::SwiftStore`] (at first use, after a 401, before
//! the expiry).

use std::time::{Duration, SystemTime};

use porthole_bmc::Secret;

use super::keystone::{self, KeystoneSettings};
use super::swift::check;
use super::StoreError;

/// How to get a token and the storage URL.
#[derive(Clone, Debug)]
pub enum SwiftAuth {
    /// tempauth v1.0: `GET auth_url` with `X-Auth-User` / `X-Auth-Key`.
    TempAuth {
        /// `http://host:port/auth/v1.0`.
        auth_url: String,
        /// `account:user`.
        user: String,
        key: Secret,
    },
    /// Keystone v3 password; the storage URL is the catalog's
    /// `object-store` endpoint.
    Keystone(KeystoneSettings),
}

impl SwiftAuth {
    pub(super) fn describe(&self) -> String {
        match self {
            Self::TempAuth { auth_url, .. } => format!("tempauth at {auth_url}"),
            Self::Keystone(k) => format!("Keystone at {}", k.auth_url),
        }
    }
}

impl SwiftAuth {
    /// A token, the storage URL and when the token expires (if said).
    pub(super) async fn token(
        &self,
        http: &reqwest::Client,
    ) -> Result<(Secret, String, Option<SystemTime>), StoreError> {
        match self {
            Self::TempAuth {
                auth_url,
                user,
                key,
            } => tempauth(http, auth_url, user, key).await,
            Self::Keystone(k) => {
                let g = keystone::authenticate(http, k).await?;
                Ok((g.token, g.storage_url, g.expires_at))
            }
        }
    }
}

/// tempauth: the token, the storage URL and the expiry it gives.
async fn tempauth(
    http: &reqwest::Client,
    auth_url: &str,
    user: &str,
    key: &Secret,
) -> Result<(Secret, String, Option<SystemTime>), StoreError> {
    let what = format!("tempauth at {auth_url}");
    let resp = http
        .get(auth_url)
        .header("X-Auth-User", user)
        .header("X-Auth-Key", key.expose())
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
    let storage_url = header("x-storage-url")?.trim_end_matches('/').to_owned();
    let token = Secret::new(header("x-auth-token")?);
    let expires = header("x-auth-token-expires")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|secs| SystemTime::now() + Duration::from_secs(secs));
    Ok((token, storage_url, expires))
}
