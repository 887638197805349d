//! Stripe's event envelope (https://docs.stripe.com/api/events/object), read into our
//! own type: only the event's id and type and which invoice it is about. Nothing else
//! in the payload is trusted; the invoice itself is fetched again.

use serde::Deserialize;

/// A verified webhook event, as far as we act on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderEvent {
    pub id: String,
    /// Stripe's event type, e.g. `invoice.paid`: recorded, never branched on beyond
    /// telling invoice events from the rest.
    pub kind: String,
    /// The id of the object the event is about.
    pub object_id: Option<String>,
    /// Set when the event is about an invoice: its id.
    pub invoice: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a Stripe event: {0}")]
pub struct NotAnEvent(String);

#[derive(Deserialize)]
struct Envelope {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    data: Data,
}

#[derive(Deserialize)]
struct Data {
    object: Object,
}

#[derive(Deserialize)]
struct Object {
    id: Option<String>,
    object: Option<String>,
}

/// Reads the raw body of a webhook whose signature was checked.
pub fn parse(body: &[u8]) -> Result<ProviderEvent, NotAnEvent> {
    let envelope: Envelope =
        serde_json::from_slice(body).map_err(|error| NotAnEvent(error.to_string()))?;
    let object = envelope.data.object;
    let about_invoice =
        envelope.kind.starts_with("invoice.") && object.object.as_deref() == Some("invoice");
    Ok(ProviderEvent {
        invoice: about_invoice.then(|| object.id.clone()).flatten(),
        object_id: object.id,
        id: envelope.id,
        kind: envelope.kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invoice_events_name_their_invoice_and_others_do_not() {
        let paid = parse(
            br#"{"id":"evt_1","type":"invoice.paid","data":{"object":{"id":"in_1","object":"invoice","total":5}}}"#,
        )
        .unwrap();
        assert_eq!(paid.invoice.as_deref(), Some("in_1"));
        let other = parse(
            br#"{"id":"evt_2","type":"customer.created","data":{"object":{"id":"cus_1","object":"customer"}}}"#,
        )
        .unwrap();
        assert_eq!(other.invoice, None);
        assert_eq!(other.object_id.as_deref(), Some("cus_1"));
        assert!(parse(b"[]").is_err());
        assert!(parse(br#"{"id":"evt_3","type":"invoice.paid"}"#).is_err());
    }
}
