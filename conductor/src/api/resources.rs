//! `/v1/portgroups` (from 1.23), `/v1/volume`, `/v1/volume/connectors` and
//! `/v1/volume/targets` (from 1.32), and their per-node views
//! (`/v1/nodes/{node}/portgroups`, `/v1/nodes/{node}/volume/...`): list
//! (`?node=`, `?detail=`, `?fields=`, `?limit=`), show, create, PATCH,
//! delete, as one set of handlers generic over the record kind
//! ([`Resource`]). Callers: the router in `api::mod`.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::fields::{require, Microversion};
use super::{base_url, json_body, json_object, parse_fields, parse_limit, ApiError, AppState};
use crate::model::{links, select, Dict, Portgroup, VolumeConnector, VolumeTarget};
use crate::service::Editable;

type Params = Query<HashMap<String, String>>;

/// How a record kind appears in the API.
pub trait Resource: Editable {
    /// The collection's key and path under `/v1` (`portgroups`).
    const COLLECTION: &'static str;
    const PATH: &'static str;
    /// The microversion that added it.
    const SINCE: u32;
    /// What a list shows without `detail` or `fields`.
    const LIST_FIELDS: &'static [&'static str];
    /// Every field a `fields` selection may name.
    const ALL_FIELDS: &'static [&'static str];
    fn to_api(&self, base: &str) -> Dict;
}

impl Resource for Portgroup {
    const COLLECTION: &'static str = "portgroups";
    const PATH: &'static str = "portgroups";
    const SINCE: u32 = 23;
    const LIST_FIELDS: &'static [&'static str] = &["uuid", "address", "name", "links"];
    const ALL_FIELDS: &'static [&'static str] = &[
        "uuid",
        "name",
        "address",
        "node_uuid",
        "extra",
        "mode",
        "properties",
        "standalone_ports_supported",
        "internal_info",
        "physical_network",
        "created_at",
        "updated_at",
        "links",
        "ports",
    ];
    fn to_api(&self, base: &str) -> Dict {
        Portgroup::to_api(self, base)
    }
}

impl Resource for VolumeConnector {
    const COLLECTION: &'static str = "connectors";
    const PATH: &'static str = "volume/connectors";
    const SINCE: u32 = 32;
    const LIST_FIELDS: &'static [&'static str] =
        &["uuid", "type", "connector_id", "node_uuid", "links"];
    const ALL_FIELDS: &'static [&'static str] = &[
        "uuid",
        "node_uuid",
        "type",
        "connector_id",
        "extra",
        "created_at",
        "updated_at",
        "links",
    ];
    fn to_api(&self, base: &str) -> Dict {
        VolumeConnector::to_api(self, base)
    }
}

impl Resource for VolumeTarget {
    const COLLECTION: &'static str = "targets";
    const PATH: &'static str = "volume/targets";
    const SINCE: u32 = 32;
    const LIST_FIELDS: &'static [&'static str] = &[
        "uuid",
        "volume_type",
        "boot_index",
        "volume_id",
        "node_uuid",
        "links",
    ];
    const ALL_FIELDS: &'static [&'static str] = &[
        "uuid",
        "node_uuid",
        "volume_type",
        "properties",
        "boot_index",
        "volume_id",
        "extra",
        "created_at",
        "updated_at",
        "links",
    ];
    fn to_api(&self, base: &str) -> Dict {
        VolumeTarget::to_api(self, base)
    }
}

fn render<T: Resource>(r: &T, base: &str, fields: &Option<Vec<String>>, detail: bool) -> Value {
    let full = r.to_api(base);
    let keep: Vec<String> = match fields {
        Some(f) => f.iter().cloned().chain(["links".to_owned()]).collect(),
        None if detail => return Value::Object(full),
        None => T::LIST_FIELDS.iter().map(|s| s.to_string()).collect(),
    };
    Value::Object(select(full, &keep))
}

async fn listing<T: Resource>(
    st: &AppState,
    mv: Microversion,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
    node: Option<&str>,
    detail: bool,
) -> Result<Json<Value>, ApiError> {
    require(mv, T::SINCE)?;
    let detail = detail
        || match q.get("detail") {
            Some(d) => crate::service::parse_bool("detail", &json!(d))?,
            None => false,
        };
    let fields = parse_fields(q.get("fields").map(String::as_str), T::ALL_FIELDS)?;
    if detail && fields.is_some() {
        return Err(ApiError::BadRequest(
            "Can not specify ?detail=True and fields in the same request.".into(),
        ));
    }
    let limit = parse_limit(q)?;
    let node = node.or(q.get("node").map(String::as_str));
    let node_uuid = match node {
        Some(n) => Some(st.conductor.store.get_node(n).await?.uuid),
        None => None,
    };
    let base = base_url(st, headers);
    let address = q.get("address").map(|a| a.to_ascii_lowercase());
    let items: Vec<Value> = st
        .conductor
        .store
        .list_docs::<T>(node_uuid.as_deref())
        .await?
        .iter()
        .map(|r| (r, r.to_api(&base)))
        .filter(|(_, full)| {
            address
                .as_ref()
                .is_none_or(|a| full.get("address").and_then(Value::as_str) == Some(a))
        })
        .take(limit)
        .map(|(r, _)| render(r, &base, &fields, detail))
        .collect();
    Ok(Json(json!({ T::COLLECTION: items })))
}

