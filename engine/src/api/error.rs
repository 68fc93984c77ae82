//! The API's one error shape: `{"error": {"type": ..., "message": ...}}` with a 4xx or 5xx
//! status, for every failure a handler, an extractor or the router can meet.

use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::driver::Error;
use crate::store;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// A stable, machine-readable name (`not_found`, `invalid_definition`, ...).
    pub kind: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required (Authorization: Bearer <token>)",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"type": self.kind, "message": self.message}});
        let mut response = (self.status, axum::Json(body)).into_response();
        // Only a missing bearer token asks for one: a webhook's bad signature is not cured
        // by a token.
        if self.status == StatusCode::UNAUTHORIZED && self.kind == "unauthorized" {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        let message = e.to_string();
        let (status, kind) = match &e {
            Error::UnknownExecution(_) | Error::UnknownDefinition { .. } => {
                (StatusCode::NOT_FOUND, "not_found")
            }
            Error::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_definition"),
            Error::BadId(_)
            | Error::BadSignal(_)
            | Error::BadSchedule(_)
            | Error::BadTenant(_)
            | Error::BadIdempotencyKey(_)
            | Error::Fork(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Error::KeyReused { .. } => (StatusCode::CONFLICT, "idempotency_key_reused"),
            Error::AlreadyLive(_)
            | Error::Running(_)
            | Error::AlreadyResetting(_)
            | Error::NotPaused { .. }
            | Error::NoCheckpoint { .. } => (StatusCode::CONFLICT, "conflict"),
            Error::Store(store::Error::Duplicate(_) | store::Error::DuplicateKey { .. }) => {
                (StatusCode::CONFLICT, "conflict")
            }
            Error::Store(store::Error::NoSuchVersion { .. }) => {
                (StatusCode::NOT_FOUND, "not_found")
            }
            // Storage trouble passes (a full disk is freed, a lock is released): retry later.
            Error::Store(
                store::Error::Backend(_) | store::Error::DiskFull(_) | store::Error::Io(_),
            ) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Error::Store(store::Error::Corrupt { .. })
            | Error::UnresolvedAgent(_)
            | Error::Task { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError::new(status, kind, message)
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> ApiError {
        let status = rejection.status();
        let kind = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            _ => "bad_request",
        };
        // Unknown fields and type errors are 422 from axum; report them as bad requests too.
        let status = if status == StatusCode::UNPROCESSABLE_ENTITY {
            StatusCode::BAD_REQUEST
        } else {
            status
        };
        ApiError::new(status, kind, rejection.body_text())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> ApiError {
        let status = rejection.status();
        let kind = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "payload_too_large"
        } else {
            "bad_request"
        };
        ApiError::new(status, kind, rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> ApiError {
        ApiError::bad_request(rejection.body_text())
    }
}
