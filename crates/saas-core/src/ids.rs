//! Opaque, prefixed identifiers.
//!
//! Internally every id is a UUIDv7 (time-ordered, so B-tree inserts stay local); on the
//! wire it is `<prefix>_<32 hex digits>`. The prefix tells a human (and a support engineer
//! reading a log) what kind of object an id names, and parsing rejects an id of the wrong
//! kind, so an API key id can never be mistaken for a tenant id.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid {kind} id (expected `{prefix}_` followed by 32 hex digits)")]
pub struct IdParseError {
    pub kind: &'static str,
    pub prefix: &'static str,
}

macro_rules! prefixed_id {
    ($(#[$meta:meta])* $name:ident, $prefix:literal, $kind:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Uuid);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// A fresh, time-ordered id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            pub const fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}_{}", $prefix, self.0.simple())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let error = IdParseError { kind: $kind, prefix: $prefix };
                let hex = s
                    .strip_prefix($prefix)
                    .and_then(|rest| rest.strip_prefix('_'))
                    .ok_or(error.clone())?;
                if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(error);
                }
                Uuid::try_parse(hex).map(Self).map_err(|_| error)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .pattern(Some(concat!("^", $prefix, "_[0-9a-f]{32}$")))
                    .examples([concat!($prefix, "_0192f3a4b5c6d7e8f90a1b2c3d4e5f60")])
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

prefixed_id!(
    /// A tenant: one customer organisation of the SaaS.
    TenantId,
    "ten",
    "tenant"
);
prefixed_id!(
    /// One API key of a tenant (the id, never the secret).
    ApiKeyId,
    "key",
    "API key"
);

prefixed_id!(
    /// A self-service signup, before and after it becomes a tenant.
    SignupId,
    "sgn",
    "signup"
);
prefixed_id!(
    /// One state change of a tenant (a plan change, a suspension, ...).
    TransitionId,
    "trn",
    "transition"
);

prefixed_id!(
    /// A tenant's webhook endpoint: a URL that receives signed events.
    WebhookEndpointId,
    "we",
    "webhook endpoint"
);
prefixed_id!(
    /// An event sent to webhook endpoints; the `webhook-id` of every delivery of it, so
    /// receivers drop repeats by it.
    WebhookEventId,
    "evt",
    "event"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_its_text_form() {
        let id = TenantId::new();
        let text = id.to_string();
        assert!(text.starts_with("ten_"));
        assert_eq!(text.len(), 4 + 32);
        assert_eq!(text.parse::<TenantId>().unwrap(), id);
    }

    #[test]
    fn rejects_ids_of_another_kind_or_shape() {
        let key = ApiKeyId::new().to_string();
        assert!(key.parse::<TenantId>().is_err());
        for bad in [
            "",
            "ten_",
            "ten",
            "ten_xyz",
            "ten-0192f3a4b5c6d7e8f90a1b2c3d4e5f60",
        ] {
            assert!(bad.parse::<TenantId>().is_err(), "{bad:?} parsed");
        }
        // Hyphenated UUIDs are not our wire form, even though they name the same value.
        let hyphenated = format!("ten_{}", TenantId::new().as_uuid().hyphenated());
        assert!(hyphenated.parse::<TenantId>().is_err());
    }

    #[test]
    fn serializes_as_a_json_string() {
        let id = TenantId::new();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<TenantId>(&json).unwrap(), id);
    }
}
