//! The Ironic-compatible REST API v1 (axum): routes, shared state, body
//! parsing, and links. Handlers live in `nodes`, `ports`, `states`,
//! `drivers`, `vendor` (vendor passthru), `ramdisk` (lookup, heartbeat),
//! `traits` (and maintenance), `vifs` and `resources` (portgroups, volume);
//! `version` and `auth` are middleware; `fields` gates by microversion;
//! `error` maps failures.
//!
//! Called by `lib::run`, which serves [`router`] on its listener.

mod auth;
mod drivers;
mod error;
pub mod fields;
mod inspection;
mod nodes;
mod ports;
mod ramdisk;
mod resources;
mod states;
mod traits;
mod vendor;
mod version;
mod vifs;

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method};
use axum::routing::{any, delete, get, post, put};
use axum::Router;
use serde_json::Value;

pub use auth::{AuthError, HttpBasic};
pub use error::ApiError;

use crate::model::{Dict, Portgroup, VolumeConnector, VolumeTarget};
use crate::service::Conductor;

#[derive(Clone)]
pub struct AppState {
    pub conductor: Arc<Conductor>,
    pub basic: Option<Arc<HttpBasic>>,
    pub public_endpoint: Option<String>,
}

pub fn router(state: AppState) -> Router {
    let node = "/v1/nodes/{node}";
    Router::new()
        .route("/", get(version::root))
        .route("/v1", get(version::v1))
        .route("/v1/nodes", get(nodes::list).post(nodes::create))
        .route("/v1/nodes/detail", get(nodes::detail))
        .route(
            node,
            get(nodes::show).patch(nodes::patch).delete(nodes::delete),
        )
        .route(&format!("{node}/ports"), get(ports::list_of_node))
        .route(&format!("{node}/ports/detail"), get(ports::detail_of_node))
        .route(&format!("{node}/states"), get(states::states))
        .route(&format!("{node}/states/power"), put(states::power))
        .route(&format!("{node}/states/provision"), put(states::provision))
        .route(
            &format!("{node}/states/console"),
            get(states::console).put(states::set_console),
        )
        .route(
            &format!("{node}/management/boot_device"),
            get(states::boot_device).put(states::set_boot_device),
        )
        .route(
            &format!("{node}/management/boot_device/supported"),
            get(states::supported_boot_devices),
        )
        .route(&format!("{node}/validate"), get(states::validate))
        .route(&format!("{node}/vendor_passthru"), any(vendor::by_query))
        .route(
            &format!("{node}/vendor_passthru/methods"),
            get(vendor::methods),
        )
        .route(
            &format!("{node}/vendor_passthru/{{method}}"),
            any(vendor::by_path),
        )
        .route("/v1/lookup", get(ramdisk::lookup))
        .route("/v1/heartbeat/{node}", post(ramdisk::heartbeat))
        .route(
            "/v1/continue_inspection",
            post(inspection::continue_inspection),
        )
        .route(&format!("{node}/inventory"), get(inspection::inventory))
        .route("/v1/drivers", get(drivers::list))
        .route("/v1/drivers/{driver}", get(drivers::show))
        .route("/v1/drivers/{driver}/properties", get(drivers::properties))
        .route("/v1/ports", get(ports::list).post(ports::create))
        .route("/v1/ports/detail", get(ports::detail))
        .route(
            "/v1/ports/{port}",
            get(ports::show).patch(ports::patch).delete(ports::delete),
        )
        .merge(node_extras_router())
        .merge(collections_router())
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::middleware,
        ))
        .layer(axum::middleware::from_fn(version::middleware))
        .layer(axum::middleware::from_fn(error::ironic_errors))
        .layer(axum::extract::DefaultBodyLimit::max(error::BODY_LIMIT))
        .layer(axum::middleware::from_fn(trace))
        // Outermost, so refused requests (401, 406) count too; Router::layer
        // runs after routing, so the route template is known.
        .layer(axum::middleware::from_fn_with_state(
            crate::metrics::get().http(),
            porthole_common::metrics::http::HttpMetrics::track,
        ))
        .with_state(state)
}

/// Maintenance, traits, VIFs and the per-node portgroup and volume views
/// (see `traits`, `vifs` and `resources`).
fn node_extras_router() -> Router<AppState> {
    use resources as r;
    let node = "/v1/nodes/{node}";
    Router::new()
        .route(
            &format!("{node}/maintenance"),
            put(traits::set_maintenance).delete(traits::unset_maintenance),
        )
        .route(
            &format!("{node}/traits"),
            get(traits::list)
                .put(traits::replace)
                .delete(traits::delete_all),
        )
        .route(
            &format!("{node}/traits/{{trait}}"),
            put(traits::add).delete(traits::delete_one),
        )
        .route(&format!("{node}/vifs"), get(vifs::list).post(vifs::attach))
        .route(&format!("{node}/vifs/{{vif}}"), delete(vifs::detach))
        .route(
            &format!("{node}/portgroups"),
            get(r::list_of_node::<Portgroup>),
        )
        .route(&format!("{node}/volume"), get(r::node_volume_root))
        .route(
            &format!("{node}/volume/connectors"),
            get(r::list_of_node::<VolumeConnector>),
        )
        .route(
            &format!("{node}/volume/targets"),
            get(r::list_of_node::<VolumeTarget>),
        )
}

