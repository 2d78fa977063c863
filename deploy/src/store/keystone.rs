//! Keystone v3 password auth for the Swift store (`swift.auth_type =
//! "password"`): `POST <auth_url>/v3/auth/tokens` with the user's password,
//! scoped to a project; the token is the answer's `X-Subject-Token`, the
//! storage URL the catalog's `object-store` endpoint for the configured
//! interface (and region, where one is set); the token's `expires_at` says
//! when to fetch a new one.
//!
//! Errors name what is wrong: Keystone unreachable, the user refused (wrong
//! password, unknown user or project, no role), no `object-store` endpoint
//! (with what the catalog has), or an answer that is not Keystone's.
//! Neither the password nor a token ever appears in one.
//!
//! Callers: [`super::swift_auth`] for [`super::swift::SwiftStore`] (at first
//! use, after a 401 and when the token nears its expiry).

use std::time::{Duration, SystemTime};

use porthole_bmc::Secret;
use serde::Deserialize;

/// Who to authenticate as, and which endpoint to use.
#[derive(Clone, Debug)]
pub struct KeystoneSettings {
    /// Keystone's URL, with or without the trailing `/v3`.
    pub auth_url: String,
    pub user: String,
    pub password: Secret,
    pub user_domain_name: String,
    pub project_name: String,
    pub project_domain_name: String,
    /// The endpoint's region; `None`: the first `object-store` endpoint
    /// with the interface, whatever its region.
    pub region: Option<String>,
    /// `public`, `internal` or `admin`.
    pub interface: String,
}

/// A token and where to use it.
pub struct Grant {
    pub token: Secret,
    /// The `object-store` endpoint, without a trailing `/`.
    pub storage_url: String,
    /// When Keystone says the token expires (`expires_at`).
    pub expires_at: Option<SystemTime>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeystoneError {
    #[error("Keystone at {url} cannot be reached: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    #[error(
        "Keystone at {url} refused user {user:?} (domain {user_domain:?}) for project \
         {project:?} (domain {project_domain:?}): {status}: {message}; a wrong password \
         (swift.key_file), an unknown user or project, or no role on the project"
    )]
    Refused {
        url: String,
        user: String,
        user_domain: String,
        project: String,
        project_domain: String,
        status: reqwest::StatusCode,
        message: String,
    },
    #[error("Keystone at {url} answered {status}: {message}")]
    Status {
        url: String,
        status: reqwest::StatusCode,
        message: String,
    },
    #[error(
        "Keystone at {url}: the catalog has no object-store endpoint with interface \
         {interface:?}{region}; it has {have}"
    )]
    NoEndpoint {
        url: String,
        interface: String,
        /// ` in region "X"`, or empty.
        region: String,
        have: String,
    },
    #[error("Keystone at {url}: {what}")]
    Malformed { url: String, what: String },
}

#[derive(Deserialize)]
struct TokenBody {
    token: Token,
}

#[derive(Deserialize)]
struct Token {
    expires_at: Option<String>,
    #[serde(default)]
    catalog: Vec<Service>,
}

#[derive(Deserialize)]
struct Service {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    endpoints: Vec<Endpoint>,
}

#[derive(Deserialize)]
struct Endpoint {
    interface: String,
    url: String,
    region_id: Option<String>,
    region: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    message: String,
}

/// `<auth_url>/v3/auth/tokens`, whether `auth_url` ends in `/v3` or not.
pub fn tokens_url(auth_url: &str) -> String {
    let base = auth_url.trim_end_matches('/');
    if base.ends_with("/v3") {
        format!("{base}/auth/tokens")
    } else {
        format!("{base}/v3/auth/tokens")
    }
}

