//! The Redfish client: one `reqwest::Client` (rustls, ring) per verification
//! mode, built once and reused for every BMC, and resources found by
//! following `@odata.id` links from the service root rather than guessed.
//!
//! Callers: the conductor's redfish power driver (and, in [`crate::vmedia`], deploy's
//! virtual media). It knows Redfish resources, not Ironic's power words.

use std::time::Duration;

use serde_json::{json, Value};

use crate::Secret;

#[derive(Debug, thiserror::Error)]
pub enum RedfishError {
    #[error("cannot build an HTTP client: {0}")]
    Client(reqwest::Error),
    /// The BMC could not be reached, or did not answer in time.
    #[error("Redfish {what} at {base}: {source}")]
    Transport {
        what: String,
        base: String,
        source: reqwest::Error,
    },
    #[error("Redfish {what} at {base} answered {status}: {body}")]
    Status {
        what: String,
        base: String,
        status: reqwest::StatusCode,
        body: String,
    },
    /// The BMC's answer lacks what the next step needs.
    #[error("Redfish {0}")]
    Malformed(String),
    /// The BMC lacks a feature the caller needs (e.g. virtual media).
    #[error("Redfish: {0}")]
    Unsupported(String),
    /// The BMC has no single system and none was named.
    #[error("The BMC has {0} systems; set driver_info redfish_system_id.")]
    AmbiguousSystem(usize),
}

/// One BMC's Redfish service.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// `https://host[:port]`, without a trailing slash.
    pub base: String,
    /// The system's path (`/redfish/v1/Systems/...`); `None`: the only one.
    pub system_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub verify_ca: bool,
}

impl Endpoint {
    /// `address` as driver_info gives it: `https://` when no scheme is named.
    pub fn new(address: &str) -> Self {
        let mut base = address.to_owned();
        if !base.contains("://") {
            base = format!("https://{base}");
        }
        Self {
            base: base.trim_end_matches('/').to_owned(),
            system_id: None,
            username: None,
            password: None,
            verify_ca: true,
        }
    }
}

/// The shared client; clone it freely (the connection pools are shared).
#[derive(Clone, Debug)]
pub struct Client {
    verified: reqwest::Client,
    insecure: reqwest::Client,
}

impl Client {
    /// `timeout` bounds each request, connecting included.
    pub fn new(timeout: Duration) -> Result<Self, RedfishError> {
        let build = |verify: bool| {
            reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(timeout.min(Duration::from_secs(5)))
                .danger_accept_invalid_certs(!verify)
                .build()
                .map_err(RedfishError::Client)
        };
        Ok(Self {
            verified: build(true)?,
            insecure: build(false)?,
        })
    }

    fn req(&self, ep: &Endpoint, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let http = if ep.verify_ca {
            &self.verified
        } else {
            &self.insecure
        };
        let r = http.request(method, format!("{}{}", ep.base, path));
        match &ep.username {
            Some(u) => r.basic_auth(u, ep.password.as_ref().map(Secret::expose)),
            None => r,
        }
    }

