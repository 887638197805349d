//! Every route, merged in one place. Each module exposes `router()`; the OpenAPI
//! document is collected from the same handlers, so it cannot drift from them.

mod admin_audit;
mod admin_overview;
mod admin_tenants;
mod api_keys;
mod email_verifications;
mod erasure;
pub(crate) mod health;
mod invoices;
mod notification_settings;
mod plans;
mod reactivation;
mod signups;
mod tenant;
mod transitions;
mod usage;
mod webhook_endpoints;
mod webhook_events_doc;
mod webhooks;
mod winback;

use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;

use crate::error::ErrorBody;
use crate::state::AppState;
use webhook_events_doc::WebhookEvents;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "SaaS platform API",
        description = "Usage metering, quotas, billing, onboarding and tenant lifecycle. \
                       Every error response has the `ErrorBody` shape.",
    ),
    components(schemas(ErrorBody)),
    modifiers(&SecuritySchemes, &WebhookEvents),
)]
struct ApiDoc;

struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (name, description) in [
            (
                "api_key",
                "A tenant API key: `Authorization: Bearer sk_...`",
            ),
            (
                "operator_token",
                "The operator token from SAAS_OPERATOR_TOKEN",
            ),
        ] {
            components.add_security_scheme(
                name,
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some(description))
                        .build(),
                ),
            );
        }
    }
}

pub fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(health::router())
        .merge(plans::router())
        .merge(api_keys::router())
        .merge(admin_tenants::router())
        .merge(admin_audit::router())
        .merge(admin_overview::router())
        .merge(tenant::router())
        .merge(usage::router())
        .merge(invoices::router())
        .merge(signups::router())
        .merge(email_verifications::router())
        .merge(transitions::router())
        .merge(erasure::router())
        .merge(reactivation::router())
        .merge(winback::router())
        .merge(webhooks::router())
        .merge(webhook_endpoints::router())
        .merge(notification_settings::router())
}
