//! Mandate: a shopper's guardrails for an agent.
//!
//! Checkouts *reserve* budget before anything is bought; a failed or cancelled checkout
//! releases its reservation; a placed order commits it. Every reservation is decided by
//! this aggregate alone, one at a time (optimistic concurrency on its stream), so
//! concurrent checkouts can never together exceed a budget.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use time::{Date, Duration, OffsetDateTime};

use crate::ids::{Category, MandateId, MerchantId, ReservationId};
use crate::money::{Currency, Money, MoneyError};
use crate::{Aggregate, DomainEvent};

/// Whether the agent may buy, or only guide the shopper.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The agent proposes; the shopper buys through a deep link.
    Assist,
    /// The agent buys within the mandate.
    Autopilot,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetPeriod {
    Day,
    /// ISO week, Monday to Sunday, UTC.
    Week,
    /// Calendar month, UTC.
    Month,
}

impl BudgetPeriod {
    /// First day of the period containing `at`.
    pub fn start_of(self, at: OffsetDateTime) -> Date {
        let date = at.to_offset(time::UtcOffset::UTC).date();
        match self {
            Self::Day => date,
            Self::Week => {
                date - Duration::days(i64::from(date.weekday().number_days_from_monday()))
            }
            Self::Month => date.replace_day(1).unwrap_or(date),
        }
    }
}

/// A spending limit per budget period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodBudget {
    pub period: BudgetPeriod,
    pub limit: Money,
}

/// What the shopper allows. All amounts are in `currency`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MandateTerms {
    pub mode: Mode,
    pub currency: Currency,
    pub period_budget: Option<PeriodBudget>,
    pub per_order_limit: Option<Money>,
    /// When not empty, only these merchants may be used.
    pub allowed_merchants: BTreeSet<MerchantId>,
    pub blocked_merchants: BTreeSet<MerchantId>,
    pub blocked_categories: BTreeSet<Category>,
    /// Orders above this wait for the shopper's explicit approval.
    pub approval_threshold: Option<Money>,
    /// How far (in basis points) a quoted price may exceed the price the agent saw
    /// before the checkout waits for approval.
    pub price_drift_tolerance_bps: u32,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
}

