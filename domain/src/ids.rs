//! Identifiers. Aggregate ids are UUIDs (v7 when new); names that come from outside
//! (merchants, offers, categories) are validated slugs.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! uuid_id {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh, time-ordered id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            pub fn parse(text: &str) -> Result<Self, InvalidId> {
                Uuid::parse_str(text).map(Self).map_err(|_| InvalidId(stringify!($name)))
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    )*};
}

uuid_id!(
    MandateId,
    RunId,
    CartId,
    OrderId,
    PaymentId,
    /// A budget hold on a mandate, one per checkout of a merchant sub-cart.
    ReservationId,
    LineId,
    ActionId,
    ApprovalId,
    ReturnId,
    AuthorizationId,
    RefundId,
);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid {0}")]
pub struct InvalidId(pub &'static str);

macro_rules! slug_id {
    ($($(#[$doc:meta])* $name:ident: $max:expr),* $(,)?) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub const MAX_LEN: usize = $max;

            pub fn parse(text: &str) -> Result<Self, InvalidId> {
                let valid = !text.is_empty()
                    && text.len() <= Self::MAX_LEN
                    && text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/'));
                if valid { Ok(Self(text.to_owned())) } else { Err(InvalidId(stringify!($name))) }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(text: String) -> Result<Self, Self::Error> {
                Self::parse(&text)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> Self {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    )*};
}

slug_id!(
    /// A merchant known to the capability registry, e.g. `acme-outdoor`.
    MerchantId: 64,
    /// A merchant's offer (its product or variant id, lowercased), e.g. `sku:tent-2p`.
    OfferId: 128,
    /// A node of the product taxonomy, e.g. `electronics/phones`.
    Category: 128,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_lowercase_ascii_with_separators() {
        assert!(MerchantId::parse("acme-outdoor").is_ok());
        assert!(Category::parse("home/kitchen_tools").is_ok());
        for bad in ["", "Acme", "a b", "ünï", "x;drop"] {
            assert!(MerchantId::parse(bad).is_err(), "{bad}");
        }
        assert!(MerchantId::parse(&"m".repeat(65)).is_err());
    }

    #[test]
    fn uuid_ids_parse_and_reject_garbage() {
        let id = CartId::new();
        assert_eq!(CartId::parse(&id.to_string()), Ok(id));
        assert_eq!(CartId::parse("not-a-uuid"), Err(InvalidId("CartId")));
    }
}
