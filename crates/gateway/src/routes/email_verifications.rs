use axum::Json;
use axum::extract::State;
use saas_core::TenantId;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::json::ApiJson;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(confirm_email))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Confirmation {
    /// The token from the confirmation mail, `ev_...`.
    token: String,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Confirmed {
    tenant_id: TenantId,
    email_verified: bool,
}

/// Confirms a tenant's email address with the token mailed to it. Until then, only the
/// confirmation mail itself is sent to the address. The token is the credential: no
/// API key is needed, and it works once.
#[utoipa::path(post, path = "/v1/email-verifications", tag = "onboarding",
    request_body = Confirmation,
    responses((status = 200, body = Confirmed),
              (status = 404, body = ErrorBody, description = "unknown or used token")))]
async fn confirm_email(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<Confirmation>,
) -> ApiResult<Json<Confirmed>> {
    let token = body.token.trim();
    let unknown = || ApiError::not_found("confirmation token");
    if !tenancy::email_verification::is_well_formed(token) {
        return Err(unknown());
    }
    let mut tx = state.db.system_tx("email confirmation").await?;
    let tenant = tenancy::email_verification::confirm(&mut tx, token).await?;
    tx.commit().await?;
    let tenant = tenant.ok_or_else(unknown)?;
    tracing::info!(%tenant, "email address confirmed");
    Ok(Json(Confirmed {
        tenant_id: tenant,
        email_verified: true,
    }))
}
