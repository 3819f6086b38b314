//! The parts of UCP's checkout JSON this connector writes and reads
//! (`shared/specs/ucp/2026-01-11/source/schemas/shopping/checkout.json`).

use serde::{Deserialize, Serialize};

/// An item as a request names it: the merchant owns titles and prices.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ItemRef {
    pub id: String,
}

/// A line of a create request (its id is the merchant's to assign).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LineItemRequest {
    pub item: ItemRef,
    pub quantity: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Destination {
    pub id: String,
    pub street_address: String,
    pub address_locality: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_region: Option<String>,
    pub address_country: String,
    pub postal_code: String,
}

/// The fulfillment a create request asks for: shipping, for every line; the business
/// answers with the method's id.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FulfillmentMethod {
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Fulfillment {
    pub methods: Vec<FulfillmentMethod>,
}

/// A method of an update request: the business's method, its lines and where to ship.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FulfillmentMethodUpdate {
    pub id: String,
    pub line_item_ids: Vec<String>,
    pub destinations: Vec<Destination>,
    pub selected_destination_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FulfillmentUpdate {
    pub methods: Vec<FulfillmentMethodUpdate>,
}

/// The buyer, as far as shopagent knows them (the shipping name).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Buyer {
    pub full_name: String,
}

/// A line of an update request: the business's line id, the item and the quantity.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LineItemUpdate {
    pub id: String,
    pub item: ItemRef,
    pub quantity: u32,
}

/// Body of `PUT /checkout-sessions/{id}`: the whole session as the platform wants it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UpdateCheckout {
    pub id: String,
    pub line_items: Vec<LineItemUpdate>,
    pub currency: String,
    pub payment: PaymentRequest,
    pub buyer: Buyer,
    pub fulfillment: FulfillmentUpdate,
}

/// The payment part of a create request: handlers are the merchant's to list.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PaymentRequest {}

/// Body of `POST /checkout-sessions`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CreateCheckout {
    pub line_items: Vec<LineItemRequest>,
    pub currency: String,
    pub payment: PaymentRequest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fulfillment: Option<Fulfillment>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Credential {
    #[serde(rename = "type")]
    pub kind: String,
    pub token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PaymentData {
    pub id: String,
    pub handler_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// Display data of the card instrument (the credential is the token).
    pub brand: String,
    pub last_digits: String,
    pub credential: Credential,
}

/// Body of `POST /checkout-sessions/{id}/complete`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CompleteCheckout {
    pub payment_data: PaymentData,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Message {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub content: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OrderConfirmation {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permalink_url: Option<String>,
}

/// A checkout session as the merchant answers it (also an error body: `status` and
/// `messages`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Checkout {
    #[serde(default)]
    pub id: Option<String>,
    pub status: String,
    #[serde(default)]
    pub messages: Vec<Message>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<OrderConfirmation>,
    #[serde(default)]
    pub totals: Vec<Total>,
    #[serde(default)]
    pub line_items: Vec<SessionLine>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fulfillment: Option<SessionFulfillment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// A line as the business answers it (the parts the update needs).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionLine {
    pub id: String,
    pub item: ItemRef,
    pub quantity: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionFulfillment {
    #[serde(default)]
    pub methods: Vec<SessionMethod>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionMethod {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Total {
    #[serde(rename = "type")]
    pub kind: String,
    pub amount: i64,
}

impl Checkout {
    /// The grand total the merchant asks, if it states one.
    pub fn total(&self) -> Option<i64> {
        self.totals
            .iter()
            .find(|t| t.kind == "total")
            .map(|t| t.amount)
    }
}

/// The business profile at `/.well-known/ucp` (the parts this connector reads).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Profile {
    pub ucp: DiscoveryProfile,
    /// Keys the business signs its webhooks with.
    #[serde(default)]
    pub signing_keys: Vec<super::webhook::SigningKey>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiscoveryProfile {
    pub version: String,
    #[serde(default)]
    pub services: std::collections::BTreeMap<String, Service>,
    #[serde(default)]
    pub capabilities: Vec<Capability>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Service {
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rest: Option<RestService>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RestService {
    pub endpoint: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Capability {
    pub name: String,
    pub version: String,
}
