//! `/v1/nodes`: list (with `fields`, `detail` and a few filters), show (by
//! UUID or name), create, PATCH (JSON Patch), delete.
//!
//! Callers: the router in `api::mod`.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::fields::{self as gate, Microversion, NODE_FIELDS};
use super::{base_url, json_body, json_object, parse_fields, parse_limit, ApiError, AppState};
use crate::model::{select, Node, NODE_LIST_FIELDS};
use crate::service::{parse_bool, NodeCreate};

type Params = Query<HashMap<String, String>>;

fn known_fields() -> Vec<&'static str> {
    // Every key of a rendered node.
    const ALL: &[&str] = &[
        "uuid",
        "name",
        "driver",
        "driver_info",
        "driver_internal_info",
        "console_interface",
        "power_interface",
        "management_interface",
        "boot_interface",
        "deploy_interface",
        "inspect_interface",
        "bios_interface",
        "firmware_interface",
        "network_interface",
        "raid_interface",
        "rescue_interface",
        "storage_interface",
        "vendor_interface",
        "power_state",
        "target_power_state",
        "provision_state",
        "target_provision_state",
        "maintenance",
        "maintenance_reason",
        "fault",
        "console_enabled",
        "properties",
        "instance_info",
        "instance_uuid",
        "extra",
        "resource_class",
        "last_error",
        "reservation",
        "automated_clean",
        "deploy_step",
        "clean_step",
        "conductor_group",
        "conductor",
        "traits",
        "created_at",
        "updated_at",
        "provision_updated_at",
        "inspection_started_at",
        "inspection_finished_at",
        "links",
        "ports",
        "states",
        "chassis_uuid",
    ];
    let mut all = ALL.to_vec();
    for (f, _) in NODE_FIELDS {
        if !all.contains(f) {
            all.push(f);
        }
    }
    all
}

/// A node as the client asked for it: all fields, `fields`, or the list subset.
fn render(
    node: &Node,
    base: &str,
    fields: &Option<Vec<String>>,
    detail: bool,
    mv: Microversion,
) -> Value {
    let mut full = node.to_api(base);
    gate::hide(NODE_FIELDS, &mut full, mv);
    let out = match fields {
        Some(f) => {
            let mut f = f.clone();
            f.push("links".into());
            select(full, &f)
        }
        None if detail => full,
        None => select(
            full,
            &NODE_LIST_FIELDS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        ),
    };
    Value::Object(out)
}

fn matches(node: &Node, q: &HashMap<String, String>) -> bool {
    // Checked by `check_flags` before any node is matched.
    let flag = |k: &str| {
        q.get(k)
            .map(|v| parse_bool(k, &Value::String(v.clone())).unwrap_or(false))
    };
    if let Some(m) = flag("maintenance") {
        if node.maintenance != m {
            return false;
        }
    }
    if let Some(a) = flag("associated") {
        if node.instance_uuid.is_some() != a {
            return false;
        }
    }
    let eq = |k: &str, v: Option<&str>| q.get(k).is_none_or(|want| Some(want.as_str()) == v);
    eq("provision_state", Some(&node.provision_state))
        && eq("driver", Some(&node.driver))
        && eq("instance_uuid", node.instance_uuid.as_deref())
        && eq("resource_class", node.resource_class.as_deref())
        && attrs_match(node, q)
}

/// The boolean list filters, read as Ironic reads them (`args.boolean`):
/// `True`, `1`, `yes`, ... or 400.
fn check_flags(q: &HashMap<String, String>) -> Result<(), ApiError> {
    for k in ["maintenance", "associated", "retired", "detail"] {
        if let Some(v) = q.get(k) {
            parse_bool(k, &Value::String(v.clone()))?;
        }
    }
    Ok(())
}

/// Ironic's list filters on the newer fields: `owner`, `lessee`,
/// `conductor_group` (case-insensitive), `shard`, `parent_node`,
/// `retired`, `description_contains`.
fn attrs_match(node: &Node, q: &HashMap<String, String>) -> bool {
    let a = &node.attrs;
    let eq = |k: &str, v: Option<&str>| q.get(k).is_none_or(|want| Some(want.as_str()) == v);
    eq("owner", a.owner.as_deref())
        && eq("lessee", a.lessee.as_deref())
        && eq("shard", a.shard.as_deref())
        && eq("parent_node", a.parent_node.as_deref())
        && q.get("conductor_group")
            .is_none_or(|g| g.eq_ignore_ascii_case(&a.conductor_group))
        && q.get("retired").is_none_or(|r| {
            parse_bool("retired", &Value::String(r.clone())).unwrap_or(false) == a.retired
        })
        && q.get("description_contains").is_none_or(|d| {
            a.description
                .as_deref()
                .is_some_and(|desc| desc.contains(d.as_str()))
        })
}

