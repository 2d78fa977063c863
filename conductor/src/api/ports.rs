//! `/v1/ports` and `/v1/nodes/{node}/ports`: list (filter by node or
//! address, `fields`, `detail`), create, show (UUID or MAC), PATCH, delete.
//! Fields newer than the request's microversion are hidden (`fields`).
//!
//! Callers: the router in `api::mod`.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::fields::{self as gate, Microversion, PORT_FIELDS};
use super::{base_url, json_body, json_object, parse_fields, parse_limit, ApiError, AppState};
use crate::model::{select, Port};

type Params = Query<HashMap<String, String>>;

const FIELDS: &[&str] = &[
    "uuid",
    "address",
    "node_uuid",
    "extra",
    "pxe_enabled",
    "local_link_connection",
    "internal_info",
    "portgroup_uuid",
    "physical_network",
    "is_smartnic",
    "name",
    "created_at",
    "updated_at",
    "links",
];

fn render(
    p: &Port,
    base: &str,
    fields: &Option<Vec<String>>,
    detail: bool,
    mv: Microversion,
) -> Value {
    let mut full = p.to_api(base);
    gate::hide(PORT_FIELDS, &mut full, mv);
    let keep: Vec<String> = match fields {
        Some(f) => f.iter().cloned().chain(["links".to_owned()]).collect(),
        None if detail => return Value::Object(full),
        None => ["uuid", "address", "links"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    Value::Object(select(full, &keep))
}

async fn listing(
    st: &AppState,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
    node: Option<&str>,
    detail: bool,
    mv: Microversion,
) -> Result<Json<Value>, ApiError> {
    let detail = detail
        || q.get("detail")
            .is_some_and(|d| d.eq_ignore_ascii_case("true"));
    let fields = parse_fields(q.get("fields").map(String::as_str), FIELDS)?;
    gate::check_fields(PORT_FIELDS, &fields, mv)?;
    let limit = parse_limit(q)?;
    let node = node
        .or(q.get("node").map(String::as_str))
        .or(q.get("node_uuid").map(String::as_str));
    let node_uuid = match node {
        Some(n) => Some(st.conductor.store.get_node(n).await?.uuid),
        None => None,
    };
    let base = base_url(st, headers);
    let address = q.get("address").map(|a| a.to_ascii_lowercase());
    let ports: Vec<Value> = st
        .conductor
        .store
        .list_ports(node_uuid.as_deref())
        .await?
        .iter()
        .filter(|p| address.as_ref().is_none_or(|a| &p.address == a))
        .take(limit)
        .map(|p| render(p, &base, &fields, detail, mv))
        .collect();
    Ok(Json(json!({"ports": ports})))
}

pub async fn list(
    State(st): State<AppState>,
    mv: Microversion,
    headers: HeaderMap,
    Query(q): Params,
) -> Result<Json<Value>, ApiError> {
    listing(&st, &headers, &q, None, false, mv).await
}

pub async fn detail(
    State(st): State<AppState>,
    mv: Microversion,
    headers: HeaderMap,
    Query(q): Params,
) -> Result<Json<Value>, ApiError> {
    listing(&st, &headers, &q, None, true, mv).await
}

pub async fn list_of_node(
    State(st): State<AppState>,
    mv: Microversion,
    headers: HeaderMap,
    Path(node): Path<String>,
    Query(q): Params,
) -> Result<Json<Value>, ApiError> {
    listing(&st, &headers, &q, Some(&node), false, mv).await
}

pub async fn detail_of_node(
    State(st): State<AppState>,
    mv: Microversion,
    headers: HeaderMap,
    Path(node): Path<String>,
    Query(q): Params,
) -> Result<Json<Value>, ApiError> {
    listing(&st, &headers, &q, Some(&node), true, mv).await
}

pub async fn show(
    State(st): State<AppState>,
    mv: Microversion,
    headers: HeaderMap,
    Path(port): Path<String>,
    Query(q): Params,
) -> Result<Json<Value>, ApiError> {
    let fields = parse_fields(q.get("fields").map(String::as_str), FIELDS)?;
    gate::check_fields(PORT_FIELDS, &fields, mv)?;
    let p = st.conductor.store.get_port(&port).await?;
    Ok(Json(render(
        &p,
        &base_url(&st, &headers),
        &fields,
        true,
        mv,
    )))
}

pub async fn patch(
    State(st): State<AppState>,
    mv: Microversion,
    headers: HeaderMap,
    Path(port): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let ops = json_body(&body)?;
    if !ops.is_array() {
        return Err(ApiError::BadRequest(
            "A PATCH body is a JSON Patch: a list of operations.".into(),
        ));
    }
    gate::check_patch(PORT_FIELDS, &ops, mv)?;
    let p = st.conductor.patch_port(&port, &ops).await?;
    Ok(Json(render(&p, &base_url(&st, &headers), &None, true, mv)))
}

pub async fn create(
    State(st): State<AppState>,
    mv: Microversion,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = json_object(&body)?;
    gate::check_create(PORT_FIELDS, &body, mv)?;
    let port = st.conductor.create_port(&body).await?;
    let base = base_url(&st, &headers);
    let location = format!("{base}/v1/ports/{}", port.uuid);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(render(&port, &base, &None, true, mv)),
    )
        .into_response())
}

pub async fn delete(
    State(st): State<AppState>,
    Path(port): Path<String>,
) -> Result<StatusCode, ApiError> {
    st.conductor.delete_port(&port).await?;
    Ok(StatusCode::NO_CONTENT)
}
