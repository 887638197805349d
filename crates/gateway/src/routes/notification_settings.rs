//! Which mail the calling tenant gets: each optional kind on or off.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::TenantContext;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::json::ApiJson;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_settings, update_settings))
}

/// Each kind of mail and whether the tenant gets it: `quota_alert` (80% and 100% of a
/// quota), `payment_failed` (with the next retry), `suspension`, `reactivation`,
/// `invoice_available`, `winback`. Mail about signing in, confirming the address and
/// webhook endpoints turned off always goes.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct NotificationSettings {
    email: BTreeMap<String, bool>,
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateNotificationSettings {
    /// The kinds to change, by name; the others stay as they are.
    email: BTreeMap<String, bool>,
}

async fn current(state: &AppState, tenant: &TenantContext) -> ApiResult<NotificationSettings> {
    let mut tx = state.db.tenant_tx(tenant.tenant_id).await?;
    let muted = outbox::muted(&mut tx, tenant.tenant_id).await?;
    tx.commit().await?;
    Ok(NotificationSettings {
        email: outbox::OPTIONAL_KINDS
            .iter()
            .map(|kind| (kind.as_str().to_owned(), !muted.contains(kind)))
            .collect(),
    })
}

/// The mail the calling tenant gets.
#[utoipa::path(get, path = "/v1/tenant/notifications", tag = "tenant", security(("api_key" = [])),
    responses((status = 200, body = NotificationSettings), (status = 401, body = ErrorBody)))]
async fn get_settings(
    State(state): State<AppState>,
    tenant: TenantContext,
) -> ApiResult<Json<NotificationSettings>> {
    Ok(Json(current(&state, &tenant).await?))
}

/// Turns kinds of mail on or off, e.g. `{"email": {"quota_alert": false}}`.
#[utoipa::path(patch, path = "/v1/tenant/notifications", tag = "tenant", security(("api_key" = [])),
    request_body = UpdateNotificationSettings,
    responses((status = 200, body = NotificationSettings), (status = 401, body = ErrorBody),
              (status = 422, body = ErrorBody, description = "unknown_notification: not a kind that can be turned off")))]
async fn update_settings(
    State(state): State<AppState>,
    tenant: TenantContext,
    ApiJson(body): ApiJson<UpdateNotificationSettings>,
) -> ApiResult<Json<NotificationSettings>> {
    let mut changes = Vec::with_capacity(body.email.len());
    for (name, wanted) in &body.email {
        let kind = outbox::OPTIONAL_KINDS
            .iter()
            .find(|kind| kind.as_str() == name)
            .ok_or_else(|| {
                ApiError::unprocessable(
                    "unknown_notification",
                    format!("{name:?} is not a kind of mail that can be turned off"),
                )
            })?;
        changes.push((*kind, *wanted));
    }
    let mut tx = state.db.tenant_tx(tenant.tenant_id).await?;
    outbox::set_muted(&mut tx, tenant.tenant_id, &changes).await?;
    tx.commit().await?;
    Ok(Json(current(&state, &tenant).await?))
}