/// Why a reservation was released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseReason {
    CheckoutFailed,
    CheckoutCancelled,
    ApprovalDenied,
    ApprovalExpired,
    MandateRevoked,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MandateCommand {
    Create {
        mandate_id: MandateId,
        shopper: String,
        terms: MandateTerms,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    Reserve {
        reservation_id: ReservationId,
        merchant: MerchantId,
        categories: BTreeSet<Category>,
        amount: Money,
        /// The caller has its own reason for the shopper to approve (e.g. price drift),
        /// whatever the threshold says.
        approval_required: bool,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    ApproveReservation {
        reservation_id: ReservationId,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    DenyReservation {
        reservation_id: ReservationId,
    },
    ReleaseReservation {
        reservation_id: ReservationId,
        reason: ReleaseReason,
    },
    /// The order was placed: the reservation becomes spend (at most the reserved amount).
    CommitSpend {
        reservation_id: ReservationId,
        amount: Money,
    },
    Revoke {
        reason: String,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MandateEvent {
    MandateCreated {
        mandate_id: MandateId,
        shopper: String,
        terms: MandateTerms,
        #[serde(with = "time::serde::rfc3339")]
        created_at: OffsetDateTime,
    },
    BudgetReserved {
        reservation_id: ReservationId,
        merchant: MerchantId,
        amount: Money,
        /// First day of the budget period the reservation counts against.
        #[serde(with = "crate::serde_time::date")]
        period_start: Date,
        /// Above the approval threshold: the checkout waits for the shopper.
        awaiting_approval: bool,
    },
    ReservationApproved {
        reservation_id: ReservationId,
    },
    ReservationReleased {
        reservation_id: ReservationId,
        reason: ReleaseReason,
    },
    SpendCommitted {
        reservation_id: ReservationId,
        amount: Money,
        #[serde(with = "crate::serde_time::date")]
        period_start: Date,
    },
    MandateRevoked {
        reason: String,
        #[serde(with = "time::serde::rfc3339")]
        revoked_at: OffsetDateTime,
    },
}

impl DomainEvent for MandateEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::MandateCreated { .. } => "MandateCreated",
            Self::BudgetReserved { .. } => "BudgetReserved",
            Self::ReservationApproved { .. } => "ReservationApproved",
            Self::ReservationReleased { .. } => "ReservationReleased",
            Self::SpendCommitted { .. } => "SpendCommitted",
            Self::MandateRevoked { .. } => "MandateRevoked",
        }
    }

    fn event_version(&self) -> &'static str {
        "1"
    }
}

/// Why the mandate refused. `code()` is stable and machine-readable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MandateError {
    #[error("mandate does not exist")]
    NotFound,
    #[error("mandate already exists")]
    AlreadyExists,
    #[error("invalid mandate terms: {0}")]
    InvalidTerms(String),
    #[error("mandate has been revoked")]
    Revoked,
    #[error("mandate has expired")]
    Expired,
    #[error("an assist-mode mandate never buys")]
    AssistModeNeverBuys,
    #[error("merchant {0} is not on the mandate's allow list")]
    MerchantNotAllowed(MerchantId),
    #[error("merchant {0} is blocked by the mandate")]
    MerchantBlocked(MerchantId),
    #[error("category {0} is blocked by the mandate")]
    CategoryBlocked(Category),
    #[error("amount must be positive")]
    AmountNotPositive,
    #[error(transparent)]
    Money(#[from] MoneyError),
    #[error("{amount} exceeds the per-order limit of {limit}")]
    OverPerOrderLimit { amount: Money, limit: Money },
    #[error("{amount} exceeds the {remaining} left in this period's budget")]
    OverPeriodBudget { amount: Money, remaining: Money },
    #[error("reservation {0} already exists")]
    DuplicateReservation(ReservationId),
    #[error("no open reservation {0}")]
    UnknownReservation(ReservationId),
    #[error("reservation {0} is not awaiting approval")]
    NotAwaitingApproval(ReservationId),
    #[error("reservation {0} is awaiting approval")]
    AwaitingApproval(ReservationId),
    #[error("{amount} exceeds the reserved {reserved}")]
    OverReservation { amount: Money, reserved: Money },
}

impl MandateError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound => "mandate_not_found",
            Self::AlreadyExists => "mandate_exists",
            Self::InvalidTerms(_) => "invalid_mandate_terms",
            Self::Revoked => "mandate_revoked",
            Self::Expired => "mandate_expired",
            Self::AssistModeNeverBuys => "assist_mode_never_buys",
            Self::MerchantNotAllowed(_) => "merchant_not_allowed",
            Self::MerchantBlocked(_) => "merchant_blocked",
            Self::CategoryBlocked(_) => "category_blocked",
            Self::AmountNotPositive => "amount_not_positive",
            Self::Money(MoneyError::CurrencyMismatch(..)) => "currency_mismatch",
            Self::Money(_) => "amount_out_of_range",
            Self::OverPerOrderLimit { .. } => "over_per_order_limit",
            Self::OverPeriodBudget { .. } => "over_period_budget",
            Self::DuplicateReservation(_) => "duplicate_reservation",
            Self::UnknownReservation(_) => "unknown_reservation",
            Self::NotAwaitingApproval(_) => "not_awaiting_approval",
            Self::AwaitingApproval(_) => "awaiting_approval",
            Self::OverReservation { .. } => "over_reservation",
        }
    }
}

/// First day of a budget period; a string (`2026-11-23`) on the wire, so it can key a
/// JSON map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PeriodStart(#[serde(with = "crate::serde_time::date")] pub Date);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub merchant: MerchantId,
    pub amount: Money,
    #[serde(with = "crate::serde_time::date")]
    pub period_start: Date,
    pub awaiting_approval: bool,
}

/// Current state of a mandate.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mandate {
    pub id: Option<MandateId>,
    pub shopper: String,
    pub terms: Option<MandateTerms>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub created_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    /// Open reservations: held or awaiting approval.
    pub reservations: BTreeMap<ReservationId, Reservation>,
    /// Committed spend per budget period, in minor units of the mandate's currency.
    pub spent: BTreeMap<PeriodStart, i64>,
}

impl Mandate {
    fn terms(&self) -> Result<&MandateTerms, MandateError> {
        self.terms.as_ref().ok_or(MandateError::NotFound)
    }

    fn ensure_active(&self, at: OffsetDateTime) -> Result<&MandateTerms, MandateError> {
        let terms = self.terms()?;
        if self.revoked_at.is_some() {
            return Err(MandateError::Revoked);
        }
        if terms.expires_at.is_some_and(|expiry| at >= expiry) {
            return Err(MandateError::Expired);
        }
        Ok(terms)
    }

