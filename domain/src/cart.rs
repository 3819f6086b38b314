//! Cart: one universal cart, lines grouped by merchant, with per-merchant quotes.
//!
//! Starting checkout locks the cart and splits it into one sub-cart per merchant. A
//! merchant whose quote exceeds the prices the agent saw by more than the mandate's
//! drift tolerance waits for the shopper's approval instead of proceeding.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime};

use crate::address::Address;
use crate::ids::{CartId, Category, LineId, MandateId, MerchantId, OfferId};
use crate::money::{Currency, Money, MoneyError};
use crate::{Aggregate, DomainEvent};

pub const MAX_QUANTITY: u32 = 999;
pub const MAX_TITLE: usize = 300;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartLine {
    pub offer_id: OfferId,
    pub merchant: MerchantId,
    pub title: String,
    pub category: Category,
    pub unit_price: Money,
    pub quantity: u32,
    /// When the agent or shopper saw `unit_price`.
    #[serde(with = "time::serde::rfc3339")]
    pub price_seen_at: OffsetDateTime,
}

/// A merchant's quote for its sub-cart at the cart's address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quote {
    pub items_total: Money,
    pub shipping: Money,
    pub tax: Money,
    #[serde(with = "crate::serde_time::date::option")]
    pub delivery_estimate: Option<Date>,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// Whether a merchant's sub-cart proceeds at checkout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum SubCartDecision {
    Proceed,
    /// The quoted items total exceeds what was seen by `drift_bps` basis points, more
    /// than the tolerance.
    AwaitApproval {
        drift_bps: u64,
    },
}

