//! The `Idempotency-Key` request header, as an extractor: absent, or 1 to 255 visible
//! characters (400 `invalid_idempotency_key` otherwise).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::error::ApiError;

const MAX_LEN: usize = 255;

pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get("idempotency-key") else {
            return Ok(IdempotencyKey(None));
        };
        value
            .to_str()
            .ok()
            .filter(|key| !key.is_empty() && key.len() <= MAX_LEN)
            .map(|key| IdempotencyKey(Some(key.to_owned())))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_idempotency_key",
                    "Idempotency-Key must be 1 to 255 visible characters",
                )
            })
    }
}
