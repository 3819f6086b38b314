//! Domain orders to UCP checkout bodies, and UCP answers to placement outcomes.

use shopagent_domain::order::FailureReason;
use shopagent_domain::ports::{PlaceError, PlaceOrder};

use super::wire::{
    Checkout, CompleteCheckout, CreateCheckout, Credential, Destination, Fulfillment,
    FulfillmentMethod, ItemRef, LineItemRequest, PaymentData, PaymentRequest,
};

/// The create request: items by id and quantity (the merchant prices them), and the
/// shipping destination.
pub fn create_checkout(order: &PlaceOrder) -> CreateCheckout {
    let line_items: Vec<LineItemRequest> = order
        .lines
        .iter()
        .map(|line| LineItemRequest {
            item: ItemRef {
                id: line.offer_id.to_string(),
            },
            quantity: line.quantity,
        })
        .collect();
    let fulfillment = order.ship_to.as_ref().map(|address| {
        let fields = address.fields();
        Fulfillment {
            methods: vec![FulfillmentMethod {
                kind: "shipping".into(),
                destinations: vec![Destination {
                    id: "dest_1".into(),
                    street_address: match &fields.line2 {
                        Some(line2) => format!("{}, {line2}", fields.line1),
                        None => fields.line1.clone(),
                    },
                    address_locality: fields.city.clone(),
                    address_region: fields.region.clone(),
                    address_country: fields.country.clone(),
                    postal_code: fields.postal_code.clone(),
                }],
                selected_destination_id: "dest_1".into(),
            }],
        }
    });
    CreateCheckout {
        line_items,
        currency: order.total.currency.code().to_owned(),
        payment: PaymentRequest::default(),
        fulfillment,
    }
}

pub fn complete_checkout(order: &PlaceOrder) -> CompleteCheckout {
    CompleteCheckout {
        payment_data: PaymentData {
            id: "pi_shopagent_card".into(),
            handler_id: "dev.shopagent.virtual_card".into(),
            kind: "card".into(),
            brand: order
                .card_display
                .as_ref()
                .map_or("unknown", |d| d.brand())
                .to_owned(),
            last_digits: order
                .card_display
                .as_ref()
                .map_or("0000", |d| d.last4())
                .to_owned(),
            credential: Credential {
                kind: "PAYMENT_GATEWAY".into(),
                token: order.card.as_str().to_owned(),
            },
        },
    }
}

/// The typed failure an error message stands for.
pub fn failure(checkout: &Checkout) -> PlaceError {
    let error = checkout.messages.iter().find(|m| m.kind == "error");
    let code = error
        .and_then(|m| m.code.as_deref())
        .unwrap_or(checkout.status.as_str());
    let reason = match code {
        "out_of_stock" | "item_unavailable" | "invalid_cart_items" => {
            FailureReason::InventoryChanged
        }
        "invalid_address" | "address_invalid" | "unsupported_destination" => {
            FailureReason::AddressInvalid
        }
        "payment_declined" => FailureReason::PaymentDeclined,
        "payment_required" | "missing_payment" => FailureReason::PaymentRequired,
        _ => FailureReason::MerchantUnavailable,
    };
    let detail = error
        .and_then(|m| m.content.clone())
        .unwrap_or_else(|| format!("checkout is {}", checkout.status));
    PlaceError::Failed {
        reason,
        detail: format!("{code}: {detail}"),
    }
}
