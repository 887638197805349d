//! `POST /webhooks/stripe`: Stripe's signed events, taken once each (see
//! `billing::webhooks` for what is trusted and why).

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use billing::webhooks::{self, Outcome, SignatureError};
use secrecy::ExposeSecret;
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(stripe_webhook))
}

#[derive(Serialize, utoipa::ToSchema)]
struct Received {
    received: bool,
    outcome: Outcome,
}

/// Takes one Stripe event. The `Stripe-Signature` header is checked against the raw
/// body with the endpoint's secret and a 300 s tolerance; an event already taken is
/// answered 200 without acting again; objects are confirmed with Stripe before anything
/// changes; types not acted on are answered 200 and ignored.
#[utoipa::path(post, path = "/webhooks/stripe", tag = "billing",
    request_body(content = String, content_type = "application/json", description = "a Stripe event"),
    responses((status = 200, body = Received),
              (status = 400, body = ErrorBody, description = "invalid_signature, signature_expired or invalid_event"),
              (status = 503, body = ErrorBody, description = "webhooks not configured, or Stripe unreachable (Stripe retries)")))]
async fn stripe_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Received>> {
    let (Some(secret), Some(payments)) = (&state.config.stripe.webhook_secret, &state.payments)
    else {
        return Err(ApiError::unavailable(
            "webhooks_not_configured",
            anyhow::anyhow!("stripe.secret_key and stripe.webhook_secret must both be set"),
        ));
    };
    let signature = headers
        .get("stripe-signature")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    webhooks::verify(
        signature,
        &body,
        secret.expose_secret(),
        state.clock.now().timestamp(),
        state.config.stripe.webhook_tolerance_secs,
    )
    .map_err(|error| match error {
        SignatureError::Expired => ApiError::bad_request("signature_expired", error.to_string()),
        other => ApiError::bad_request("invalid_signature", other.to_string()),
    })?;
    let event = payments::webhook_event::parse(&body)
        .map_err(|error| ApiError::bad_request("invalid_event", error.to_string()))?;
    let (outcome, paid) = webhooks::handle(&state.db, payments, &event)
        .await
        .map_err(|error| match error {
            webhooks::WebhookError::Store(store) => ApiError::from(store),
            webhooks::WebhookError::Payment(payment) => {
                ApiError::unavailable("payment_provider_unavailable", payment)
            }
        })?;
    // Paid outside our own charges: lift a suspension dunning made, if any.
    if let (Some(paid), Some(collector)) = (paid, state.collector())
        && let Err(error) = collector.uphold_dunning(paid.tenant, paid.invoice).await
    {
        // A job does it later (a collection of a paid invoice only upholds dunning).
        tracing::warn!(tenant = %paid.tenant, %error, "could not update the tenant after a payment; queued");
        let mut tx = state.db.tenant_tx(paid.tenant).await?;
        billing::collection::enqueue_follow_up(&mut tx, paid.tenant, paid.invoice, "paid").await?;
        tx.commit().await?;
    }
    Ok(Json(Received {
        received: true,
        outcome,
    }))
}