pub async fn list<T: Resource>(
    State(st): State<AppState>,
    mv: Microversion,
    headers: HeaderMap,
    Query(q): Params,
) -> Result<Json<Value>, ApiError> {
    listing::<T>(&st, mv, &headers, &q, None, false).await
}

pub async fn detail<T: Resource>(
    State(st): State<AppState>,
    mv: Microversion,
    headers: HeaderMap,
    Query(q): Params,
) -> Result<Json<Value>, ApiError> {
    listing::<T>(&st, mv, &headers, &q, None, true).await
}

pub async fn list_of_node<T: Resource>(
    State(st): State<AppState>,
    mv: Microversion,
    headers: HeaderMap,
    Path(node): Path<String>,
    Query(q): Params,
) -> Result<Json<Value>, ApiError> {
    listing::<T>(&st, mv, &headers, &q, Some(&node), false).await
}

pub async fn show<T: Resource>(
    State(st): State<AppState>,
    mv: Microversion,
    headers: HeaderMap,
    Path(ident): Path<String>,
    Query(q): Params,
) -> Result<Json<Value>, ApiError> {
    require(mv, T::SINCE)?;
    let fields = parse_fields(q.get("fields").map(String::as_str), T::ALL_FIELDS)?;
    let r: T = st.conductor.store.get_doc(&ident).await?;
    Ok(Json(render(&r, &base_url(&st, &headers), &fields, true)))
}

pub async fn create<T: Resource>(
    State(st): State<AppState>,
    mv: Microversion,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    require(mv, T::SINCE)?;
    let body = json_object(&body)?;
    let r: T = st.conductor.create_doc(&body).await?;
    let base = base_url(&st, &headers);
    let location = format!("{base}/v1/{}/{}", T::PATH, r.uuid());
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(Value::Object(r.to_api(&base))),
    )
        .into_response())
}

pub async fn patch<T: Resource>(
    State(st): State<AppState>,
    mv: Microversion,
    headers: HeaderMap,
    Path(ident): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    require(mv, T::SINCE)?;
    let ops = json_body(&body)?;
    if !ops.is_array() {
        return Err(ApiError::BadRequest(
            "A PATCH body is a JSON Patch: a list of operations.".into(),
        ));
    }
    let r: T = st.conductor.patch_doc(&ident, &ops).await?;
    Ok(Json(Value::Object(r.to_api(&base_url(&st, &headers)))))
}

pub async fn delete<T: Resource>(
    State(st): State<AppState>,
    mv: Microversion,
    Path(ident): Path<String>,
) -> Result<StatusCode, ApiError> {
    require(mv, T::SINCE)?;
    st.conductor.delete_doc::<T>(&ident).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/volume`: links to connectors and targets.
pub async fn volume_root(
    State(st): State<AppState>,
    mv: Microversion,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    require(mv, 32)?;
    let base = base_url(&st, &headers);
    Ok(Json(json!({
        "links": links(&base, "volume/"),
        "connectors": links(&base, "volume/connectors"),
        "targets": links(&base, "volume/targets"),
    })))
}

/// `GET /v1/nodes/{node}/volume`.
pub async fn node_volume_root(
    State(st): State<AppState>,
    mv: Microversion,
    headers: HeaderMap,
    Path(node): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require(mv, 32)?;
    let n = st.conductor.store.get_node(&node).await?;
    let base = base_url(&st, &headers);
    let p = |s: &str| format!("nodes/{}/volume/{s}", n.uuid);
    Ok(Json(json!({
        "links": links(&base, &p("")),
        "connectors": links(&base, &p("connectors")),
        "targets": links(&base, &p("targets")),
    })))
}

/// `GET /v1/portgroups/{pg}/ports`.
pub async fn ports_of_group(
    State(st): State<AppState>,
    mv: Microversion,
    headers: HeaderMap,
    Path(pg): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require(mv, 24)?;
    let g: Portgroup = st.conductor.store.get_doc(&pg).await?;
    let base = base_url(&st, &headers);
    let ports: Vec<Value> = st
        .conductor
        .store
        .list_ports(Some(&g.node_uuid))
        .await?
        .iter()
        .filter(|p| p.portgroup_uuid.as_deref() == Some(g.uuid.as_str()))
        .map(|p| {
            Value::Object(select(
                p.to_api(&base),
                &["uuid".into(), "address".into(), "links".into()],
            ))
        })
        .collect();
    Ok(Json(json!({ "ports": ports })))
}
