//! API versions: `GET /` and `GET /v1` (discovery), and the microversion
//! middleware: reads `X-OpenStack-Ironic-API-Version` (or
//! `OpenStack-API-Version: baremetal X`), answers 406 outside the range or
//! for a value that is not a version (as Ironic's `Version.parse_headers`),
//! and echoes the version with the Minimum/Maximum headers on every reply.
//!
//! Callers: the router in `api::mod`.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::{base_url, ApiError, AppState};

pub const MIN_MINOR: u32 = 1;
/// The highest microversion served. python-ironicclient 6.3 knows 1.115 and
/// openstacksdk 4.22 1.109; both negotiate down to this.
pub const MAX_MINOR: u32 = 99;
const HDR: &str = "x-openstack-ironic-api-version";

fn vstr(minor: u32) -> String {
    format!("1.{minor}")
}

/// At most this much of a bad version value is echoed.
const ECHO: usize = 32;

fn bad_version(raw: &str) -> ApiError {
    ApiError::BadVersion(raw.chars().take(ECHO).collect())
}

/// A header's value as text; one that is not visible ASCII is refused like
/// any unparsable version (never ignored: a client that asked for a
/// version must get it or an error).
fn text(v: &HeaderValue) -> Result<&str, ApiError> {
    v.to_str().map_err(|_| {
        bad_version(&format!(
            "{} (not ASCII)",
            String::from_utf8_lossy(v.as_bytes())
        ))
    })
}

fn requested(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    if let Some(v) = headers.get(HDR) {
        return Ok(Some(text(v)?.trim().to_owned()));
    }
    let Some(generic) = headers.get("openstack-api-version") else {
        return Ok(None);
    };
    Ok(text(generic)?
        .split(',')
        .find_map(|p| p.trim().strip_prefix("baremetal "))
        .map(|v| v.trim().to_owned()))
}

pub fn negotiate(headers: &HeaderMap) -> Result<u32, ApiError> {
    let Some(raw) = requested(headers)? else {
        return Ok(MIN_MINOR);
    };
    if raw.eq_ignore_ascii_case("latest") {
        return Ok(MAX_MINOR);
    }
    let bad = || bad_version(&raw);
    let (major, minor) = raw.split_once('.').ok_or_else(bad)?;
    let (major, minor): (u32, u32) = (
        major.parse().map_err(|_| bad())?,
        minor.parse().map_err(|_| bad())?,
    );
    if major != 1 || !(MIN_MINOR..=MAX_MINOR).contains(&minor) {
        return Err(ApiError::Version {
            requested: raw.clone(),
            min: vstr(MIN_MINOR),
            max: vstr(MAX_MINOR),
        });
    }
    Ok(minor)
}

pub async fn middleware(mut req: Request, next: Next) -> Response {
    let (mut resp, minor) = match negotiate(req.headers()) {
        Ok(minor) => {
            // Field gating follows the version a client asked for; a request
            // without a version header (curl, the demo) sees every field.
            let explicit = matches!(requested(req.headers()), Ok(Some(_)));
            let gate = if explicit { minor } else { MAX_MINOR };
            req.extensions_mut()
                .insert(super::fields::Microversion(gate));
            (next.run(req).await, minor)
        }
        Err(e) => (e.into_response(), MIN_MINOR),
    };
    let h = resp.headers_mut();
    let val = |s: String| HeaderValue::from_str(&s).expect("a version is a valid header");
    h.insert(
        "x-openstack-ironic-api-minimum-version",
        val(vstr(MIN_MINOR)),
    );
    h.insert(
        "x-openstack-ironic-api-maximum-version",
        val(vstr(MAX_MINOR)),
    );
    h.insert(HDR, val(vstr(minor)));
    h.insert(
        "openstack-api-version",
        val(format!("baremetal {}", vstr(minor))),
    );
    h.insert(
        "vary",
        HeaderValue::from_static("X-OpenStack-Ironic-API-Version"),
    );
    resp
}

fn version_doc(base: &str) -> Value {
    json!({
        "id": "v1",
        "links": [{"href": format!("{base}/v1/"), "rel": "self"}],
        "status": "CURRENT",
        "min_version": vstr(MIN_MINOR),
        "version": vstr(MAX_MINOR),
    })
}

/// `GET /`.
pub async fn root(State(st): State<AppState>, headers: HeaderMap) -> Json<Value> {
    let base = base_url(&st, &headers);
    let v = version_doc(&base);
    Json(json!({
        "name": "OpenStack Ironic API",
        "description": "Porthole conductor: an Ironic-compatible API for nodes, power and consoles.",
        "default_version": v,
        "versions": [v],
    }))
}

/// `GET /v1`.
pub async fn v1(State(st): State<AppState>, headers: HeaderMap) -> Json<Value> {
    let base = base_url(&st, &headers);
    let link = |p: &str| json!([{"href": format!("{base}/v1/{p}/"), "rel": "self"}, {"href": format!("{base}/{p}/"), "rel": "bookmark"}]);
    Json(json!({
        "id": "v1",
        "links": [{"href": format!("{base}/v1/"), "rel": "self"}],
        "media_types": [{"base": "application/json", "type": "application/vnd.openstack.ironic.v1+json"}],
        "nodes": link("nodes"),
        "ports": link("ports"),
        "portgroups": link("portgroups"),
        "volume": link("volume"),
        "drivers": link("drivers"),
        "version": version_doc(&base),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(v: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(HDR, HeaderValue::from_str(v).unwrap());
        m
    }

    #[test]
    fn negotiation() {
        assert_eq!(negotiate(&HeaderMap::new()).unwrap(), MIN_MINOR);
        assert_eq!(negotiate(&h("latest")).unwrap(), MAX_MINOR);
        assert_eq!(negotiate(&h("1.31")).unwrap(), 31);
        assert!(matches!(
            negotiate(&h("1.999")),
            Err(ApiError::Version { .. })
        ));
        assert!(matches!(
            negotiate(&h("2.1")),
            Err(ApiError::Version { .. })
        ));
        assert!(matches!(negotiate(&h("x")), Err(ApiError::BadVersion(_))));
        let mut m = HeaderMap::new();
        m.insert(HDR, HeaderValue::from_bytes("1.\u{e9}".as_bytes()).unwrap());
        let e = negotiate(&m).unwrap_err();
        assert!(matches!(e, ApiError::BadVersion(_)), "{e}");
        assert_eq!(e.status(), axum::http::StatusCode::NOT_ACCEPTABLE, "{e}");
        assert!(
            e.to_string().contains("X-OpenStack-Ironic-API-Version"),
            "{e}"
        );
    }
}
