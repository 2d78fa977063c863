//! The one mapping of every domain error to an HTTP status and Ironic's
//! error body: `{"error_message": "<JSON string of {faultstring, faultcode,
//! debuginfo}>"}`. Clients (ironicclient, openstacksdk) show faultstring.
//!
//! Callers: every handler returns `Result<_, ApiError>`; [`ironic_errors`]
//! (middleware) refuses over-long URIs with 414 and puts every other error
//! answer that is not already Ironic's JSON (413 from the body limit, axum's
//! extractor rejections) into that format, as Ironic's ParsableErrorMiddleware
//! does.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::console::ConsoleError;
use crate::db::DbError;
use crate::patch::PatchError;
use crate::power::PowerError;
use crate::service::ServiceError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// The body is not JSON, or not the JSON this call takes.
    #[error("{0}")]
    BadRequest(String),
    #[error("Resource could not be found.")]
    NoRoute,
    #[error("The method {0} is not allowed for this resource.")]
    Method(String),
    #[error("Version {requested} was requested but the minor version is not supported by this service. The supported version range is: [{min}, {max}].")]
    Version {
        requested: String,
        min: String,
        max: String,
    },
    /// Not a version at all: 406 with Ironic's wording (its
    /// `Version.parse_headers` raises HTTPNotAcceptable), the value echoed.
    #[error("Invalid value for X-OpenStack-Ironic-API-Version header: {0}")]
    BadVersion(String),
    /// Ironic's NotAcceptable: the microversion does not allow this request.
    #[error("Request not acceptable.")]
    NotAcceptable,
    #[error("The request you have made requires authentication.")]
    Unauthorized,
    #[error("The request URI is too long: {0} bytes, at most {URI_LIMIT} are accepted.")]
    UriTooLong(usize),
    /// A body over a route's own limit (`api::inspection`).
    #[error("Request is too large. Larger than the body limit ({0} bytes).")]
    TooLarge(usize),
}

/// The longest request URI (path and query) served, as eventlet's request
/// line limit under Ironic. Above 64 KiB hyper answers 414 itself, without
/// a body, before any of this runs.
pub const URI_LIMIT: usize = 8192;
/// The largest request body read (axum's default, made explicit).
pub const BODY_LIMIT: usize = 2 * 1024 * 1024;
/// The most of a foreign error body kept as the faultstring.
const FOREIGN_ECHO: usize = 512;

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        ApiError::Service(e.into())
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Service(e) => service_status(e),
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NoRoute => StatusCode::NOT_FOUND,
            ApiError::Method(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Version { .. } | ApiError::BadVersion(_) | ApiError::NotAcceptable => {
                StatusCode::NOT_ACCEPTABLE
            }
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }
}

fn service_status(e: &ServiceError) -> StatusCode {
    match e {
        ServiceError::Db(d) => match d {
            DbError::NotFound { .. } => StatusCode::NOT_FOUND,
            DbError::Duplicate(_) => StatusCode::CONFLICT,
            DbError::Open { .. }
            | DbError::Sqlite(_)
            | DbError::Json(_)
            | DbError::Seal(_)
            | DbError::Worker(_) => StatusCode::INTERNAL_SERVER_ERROR,
        },
        ServiceError::Invalid(_) => StatusCode::BAD_REQUEST,
        ServiceError::Missing(_) => StatusCode::NOT_FOUND,
        ServiceError::Conflict(_) | ServiceError::Locked(_) => StatusCode::CONFLICT,
        ServiceError::Forbidden(_) => StatusCode::FORBIDDEN,
        ServiceError::Unauthenticated => StatusCode::UNAUTHORIZED,
        ServiceError::NotFound => StatusCode::NOT_FOUND,
        ServiceError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        ServiceError::Patch(p) => match p {
            PatchError::Invalid(_)
            | PatchError::NewRootAttribute(_)
            | PatchError::Failed { .. } => StatusCode::BAD_REQUEST,
        },
        ServiceError::Power(p) => match p {
            PowerError::Invalid(_) => StatusCode::BAD_REQUEST,
            PowerError::Bmc(_) | PowerError::Timeout { .. } | PowerError::Spawn { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        },
        ServiceError::Console(c) => match c {
            ConsoleError::Invalid(_) => StatusCode::BAD_REQUEST,
            ConsoleError::Unavailable { .. } | ConsoleError::Config(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ConsoleError::Rejected(s) => grpc_status(s.code()),
        },
        ServiceError::Driver(d) => match d {
            crate::drivers::DriverError::DriverNotFound(_) => StatusCode::NOT_FOUND,
            _ => StatusCode::BAD_REQUEST,
        },
    }
}

fn grpc_status(code: tonic::Code) -> StatusCode {
    use tonic::Code;
    match code {
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted | Code::FailedPrecondition => StatusCode::CONFLICT,
        Code::ResourceExhausted | Code::Unavailable | Code::DeadlineExceeded => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        Code::PermissionDenied | Code::Unauthenticated => StatusCode::FORBIDDEN,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Ok | Code::Cancelled | Code::Unknown | Code::Internal | Code::DataLoss => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

/// Ironic's error body for `status` and `message`.
pub fn body(status: StatusCode, message: &str) -> serde_json::Value {
    let fault = if status.is_server_error() {
        "Server"
    } else {
        "Client"
    };
    let inner = json!({"faultstring": message, "faultcode": fault, "debuginfo": null});
    json!({"error_message": inner.to_string()})
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = self.to_string();
        if status.is_server_error() {
            tracing::warn!(%status, error = %message, "request failed");
        } else {
            tracing::info!(%status, error = %message, "request refused");
        }
        let mut resp = (status, Json(body(status, &message))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Basic realm=\"Baremetal API\""),
            );
        }
        resp
    }
}

/// Middleware: 414 for an over-long URI; any error answer that is not JSON
/// (extractor rejections, the body limit's 413) rewritten into Ironic's
/// error body with the same status.
pub async fn ironic_errors(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if len > URI_LIMIT {
        return ApiError::UriTooLong(len).into_response();
    }
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if status.as_u16() < 400 || is_json {
        return resp;
    }
    let (parts, foreign) = resp.into_parts();
    let text = axum::body::to_bytes(foreign, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
        format!("Request is too large. Larger than the body limit ({BODY_LIMIT} bytes).")
    } else if text.trim().is_empty() {
        status.canonical_reason().unwrap_or("Error").to_owned()
    } else {
        text.trim().chars().take(FOREIGN_ECHO).collect()
    };
    tracing::info!(%status, error = %message, "request refused");
    let mut out = (status, Json(body(status, &message))).into_response();
    for (k, v) in &parts.headers {
        if k != axum::http::header::CONTENT_TYPE && k != axum::http::header::CONTENT_LENGTH {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_message_is_a_json_string() {
        let b = body(StatusCode::NOT_FOUND, "Node x could not be found.");
        let inner: serde_json::Value =
            serde_json::from_str(b["error_message"].as_str().unwrap()).unwrap();
        assert_eq!(inner["faultstring"], "Node x could not be found.");
        assert_eq!(inner["faultcode"], "Client");
        assert!(inner["debuginfo"].is_null());
    }
}
