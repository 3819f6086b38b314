//! Postal addresses. Personal data: never logged, redacted in audit exports.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid address: {0}")]
pub struct InvalidAddress(pub String);

/// A shipping address. Construct with [`Address::new`], which validates every field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "AddressFields", into = "AddressFields")]
pub struct Address(AddressFields);

/// The fields of an address, as sent and stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressFields {
    pub name: String,
    pub line1: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line2: Option<String>,
    pub city: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    pub postal_code: String,
    /// ISO 3166-1 alpha-2, e.g. `US`.
    pub country: String,
}

const MAX_FIELD: usize = 200;

impl Address {
    pub fn new(fields: AddressFields) -> Result<Self, InvalidAddress> {
        let required = [
            ("name", &fields.name),
            ("line1", &fields.line1),
            ("city", &fields.city),
            ("postal_code", &fields.postal_code),
        ];
        for (field, value) in required {
            if value.trim().is_empty() {
                return Err(InvalidAddress(format!("{field} is required")));
            }
        }
        let all = required
            .iter()
            .map(|(f, v)| (*f, v.as_str()))
            .chain(fields.line2.as_deref().map(|v| ("line2", v)))
            .chain(fields.region.as_deref().map(|v| ("region", v)));
        for (field, value) in all {
            if value.chars().count() > MAX_FIELD || value.chars().any(char::is_control) {
                return Err(InvalidAddress(format!(
                    "{field} must be at most {MAX_FIELD} characters without control characters"
                )));
            }
        }
        let country = &fields.country;
        if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(InvalidAddress(
                "country must be an ISO 3166-1 alpha-2 code such as US".into(),
            ));
        }
        Ok(Self(fields))
    }

    pub fn fields(&self) -> &AddressFields {
        &self.0
    }

    pub fn country(&self) -> &str {
        &self.0.country
    }
}

impl TryFrom<AddressFields> for Address {
    type Error = InvalidAddress;
    fn try_from(fields: AddressFields) -> Result<Self, Self::Error> {
        Self::new(fields)
    }
}

impl From<Address> for AddressFields {
    fn from(address: Address) -> Self {
        address.0
    }
}
