//! The ramdisk-facing calls of the API: which paths a caller without
//! operator credentials may reach at all ([`is_ramdisk_path`], used by the
//! auth middleware, which marks such a request [`Caller::Anonymous`]
//! instead of refusing it), and Ironic's agent endpoints `GET /v1/lookup`
//! and `POST /v1/heartbeat/{node}`. What an anonymous caller may then do is
//! the conductor's call (`service::ramdisk`): a node in a wait state, with
//! the secret issued for that wait.
//!
//! Callers: the router in `api::mod`, `api::auth`, `api::vendor`.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::Value;

use super::{json_object, ApiError, AppState};
pub use crate::service::ramdisk::Caller;

/// May a request for `path` reach the handlers without operator
/// credentials? Only the ramdisk's: lookup, heartbeat, and a node's vendor
/// passthru calls (not the method list).
pub fn is_ramdisk_path(path: &str) -> bool {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segs.as_slice() {
        ["v1", "lookup"] | ["v1", "continue_inspection"] => true,
        ["v1", "heartbeat", node] => !node.is_empty(),
        ["v1", "nodes", node, "vendor_passthru"] => !node.is_empty(),
        ["v1", "nodes", node, "vendor_passthru", method] => {
            !node.is_empty() && !method.is_empty() && *method != "methods"
        }
        _ => false,
    }
}

/// The caller the auth middleware saw (none inserted: noauth, an operator).
pub fn caller(ext: Option<axum::Extension<Caller>>) -> Caller {
    ext.map_or(Caller::Operator, |e| e.0)
}

/// `GET /v1/lookup?addresses=mac,mac&node_uuid=uuid`.
pub async fn lookup(
    State(st): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let addresses: Vec<String> = q
        .get("addresses")
        .map(|a| {
            a.split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let node_uuid = q
        .get("node_uuid")
        .map(String::as_str)
        .filter(|u| !u.is_empty());
    Ok(Json(st.conductor.lookup(&addresses, node_uuid).await?))
}

/// `POST /v1/heartbeat/{node}`: 202, as Ironic.
pub async fn heartbeat(
    State(st): State<AppState>,
    Path(node): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let body = json_object(&body)?;
    st.conductor.heartbeat(&node, &body).await?;
    Ok(StatusCode::ACCEPTED)
}

#[cfg(test)]
mod tests {
    use super::is_ramdisk_path;

    #[test]
    fn only_the_ramdisks_paths_skip_operator_credentials() {
        for p in [
            "/v1/lookup",
            "/v1/continue_inspection",
            "/v1/heartbeat/n1",
            "/v1/nodes/n1/vendor_passthru",
            "/v1/nodes/n1/vendor_passthru/pass_deploy_info",
        ] {
            assert!(is_ramdisk_path(p), "{p}");
        }
        for p in [
            "/v1/nodes",
            "/v1/nodes/n1",
            "/v1/nodes/n1/vendor_passthru/methods",
            "/v1/nodes/n1/states/power",
            "/v1/nodes/n1/vendor_passthru/x/y",
            "/v1/heartbeat",
            "/v1/heartbeat/n1/x",
            "/v1/lookup/x",
            "/v1/continue_inspection/x",
            "/v1/nodes/n1/inventory",
            "/v1/ports",
        ] {
            assert!(!is_ramdisk_path(p), "{p}");
        }
    }
}