async fn listing(
    st: &AppState,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
    detail: bool,
    mv: Microversion,
) -> Result<Json<Value>, ApiError> {
    check_flags(q)?;
    let detail = detail
        || q.get("detail")
            .is_some_and(|d| parse_bool("detail", &Value::String(d.clone())).unwrap_or(false));
    let fields = parse_fields(q.get("fields").map(String::as_str), &known_fields())?;
    gate::check_fields(NODE_FIELDS, &fields, mv)?;
    if detail && fields.is_some() {
        return Err(ApiError::BadRequest(
            "Can not specify ?detail=True and fields in the same request.".into(),
        ));
    }
    let base = base_url(st, headers);
    let limit = parse_limit(q)?;
    let nodes: Vec<Value> = st
        .conductor
        .store
        .list_nodes()
        .await?
        .iter()
        .filter(|n| matches(n, q))
        .take(limit)
        .map(|n| {
            let mut n = n.clone();
            n.reservation = st.conductor.reservation(&n.uuid);
            render(&n, &base, &fields, detail, mv)
        })
        .collect();
    Ok(Json(json!({"nodes": nodes})))
}

pub async fn list(
    State(st): State<AppState>,
    mv: Microversion,
    headers: HeaderMap,
    Query(q): Params,
) -> Result<Json<Value>, ApiError> {
    listing(&st, &headers, &q, false, mv).await
}

pub async fn detail(
    State(st): State<AppState>,
    mv: Microversion,
    headers: HeaderMap,
    Query(q): Params,
) -> Result<Json<Value>, ApiError> {
    listing(&st, &headers, &q, true, mv).await
}

pub async fn show(
    State(st): State<AppState>,
    mv: Microversion,
    headers: HeaderMap,
    Path(node): Path<String>,
    Query(q): Params,
) -> Result<Json<Value>, ApiError> {
    let fields = parse_fields(q.get("fields").map(String::as_str), &known_fields())?;
    gate::check_fields(NODE_FIELDS, &fields, mv)?;
    let mut n = st.conductor.store.get_node(&node).await?;
    n.reservation = st.conductor.reservation(&n.uuid);
    Ok(Json(render(
        &n,
        &base_url(&st, &headers),
        &fields,
        true,
        mv,
    )))
}

pub async fn create(
    State(st): State<AppState>,
    mv: Microversion,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = json_object(&body)?;
    gate::check_create(NODE_FIELDS, &body, mv)?;
    let node = st.conductor.create_node(NodeCreate(body)).await?;
    let base = base_url(&st, &headers);
    let location = format!("{base}/v1/nodes/{}", node.uuid);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(render(&node, &base, &None, true, mv)),
    )
        .into_response())
}

pub async fn patch(
    State(st): State<AppState>,
    mv: Microversion,
    headers: HeaderMap,
    Path(node): Path<String>,
    Query(q): Params,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    // Ironic's reset_interfaces (API 1.45).
    let reset = match q.get("reset_interfaces") {
        None => false,
        Some(_) if super::version::negotiate(&headers)? < 45 => {
            return Err(ApiError::NotAcceptable)
        }
        Some(v) => crate::service::parse_bool("reset_interfaces", &Value::String(v.clone()))?,
    };
    let ops = json_body(&body)?;
    if !ops.is_array() {
        return Err(ApiError::BadRequest(
            "A PATCH body is a JSON Patch: a list of operations.".into(),
        ));
    }
    gate::check_patch(NODE_FIELDS, &ops, mv)?;
    let mut n = st.conductor.patch_node_with(&node, &ops, reset).await?;
    n.reservation = st.conductor.reservation(&n.uuid);
    Ok(Json(render(&n, &base_url(&st, &headers), &None, true, mv)))
}

pub async fn delete(
    State(st): State<AppState>,
    Path(node): Path<String>,
) -> Result<StatusCode, ApiError> {
    st.conductor.delete_node(&node).await?;
    Ok(StatusCode::NO_CONTENT)
}
