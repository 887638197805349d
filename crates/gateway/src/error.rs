//! The one error shape every non-2xx response has:
//! `{"error": {"code": "<stable snake_case>", "message": "<for people>", "request_id": "<id>"}}`.
//!
//! Handlers return `ApiError`; server-side failures (5xx) are logged once, inside the
//! request's span, and their bodies never carry internals.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tenancy::StoreError;

tokio::task_local! {
    /// The id of the request being served, so error bodies can carry it wherever they
    /// are built. Set by the request-context middleware around every request.
    pub static REQUEST_ID: String;
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after_secs: Option<u64>,
    /// What went wrong inside, for the log; never sent to the client.
    pub source: Option<anyhow::Error>,
}

/// The body of every error response.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable snake_case code.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// The request's id, also sent in the `x-request-id` header.
    pub request_id: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
            source: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }

    /// The action needs the API key itself, and came with a dashboard session.
    pub fn key_required() -> Self {
        Self::forbidden(
            "api_key_required",
            "this action needs the API key itself, not a dashboard session",
        )
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    /// Maps a store error to the API, naming the missing thing on `NotFound`.
    pub fn from_store(what: &'static str) -> impl Fn(StoreError) -> ApiError {
        move |error| match error {
            StoreError::NotFound => ApiError::not_found(what),
            other => other.into(),
        }
    }

    /// 429: refused for now, to be tried again after `retry_after_secs` (at least 1).
    pub fn too_many_requests(
        code: &'static str,
        message: impl Into<String>,
        retry_after_secs: u64,
    ) -> Self {
        let mut error = Self::new(StatusCode::TOO_MANY_REQUESTS, code, message);
        error.retry_after_secs = Some(retry_after_secs.max(1));
        error
    }

    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    pub fn unavailable(code: &'static str, source: impl Into<anyhow::Error>) -> Self {
        let mut error = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            code,
            "a service this request depends on is unavailable; retry later",
        );
        error.retry_after_secs = Some(1);
        error.source = Some(source.into());
        error
    }

    pub fn internal(source: impl Into<anyhow::Error>) -> Self {
        let mut error = Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "internal error",
        );
        error.source = Some(source.into());
        error
    }

    /// The generic error for a bare status code produced outside our handlers (routing,
    /// body limits, timeouts).
    pub fn from_status(status: StatusCode) -> Self {
        let (code, message) = match status {
            StatusCode::NOT_FOUND => ("not_found", "no such route"),
            StatusCode::METHOD_NOT_ALLOWED => ("method_not_allowed", "method not allowed here"),
            StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", "request body too large"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => (
                "unsupported_media_type",
                "send a JSON body with content-type application/json",
            ),
            StatusCode::SERVICE_UNAVAILABLE => ("request_timeout", "the request took too long"),
            status if status.is_client_error() => ("bad_request", "bad request"),
            _ => ("internal_error", "internal error"),
        };
        Self::new(status, code, message)
    }

    pub fn body(&self, request_id: Option<String>) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message.clone(),
                request_id,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            match &self.source {
                Some(source) => {
                    tracing::error!(code = self.code, error = ?source, "request failed")
                }
                None => tracing::error!(code = self.code, "request failed"),
            }
        }
        let request_id = REQUEST_ID.try_with(Clone::clone).ok();
        let mut response = (self.status, axum::Json(self.body(request_id))).into_response();
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound => ApiError::not_found("resource"),
            StoreError::Conflict { constraint } => ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("conflicts with existing data ({constraint})"),
            ),
            StoreError::Unavailable(source) => {
                ApiError::unavailable("database_unavailable", source)
            }
            StoreError::Busy(why) => ApiError::unavailable("busy", anyhow::anyhow!(why)),
            other => ApiError::internal(other),
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        StoreError::from(error).into()
    }
}