/// One password authentication: a project-scoped token and the storage URL.
pub async fn authenticate(
    http: &reqwest::Client,
    s: &KeystoneSettings,
) -> Result<Grant, KeystoneError> {
    let url = tokens_url(&s.auth_url);
    let body = serde_json::json!({"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": s.user,
            "domain": {"name": s.user_domain_name},
            "password": s.password.expose(),
        }}},
        "scope": {"project": {
            "name": s.project_name,
            "domain": {"name": s.project_domain_name},
        }},
    }});
    let resp = http
        .post(&url)
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|source| KeystoneError::Unreachable {
            url: url.clone(),
            source,
        })?;
    let status = resp.status();
    let token = resp
        .headers()
        .get("x-subject-token")
        .and_then(|v| v.to_str().ok())
        .map(Secret::new);
    let text = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        let message = serde_json::from_str::<ErrorBody>(&text)
            .map(|e| e.error.message)
            .unwrap_or_else(|_| text.chars().take(300).collect());
        return Err(if status == 401 || status == 404 {
            KeystoneError::Refused {
                url,
                user: s.user.clone(),
                user_domain: s.user_domain_name.clone(),
                project: s.project_name.clone(),
                project_domain: s.project_domain_name.clone(),
                status,
                message,
            }
        } else {
            KeystoneError::Status {
                url,
                status,
                message,
            }
        });
    }
    let malformed = |what: String| KeystoneError::Malformed {
        url: url.clone(),
        what,
    };
    let token = token.ok_or_else(|| malformed("no X-Subject-Token in the answer".into()))?;
    let body: TokenBody = serde_json::from_str(&text)
        .map_err(|e| malformed(format!("the token body is not Keystone's: {e}")))?;
    let expires_at = match &body.token.expires_at {
        Some(t) => Some(
            humantime::parse_rfc3339_weak(t)
                .map_err(|e| malformed(format!("expires_at {t:?}: {e}")))?,
        ),
        None => None,
    };
    let storage_url = object_store(&body.token.catalog, s)
        .ok_or_else(|| no_endpoint(&url, &body.token.catalog, s))?
        .trim_end_matches('/')
        .to_owned();
    Ok(Grant {
        token,
        storage_url,
        expires_at,
    })
}

fn region_of(e: &Endpoint) -> Option<&str> {
    e.region_id.as_deref().or(e.region.as_deref())
}

fn object_store<'a>(catalog: &'a [Service], s: &KeystoneSettings) -> Option<&'a str> {
    catalog
        .iter()
        .filter(|svc| svc.kind == "object-store")
        .flat_map(|svc| &svc.endpoints)
        .find(|e| {
            e.interface == s.interface
                && s.region
                    .as_deref()
                    .is_none_or(|r| region_of(e) == Some(r) || e.region.as_deref() == Some(r))
        })
        .map(|e| e.url.as_str())
}

fn no_endpoint(url: &str, catalog: &[Service], s: &KeystoneSettings) -> KeystoneError {
    let stores: Vec<String> = catalog
        .iter()
        .filter(|svc| svc.kind == "object-store")
        .flat_map(|svc| &svc.endpoints)
        .map(|e| format!("{} in {}", e.interface, region_of(e).unwrap_or("no region")))
        .collect();
    let have = if stores.is_empty() {
        let kinds: Vec<&str> = catalog.iter().map(|svc| svc.kind.as_str()).collect();
        format!("no object-store service (services: {})", kinds.join(", "))
    } else {
        format!("object-store endpoints {}", stores.join(", "))
    };
    KeystoneError::NoEndpoint {
        url: url.to_owned(),
        interface: s.interface.clone(),
        region: s
            .region
            .as_ref()
            .map(|r| format!(" in region {r:?}"))
            .unwrap_or_default(),
        have,
    }
}

