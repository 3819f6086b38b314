//! Wire shapes to domain values and back.

use shopagent_domain::payment::{CardDisplay, CardReference};
use shopagent_domain::ports::{CardRequest, IssuedCard};
use time::{Date, Month, OffsetDateTime, Time};

use super::error::IssuerHttpError;
use super::wire::IssuingCard;

/// Form fields of `POST /v1/issuing/cards` for a single-use virtual card.
pub fn create_card_form(request: &CardRequest, cardholder: &str) -> Vec<(String, String)> {
    vec![
        ("cardholder".into(), cardholder.into()),
        (
            "currency".into(),
            request.cap.currency.code().to_lowercase(),
        ),
        ("type".into(), "virtual".into()),
        ("status".into(), "active".into()),
        (
            "spending_controls[spending_limits][0][amount]".into(),
            request.cap.minor.to_string(),
        ),
        (
            "spending_controls[spending_limits][0][interval]".into(),
            "all_time".into(),
        ),
        ("metadata[order_id]".into(), request.order_id.to_string()),
        ("metadata[merchant]".into(), request.merchant.to_string()),
        ("metadata[payment]".into(), request.payment_ref.clone()),
    ]
}

/// The card as the domain knows it: a reference and the end of its expiry month.
pub fn issued_card(card: IssuingCard) -> Result<IssuedCard, IssuerHttpError> {
    let reference = CardReference::parse(&card.id)
        .map_err(|e| IssuerHttpError::Body(format!("card id: {e}")))?;
    let month = Month::try_from(card.exp_month)
        .map_err(|e| IssuerHttpError::Body(format!("exp_month: {e}")))?;
    let first = Date::from_calendar_date(card.exp_year, month, 1)
        .map_err(|e| IssuerHttpError::Body(format!("expiry: {e}")))?;
    let next_month = first
        .replace_day(month.length(card.exp_year))
        .map_err(|e| IssuerHttpError::Body(e.to_string()))?
        .next_day();
    let expires_at = next_month.map_or(OffsetDateTime::now_utc(), |d| {
        d.with_time(Time::MIDNIGHT).assume_utc()
    });
    let display = match (&card.brand, &card.last4) {
        (Some(brand), Some(last4)) => CardDisplay::parse(brand, last4).ok(),
        _ => None,
    };
    Ok(IssuedCard {
        reference,
        display,
        expires_at,
    })
}
