//! `/v1/nodes/{node}/traits[/{trait}]` (list, replace, add one, remove one
//! or all; from 1.37) and `/v1/nodes/{node}/maintenance` (PUT with an
//! optional reason, DELETE; 202 as Ironic).
//!
//! Callers: the router in `api::mod`.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::fields::{require, Microversion};
use super::{base_url, json_body, ApiError, AppState};
use crate::service::extras::check_trait;

/// Ironic's MINOR_37_NODE_TRAITS.
const TRAITS: u32 = 37;

const PUT_USAGE: &str = "A single node trait may be added via PUT /v1/nodes/<node identifier>/traits/<trait> with no body, or all node traits may be replaced via PUT /v1/nodes/<node identifier>/traits with the list of traits specified in the request body.";

pub async fn list(
    State(st): State<AppState>,
    mv: Microversion,
    Path(node): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require(mv, TRAITS)?;
    let n = st.conductor.store.get_node(&node).await?;
    Ok(Json(json!({"traits": n.attrs.traits})))
}

/// `PUT .../traits` with `{"traits": [...]}`: replace them all.
pub async fn replace(
    State(st): State<AppState>,
    mv: Microversion,
    Path(node): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    require(mv, TRAITS)?;
    let traits = match body.is_empty() {
        true => None,
        false => json_body(&body)?.get("traits").cloned(),
    };
    let Some(traits) = traits else {
        return Err(ApiError::BadRequest(PUT_USAGE.into()));
    };
    let Value::Array(list) = traits else {
        return Err(ApiError::BadRequest(format!(
            "Schema error for body: {} is not of type 'array'",
            crate::service::shown(&traits)
        )));
    };
    let list = list
        .iter()
        .map(|t| check_trait("body", t))
        .collect::<Result<Vec<_>, _>>()?;
    st.conductor.put_traits(&node, Some(list), None).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT .../traits/{trait}` without a body: add one.
pub async fn add(
    State(st): State<AppState>,
    mv: Microversion,
    headers: HeaderMap,
    Path((node, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    require(mv, TRAITS)?;
    let t = check_trait("trait", &Value::String(name))?;
    if !body.is_empty() && !json_body(&body)?.is_null() {
        let given = json_body(&body)?;
        if given.get("traits").is_some() {
            return Err(ApiError::BadRequest(PUT_USAGE.into()));
        }
        return Err(ApiError::BadRequest(
            "No body should be provided when adding a trait".into(),
        ));
    }
    st.conductor
        .put_traits(&node, None, Some(t.clone()))
        .await?;
    let location = format!("{}/v1/nodes/{node}/traits/{t}", base_url(&st, &headers));
    Ok((StatusCode::NO_CONTENT, [(header::LOCATION, location)]).into_response())
}

pub async fn delete_all(
    State(st): State<AppState>,
    mv: Microversion,
    Path(node): Path<String>,
) -> Result<StatusCode, ApiError> {
    require(mv, TRAITS)?;
    st.conductor.delete_traits(&node, None).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn delete_one(
    State(st): State<AppState>,
    mv: Microversion,
    Path((node, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    require(mv, TRAITS)?;
    st.conductor.delete_traits(&node, Some(name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT .../maintenance`: `{"reason": ...}` in the body or `?reason=`.
pub async fn set_maintenance(
    State(st): State<AppState>,
    Path(node): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let mut reason = q.get("reason").cloned();
    if !body.is_empty() {
        match json_body(&body)? {
            Value::Null => {}
            Value::Object(m) => match m.get("reason") {
                None | Some(Value::Null) => {}
                Some(Value::String(r)) => reason = Some(r.clone()),
                Some(other) => {
                    return Err(ApiError::BadRequest(format!(
                        "Argument 'reason' is not a string: {}",
                        crate::service::shown(other)
                    )))
                }
            },
            other => {
                return Err(ApiError::BadRequest(format!(
                    "The request body must be a JSON object, not {}.",
                    crate::service::shown(&other)
                )))
            }
        }
    }
    st.conductor.set_maintenance(&node, true, reason).await?;
    Ok(StatusCode::ACCEPTED)
}

pub async fn unset_maintenance(
    State(st): State<AppState>,
    Path(node): Path<String>,
) -> Result<StatusCode, ApiError> {
    st.conductor.set_maintenance(&node, false, None).await?;
    Ok(StatusCode::ACCEPTED)
}