/// One merchant's part of a checkout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubCart {
    pub merchant: MerchantId,
    pub lines: Vec<LineId>,
    pub categories: BTreeSet<Category>,
    /// Sum of unit price × quantity at the prices seen.
    pub seen_total: Money,
    pub quote: Quote,
    /// Items, shipping and tax as quoted.
    pub grand_total: Money,
    pub decision: SubCartDecision,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CartStatus {
    #[default]
    Open,
    /// Locked: checkout has started.
    CheckingOut,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CartCommand {
    Create {
        cart_id: CartId,
        shopper: String,
        mandate_id: Option<MandateId>,
        currency: Currency,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    AddLine {
        line_id: LineId,
        line: CartLine,
    },
    ChangeQuantity {
        line_id: LineId,
        quantity: u32,
    },
    RemoveLine {
        line_id: LineId,
    },
    SetShippingAddress {
        address: Address,
    },
    RecordQuote {
        merchant: MerchantId,
        quote: Quote,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    StartCheckout {
        price_drift_tolerance_bps: u32,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CartEvent {
    CartCreated {
        cart_id: CartId,
        shopper: String,
        mandate_id: Option<MandateId>,
        currency: Currency,
        #[serde(with = "time::serde::rfc3339")]
        created_at: OffsetDateTime,
    },
    LineAdded {
        line_id: LineId,
        line: CartLine,
    },
    LineQuantityChanged {
        line_id: LineId,
        quantity: u32,
    },
    LineRemoved {
        line_id: LineId,
    },
    ShippingAddressSet {
        address: Address,
    },
    QuoteRecorded {
        merchant: MerchantId,
        quote: Quote,
    },
    /// The merchant's lines or the address changed since its quote.
    QuoteInvalidated {
        merchant: MerchantId,
    },
    CheckoutStarted {
        sub_carts: Vec<SubCart>,
        #[serde(with = "time::serde::rfc3339")]
        started_at: OffsetDateTime,
    },
}

impl DomainEvent for CartEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::CartCreated { .. } => "CartCreated",
            Self::LineAdded { .. } => "CartLineAdded",
            Self::LineQuantityChanged { .. } => "CartLineQuantityChanged",
            Self::LineRemoved { .. } => "CartLineRemoved",
            Self::ShippingAddressSet { .. } => "ShippingAddressSet",
            Self::QuoteRecorded { .. } => "QuoteRecorded",
            Self::QuoteInvalidated { .. } => "QuoteInvalidated",
            Self::CheckoutStarted { .. } => "CheckoutStarted",
        }
    }

    fn event_version(&self) -> &'static str {
        "1"
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CartError {
    #[error("cart does not exist")]
    NotFound,
    #[error("cart already exists")]
    AlreadyExists,
    #[error("cart is locked: checkout has started")]
    Locked,
    #[error("quantity must be between 1 and {MAX_QUANTITY}")]
    QuantityOutOfRange,
    #[error("unit price must be positive")]
    PriceNotPositive,
    #[error("title must be 1 to {MAX_TITLE} characters")]
    InvalidTitle,
    #[error(transparent)]
    Money(#[from] MoneyError),
    #[error("line {0} already exists")]
    DuplicateLine(LineId),
    #[error("no line {0}")]
    UnknownLine(LineId),
    #[error("the cart has no lines from merchant {0}")]
    NoLinesForMerchant(MerchantId),
    #[error("quote amounts must not be negative")]
    NegativeQuote,
    #[error("quote has already expired")]
    QuoteAlreadyExpired,
    #[error("a shipping address is required first")]
    AddressRequired,
    #[error("the cart is empty")]
    Empty,
    #[error("merchant {0} has no quote")]
    MissingQuote(MerchantId),
    #[error("the quote of merchant {0} has expired")]
    QuoteExpired(MerchantId),
}

impl CartError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound => "cart_not_found",
            Self::AlreadyExists => "cart_exists",
            Self::Locked => "cart_locked",
            Self::QuantityOutOfRange => "quantity_out_of_range",
            Self::PriceNotPositive => "price_not_positive",
            Self::InvalidTitle => "invalid_title",
            Self::Money(MoneyError::CurrencyMismatch(..)) => "currency_mismatch",
            Self::Money(_) => "amount_out_of_range",
            Self::DuplicateLine(_) => "duplicate_line",
            Self::UnknownLine(_) => "unknown_line",
            Self::NoLinesForMerchant(_) => "no_lines_for_merchant",
            Self::NegativeQuote => "negative_quote",
            Self::QuoteAlreadyExpired => "quote_already_expired",
            Self::AddressRequired => "address_required",
            Self::Empty => "cart_empty",
            Self::MissingQuote(_) => "missing_quote",
            Self::QuoteExpired(_) => "quote_expired",
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cart {
    pub id: Option<CartId>,
    pub shopper: String,
    pub mandate_id: Option<MandateId>,
    pub currency: Option<Currency>,
    pub lines: BTreeMap<LineId, CartLine>,
    pub address: Option<Address>,
    pub quotes: BTreeMap<MerchantId, Quote>,
    pub status: CartStatus,
    /// How checkout split the cart, once it started: what the rest of checkout (budget
    /// reservations, orders) works from.
    pub sub_carts: Vec<SubCart>,
}

impl Cart {
    fn open(&self) -> Result<Currency, CartError> {
        let currency = self.currency.ok_or(CartError::NotFound)?;
        if self.status != CartStatus::Open {
            return Err(CartError::Locked);
        }
        Ok(currency)
    }

    fn line(&self, id: LineId) -> Result<&CartLine, CartError> {
        self.lines.get(&id).ok_or(CartError::UnknownLine(id))
    }

    fn invalidate(&self, merchant: &MerchantId) -> Option<CartEvent> {
        self.quotes
            .contains_key(merchant)
            .then(|| CartEvent::QuoteInvalidated {
                merchant: merchant.clone(),
            })
    }

    fn merchants(&self) -> BTreeSet<&MerchantId> {
        self.lines.values().map(|line| &line.merchant).collect()
    }

    fn sub_cart(
        &self,
        merchant: &MerchantId,
        currency: Currency,
        tolerance_bps: u32,
        at: OffsetDateTime,
    ) -> Result<SubCart, CartError> {
        let quote = self
            .quotes
            .get(merchant)
            .ok_or_else(|| CartError::MissingQuote(merchant.clone()))?;
        if at >= quote.expires_at {
            return Err(CartError::QuoteExpired(merchant.clone()));
        }
        let lines: Vec<(&LineId, &CartLine)> = self
            .lines
            .iter()
            .filter(|(_, l)| &l.merchant == merchant)
            .collect();
        let seen_total = lines
            .iter()
            .try_fold(Money::zero(currency), |total, (_, line)| {
                total.checked_add(line.unit_price.checked_mul(line.quantity)?)
            })?;
        let grand_total = quote
            .items_total
            .checked_add(quote.shipping)?
            .checked_add(quote.tax)?;
        let allowed = seen_total.checked_add(seen_total.checked_basis_points(tolerance_bps)?)?;
        let decision = if quote.items_total.try_cmp(allowed)?.is_gt() {
            let excess = i128::from(quote.items_total.minor - seen_total.minor);
            let drift_bps = u64::try_from(excess * 10_000 / i128::from(seen_total.minor.max(1)))
                .unwrap_or(u64::MAX);
            SubCartDecision::AwaitApproval { drift_bps }
        } else {
            SubCartDecision::Proceed
        };
        Ok(SubCart {
            merchant: merchant.clone(),
            lines: lines.iter().map(|(id, _)| **id).collect(),
            categories: lines.iter().map(|(_, l)| l.category.clone()).collect(),
            seen_total,
            quote: quote.clone(),
            grand_total,
            decision,
        })
    }
}

impl Aggregate for Cart {
    const TYPE: &'static str = "cart";
    // 2: the state keeps the sub-carts of `CheckoutStarted`.
    const SNAPSHOT_VERSION: u32 = 2;
    type Command = CartCommand;
    type Event = CartEvent;
    type Error = CartError;

    fn decide(&self, command: CartCommand) -> Result<Vec<CartEvent>, CartError> {
        use CartCommand as C;
        use CartEvent as E;
        match command {
            C::Create {
                cart_id,
                shopper,
                mandate_id,
                currency,
                at,
            } => {
                if self.currency.is_some() {
                    return Err(CartError::AlreadyExists);
                }
                Ok(vec![E::CartCreated {
                    cart_id,
                    shopper,
                    mandate_id,
                    currency,
                    created_at: at,
                }])
            }
            C::AddLine { line_id, line } => {
                let currency = self.open()?;
                if self.lines.contains_key(&line_id) {
                    return Err(CartError::DuplicateLine(line_id));
                }
                if !(1..=MAX_QUANTITY).contains(&line.quantity) {
                    return Err(CartError::QuantityOutOfRange);
                }
                Money::zero(currency).try_cmp(line.unit_price)?;
                if !line.unit_price.is_positive() {
                    return Err(CartError::PriceNotPositive);
                }
                line.unit_price.checked_mul(line.quantity)?;
                let title_len = line.title.trim().chars().count();
                if title_len == 0
                    || title_len > MAX_TITLE
                    || line.title.chars().any(char::is_control)
                {
                    return Err(CartError::InvalidTitle);
                }
                let invalidated = self.invalidate(&line.merchant);
                Ok(std::iter::once(E::LineAdded { line_id, line })
                    .chain(invalidated)
                    .collect())
            }
            C::ChangeQuantity { line_id, quantity } => {
                self.open()?;
                let line = self.line(line_id)?;
                if !(1..=MAX_QUANTITY).contains(&quantity) {
                    return Err(CartError::QuantityOutOfRange);
                }
                line.unit_price.checked_mul(quantity)?;
                if line.quantity == quantity {
                    return Ok(vec![]);
                }
                let invalidated = self.invalidate(&line.merchant);
                Ok(
                    std::iter::once(E::LineQuantityChanged { line_id, quantity })
                        .chain(invalidated)
                        .collect(),
                )
            }
            C::RemoveLine { line_id } => {
                self.open()?;
                let line = self.line(line_id)?;
                let invalidated = self.invalidate(&line.merchant);
                Ok(std::iter::once(E::LineRemoved { line_id })
                    .chain(invalidated)
                    .collect())
            }
            C::SetShippingAddress { address } => {
                self.open()?;
                if self.address.as_ref() == Some(&address) {
                    return Ok(vec![]);
                }
                let invalidated = self.quotes.keys().map(|merchant| E::QuoteInvalidated {
                    merchant: merchant.clone(),
                });
                Ok(std::iter::once(E::ShippingAddressSet { address })
                    .chain(invalidated)
                    .collect())
            }
            C::RecordQuote {
                merchant,
                quote,
                at,
            } => {
                let currency = self.open()?;
                if self.address.is_none() {
                    return Err(CartError::AddressRequired);
                }
                if !self.merchants().contains(&merchant) {
                    return Err(CartError::NoLinesForMerchant(merchant));
                }
                for amount in [quote.items_total, quote.shipping, quote.tax] {
                    Money::zero(currency).try_cmp(amount)?;
                    if amount.is_negative() {
                        return Err(CartError::NegativeQuote);
                    }
                }
                quote
                    .items_total
                    .checked_add(quote.shipping)?
                    .checked_add(quote.tax)?;
                if quote.expires_at <= at {
                    return Err(CartError::QuoteAlreadyExpired);
                }
                Ok(vec![E::QuoteRecorded { merchant, quote }])
            }
            C::StartCheckout {
                price_drift_tolerance_bps,
                at,
            } => {
                let currency = self.open()?;
                if self.lines.is_empty() {
                    return Err(CartError::Empty);
                }
                if self.address.is_none() {
                    return Err(CartError::AddressRequired);
                }
                let sub_carts = self
                    .merchants()
                    .into_iter()
                    .map(|merchant| {
                        self.sub_cart(merchant, currency, price_drift_tolerance_bps, at)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(vec![E::CheckoutStarted {
                    sub_carts,
                    started_at: at,
                }])
            }
        }
    }

    fn apply(&mut self, event: CartEvent) {
        use CartEvent as E;
        match event {
            E::CartCreated {
                cart_id,
                shopper,
                mandate_id,
                currency,
                ..
            } => {
                self.id = Some(cart_id);
                self.shopper = shopper;
                self.mandate_id = mandate_id;
                self.currency = Some(currency);
            }
            E::LineAdded { line_id, line } => {
                self.lines.insert(line_id, line);
            }
            E::LineQuantityChanged { line_id, quantity } => {
                if let Some(line) = self.lines.get_mut(&line_id) {
                    line.quantity = quantity;
                }
            }
            E::LineRemoved { line_id } => {
                self.lines.remove(&line_id);
            }
            E::ShippingAddressSet { address } => self.address = Some(address),
            E::QuoteRecorded { merchant, quote } => {
                self.quotes.insert(merchant, quote);
            }
            E::QuoteInvalidated { merchant } => {
                self.quotes.remove(&merchant);
            }
            E::CheckoutStarted { sub_carts, .. } => {
                self.status = CartStatus::CheckingOut;
                self.sub_carts = sub_carts;
            }
        }
    }
}
