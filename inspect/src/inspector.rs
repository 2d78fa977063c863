//! The `inspector` interface's peer: ironic-inspector's HTTP API (the
//! successor of ironic-discoverd), as the in-band inspection design uses it.
//!
//! ```text
//!  start of the service ──▶ GET {root}/            version headers: min ≤ 1.3 ≤ max, else refuse
//!  start(uuid)         ──▶ POST {service_url}/introspection/{uuid}        202
//!  status(uuid)        ──▶ GET  {service_url}/introspection/{uuid}        {finished, error}
//!  abort(uuid)         ──▶ POST {service_url}/introspection/{uuid}/abort  202
//! ```
//!
//! Errors carry inspector's own message (`{"error": {"message": ...}}`).
//! Callers: [`crate::run`] (connect and the version check) and
//! [`crate::inspections`] through the [`Backend`] trait.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use serde::Deserialize;

use crate::config::InspectorConfig;

/// The API version this client speaks (1.3 added abort).
pub const API_VERSION: (u32, u32) = (1, 3);
/// ironic-inspector's version headers.
pub const MIN_VERSION_HEADER: &str = "X-OpenStack-Ironic-Inspector-API-Minimum-Version";
pub const MAX_VERSION_HEADER: &str = "X-OpenStack-Ironic-Inspector-API-Maximum-Version";
pub const VERSION_HEADER: &str = "X-OpenStack-Ironic-Inspector-API-Version";

#[derive(Debug, thiserror::Error)]
pub enum InspectorError {
    #[error("[inspector] enabled = true needs [inspector] service_url (ironic-inspector's API, e.g. http://127.0.0.1:5050/v1)")]
    NoServiceUrl,
    #[error("[inspector] service_url {url:?} is not an http:// or https:// URL")]
    BadUrl { url: String },
    #[error("ironic-inspector at {url} does not answer: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    #[error("ironic-inspector at {url} answered {status} to GET /: {message}")]
    RootRefused {
        url: String,
        status: StatusCode,
        message: String,
    },
    #[error("the service at {url} does not say an ironic-inspector API version (no {MAX_VERSION_HEADER} header): is it ironic-inspector?")]
    NoVersion { url: String },
    #[error("ironic-inspector at {url} supports API versions {min} to {max}; this service needs {}.{} (major version 1)", API_VERSION.0, API_VERSION.1)]
    UnsupportedVersion {
        url: String,
        min: String,
        max: String,
    },
    #[error("ironic-inspector: {what}: {source}")]
    Request {
        what: String,
        source: reqwest::Error,
    },
    #[error("ironic-inspector refused to {what} ({status}): {message}")]
    Refused {
        what: String,
        status: StatusCode,
        message: String,
    },
}

/// What inspector says of one node's introspection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    Waiting,
    Finished,
    Failed(String),
}

/// One inspection backend; the service drives it without holding a node.
#[async_trait]
pub trait Backend: Send + Sync {
    async fn start(&self, uuid: &str) -> Result<(), InspectorError>;
    async fn status(&self, uuid: &str) -> Result<Status, InspectorError>;
    async fn abort(&self, uuid: &str) -> Result<(), InspectorError>;
}

/// ironic-inspector over HTTP, its version checked.
#[derive(Clone, Debug)]
pub struct InspectorClient {
    http: reqwest::Client,
    /// `…/v1`, no trailing slash.
    api: String,
}

/// `(root, api)` from `service_url`: `http://h:5050/v1` and `http://h:5050`
/// both give root `http://h:5050` and api `http://h:5050/v1`.
pub fn split_url(url: &str) -> Result<(String, String), InspectorError> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(InspectorError::BadUrl { url: url.into() });
    }
    let trimmed = url.trim_end_matches('/');
    let root = trimmed.strip_suffix("/v1").unwrap_or(trimmed);
    Ok((root.to_owned(), format!("{root}/v1")))
}

/// The version range inspector's answer to `GET /` declares, when it
/// includes [`API_VERSION`].
async fn supported_versions(
    root: &str,
    resp: reqwest::Response,
) -> Result<(String, String), InspectorError> {
    let root = root.to_owned();
    let status = resp.status();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (min, max) = (header(MIN_VERSION_HEADER), header(MAX_VERSION_HEADER));
    if !status.is_success() {
        let message = message_of(&resp.text().await.unwrap_or_default());
        return Err(InspectorError::RootRefused {
            url: root,
            status,
            message,
        });
    }
    let Some(max) = max else {
        return Err(InspectorError::NoVersion { url: root });
    };
    let min = min.unwrap_or_else(|| "1.0".into());
    let supported = match (parse_version(&min), parse_version(&max)) {
        (Some(lo), Some(hi)) => lo <= API_VERSION && API_VERSION <= hi,
        _ => false,
    };
    if !supported {
        return Err(InspectorError::UnsupportedVersion {
            url: root,
            min,
            max,
        });
    }
    Ok((min, max))
}