/// `/v1/portgroups` and `/v1/volume/...` (see `resources`).
fn collections_router() -> Router<AppState> {
    use resources as r;
    Router::new()
        .route(
            "/v1/portgroups",
            get(r::list::<Portgroup>).post(r::create::<Portgroup>),
        )
        .route("/v1/portgroups/detail", get(r::detail::<Portgroup>))
        .route(
            "/v1/portgroups/{id}",
            get(r::show::<Portgroup>)
                .patch(r::patch::<Portgroup>)
                .delete(r::delete::<Portgroup>),
        )
        .route("/v1/portgroups/{id}/ports", get(r::ports_of_group))
        .route("/v1/volume", get(r::volume_root))
        .route(
            "/v1/volume/connectors",
            get(r::list::<VolumeConnector>).post(r::create::<VolumeConnector>),
        )
        .route(
            "/v1/volume/connectors/detail",
            get(r::detail::<VolumeConnector>),
        )
        .route(
            "/v1/volume/connectors/{id}",
            get(r::show::<VolumeConnector>)
                .patch(r::patch::<VolumeConnector>)
                .delete(r::delete::<VolumeConnector>),
        )
        .route(
            "/v1/volume/targets",
            get(r::list::<VolumeTarget>).post(r::create::<VolumeTarget>),
        )
        .route("/v1/volume/targets/detail", get(r::detail::<VolumeTarget>))
        .route(
            "/v1/volume/targets/{id}",
            get(r::show::<VolumeTarget>)
                .patch(r::patch::<VolumeTarget>)
                .delete(r::delete::<VolumeTarget>),
        )
}

async fn fallback() -> ApiError {
    ApiError::NoRoute
}

async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::Method(method.to_string())
}

async fn trace(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use tracing::Instrument;
    let span = tracing::info_span!("http", method = %req.method(), path = %req.uri().path());
    async move {
        let resp = next.run(req).await;
        tracing::debug!(status = resp.status().as_u16(), "done");
        resp
    }
    .instrument(span)
    .await
}

/// `/v1/ports/?node=x` → `/v1/ports?node=x`: ironicclient adds trailing
/// slashes; routes are matched without them.
pub fn normalize_path(mut req: axum::extract::Request) -> axum::extract::Request {
    let path = req.uri().path();
    if path.len() > 1 && path.ends_with('/') {
        let trimmed = path.trim_end_matches('/');
        let pq = match req.uri().query() {
            Some(q) => format!("{trimmed}?{q}"),
            None => trimmed.to_owned(),
        };
        if let Ok(uri) = pq.parse() {
            *req.uri_mut() = uri;
        }
    }
    req
}

/// The base URL for links: the configured public endpoint, else the Host.
pub fn base_url(st: &AppState, headers: &HeaderMap) -> String {
    if let Some(p) = &st.public_endpoint {
        return p.trim_end_matches('/').to_owned();
    }
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1:6385");
    format!("http://{host}")
}

/// A request body as JSON, or Ironic's 400.
pub fn json_body(bytes: &Bytes) -> Result<Value, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::BadRequest(
            "The request body is empty; a JSON document is required.".into(),
        ));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::BadRequest(format!("Invalid JSON in the request body: {e}")))
}

/// A request body that must be a JSON object.
pub fn json_object(bytes: &Bytes) -> Result<Dict, ApiError> {
    match json_body(bytes)? {
        Value::Object(m) => Ok(m),
        other => Err(ApiError::BadRequest(format!(
            "The request body must be a JSON object, not {other}."
        ))),
    }
}

/// `?limit=N` as Ironic reads it: absent is no limit; not an integer, or
/// not positive, is 400.
pub fn parse_limit(q: &std::collections::HashMap<String, String>) -> Result<usize, ApiError> {
    let Some(raw) = q.get("limit") else {
        return Ok(usize::MAX);
    };
    let n: i64 = raw.trim().parse().map_err(|_| {
        let shown: String = raw.chars().take(64).collect();
        ApiError::BadRequest(format!("Expected an integer for limit: {shown}"))
    })?;
    if n <= 0 {
        return Err(ApiError::BadRequest("Limit must be positive".into()));
    }
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

/// `?fields=a,b` checked against `known`.
pub fn parse_fields(raw: Option<&str>, known: &[&str]) -> Result<Option<Vec<String>>, ApiError> {
    let Some(raw) = raw.filter(|r| !r.is_empty()) else {
        return Ok(None);
    };
    let fields: Vec<String> = raw
        .split(',')
        .map(|f| f.trim().to_owned())
        .filter(|f| !f.is_empty())
        .collect();
    let bad: Vec<&str> = fields
        .iter()
        .map(String::as_str)
        .filter(|f| !known.contains(f))
        .collect();
    if !bad.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "Field(s) \"{}\" are not valid",
            bad.join(", ")
        )));
    }
    Ok(Some(fields))
}