    /// Committed plus reserved in the period starting `period_start`.
    pub fn used_in_period(
        &self,
        currency: Currency,
        period_start: Date,
    ) -> Result<Money, MoneyError> {
        let spent = Money::new(
            self.spent
                .get(&PeriodStart(period_start))
                .copied()
                .unwrap_or(0),
            currency,
        );
        let reserved = self
            .reservations
            .values()
            .filter(|r| r.period_start == period_start)
            .map(|r| r.amount);
        spent.checked_add(Money::checked_sum(currency, reserved)?)
    }

    fn reservation(&self, id: ReservationId) -> Result<&Reservation, MandateError> {
        self.reservations
            .get(&id)
            .ok_or(MandateError::UnknownReservation(id))
    }

    fn reserve(
        &self,
        reservation_id: ReservationId,
        merchant: MerchantId,
        categories: &BTreeSet<Category>,
        amount: Money,
        approval_required: bool,
        at: OffsetDateTime,
    ) -> Result<MandateEvent, MandateError> {
        let terms = self.ensure_active(at)?;
        if terms.mode == Mode::Assist {
            return Err(MandateError::AssistModeNeverBuys);
        }
        if self.reservations.contains_key(&reservation_id) {
            return Err(MandateError::DuplicateReservation(reservation_id));
        }
        if !terms.allowed_merchants.is_empty() && !terms.allowed_merchants.contains(&merchant) {
            return Err(MandateError::MerchantNotAllowed(merchant));
        }
        if terms.blocked_merchants.contains(&merchant) {
            return Err(MandateError::MerchantBlocked(merchant));
        }
        // A blocked category blocks what lies beneath it: `alcohol` blocks `alcohol/wine`.
        if let Some(category) = categories.iter().find(|category| {
            terms
                .blocked_categories
                .iter()
                .any(|blocked| crate::offer::taxonomy::is_within(category, blocked))
        }) {
            return Err(MandateError::CategoryBlocked(category.clone()));
        }
        if !amount.is_positive() {
            return Err(MandateError::AmountNotPositive);
        }
        Money::zero(terms.currency).try_cmp(amount)?;
        if let Some(limit) = terms.per_order_limit
            && amount.minor > limit.minor
        {
            return Err(MandateError::OverPerOrderLimit { amount, limit });
        }
        let period_start = terms
            .period_budget
            .map_or_else(|| BudgetPeriod::Day.start_of(at), |b| b.period.start_of(at));
        if let Some(budget) = terms.period_budget {
            let used = self.used_in_period(terms.currency, period_start)?;
            let remaining = budget.limit.checked_sub(used)?;
            if amount.minor > remaining.minor {
                return Err(MandateError::OverPeriodBudget { amount, remaining });
            }
        }
        let awaiting_approval = approval_required
            || terms
                .approval_threshold
                .is_some_and(|threshold| amount.minor > threshold.minor);
        Ok(MandateEvent::BudgetReserved {
            reservation_id,
            merchant,
            amount,
            period_start,
            awaiting_approval,
        })
    }

    fn validate_terms(terms: &MandateTerms) -> Result<(), MandateError> {
        let amounts = terms
            .period_budget
            .map(|b| b.limit)
            .into_iter()
            .chain(terms.per_order_limit)
            .chain(terms.approval_threshold);
        for amount in amounts {
            if amount.currency != terms.currency {
                return Err(MandateError::InvalidTerms(format!(
                    "every limit must be in {}, got {}",
                    terms.currency, amount.currency
                )));
            }
            if !amount.is_positive() {
                return Err(MandateError::InvalidTerms("limits must be positive".into()));
            }
        }
        if terms.price_drift_tolerance_bps > 10_000 {
            return Err(MandateError::InvalidTerms(
                "price drift tolerance is at most 10000 basis points (100 %)".into(),
            ));
        }
        if let Some(blocked) = terms
            .allowed_merchants
            .intersection(&terms.blocked_merchants)
            .next()
        {
            return Err(MandateError::InvalidTerms(format!(
                "merchant {blocked} is both allowed and blocked"
            )));
        }
        Ok(())
    }
}

impl Aggregate for Mandate {
    const TYPE: &'static str = "mandate";
    type Command = MandateCommand;
    type Event = MandateEvent;
    type Error = MandateError;

