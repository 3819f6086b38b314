//! What the connector tests share: an order to place with the sandbox merchant.

use shopagent_domain::address::{Address, AddressFields};
use shopagent_domain::ids::{OfferId, OrderId};
use shopagent_domain::money::{Currency, Money};
use shopagent_domain::order::OrderLine;
use shopagent_domain::payment::{CardDisplay, CardReference};
use shopagent_domain::ports::PlaceOrder;

/// Two tents (the sandbox's price) shipped to Springfield: items, shipping and tax come
/// to 22 100, the total the shopper agreed to.
pub fn order(key: &str) -> PlaceOrder {
    let usd = Currency::parse("USD").expect("USD");
    PlaceOrder {
        idempotency_key: key.into(),
        order_id: OrderId::new(),
        lines: vec![OrderLine {
            offer_id: OfferId::parse("sku:tent").expect("offer"),
            title: "Tent".into(),
            quantity: 2,
            unit_price: Money::new(10_000, usd),
        }],
        total: Money::new(22_100, usd),
        ship_to: Some(
            Address::new(AddressFields {
                name: "Ada".into(),
                line1: "1 Main St".into(),
                line2: Some("Apt 4".into()),
                city: "Springfield".into(),
                region: Some("IL".into()),
                postal_code: "62701".into(),
                country: "US".into(),
            })
            .expect("address"),
        ),
        card: CardReference::parse("ic_sandboxCard").expect("card"),
        card_display: Some(CardDisplay::parse("Visa", "4242").expect("display")),
    }
}
