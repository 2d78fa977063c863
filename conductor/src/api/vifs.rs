//! `/v1/nodes/{node}/vifs[/{vif}]`: list, attach (`{"id": ...}`, optional
//! `port_uuid`/`portgroup_uuid` from 1.67), detach; from 1.28 as Ironic.
//!
//! Callers: the router in `api::mod`.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::fields::{require, Microversion};
use super::{json_object, ApiError, AppState};
use crate::service::VifAttach;

/// Ironic's MINOR_28_VIFS_SUBCONTROLLER.
const VIFS: u32 = 28;

pub async fn list(
    State(st): State<AppState>,
    mv: Microversion,
    Path(node): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require(mv, VIFS)?;
    let vifs: Vec<Value> = st
        .conductor
        .vif_list(&node)
        .await?
        .into_iter()
        .map(|id| json!({"id": id}))
        .collect();
    Ok(Json(json!({"vifs": vifs})))
}

pub async fn attach(
    State(st): State<AppState>,
    mv: Microversion,
    Path(node): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    require(mv, VIFS)?;
    let mut body = json_object(&body)?;
    if mv.0 < 67 {
        body.remove("port_uuid");
        body.remove("portgroup_uuid");
    }
    let req = VifAttach::parse(&body)?;
    st.conductor.vif_attach(&node, req).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn detach(
    State(st): State<AppState>,
    mv: Microversion,
    Path((node, vif)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    require(mv, VIFS)?;
    st.conductor.vif_detach(&node, &vif).await?;
    Ok(StatusCode::NO_CONTENT)
}
