//! The `agent` inspect interface's endpoints: the ramdisk's `POST
//! /v1/continue_inspection` (no credentials, as Ironic: the auth middleware
//! lets it through, `service::continue_inspection` decides) and `GET
//! /v1/nodes/{node}/inventory` (API 1.81, operator credentials).
//!
//! continue_inspection as Ironic serves it: the body bounded
//! ([`BODY_LIMIT`], 413 above it), checked against Ironic's schema (400),
//! `?node_uuid=` and the lookup-shaped answer from 1.84, `{"uuid"}` for
//! 1.1 (ironic-inspector's callers), 404 for the versions in between; 202.
//!
//! Callers: the router in `api::mod`.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};

use super::fields::Microversion;
use super::{ApiError, AppState};
use crate::service::continue_inspection::parse_body;
use crate::service::ServiceError;

/// The largest continue_inspection body read: an inventory with hundreds
/// of disks and NICs is well under it; more is refused unread.
pub const BODY_LIMIT: usize = 1024 * 1024;

/// The first microversion with node_uuid and the lookup-shaped answer.
const CONTINUE_MINOR: u32 = 84;
/// The first microversion with `GET /v1/nodes/{node}/inventory`.
const INVENTORY_MINOR: u32 = 81;

/// `POST /v1/continue_inspection[?node_uuid=]`.
pub async fn continue_inspection(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let minor = super::version::negotiate(&headers)?;
    let node_uuid = q.get("node_uuid").filter(|u| !u.is_empty());
    let new_api = minor >= CONTINUE_MINOR;
    // 1.1 (without node_uuid) for ironic-inspector's callers, else 1.84+.
    let allowed = new_api || (minor == 1 && node_uuid.is_none());
    if !allowed {
        return Err(ServiceError::Missing(format!(
            "API version 1.{CONTINUE_MINOR} or newer is required"
        ))
        .into());
    }
    let node_uuid = node_uuid
        .map(|u| {
            crate::service::parse_uuid(u).map_err(|_| {
                ServiceError::Invalid(format!(
                    "Invalid node_uuid: Expected a UUID but received {u}."
                ))
            })
        })
        .transpose()?;
    let bytes = axum::body::to_bytes(body, BODY_LIMIT)
        .await
        .map_err(|_| ApiError::TooLarge(BODY_LIMIT))?;
    let data = parse_body(super::json_body(&bytes)?)?;
    let node = st
        .conductor
        .continue_inspection(data, node_uuid.as_deref())
        .await?;
    let answer = match new_api {
        true => json!({
            "node": {
                "uuid": node.uuid,
                "properties": node.properties,
                "instance_info": crate::model::masked(&node.instance_info),
                "driver_internal_info": crate::model::masked(&node.driver_internal_info),
            },
            "config": {"heartbeat_timeout": 300, "agent_token_required": true},
        }),
        false => json!({"uuid": node.uuid}),
    };
    Ok((StatusCode::ACCEPTED, Json(answer)))
}

/// `GET /v1/nodes/{node}/inventory`: `{"inventory", "plugin_data"}`.
pub async fn inventory(
    State(st): State<AppState>,
    mv: Microversion,
    Path(ident): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if mv.0 < INVENTORY_MINOR {
        return Err(ApiError::NoRoute);
    }
    let node = st.conductor.store.get_node(&ident).await?;
    let found = st.conductor.store.inventory(&node.uuid).await?;
    let Some(inv) = found else {
        return Err(ServiceError::Missing(format!(
            "Node inventory record for node {} could not be found.",
            node.uuid
        ))
        .into());
    };
    Ok(Json(
        json!({"inventory": inv.inventory, "plugin_data": inv.plugin_data}),
    ))
}