/// When to fetch a new token: a tenth of its remaining life before it
/// expires, and at most a minute before; `None` (no expiry given): only
/// after a 401.
pub fn renew_after(expires_at: Option<SystemTime>) -> Option<Duration> {
    let left = expires_at?
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    Some(left - (left / 10).min(Duration::from_secs(60)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(region: Option<&str>, interface: &str) -> KeystoneSettings {
        KeystoneSettings {
            auth_url: "http://ks/v3".into(),
            user: "swift".into(),
            password: Secret::new("pw"),
            user_domain_name: "Default".into(),
            project_name: "service".into(),
            project_domain_name: "Default".into(),
            region: region.map(str::to_owned),
            interface: interface.into(),
        }
    }

    fn catalog() -> Vec<Service> {
        let body = serde_json::json!([
            {"type": "identity", "endpoints": [
                {"interface": "public", "region_id": "RegionOne", "url": "http://ks/v3"}]},
            {"type": "object-store", "endpoints": [
                {"interface": "public", "region_id": "RegionOne", "url": "http://one/v1/AUTH_p/"},
                {"interface": "internal", "region_id": "RegionOne", "url": "http://one-int/v1/AUTH_p"},
                {"interface": "public", "region": "RegionTwo", "url": "http://two/v1/AUTH_p"}]}
        ]);
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn the_tokens_url_takes_auth_urls_with_and_without_v3() {
        for u in [
            "http://ks:5000",
            "http://ks:5000/",
            "http://ks:5000/v3",
            "http://ks:5000/v3/",
        ] {
            assert_eq!(tokens_url(u), "http://ks:5000/v3/auth/tokens", "{u}");
        }
        assert_eq!(
            tokens_url("https://cloud/identity"),
            "https://cloud/identity/v3/auth/tokens"
        );
    }

    #[test]
    fn the_endpoint_is_chosen_by_interface_and_region() {
        let c = catalog();
        let pick = |r, i| object_store(&c, &settings(r, i));
        assert_eq!(pick(None, "public"), Some("http://one/v1/AUTH_p/"));
        assert_eq!(pick(None, "internal"), Some("http://one-int/v1/AUTH_p"));
        assert_eq!(
            pick(Some("RegionTwo"), "public"),
            Some("http://two/v1/AUTH_p")
        );
        assert_eq!(pick(Some("RegionTwo"), "internal"), None);
        assert_eq!(pick(None, "admin"), None);
    }

    #[test]
    fn a_missing_endpoint_says_what_the_catalog_has() {
        let c = catalog();
        let e = no_endpoint(
            "http://ks/v3/auth/tokens",
            &c,
            &settings(Some("RegionTwo"), "internal"),
        )
        .to_string();
        assert!(
            e.contains(
                "no object-store endpoint with interface \"internal\" in region \"RegionTwo\""
            ) && e.contains("public in RegionOne, internal in RegionOne, public in RegionTwo"),
            "{e}"
        );
        let e = no_endpoint("u", &c[..1], &settings(None, "public")).to_string();
        assert!(
            e.contains("no object-store service (services: identity)"),
            "{e}"
        );
    }

    /// A one-route Keystone answering every token request with `answer`.
    async fn keystone(
        answer: (
            axum::http::StatusCode,
            Vec<(&'static str, &'static str)>,
            String,
        ),
    ) -> String {
        let app = axum::Router::new().route(
            "/v3/auth/tokens",
            axum::routing::post(move || {
                let (status, headers, body) = answer.clone();
                async move {
                    let mut h = axum::http::HeaderMap::new();
                    for (k, v) in headers {
                        h.insert(k, v.parse().unwrap());
                    }
                    (status, h, body)
                }
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await });
        url
    }

    fn token_body(expires_at: &str) -> String {
        serde_json::json!({"token": {"expires_at": expires_at, "catalog": [
            {"type": "object-store", "endpoints": [
                {"interface": "public", "region_id": "RegionOne", "url": "http://s/v1/AUTH_p"}]}]}})
        .to_string()
    }

    #[tokio::test]
    async fn keystones_answers_become_a_grant_or_a_named_error() {
        use axum::http::StatusCode;
        let http = reqwest::Client::new();
        let at = |url: String| KeystoneSettings {
            auth_url: url,
            ..settings(None, "public")
        };
        // Keystone's own format for expires_at.
        let ok = keystone((
            StatusCode::CREATED,
            vec![("x-subject-token", "gAAAAB-t")],
            token_body("2030-01-02T03:04:05.000000Z"),
        ))
        .await;
        let g = authenticate(&http, &at(ok)).await.unwrap();
        assert_eq!(g.token.expose(), "gAAAAB-t");
        assert_eq!(g.storage_url, "http://s/v1/AUTH_p");
        assert_eq!(
            g.expires_at,
            Some(humantime::parse_rfc3339("2030-01-02T03:04:05Z").unwrap())
        );

        let no_token = keystone((
            StatusCode::CREATED,
            vec![],
            token_body("2030-01-02T03:04:05Z"),
        ))
        .await;
        let e = authenticate(&http, &at(no_token.clone()))
            .await
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            e,
            format!("Keystone at {no_token}/v3/auth/tokens: no X-Subject-Token in the answer")
        );

        let bad_time = keystone((
            StatusCode::CREATED,
            vec![("x-subject-token", "t")],
            token_body("tomorrow"),
        ))
        .await;
        let e = authenticate(&http, &at(bad_time))
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("expires_at \"tomorrow\""), "{e}");

        let broken = keystone((
            StatusCode::SERVICE_UNAVAILABLE,
            vec![],
            r#"{"error":{"code":503,"message":"Service Unavailable","title":"x"}}"#.into(),
        ))
        .await;
        let e = authenticate(&http, &at(broken.clone()))
            .await
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            e,
            format!("Keystone at {broken}/v3/auth/tokens answered 503 Service Unavailable: Service Unavailable")
        );
        assert!(!e.contains("pw"), "{e}");
    }

    #[test]
    fn tokens_are_renewed_before_they_expire() {
        assert_eq!(renew_after(None), None);
        let an_hour = renew_after(Some(SystemTime::now() + Duration::from_secs(3600))).unwrap();
        assert!(
            (Duration::from_secs(3538)..=Duration::from_secs(3540)).contains(&an_hour),
            "{an_hour:?}"
        );
        let ten_s = renew_after(Some(SystemTime::now() + Duration::from_secs(10))).unwrap();
        assert!(
            (Duration::from_millis(8900)..=Duration::from_secs(9)).contains(&ten_s),
            "{ten_s:?}"
        );
        let past = renew_after(Some(SystemTime::now() - Duration::from_secs(5))).unwrap();
        assert_eq!(past, Duration::ZERO);
    }
}
