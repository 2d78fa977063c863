//! `/v1/drivers`: the enabled hardware types (`type` "dynamic") and the
//! classic driver aliases (`type` "classic"), list (`?type=`, `?detail=`),
//! show, and `/properties` (the driver_info keys the driver reads), as
//! `openstack baremetal driver list/show/property list` call them.
//!
//! Callers: the router in `api::mod`.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Map, Value};

use super::{base_url, ApiError, AppState};
use crate::drivers::{catalog, DriverError, HardwareType, Kind, Registry};
use crate::model::links;
use crate::service::{ServiceError, HOST};

/// A driver name this conductor serves: its hardware type and the
/// interfaces the name sets (an alias), and whether it is classic.
struct Served {
    name: &'static str,
    ht: &'static HardwareType,
    preset: &'static [(Kind, &'static str)],
    classic: bool,
}

fn served(reg: &Registry) -> Vec<Served> {
    let mut out: Vec<Served> = reg
        .hardware_types()
        .iter()
        .map(|ht| Served {
            name: ht.name,
            ht,
            preset: &[],
            classic: false,
        })
        .collect();
    for a in reg.aliases() {
        if let Some(ht) = reg.hardware_type(a.hardware_type) {
            out.push(Served {
                name: a.name,
                ht,
                preset: a.interfaces,
                classic: true,
            });
        }
    }
    out
}

fn render(reg: &Registry, s: &Served, base: &str, detail: bool) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), s.name.into());
    m.insert("hosts".into(), json!([HOST]));
    m.insert(
        "type".into(),
        if s.classic { "classic" } else { "dynamic" }.into(),
    );
    m.insert("links".into(), links(base, &format!("drivers/{}", s.name)));
    m.insert(
        "properties".into(),
        links(base, &format!("drivers/{}/properties", s.name)),
    );
    if detail {
        for kind in Kind::ALL {
            let default = match s.preset.iter().find(|(k, _)| *k == kind) {
                Some((_, p)) => Some((*p).to_owned()),
                None => reg.default_for(s.ht, kind, None).ok(),
            };
            let enabled: Vec<&str> = reg
                .enabled(kind)
                .iter()
                .map(String::as_str)
                .filter(|n| s.ht.supports(kind, n))
                .collect();
            m.insert(format!("default_{}_interface", kind.name()), json!(default));
            m.insert(
                format!("enabled_{}_interfaces", kind.name()),
                json!(enabled),
            );
        }
    }
    Value::Object(m)
}

fn find<'a>(all: &'a [Served], name: &str) -> Result<&'a Served, ApiError> {
    all.iter().find(|s| s.name == name).ok_or_else(|| {
        ApiError::Service(ServiceError::Driver(DriverError::DriverNotFound(
            name.to_owned(),
        )))
    })
}

pub async fn list(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let kind = q.get("type").map(String::as_str);
    if kind.is_some_and(|t| t != "classic" && t != "dynamic") {
        return Err(ApiError::BadRequest(
            "\"type\" filter must be one of \"classic\" or \"dynamic\", if specified.".into(),
        ));
    }
    let detail = match q.get("detail") {
        None => false,
        Some(d) => crate::service::parse_bool("detail", &Value::String(d.clone()))?,
    };
    let reg = &st.conductor.drivers;
    let base = base_url(&st, &headers);
    let drivers: Vec<Value> = served(reg)
        .iter()
        .filter(|s| match kind {
            Some("classic") => s.classic,
            Some(_) => !s.classic,
            None => true,
        })
        .map(|s| render(reg, s, &base, detail))
        .collect();
    Ok(Json(json!({ "drivers": drivers })))
}

pub async fn show(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let reg = &st.conductor.drivers;
    let all = served(reg);
    let s = find(&all, &name)?;
    Ok(Json(render(reg, s, &base_url(&st, &headers), true)))
}

pub async fn properties(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let all = served(&st.conductor.drivers);
    let s = find(&all, &name)?;
    let props: Map<String, Value> = catalog::properties(s.ht.name)
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
        .collect();
    Ok(Json(Value::Object(props)))
}
