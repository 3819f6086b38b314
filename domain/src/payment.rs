//! Payment: one single-use virtual card per order, with a spend cap and a merchant lock.
//!
//! Only the issuer's card *reference* is ever stored; a card number or CVC never enters
//! an event. Authorization requests are decided by rule and every decision — approve or
//! decline — is recorded with its reason.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ids::{AuthorizationId, MandateId, MerchantId, OrderId, PaymentId, RefundId};
use crate::money::{Money, MoneyError};
use crate::{Aggregate, DomainEvent};

/// The issuer's id for a card, e.g. `ic_1Mx…`. Rejects anything that could be a card
/// number: references are short tokens and never contain a run of 12 or more digits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CardReference(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a card reference is 1 to 64 letters, digits, `_` or `-`, and never a card number")]
pub struct InvalidCardReference;

impl CardReference {
    pub fn parse(text: &str) -> Result<Self, InvalidCardReference> {
        let charset = !text.is_empty()
            && text.len() <= 64
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        let longest_digit_run = text
            .split(|c: char| !c.is_ascii_digit())
            .map(str::len)
            .max()
            .unwrap_or(0);
        if charset && longest_digit_run < 12 {
            Ok(Self(text.to_owned()))
        } else {
            Err(InvalidCardReference)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What may be shown of a card: its brand and its last four digits, never more.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "CardDisplayFields", into = "CardDisplayFields")]
pub struct CardDisplay {
    brand: String,
    last4: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CardDisplayFields {
    brand: String,
    last4: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a card display is a brand of 1 to 20 letters and exactly 4 digits")]
pub struct InvalidCardDisplay;

impl CardDisplay {
    pub fn parse(brand: &str, last4: &str) -> Result<Self, InvalidCardDisplay> {
        let brand_ok = (1..=20).contains(&brand.len())
            && brand.bytes().all(|b| b.is_ascii_alphabetic() || b == b' ');
        let last4_ok = last4.len() == 4 && last4.bytes().all(|b| b.is_ascii_digit());
        if brand_ok && last4_ok {
            Ok(Self {
                brand: brand.to_owned(),
                last4: last4.to_owned(),
            })
        } else {
            Err(InvalidCardDisplay)
        }
    }

    pub fn brand(&self) -> &str {
        &self.brand
    }

    pub fn last4(&self) -> &str {
        &self.last4
    }
}

impl TryFrom<CardDisplayFields> for CardDisplay {
    type Error = InvalidCardDisplay;
    fn try_from(fields: CardDisplayFields) -> Result<Self, Self::Error> {
        Self::parse(&fields.brand, &fields.last4)
    }
}

impl From<CardDisplay> for CardDisplayFields {
    fn from(display: CardDisplay) -> Self {
        Self {
            brand: display.brand,
            last4: display.last4,
        }
    }
}

impl TryFrom<String> for CardReference {
    type Error = InvalidCardReference;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        Self::parse(&text)
    }
}

impl From<CardReference> for String {
    fn from(reference: CardReference) -> Self {
        reference.0
    }
}

/// Why an authorization request was declined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeclineReason {
    CardNotIssued,
    OverCap,
    CurrencyMismatch,
    MerchantMismatch,
    CardAlreadyUsed,
    MandateRevoked,
    CardExpired,
    CardVoided,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    #[default]
    CardRequested,
    CardIssued,
    Authorized,
    Captured,
    Voided,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PaymentCommand {
    RequestCard {
        payment_id: PaymentId,
        order_id: OrderId,
        shopper: String,
        mandate_id: Option<MandateId>,
        merchant: MerchantId,
        cap: Money,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    RecordCardIssued {
        card: CardReference,
        /// Brand and last four digits, for the merchant's checkout and the shopper.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        display: Option<CardDisplay>,
        #[serde(with = "time::serde::rfc3339")]
        expires_at: OffsetDateTime,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    DecideAuthorization {
        authorization_id: AuthorizationId,
        amount: Money,
        merchant: MerchantId,
        /// Read from the mandate by the caller at decision time.
        mandate_revoked: bool,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    Capture {
        authorization_id: AuthorizationId,
        amount: Money,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    Refund {
        refund_id: RefundId,
        amount: Money,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    Void {
        reason: String,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaymentEvent {
    CardRequested {
        payment_id: PaymentId,
        order_id: OrderId,
        shopper: String,
        mandate_id: Option<MandateId>,
        merchant: MerchantId,
        cap: Money,
        #[serde(with = "time::serde::rfc3339")]
        requested_at: OffsetDateTime,
    },
    CardIssued {
        card: CardReference,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        display: Option<CardDisplay>,
        #[serde(with = "time::serde::rfc3339")]
        expires_at: OffsetDateTime,
        #[serde(with = "time::serde::rfc3339")]
        issued_at: OffsetDateTime,
    },
    AuthorizationApproved {
        authorization_id: AuthorizationId,
        amount: Money,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    AuthorizationDeclined {
        authorization_id: AuthorizationId,
        amount: Money,
        reason: DeclineReason,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    PaymentCaptured {
        authorization_id: AuthorizationId,
        amount: Money,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    PaymentRefunded {
        refund_id: RefundId,
        amount: Money,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    CardVoided {
        reason: String,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
}

impl DomainEvent for PaymentEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::CardRequested { .. } => "CardRequested",
            Self::CardIssued { .. } => "CardIssued",
            Self::AuthorizationApproved { .. } => "AuthorizationApproved",
            Self::AuthorizationDeclined { .. } => "AuthorizationDeclined",
            Self::PaymentCaptured { .. } => "PaymentCaptured",
            Self::PaymentRefunded { .. } => "PaymentRefunded",
            Self::CardVoided { .. } => "CardVoided",
        }
    }

    fn event_version(&self) -> &'static str {
        "1"
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    #[error("payment does not exist")]
    NotFound,
    #[error("payment already exists")]
    AlreadyExists,
    #[error("the cap must be positive")]
    CapNotPositive,
    #[error("the card was already issued")]
    AlreadyIssued,
    #[error("authorization {0} was already decided")]
    DuplicateAuthorization(AuthorizationId),
    #[error("no approved authorization {0}")]
    UnknownAuthorization(AuthorizationId),
    #[error("authorization {0} was already captured")]
    AlreadyCaptured(AuthorizationId),
    #[error("{amount} exceeds the authorized {authorized}")]
    OverAuthorization { amount: Money, authorized: Money },
    #[error("refund {0} already recorded")]
    DuplicateRefund(RefundId),
    #[error("{requested} exceeds the {refundable} captured and not yet refunded")]
    OverRefund { requested: Money, refundable: Money },
    #[error("amount must be positive")]
    AmountNotPositive,
    #[error("a captured payment cannot be voided")]
    AlreadyCapturedCannotVoid,
    #[error("the card is already voided")]
    AlreadyVoided,
    #[error(transparent)]
    Money(#[from] MoneyError),
}

impl PaymentError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound => "payment_not_found",
            Self::AlreadyExists => "payment_exists",
            Self::CapNotPositive => "cap_not_positive",
            Self::AlreadyIssued => "card_already_issued",
            Self::DuplicateAuthorization(_) => "duplicate_authorization",
            Self::UnknownAuthorization(_) => "unknown_authorization",
            Self::AlreadyCaptured(_) => "already_captured",
            Self::OverAuthorization { .. } => "over_authorization",
            Self::DuplicateRefund(_) => "duplicate_refund",
            Self::OverRefund { .. } => "over_refund",
            Self::AmountNotPositive => "amount_not_positive",
            Self::AlreadyCapturedCannotVoid => "captured_cannot_void",
            Self::AlreadyVoided => "already_voided",
            Self::Money(MoneyError::CurrencyMismatch(..)) => "currency_mismatch",
            Self::Money(_) => "amount_out_of_range",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardTerms {
    pub order_id: OrderId,
    pub shopper: String,
    pub mandate_id: Option<MandateId>,
    pub merchant: MerchantId,
    pub cap: Money,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    pub id: Option<PaymentId>,
    pub terms: Option<CardTerms>,
    pub card: Option<(CardReference, OffsetDateTime)>,
    #[serde(default)]
    pub card_display: Option<CardDisplay>,
    pub status: PaymentStatus,
    /// Every decided authorization: amount, and whether it was approved.
    pub authorizations: BTreeMap<AuthorizationId, (Money, bool)>,
    pub captures: BTreeMap<AuthorizationId, Money>,
    pub captured_minor: i64,
    pub refunds: BTreeMap<RefundId, Money>,
    pub refunded_minor: i64,
}

impl Payment {
    fn terms(&self) -> Result<&CardTerms, PaymentError> {
        self.terms.as_ref().ok_or(PaymentError::NotFound)
    }

    /// The rule for an authorization request: the first failing check declines it.
    fn decline_reason(
        &self,
        terms: &CardTerms,
        amount: Money,
        merchant: &MerchantId,
        mandate_revoked: bool,
        at: OffsetDateTime,
    ) -> Option<DeclineReason> {
        let Some((_, expires_at)) = &self.card else {
            return Some(DeclineReason::CardNotIssued);
        };
        if self.status == PaymentStatus::Voided {
            return Some(DeclineReason::CardVoided);
        }
        if mandate_revoked {
            return Some(DeclineReason::MandateRevoked);
        }
        if at >= *expires_at {
            return Some(DeclineReason::CardExpired);
        }
        if merchant != &terms.merchant {
            return Some(DeclineReason::MerchantMismatch);
        }
        if amount.currency != terms.cap.currency {
            return Some(DeclineReason::CurrencyMismatch);
        }
        if !amount.is_positive() || amount.minor > terms.cap.minor {
            return Some(DeclineReason::OverCap);
        }
        if self.authorizations.values().any(|(_, approved)| *approved) {
            return Some(DeclineReason::CardAlreadyUsed);
        }
        None
    }
}

impl Aggregate for Payment {
    const TYPE: &'static str = "payment";
    type Command = PaymentCommand;
    type Event = PaymentEvent;
    type Error = PaymentError;

    fn decide(&self, command: PaymentCommand) -> Result<Vec<PaymentEvent>, PaymentError> {
        use PaymentCommand as C;
        use PaymentEvent as E;
        let event = match command {
            C::RequestCard {
                payment_id,
                order_id,
                shopper,
                mandate_id,
                merchant,
                cap,
                at,
            } => {
                if self.terms.is_some() {
                    return Err(PaymentError::AlreadyExists);
                }
                if !cap.is_positive() {
                    return Err(PaymentError::CapNotPositive);
                }
                E::CardRequested {
                    payment_id,
                    order_id,
                    shopper,
                    mandate_id,
                    merchant,
                    cap,
                    requested_at: at,
                }
            }
            C::RecordCardIssued {
                card,
                display,
                expires_at,
                at,
            } => {
                self.terms()?;
                if self.card.is_some() {
                    return Err(PaymentError::AlreadyIssued);
                }
                if self.status == PaymentStatus::Voided {
                    return Err(PaymentError::AlreadyVoided);
                }
                E::CardIssued {
                    card,
                    display,
                    expires_at,
                    issued_at: at,
                }
            }
            C::DecideAuthorization {
                authorization_id,
                amount,
                merchant,
                mandate_revoked,
                at,
            } => {
                let terms = self.terms()?;
                if self.authorizations.contains_key(&authorization_id) {
                    return Err(PaymentError::DuplicateAuthorization(authorization_id));
                }
                match self.decline_reason(terms, amount, &merchant, mandate_revoked, at) {
                    Some(reason) => E::AuthorizationDeclined {
                        authorization_id,
                        amount,
                        reason,
                        at,
                    },
                    None => E::AuthorizationApproved {
                        authorization_id,
                        amount,
                        at,
                    },
                }
            }
            C::Capture {
                authorization_id,
                amount,
                at,
            } => {
                self.terms()?;
                let (authorized, _) = self
                    .authorizations
                    .get(&authorization_id)
                    .filter(|(_, approved)| *approved)
                    .ok_or(PaymentError::UnknownAuthorization(authorization_id))?;
                if self.captures.contains_key(&authorization_id) {
                    return Err(PaymentError::AlreadyCaptured(authorization_id));
                }
                if !amount.is_positive() {
                    return Err(PaymentError::AmountNotPositive);
                }
                if amount.try_cmp(*authorized)?.is_gt() {
                    return Err(PaymentError::OverAuthorization {
                        amount,
                        authorized: *authorized,
                    });
                }
                E::PaymentCaptured {
                    authorization_id,
                    amount,
                    at,
                }
            }
            C::Refund {
                refund_id,
                amount,
                at,
            } => {
                let terms = self.terms()?;
                if self.refunds.contains_key(&refund_id) {
                    return Err(PaymentError::DuplicateRefund(refund_id));
                }
                if !amount.is_positive() {
                    return Err(PaymentError::AmountNotPositive);
                }
                let currency = terms.cap.currency;
                let refundable = Money::new(self.captured_minor, currency)
                    .checked_sub(Money::new(self.refunded_minor, currency))?;
                if amount.try_cmp(refundable)?.is_gt() {
                    return Err(PaymentError::OverRefund {
                        requested: amount,
                        refundable,
                    });
                }
                E::PaymentRefunded {
                    refund_id,
                    amount,
                    at,
                }
            }
            C::Void { reason, at } => {
                self.terms()?;
                match self.status {
                    PaymentStatus::Captured => return Err(PaymentError::AlreadyCapturedCannotVoid),
                    PaymentStatus::Voided => return Err(PaymentError::AlreadyVoided),
                    _ => {}
                }
                E::CardVoided {
                    reason: reason.chars().take(500).collect(),
                    at,
                }
            }
        };
        Ok(vec![event])
    }

    fn apply(&mut self, event: PaymentEvent) {
        use PaymentEvent as E;
        match event {
            E::CardRequested {
                payment_id,
                order_id,
                shopper,
                mandate_id,
                merchant,
                cap,
                ..
            } => {
                self.id = Some(payment_id);
                self.terms = Some(CardTerms {
                    order_id,
                    shopper,
                    mandate_id,
                    merchant,
                    cap,
                });
                self.status = PaymentStatus::CardRequested;
            }
            E::CardIssued {
                card,
                display,
                expires_at,
                ..
            } => {
                self.card = Some((card, expires_at));
                self.card_display = display;
                self.status = PaymentStatus::CardIssued;
            }
            E::AuthorizationApproved {
                authorization_id,
                amount,
                ..
            } => {
                self.authorizations.insert(authorization_id, (amount, true));
                self.status = PaymentStatus::Authorized;
            }
            E::AuthorizationDeclined {
                authorization_id,
                amount,
                ..
            } => {
                self.authorizations
                    .insert(authorization_id, (amount, false));
            }
            E::PaymentCaptured {
                authorization_id,
                amount,
                ..
            } => {
                self.captures.insert(authorization_id, amount);
                self.captured_minor = self.captured_minor.saturating_add(amount.minor);
                self.status = PaymentStatus::Captured;
            }
            E::PaymentRefunded {
                refund_id, amount, ..
            } => {
                self.refunds.insert(refund_id, amount);
                self.refunded_minor = self.refunded_minor.saturating_add(amount.minor);
            }
            E::CardVoided { .. } => self.status = PaymentStatus::Voided,
        }
    }
}
