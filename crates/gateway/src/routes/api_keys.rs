use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use saas_core::ApiKeyId;
use serde::{Deserialize, Serialize};
use tenancy::api_keys::{self, ApiKey};
use tenancy::audit::{self, Actor, AuditEntry};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use webhooks::EventData;
use webhooks::events::ApiKeyChanged;

use crate::auth::TenantContext;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::json::ApiJson;
use crate::request_context::RequestId;
use crate::state::AppState;

const MAX_NAME_CHARS: usize = 100;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_api_key, list_api_keys))
        .routes(routes!(revoke_api_key))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateApiKey {
    /// A label for people; 1 to 100 printable characters.
    name: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct ApiKeyView {
    id: ApiKeyId,
    name: String,
    /// The first characters of the secret, to tell keys apart.
    prefix: String,
    created_at: DateTime<Utc>,
    revoked_at: Option<DateTime<Utc>>,
}

impl From<ApiKey> for ApiKeyView {
    fn from(key: ApiKey) -> Self {
        Self {
            id: key.id,
            name: key.name,
            prefix: key.display_prefix,
            created_at: key.created_at,
            revoked_at: key.revoked_at,
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
struct CreatedApiKeyView {
    #[serde(flatten)]
    key: ApiKeyView,
    /// The secret. Shown only in this response; store it now.
    secret: String,
}

#[derive(Serialize, utoipa::ToSchema)]
struct ApiKeyList {
    api_keys: Vec<ApiKeyView>,
}

fn key_changed(key: &ApiKey) -> ApiKeyChanged {
    ApiKeyChanged {
        api_key_id: key.id,
        name: key.name.clone(),
        prefix: key.display_prefix.clone(),
    }
}

fn validate_name(name: Option<String>) -> Result<String, ApiError> {
    let name = name.unwrap_or_else(|| "default".to_owned());
    let trimmed = name.trim();
    if trimmed.is_empty()
        || trimmed.chars().count() > MAX_NAME_CHARS
        || trimmed.chars().any(char::is_control)
    {
        return Err(ApiError::unprocessable(
            "invalid_name",
            format!("name must be 1 to {MAX_NAME_CHARS} printable characters"),
        ));
    }
    Ok(trimmed.to_owned())
}

fn create_error(error: api_keys::CreateKeyError) -> ApiError {
    match error {
        api_keys::CreateKeyError::TooManyKeys => ApiError::new(
            StatusCode::CONFLICT,
            "too_many_api_keys",
            format!(
                "a tenant may have {} active keys; revoke one first",
                api_keys::MAX_ACTIVE_KEYS
            ),
        ),
        // Erased while this request waited: its key no longer works either.
        api_keys::CreateKeyError::TenantDeleted => {
            ApiError::unauthorized("invalid_api_key", "the API key is unknown or revoked")
        }
        api_keys::CreateKeyError::Store(store) => store.into(),
    }
}

/// Creates an API key for the calling tenant. The secret is in this response only.
/// A tenant has at most 20 active keys (409 `too_many_api_keys` beyond).
#[utoipa::path(post, path = "/v1/api-keys", tag = "api keys", security(("api_key" = [])),
    request_body = CreateApiKey,
    responses((status = 201, body = CreatedApiKeyView), (status = 401, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 422, body = ErrorBody),
              (status = 429, body = ErrorBody)))]
async fn create_api_key(
    State(state): State<AppState>,
    tenant: TenantContext,
    Extension(request_id): Extension<RequestId>,
    ApiJson(body): ApiJson<CreateApiKey>,
) -> ApiResult<(StatusCode, Json<CreatedApiKeyView>)> {
    tenant.require_key()?;
    let name = validate_name(body.name)?;
    state.tenant_writes.check(tenant.tenant_id)?;
    let mut tx = state.db.tenant_tx(tenant.tenant_id).await?;
    let created = api_keys::create(&mut tx, tenant.tenant_id, &name)
        .await
        .map_err(create_error)?;
    let mut entry = AuditEntry::new(
        Some(tenant.tenant_id),
        Actor::Tenant(tenant.key_id),
        "api_key.created",
    );
    entry.request_id = Some(request_id.0);
    entry.details = serde_json::json!({ "api_key_id": created.key.id });
    audit::record(&mut tx, &entry).await?;
    webhooks::emit(
        &mut tx,
        tenant.tenant_id,
        EventData::ApiKeyCreated(key_changed(&created.key)),
    )
    .await?;
    tx.commit().await?;
    let view = CreatedApiKeyView {
        key: created.key.into(),
        secret: created.secret,
    };
    Ok((StatusCode::CREATED, Json(view)))
}

/// Lists the calling tenant's API keys, revoked ones included. Secrets are never shown.
#[utoipa::path(get, path = "/v1/api-keys", tag = "api keys", security(("api_key" = [])),
    responses((status = 200, body = ApiKeyList), (status = 401, body = ErrorBody)))]
async fn list_api_keys(
    State(state): State<AppState>,
    tenant: TenantContext,
) -> ApiResult<Json<ApiKeyList>> {
    let mut tx = state.db.tenant_tx(tenant.tenant_id).await?;
    let keys = api_keys::list(&mut tx, tenant.tenant_id).await?;
    tx.commit().await?;
    Ok(Json(ApiKeyList {
        api_keys: keys.into_iter().map(ApiKeyView::from).collect(),
    }))
}

/// Revokes one of the calling tenant's keys; it stops working at once. Idempotent:
/// revoking a revoked key answers it unchanged.
#[utoipa::path(delete, path = "/v1/api-keys/{id}", tag = "api keys", security(("api_key" = [])),
    params(("id" = String, Path, description = "The key's id, `key_...`")),
    responses((status = 200, body = ApiKeyView), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn revoke_api_key(
    State(state): State<AppState>,
    tenant: TenantContext,
    Extension(request_id): Extension<RequestId>,
    Path(id): Path<String>,
) -> ApiResult<Json<ApiKeyView>> {
    // An id that does not parse cannot name one of this tenant's keys.
    let key_id: ApiKeyId = id.parse().map_err(|_| ApiError::not_found("API key"))?;
    state.tenant_writes.check(tenant.tenant_id)?;
    let mut tx = state.db.tenant_tx(tenant.tenant_id).await?;
    let revocation = api_keys::revoke(&mut tx, tenant.tenant_id, key_id)
        .await
        .map_err(ApiError::from_store("API key"))?;
    let key = revocation.key;
    if !revocation.changed {
        // Revoked before: nothing happened, so nothing is recorded.
        return Ok(Json(key.into()));
    }
    let mut entry = AuditEntry::new(
        Some(tenant.tenant_id),
        Actor::Tenant(tenant.key_id),
        "api_key.revoked",
    );
    entry.request_id = Some(request_id.0);
    entry.details = serde_json::json!({ "api_key_id": key.id });
    audit::record(&mut tx, &entry).await?;
    webhooks::emit(
        &mut tx,
        tenant.tenant_id,
        EventData::ApiKeyRevoked(key_changed(&key)),
    )
    .await?;
    tx.commit().await?;
    // After the commit, so that every lookup from now on sees the revocation (one already
    // in flight may still cache the key, for at most the cache's time to live).
    state.key_cache.forget_key(key.id);
    Ok(Json(key.into()))
}
