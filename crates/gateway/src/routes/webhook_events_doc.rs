//! The `webhooks` section of the API document: one entry per event type, with the body
//! every delivery of it carries, so that tools (and tenants) can trust the payloads.

use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Ref, SchemaFormat, Type};
use utoipa::openapi::{PathsBuilder, Required, ResponseBuilder};

pub struct WebhookEvents;

fn text(description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
}

impl utoipa::Modify for WebhookEvents {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut paths = PathsBuilder::new();
        for (event_type, description) in webhooks::EVENT_TYPES {
            let Some((data_name, data_schema)) = webhooks::events::data_schema(event_type) else {
                continue;
            };
            components
                .schemas
                .entry(data_name.to_owned())
                .or_insert(data_schema);
            let body = ObjectBuilder::new()
                .property("id", text("`evt_...`; the same as the `webhook-id` header"))
                .property(
                    "type",
                    text("The event type").enum_values(Some([*event_type])),
                )
                .property(
                    "timestamp",
                    text("When it happened")
                        .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime))),
                )
                .property(
                    "version",
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .description(Some("The version of the `data` shape (1)")),
                )
                .property("tenant_id", text("`ten_...`"))
                .property("data", Ref::from_schema_name(data_name))
                .required("id")
                .required("type")
                .required("timestamp")
                .required("version")
                .required("tenant_id")
                .required("data");
            let operation = OperationBuilder::new()
                .summary(Some(*event_type))
                .description(Some(format!(
                    "{description} Signed by the Standard Webhooks scheme (headers \
                     `webhook-id`, `webhook-timestamp`, `webhook-signature`)."
                )))
                .tag("webhooks")
                .request_body(Some(
                    RequestBodyBuilder::new()
                        .content(
                            "application/json",
                            ContentBuilder::new().schema(Some(body)).build(),
                        )
                        .required(Some(Required::True))
                        .build(),
                ))
                .response(
                    "2XX",
                    ResponseBuilder::new().description(
                        "Acknowledged. Anything else, or no answer within the timeout, is \
                         retried over about three days.",
                    ),
                );
            paths = paths.path(*event_type, PathItem::new(HttpMethod::Post, operation));
        }
        openapi.webhooks = Some(paths.build());
    }
}
