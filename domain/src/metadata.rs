//! Metadata recorded with every event: who, for which tenant, why, and how to trace it.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Keys under which [`EventMetadata`] is stored in an event's metadata map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataKey {
    Tenant,
    Principal,
    CorrelationId,
    CausationId,
    IdempotencyKey,
    RequestDigest,
    Traceparent,
}

impl MetadataKey {
    pub const ALL: [MetadataKey; 7] = [
        Self::Tenant,
        Self::Principal,
        Self::CorrelationId,
        Self::CausationId,
        Self::IdempotencyKey,
        Self::RequestDigest,
        Self::Traceparent,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tenant => "tenant",
            Self::Principal => "principal",
            Self::CorrelationId => "correlation_id",
            Self::CausationId => "causation_id",
            Self::IdempotencyKey => "idempotency_key",
            Self::RequestDigest => "request_digest",
            Self::Traceparent => "traceparent",
        }
    }
}

/// Context of the command that produced an event.
///
/// `tenant`, `principal` and `correlation_id` are always present. `causation_id` is the
/// id of the event or request that caused this command; `idempotency_key` and
/// `request_digest` identify a client's retried request; `traceparent` is the W3C trace
/// context the command ran under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMetadata {
    pub tenant: String,
    pub principal: String,
    pub correlation_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<IdempotencyKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl EventMetadata {
    /// Metadata for a command issued by `principal` in `tenant`, starting a new correlation.
    pub fn new(tenant: impl Into<String>, principal: impl Into<String>) -> Self {
        Self {
            tenant: tenant.into(),
            principal: principal.into(),
            correlation_id: Uuid::now_v7(),
            causation_id: None,
            idempotency_key: None,
            request_digest: None,
            traceparent: None,
        }
    }

    pub fn with_idempotency_key(mut self, key: IdempotencyKey) -> Self {
        self.idempotency_key = Some(key);
        self
    }

    pub fn caused_by(mut self, causation_id: Uuid) -> Self {
        self.causation_id = Some(causation_id);
        self
    }

    /// The string map cqrs-es carries through its event store.
    pub fn to_map(&self) -> HashMap<String, String> {
        let mut map = HashMap::with_capacity(MetadataKey::ALL.len());
        let mut put = |key: MetadataKey, value: String| {
            map.insert(key.as_str().to_owned(), value);
        };
        put(MetadataKey::Tenant, self.tenant.clone());
        put(MetadataKey::Principal, self.principal.clone());
        put(MetadataKey::CorrelationId, self.correlation_id.to_string());
        if let Some(id) = self.causation_id {
            put(MetadataKey::CausationId, id.to_string());
        }
        if let Some(key) = &self.idempotency_key {
            put(MetadataKey::IdempotencyKey, key.as_str().to_owned());
        }
        if let Some(digest) = &self.request_digest {
            put(MetadataKey::RequestDigest, digest.clone());
        }
        if let Some(traceparent) = &self.traceparent {
            put(MetadataKey::Traceparent, traceparent.clone());
        }
        map
    }
}

/// A client-chosen key that makes a command safe to retry: 1 to 255 visible ASCII
/// characters (the same alphabet as an HTTP header value without spaces).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IdempotencyKey(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an idempotency key is 1 to 255 visible ASCII characters")]
pub struct InvalidIdempotencyKey;

impl IdempotencyKey {
    pub const MAX_LEN: usize = 255;

    pub fn parse(raw: &str) -> Result<Self, InvalidIdempotencyKey> {
        let valid = !raw.is_empty()
            && raw.len() <= Self::MAX_LEN
            && raw.bytes().all(|b| b.is_ascii_graphic());
        if valid {
            Ok(Self(raw.to_owned()))
        } else {
            Err(InvalidIdempotencyKey)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for IdempotencyKey {
    type Error = InvalidIdempotencyKey;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<IdempotencyKey> for String {
    fn from(key: IdempotencyKey) -> Self {
        key.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_key_accepts_visible_ascii_up_to_255_characters() {
        assert!(IdempotencyKey::parse("a").is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(255)).is_ok());
        assert!(IdempotencyKey::parse("order-7f3a_2026:11/25").is_ok());
    }

    #[test]
    fn idempotency_key_rejects_empty_long_spaced_or_non_ascii_values() {
        for bad in ["", " ", "a b", "tab\tkey", "ключ", "new\nline"] {
            assert_eq!(
                IdempotencyKey::parse(bad),
                Err(InvalidIdempotencyKey),
                "{bad:?}"
            );
        }
        assert!(IdempotencyKey::parse(&"k".repeat(256)).is_err());
    }

    #[test]
    fn metadata_map_holds_every_present_field_under_its_key() {
        let metadata = EventMetadata::new("acme", "user:42")
            .with_idempotency_key(IdempotencyKey::parse("k-1").expect("valid key"))
            .caused_by(Uuid::nil());
        let map = metadata.to_map();
        assert_eq!(map["tenant"], "acme");
        assert_eq!(map["principal"], "user:42");
        assert_eq!(map["idempotency_key"], "k-1");
        assert_eq!(map["causation_id"], Uuid::nil().to_string());
        assert!(!map.contains_key("traceparent"));
    }
}