    fn decide(&self, command: MandateCommand) -> Result<Vec<MandateEvent>, MandateError> {
        use MandateCommand as C;
        use MandateEvent as E;
        match command {
            C::Create {
                mandate_id,
                shopper,
                terms,
                at,
            } => {
                if self.terms.is_some() {
                    return Err(MandateError::AlreadyExists);
                }
                Self::validate_terms(&terms)?;
                if terms.expires_at.is_some_and(|expiry| expiry <= at) {
                    return Err(MandateError::InvalidTerms(
                        "expiry must be in the future".into(),
                    ));
                }
                Ok(vec![E::MandateCreated {
                    mandate_id,
                    shopper,
                    terms,
                    created_at: at,
                }])
            }
            C::Reserve {
                reservation_id,
                merchant,
                categories,
                amount,
                approval_required,
                at,
            } => Ok(vec![self.reserve(
                reservation_id,
                merchant,
                &categories,
                amount,
                approval_required,
                at,
            )?]),
            C::ApproveReservation { reservation_id, at } => {
                self.ensure_active(at)?;
                if !self.reservation(reservation_id)?.awaiting_approval {
                    return Err(MandateError::NotAwaitingApproval(reservation_id));
                }
                Ok(vec![E::ReservationApproved { reservation_id }])
            }
            C::DenyReservation { reservation_id } => {
                self.terms()?;
                if !self.reservation(reservation_id)?.awaiting_approval {
                    return Err(MandateError::NotAwaitingApproval(reservation_id));
                }
                Ok(vec![E::ReservationReleased {
                    reservation_id,
                    reason: ReleaseReason::ApprovalDenied,
                }])
            }
            C::ReleaseReservation {
                reservation_id,
                reason,
            } => {
                self.terms()?;
                self.reservation(reservation_id)?;
                Ok(vec![E::ReservationReleased {
                    reservation_id,
                    reason,
                }])
            }
            C::CommitSpend {
                reservation_id,
                amount,
            } => {
                self.terms()?;
                // Allowed after revocation: an order already placed must be accounted for.
                let reservation = self.reservation(reservation_id)?;
                if reservation.awaiting_approval {
                    return Err(MandateError::AwaitingApproval(reservation_id));
                }
                if !amount.is_positive() {
                    return Err(MandateError::AmountNotPositive);
                }
                if amount.try_cmp(reservation.amount)?.is_gt() {
                    return Err(MandateError::OverReservation {
                        amount,
                        reserved: reservation.amount,
                    });
                }
                Ok(vec![E::SpendCommitted {
                    reservation_id,
                    amount,
                    period_start: reservation.period_start,
                }])
            }
            C::Revoke { reason, at } => {
                self.terms()?;
                if self.revoked_at.is_some() {
                    return Err(MandateError::Revoked);
                }
                // Reservations waiting for approval can no longer be approved: release
                // them now. Held ones belong to checkouts in flight, which stop on this
                // event and release or commit them.
                let waiting = self
                    .reservations
                    .iter()
                    .filter(|(_, r)| r.awaiting_approval)
                    .map(|(id, _)| E::ReservationReleased {
                        reservation_id: *id,
                        reason: ReleaseReason::MandateRevoked,
                    });
                Ok(std::iter::once(E::MandateRevoked {
                    reason,
                    revoked_at: at,
                })
                .chain(waiting)
                .collect())
            }
        }
    }

    fn apply(&mut self, event: MandateEvent) {
        use MandateEvent as E;
        match event {
            E::MandateCreated {
                mandate_id,
                shopper,
                terms,
                created_at,
            } => {
                self.id = Some(mandate_id);
                self.shopper = shopper;
                self.terms = Some(terms);
                self.created_at = Some(created_at);
            }
            E::BudgetReserved {
                reservation_id,
                merchant,
                amount,
                period_start,
                awaiting_approval,
            } => {
                self.reservations.insert(
                    reservation_id,
                    Reservation {
                        merchant,
                        amount,
                        period_start,
                        awaiting_approval,
                    },
                );
            }
            E::ReservationApproved { reservation_id } => {
                if let Some(reservation) = self.reservations.get_mut(&reservation_id) {
                    reservation.awaiting_approval = false;
                }
            }
            E::ReservationReleased { reservation_id, .. } => {
                self.reservations.remove(&reservation_id);
            }
            E::SpendCommitted {
                reservation_id,
                amount,
                period_start,
            } => {
                self.reservations.remove(&reservation_id);
                let spent = self.spent.entry(PeriodStart(period_start)).or_default();
                *spent = spent.saturating_add(amount.minor);
            }
            E::MandateRevoked { revoked_at, .. } => self.revoked_at = Some(revoked_at),
        }
    }
}