fn parse_version(v: &str) -> Option<(u32, u32)> {
    let (a, b) = v.trim().split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Inspector's `{"error": {"message": ...}}`, or the body as it is.
fn message_of(body: &str) -> String {
    #[derive(Deserialize)]
    struct E {
        error: M,
    }
    #[derive(Deserialize)]
    struct M {
        message: String,
    }
    match serde_json::from_str::<E>(body) {
        Ok(e) => e.error.message,
        Err(_) => body.chars().take(500).collect(),
    }
}

impl InspectorClient {
    /// Check the settings and that inspector answers with a supported API
    /// version (the design: refuse to load otherwise).
    pub async fn connect(config: &InspectorConfig) -> Result<Self, InspectorError> {
        let url = config
            .service_url
            .as_deref()
            .filter(|u| !u.trim().is_empty())
            .ok_or(InspectorError::NoServiceUrl)?;
        let (root, api) = split_url(url)?;
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|source| InspectorError::Unreachable {
                url: root.clone(),
                source,
            })?;
        let m = crate::metrics::get();
        let resp = http
            .get(format!("{root}/"))
            .send()
            .await
            .map_err(|source| {
                m.inspector_request("version", "unreachable");
                InspectorError::Unreachable {
                    url: root.clone(),
                    source,
                }
            })?;
        m.inspector_request(
            "version",
            if resp.status().is_success() {
                "ok"
            } else {
                "refused"
            },
        );
        let (min, max) = supported_versions(&root, resp).await?;
        tracing::info!(url = %api, min = %min, max = %max, "ironic-inspector answers");
        Ok(Self { http, api })
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.post(format!("{}{path}", self.api)).header(
            VERSION_HEADER,
            format!("{}.{}", API_VERSION.0, API_VERSION.1),
        )
    }

    /// Send, and turn anything but a success into [`InspectorError`];
    /// counted under `call`.
    async fn call(
        &self,
        call: &'static str,
        req: reqwest::RequestBuilder,
        what: String,
    ) -> Result<String, InspectorError> {
        let m = crate::metrics::get();
        let unreachable = |source| {
            m.inspector_request(call, "unreachable");
            InspectorError::Request {
                what: what.clone(),
                source,
            }
        };
        let resp = req.send().await.map_err(unreachable)?;
        let status = resp.status();
        let body = resp.text().await.map_err(unreachable)?;
        if !status.is_success() {
            m.inspector_request(call, "refused");
            return Err(InspectorError::Refused {
                what,
                status,
                message: message_of(&body),
            });
        }
        m.inspector_request(call, "ok");
        Ok(body)
    }
}

#[async_trait]
impl Backend for InspectorClient {
    async fn start(&self, uuid: &str) -> Result<(), InspectorError> {
        let what = format!("start introspection of node {uuid}");
        self.call("start", self.post(&format!("/introspection/{uuid}")), what)
            .await
            .map(drop)
    }

    async fn status(&self, uuid: &str) -> Result<Status, InspectorError> {
        #[derive(Deserialize)]
        struct Introspection {
            finished: bool,
            error: Option<String>,
        }
        let what = format!("report the introspection status of node {uuid}");
        let req = self
            .http
            .get(format!("{}/introspection/{uuid}", self.api))
            .header(
                VERSION_HEADER,
                format!("{}.{}", API_VERSION.0, API_VERSION.1),
            );
        let body = self.call("status", req, what.clone()).await?;
        let s: Introspection =
            serde_json::from_str(&body).map_err(|e| InspectorError::Refused {
                what,
                status: StatusCode::OK,
                message: format!("unreadable status {body:?}: {e}"),
            })?;
        Ok(match (s.finished, s.error) {
            (false, _) => Status::Waiting,
            (true, None) => Status::Finished,
            (true, Some(e)) => Status::Failed(e),
        })
    }

    /// Inspector answers 409 "Node is locked, please, retry later" while
    /// it is still starting the introspection (setting the boot device,
    /// powering on the node through the conductor): see
    /// [`is_locked`]; the caller asks again later.
    async fn abort(&self, uuid: &str) -> Result<(), InspectorError> {
        let what = format!("abort introspection of node {uuid}");
        self.call(
            "abort",
            self.post(&format!("/introspection/{uuid}/abort")),
            what,
        )
        .await
        .map(drop)
    }
}

/// Whether inspector refused because it holds the node right now (409).
pub fn is_locked(e: &InspectorError) -> bool {
    matches!(e, InspectorError::Refused { status, .. } if *status == StatusCode::CONFLICT)
}

#[cfg(test)]
mod tests;
