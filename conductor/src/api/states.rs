//! `/v1/nodes/{node}/states*`, `/management/boot_device` and `/validate`.
//!
//! Power is asynchronous (202, then target_power_state settles); console
//! PUT returns 202 once console-svc has done it, so an immediate
//! `console show` sees the URL. Callers: the router in `api::mod`.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::{base_url, json_object, ApiError, AppState};
use crate::service::power::PowerAction;

fn accepted(st: &AppState, headers: &HeaderMap, uuid: &str, what: &str) -> Response {
    let location = format!("{}/v1/nodes/{uuid}/states{what}", base_url(st, headers));
    (StatusCode::ACCEPTED, [(header::LOCATION, location)]).into_response()
}

pub async fn states(
    State(st): State<AppState>,
    Path(node): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(st.conductor.states(&node).await?))
}

pub async fn power(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(node): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = json_object(&body)?;
    let target = body.get("target").and_then(Value::as_str).ok_or_else(|| {
        ApiError::BadRequest(
            "The body needs \"target\": \"power on\", \"power off\" or \"rebooting\".".into(),
        )
    })?;
    let action = PowerAction::parse(target)?;
    let uuid = st.conductor.store.get_node(&node).await?.uuid;
    st.conductor.set_power(&uuid, action).await?;
    Ok(accepted(&st, &headers, &uuid, ""))
}

/// The arguments Ironic's `PUT .../states/provision` takes.
const PROVISION_ARGS: &[&str] = &[
    "target",
    "configdrive",
    "clean_steps",
    "deploy_steps",
    "rescue_password",
    "disable_ramdisk",
    "service_steps",
    "runbook",
];

/// `PUT .../states/provision`: checked now (400, 406, 409), 202 with a
/// Location at once, the work in the background.
pub async fn provision(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(node): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = json_object(&body)?;
    if let Some(k) = body.keys().find(|k| !PROVISION_ARGS.contains(&k.as_str())) {
        let shown: String = k.chars().take(64).collect();
        return Err(ApiError::BadRequest(format!(
            "Unknown argument: \"{shown}\""
        )));
    }
    let target = match body.get("target") {
        Some(Value::String(t)) => t.as_str(),
        None | Some(Value::Null) => {
            return Err(ApiError::BadRequest("Missing argument: \"target\"".into()))
        }
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "Invalid target: Value should be a string, not {other}."
            )))
        }
    };
    // Not carried out yet: refused rather than silently dropped.
    for k in [
        "clean_steps",
        "deploy_steps",
        "service_steps",
        "runbook",
        "rescue_password",
    ] {
        if body.get(k).is_some_and(|v| !v.is_null()) {
            return Err(ApiError::BadRequest(format!(
                "\"{k}\" is not supported by the Porthole conductor yet."
            )));
        }
    }
    if body
        .get("disable_ramdisk")
        .is_some_and(|v| v.as_bool() == Some(true))
    {
        return Err(ApiError::BadRequest(
            "\"disable_ramdisk\" is not supported by the Porthole conductor yet.".into(),
        ));
    }
    let configdrive = match body.get("configdrive") {
        None | Some(Value::Null) => None,
        Some(c @ (Value::String(_) | Value::Object(_))) => Some(c.clone()),
        Some(_) => {
            return Err(ApiError::BadRequest(
                "Invalid configdrive: it must be a string or a JSON object.".into(),
            ))
        }
    };
    if super::version::negotiate(&headers)? < crate::provision::min_minor(target) {
        return Err(ApiError::NotAcceptable);
    }
    let uuid = st
        .conductor
        .set_provision_state(&node, target, configdrive)
        .await?;
    Ok(accepted(&st, &headers, &uuid, ""))
}

pub async fn console(
    State(st): State<AppState>,
    Path(node): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(st.conductor.console_state(&node).await?))
}

pub async fn set_console(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(node): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = json_object(&body)?;
    let enabled = match body.get("enabled") {
        None | Some(Value::Null) => {
            return Err(ApiError::BadRequest(
                "The body needs \"enabled\": true or false.".into(),
            ))
        }
        Some(v) => crate::service::parse_bool("enabled", v)?,
    };
    let uuid = st.conductor.store.get_node(&node).await?.uuid;
    st.conductor.set_console(&uuid, enabled).await?;
    Ok(accepted(&st, &headers, &uuid, "/console"))
}

pub async fn boot_device(
    State(st): State<AppState>,
    Path(node): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(st.conductor.boot_device(&node).await?))
}

pub async fn set_boot_device(
    State(st): State<AppState>,
    Path(node): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let body = json_object(&body)?;
    st.conductor.set_boot_device(&node, &body).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn supported_boot_devices(
    State(st): State<AppState>,
    Path(node): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let node = st.conductor.store.get_node(&node).await?;
    let devices = crate::service::Conductor::supported_boot_devices(&node);
    Ok(Json(json!({"supported_boot_devices": devices})))
}

pub async fn validate(
    State(st): State<AppState>,
    Path(node): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(st.conductor.validate(&node).await?))
}
