//! Domain orders to UCP checkout bodies, and UCP answers to placement outcomes.

use shopagent_domain::address::Address;
use shopagent_domain::cart::Quote;
use shopagent_domain::money::{Currency, Money};
use shopagent_domain::order::{FailureReason, OrderLine};
use shopagent_domain::ports::{PlaceError, PlaceOrder, QuoteRequest};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::wire::{
    Buyer, Checkout, CompleteCheckout, CreateCheckout, Credential, Destination, Fulfillment,
    FulfillmentMethod, FulfillmentMethodUpdate, FulfillmentUpdate, ItemRef, LineItemRequest,
    LineItemUpdate, PaymentData, PaymentRequest, UpdateCheckout,
};

/// What a checkout session is opened for: the lines, the currency, where to ship.
#[derive(Debug, Clone, Copy)]
pub struct SessionRequest<'a> {
    pub lines: &'a [OrderLine],
    pub currency: Currency,
    pub ship_to: Option<&'a Address>,
}

impl<'a> From<&'a PlaceOrder> for SessionRequest<'a> {
    fn from(order: &'a PlaceOrder) -> Self {
        Self {
            lines: &order.lines,
            currency: order.total.currency,
            ship_to: order.ship_to.as_ref(),
        }
    }
}

impl<'a> From<&'a QuoteRequest> for SessionRequest<'a> {
    fn from(request: &'a QuoteRequest) -> Self {
        Self {
            lines: &request.lines,
            currency: request.currency,
            ship_to: Some(&request.ship_to),
        }
    }
}

/// A session's totals as a quote. UCP totals carry no currency: they are the session's,
/// which must be the one asked for.
pub fn quote_of(session: &Checkout, currency: Currency) -> Result<Quote, PlaceError> {
    if session
        .currency
        .as_deref()
        .is_some_and(|c| !c.eq_ignore_ascii_case(currency.code()))
    {
        return Err(PlaceError::Failed {
            reason: FailureReason::MerchantUnavailable,
            detail: format!("the merchant quoted in {:?}", session.currency),
        });
    }
    let amount = |kind: &str| -> i64 {
        session
            .totals
            .iter()
            .filter(|t| t.kind == kind)
            .map(|t| t.amount)
            .sum()
    };
    // UCP's default session lifetime is six hours.
    let expires_at = session
        .expires_at
        .as_deref()
        .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
        .unwrap_or_else(|| OffsetDateTime::now_utc() + time::Duration::hours(6));
    Ok(Quote {
        items_total: Money::new(
            amount("subtotal") - amount("items_discount") - amount("discount"),
            currency,
        ),
        shipping: Money::new(amount("fulfillment"), currency),
        tax: Money::new(amount("tax"), currency),
        delivery_estimate: None,
        expires_at,
    })
}

/// The create request: items by id and quantity (the merchant prices them), and
/// shipping as the fulfillment asked for.
pub fn create_checkout(request: SessionRequest<'_>) -> CreateCheckout {
    CreateCheckout {
        line_items: request
            .lines
            .iter()
            .map(|line| LineItemRequest {
                item: ItemRef {
                    id: line.offer_id.to_string(),
                },
                quantity: line.quantity,
            })
            .collect(),
        currency: request.currency.code().to_owned(),
        payment: PaymentRequest::default(),
        fulfillment: request.ship_to.map(|_| Fulfillment {
            methods: vec![FulfillmentMethod {
                kind: "shipping".into(),
            }],
        }),
    }
}

/// The update that completes the session: the business's lines, the buyer, and the
/// destination on the business's shipping method. `None` when the business offered no
/// shipping method.
pub fn update_checkout(
    session: &Checkout,
    id: &str,
    currency: Currency,
    ship_to: &Address,
) -> Option<UpdateCheckout> {
    let method = session
        .fulfillment
        .as_ref()?
        .methods
        .iter()
        .find(|m| m.kind == "shipping")?;
    let fields = ship_to.fields();
    let destination = Destination {
        id: "dest_1".into(),
        street_address: match &fields.line2 {
            Some(line2) => format!("{}, {line2}", fields.line1),
            None => fields.line1.clone(),
        },
        address_locality: fields.city.clone(),
        address_region: fields.region.clone(),
        address_country: fields.country.clone(),
        postal_code: fields.postal_code.clone(),
    };
    Some(UpdateCheckout {
        id: id.to_owned(),
        line_items: session
            .line_items
            .iter()
            .map(|line| LineItemUpdate {
                id: line.id.clone(),
                item: line.item.clone(),
                quantity: line.quantity,
            })
            .collect(),
        currency: currency.code().to_owned(),
        payment: PaymentRequest::default(),
        buyer: Buyer {
            full_name: fields.name.clone(),
        },
        fulfillment: FulfillmentUpdate {
            methods: vec![FulfillmentMethodUpdate {
                id: method.id.clone(),
                line_item_ids: session.line_items.iter().map(|l| l.id.clone()).collect(),
                destinations: vec![destination],
                selected_destination_id: "dest_1".into(),
            }],
        },
    })
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
