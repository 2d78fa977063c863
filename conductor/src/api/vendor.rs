//! `vendor_passthru` routing as Ironic's: `{POST,GET,PUT,PATCH,DELETE}
//! /v1/nodes/{node}/vendor_passthru/{method}` (and the `?method=` form),
//! the JSON body as the method's arguments, 200 with the method's answer
//! (202 when it runs in the background); `GET .../vendor_passthru/methods`
//! lists them. The methods come from the node's vendor interface
//! (`provision::vendor`); the conductor applies the ramdisk rules.
//!
//! Callers: the router in `api::mod`.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::Value;

use super::ramdisk::{caller, Caller};
use super::{json_object, ApiError, AppState};
use crate::model::Dict;

/// The arguments: no body is none, else a JSON object.
fn args(body: &Bytes) -> Result<Dict, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Dict::new());
    }
    json_object(body)
}

async fn call(
    st: &AppState,
    node: &str,
    method: &str,
    http: &Method,
    who: Caller,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let args = args(body)?;
    let a = st
        .conductor
        .vendor_passthru(node, method, http.as_str(), args, who)
        .await?;
    Ok(if a.is_async {
        StatusCode::ACCEPTED.into_response()
    } else {
        (StatusCode::OK, Json(a.body)).into_response()
    })
}

/// `.../vendor_passthru/{method}`.
pub async fn by_path(
    State(st): State<AppState>,
    http: Method,
    Path((node, method)): Path<(String, String)>,
    who: Option<Extension<Caller>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    call(&st, &node, &method, &http, caller(who), &body).await
}

/// `.../vendor_passthru?method=...`.
pub async fn by_query(
    State(st): State<AppState>,
    http: Method,
    Path(node): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    who: Option<Extension<Caller>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let method = q.get("method").map(String::as_str).unwrap_or_default();
    call(&st, &node, method, &http, caller(who), &body).await
}

/// `GET .../vendor_passthru/methods` (operators only: the auth middleware
/// does not let anonymous callers here).
pub async fn methods(
    State(st): State<AppState>,
    Path(node): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(st.conductor.vendor_methods(&node).await?))
}
