//! The one mapping of every domain error to an HTTP status and Ironic's
//! error body: `{"error_message": "<JSON string of {faultstring, faultcode,
//! debuginfo}>"}`. Clients (ironicclient, openstacksdk) show faultstring.
//!
//! Callers: every handler returns `Result<_, ApiError>`.

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
    #[error("Invalid value for X-OpenStack-Ironic-API-Version header: {0}")]
    BadVersion(String),
    #[error("The request you have made requires authentication.")]
    Unauthorized,
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        ApiError::Service(e.into())
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Service(e) => service_status(e),
            ApiError::BadRequest(_) | ApiError::BadVersion(_) => StatusCode::BAD_REQUEST,
            ApiError::NoRoute => StatusCode::NOT_FOUND,
            ApiError::Method(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Version { .. } => StatusCode::NOT_ACCEPTABLE,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
        }
    }
}

fn service_status(e: &ServiceError) -> StatusCode {
    match e {
        ServiceError::Db(d) => match d {
            DbError::NotFound { .. } => StatusCode::NOT_FOUND,
            DbError::Duplicate(_) => StatusCode::CONFLICT,
            DbError::Open { .. } | DbError::Sqlite(_) | DbError::Json(_) | DbError::Seal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        },
        ServiceError::Invalid(_) => StatusCode::BAD_REQUEST,
        ServiceError::Conflict(_) | ServiceError::Locked(_) => StatusCode::CONFLICT,
        ServiceError::Patch(p) => match p {
            PatchError::Invalid(_) | PatchError::NewRootAttribute(_) | PatchError::Missing(_) => {
                StatusCode::BAD_REQUEST
            }
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