    async fn send(
        &self,
        ep: &Endpoint,
        r: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<Value, RedfishError> {
        let resp = r.send().await.map_err(|source| RedfishError::Transport {
            what: what.to_owned(),
            base: ep.base.clone(),
            source,
        })?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(RedfishError::Status {
                what: what.to_owned(),
                base: ep.base.clone(),
                status,
                body: body.chars().take(300).collect(),
            });
        }
        Ok(serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    /// GET a resource by its path.
    pub async fn get(&self, ep: &Endpoint, path: &str, what: &str) -> Result<Value, RedfishError> {
        self.send(ep, self.req(ep, reqwest::Method::GET, path), what)
            .await
    }

    /// POST (an action) with a JSON body.
    pub async fn post(
        &self,
        ep: &Endpoint,
        path: &str,
        body: &Value,
        what: &str,
    ) -> Result<Value, RedfishError> {
        let r = self.req(ep, reqwest::Method::POST, path).json(body);
        self.send(ep, r, what).await
    }

    /// PATCH a resource with a JSON body.
    pub async fn patch(
        &self,
        ep: &Endpoint,
        path: &str,
        body: &Value,
        what: &str,
    ) -> Result<Value, RedfishError> {
        let r = self.req(ep, reqwest::Method::PATCH, path).json(body);
        self.send(ep, r, what).await
    }

    /// The system's path: the endpoint's system_id, or the only member of
    /// the collection the service root's `Systems` link names.
    pub async fn system_path(&self, ep: &Endpoint) -> Result<String, RedfishError> {
        if let Some(id) = &ep.system_id {
            return Ok(id.clone());
        }
        let root = self.get(ep, "/redfish/v1", "get service root").await?;
        let systems = odata_id(&root["Systems"], "service root without a Systems link")?;
        let v = self.get(ep, &systems, "list systems").await?;
        match v["Members"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            [one] => odata_id(one, "system without @odata.id"),
            members => Err(RedfishError::AmbiguousSystem(members.len())),
        }
    }

    /// The system resource and its path.
    pub async fn system(&self, ep: &Endpoint) -> Result<(String, Value), RedfishError> {
        let path = self.system_path(ep).await?;
        let v = self.get(ep, &path, "get system").await?;
        Ok((path, v))
    }

    /// `ComputerSystem.Reset` with `kind` (On, ForceOff, ForceRestart...),
    /// at the target the system names (or the conventional one).
    pub async fn reset(&self, ep: &Endpoint, kind: &str) -> Result<(), RedfishError> {
        let (path, v) = self.system(ep).await?;
        let target = v["Actions"]["#ComputerSystem.Reset"]["target"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or(format!("{path}/Actions/ComputerSystem.Reset"));
        self.post(
            ep,
            &target,
            &json!({"ResetType": kind}),
            &format!("reset {kind}"),
        )
        .await
        .map(drop)
    }
}

/// The `@odata.id` of a link object.
fn odata_id(link: &Value, missing: &str) -> Result<String, RedfishError> {
    link["@odata.id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| RedfishError::Malformed(missing.to_owned()))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::extract::State;
    use axum::http::{HeaderMap, Uri};
    use axum::routing::any;
    use axum::{Json, Router};

    use super::*;

    /// A tiny Redfish service whose Systems collection lives at a path no
    /// client would guess; it records each request's path and auth header.
    async fn fake(members: usize) -> (Endpoint, Arc<Mutex<Vec<String>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let app =
            Router::new()
                .fallback(any(
                    move |State(seen): State<Arc<Mutex<Vec<String>>>>,
                          uri: Uri,
                          headers: HeaderMap| async move {
                        let auth = headers
                            .get("authorization")
                            .map(|v| v.to_str().unwrap().to_owned())
                            .unwrap_or_default();
                        seen.lock().unwrap().push(format!("{} {auth}", uri.path()));
                        let ids: Vec<Value> = (0..members)
                            .map(|i| json!({"@odata.id": format!("/x/systems/{i}")}))
                            .collect();
                        Json(match uri.path() {
                            "/redfish/v1" => json!({"Systems": {"@odata.id": "/x/systems"}}),
                            "/x/systems" => json!({"Members": ids}),
                            "/x/systems/0" => json!({"PowerState": "On", "Actions": {
                            "#ComputerSystem.Reset": {"target": "/x/reset/0"}}}),
                            _ => json!({}),
                        })
                    },
                ))
                .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let mut ep = Endpoint::new(&format!("http://{addr}/"));
        ep.username = Some("admin".into());
        ep.password = Some(Secret::new("pw"));
        (ep, seen)
    }

    #[tokio::test]
    async fn follows_odata_links_to_the_only_system_and_its_reset_target() {
        let (ep, seen) = fake(1).await;
        let client = Client::new(Duration::from_secs(5)).unwrap();
        let (path, v) = client.system(&ep).await.unwrap();
        assert_eq!(path, "/x/systems/0");
        assert_eq!(v["PowerState"], "On");
        client.reset(&ep, "ForceOff").await.unwrap();
        let seen = seen.lock().unwrap();
        let paths: Vec<&str> = seen.iter().map(|s| s.split(' ').next().unwrap()).collect();
        assert_eq!(
            paths,
            [
                "/redfish/v1",
                "/x/systems",
                "/x/systems/0",
                "/redfish/v1",
                "/x/systems",
                "/x/systems/0",
                "/x/reset/0"
            ]
        );
        // Basic auth on every request ("admin:pw").
        assert!(
            seen.iter().all(|s| s.ends_with("Basic YWRtaW46cHc=")),
            "{seen:?}"
        );
    }

    #[tokio::test]
    async fn many_systems_without_an_id_is_the_callers_problem() {
        let (ep, _) = fake(2).await;
        let client = Client::new(Duration::from_secs(5)).unwrap();
        let err = client.system_path(&ep).await.unwrap_err();
        assert!(matches!(err, RedfishError::AmbiguousSystem(2)), "{err:?}");
        assert!(err.to_string().contains("redfish_system_id"));
    }

    #[tokio::test]
    async fn an_unreachable_bmc_names_the_step_and_the_address() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let ep = Endpoint::new(&format!("http://127.0.0.1:{port}"));
        let client = Client::new(Duration::from_secs(2)).unwrap();
        let err = client.system(&ep).await.unwrap_err().to_string();
        assert!(
            err.contains("get service root") && err.contains(&port.to_string()),
            "{err}"
        );
    }

    #[test]
    fn addresses_get_https_and_lose_the_trailing_slash() {
        assert_eq!(
            Endpoint::new("10.0.0.1:8000/").base,
            "https://10.0.0.1:8000"
        );
        assert_eq!(Endpoint::new("http://h").base, "http://h");
    }
}
