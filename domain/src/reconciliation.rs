//! Reconciliation: does the money that moved for an order agree with the order?
//!
//! For each order, finance compares what the merchant confirmed (the placed order's
//! total), what the card issuer authorized, captured and refunded, what the merchant
//! refunded, and what the mandate committed. [`OrderMoney`] holds those figures, folded
//! from the events of the order, its payment and its mandate reservation;
//! [`OrderMoney::assess`] says whether they agree.
//!
//! The rules live here, without I/O, so that the read model, the API and the report
//! all judge an order the same way.

use serde::{Deserialize, Serialize};
use time::Date;

/// Everything reconciliation knows of one order's money, in minor units of the order's
/// currency.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderMoney {
    /// The order's total as the merchant confirmed it; `None` when no order is known for
    /// the payment.
    pub order_total: Option<i64>,
    /// The day the merchant placed the order; `None` while it is not placed.
    pub placed_on: Option<Date>,
    /// The order failed or was cancelled.
    pub closed: bool,
    pub authorizations_approved: i64,
    pub authorizations_declined: i64,
    pub authorized: i64,
    pub captured: i64,
    pub card_refunded: i64,
    pub merchant_refunded: i64,
    pub committed: i64,
    /// A card event came in another currency than the order's.
    pub currency_mismatch: bool,
}

/// Why an order does not reconcile. The first that applies is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExceptionReason {
    /// An authorization, capture or refund came in another currency than the order.
    CurrencyMismatch,
    /// The card was authorized, but no order was placed for it.
    AuthorizationWithoutOrder,
    /// More was refunded (on the card or by the merchant) than was captured.
    OverRefund,
    /// The amount captured differs from the order's total.
    CaptureMismatch,
    /// The merchant refunded more than the card received back.
    MerchantRefundWithoutCardRefund,
    /// The card received back more than the merchant refunded.
    CardRefundWithoutMerchantRefund,
    /// The order was placed and nothing was captured within the allowed days.
    NotCaptured,
}

impl ExceptionReason {
    pub const ALL: [Self; 7] = [
        Self::CurrencyMismatch,
        Self::AuthorizationWithoutOrder,
        Self::OverRefund,
        Self::CaptureMismatch,
        Self::MerchantRefundWithoutCardRefund,
        Self::CardRefundWithoutMerchantRefund,
        Self::NotCaptured,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::CurrencyMismatch => "currency_mismatch",
            Self::AuthorizationWithoutOrder => "authorization_without_order",
            Self::OverRefund => "over_refund",
            Self::CaptureMismatch => "capture_mismatch",
            Self::MerchantRefundWithoutCardRefund => "merchant_refund_without_card_refund",
            Self::CardRefundWithoutMerchantRefund => "card_refund_without_merchant_refund",
            Self::NotCaptured => "not_captured",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|reason| reason.as_str() == text)
    }
}

/// Where an order stands with finance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assessment {
    /// Captured equals the order's total and refunds agree on both sides.
    Matched,
    /// Nothing disagrees yet, but the money has not all moved (placed, awaiting capture
    /// within the allowed days).
    Pending,
    /// No order was placed and no money moved: nothing to reconcile.
    Void,
    Exception(ExceptionReason),
}

impl Assessment {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Matched => "matched",
            Self::Pending => "pending",
            Self::Void => "void",
            Self::Exception(_) => "exception",
        }
    }

    pub fn reason(self) -> Option<ExceptionReason> {
        match self {
            Self::Exception(reason) => Some(reason),
            _ => None,
        }
    }
}

impl OrderMoney {
    /// Judges the order on `today`, allowing `capture_days` days after placement for
    /// the capture.
    pub fn assess(&self, today: Date, capture_days: u16) -> Assessment {
        self.standing_exception()
            .map(Assessment::Exception)
            .unwrap_or_else(|| self.by_time(today, capture_days))
    }

    /// The exceptions that do not depend on the date: once true, they stay true until
    /// more money moves.
    pub fn standing_exception(&self) -> Option<ExceptionReason> {
        use ExceptionReason as R;
        let placed = self.placed_on.is_some();
        let total = self.order_total.unwrap_or(0);
        if self.currency_mismatch {
            return Some(R::CurrencyMismatch);
        }
        if self.authorizations_approved > 0
            && !placed
            && (self.closed || self.order_total.is_none())
        {
            return Some(R::AuthorizationWithoutOrder);
        }
        let refunded_beyond_capture = |refunded: i64| self.captured > 0 && refunded > self.captured;
        if self.card_refunded > self.captured
            || refunded_beyond_capture(self.merchant_refunded)
            || self.merchant_refunded > total
        {
            return Some(R::OverRefund);
        }
        if self.captured > 0 && self.captured != total {
            return Some(R::CaptureMismatch);
        }
        if self.merchant_refunded > self.card_refunded {
            return Some(R::MerchantRefundWithoutCardRefund);
        }
        if self.card_refunded > self.merchant_refunded {
            return Some(R::CardRefundWithoutMerchantRefund);
        }
        None
    }

    fn by_time(&self, today: Date, capture_days: u16) -> Assessment {
        let Some(placed_on) = self.placed_on else {
            return if self.captured == 0 && self.authorizations_approved == 0 || self.closed {
                Assessment::Void
            } else {
                Assessment::Pending
            };
        };
        if self.captured > 0 {
            return Assessment::Matched;
        }
        // A placed order cancelled before capture moved no money.
        if self.closed {
            return Assessment::Void;
        }
        let overdue = (today - placed_on).whole_days() > i64::from(capture_days);
        if overdue {
            Assessment::Exception(ExceptionReason::NotCaptured)
        } else {
            Assessment::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    const TODAY: Date = date!(2026 - 11 - 20);
    const DAYS: u16 = 7;

    /// An order of 10 000 placed today.
    fn placed() -> OrderMoney {
        OrderMoney {
            order_total: Some(10_000),
            placed_on: Some(TODAY),
            ..OrderMoney::default()
        }
    }

    /// `placed()` with its card authorized and captured in full.
    fn captured() -> OrderMoney {
        OrderMoney {
            authorizations_approved: 1,
            authorized: 10_000,
            captured: 10_000,
            committed: 10_000,
            ..placed()
        }
    }

    fn reason(money: &OrderMoney) -> Option<ExceptionReason> {
        money.assess(TODAY, DAYS).reason()
    }

    #[test]
    fn an_order_captured_in_full_is_matched() {
        assert_eq!(captured().assess(TODAY, DAYS), Assessment::Matched);
    }

    #[test]
    fn partial_refunds_on_both_sides_stay_matched() {
        let money = OrderMoney {
            card_refunded: 2_500,
            merchant_refunded: 2_500,
            ..captured()
        };
        assert_eq!(money.assess(TODAY, DAYS), Assessment::Matched);
        let again = OrderMoney {
            card_refunded: 10_000,
            merchant_refunded: 10_000,
            ..captured()
        };
        assert_eq!(again.assess(TODAY, DAYS), Assessment::Matched);
    }

    #[test]
    fn a_placed_order_awaiting_capture_is_pending_within_the_allowed_days() {
        let money = OrderMoney {
            placed_on: Some(date!(2026 - 11 - 13)),
            ..placed()
        };
        assert_eq!(money.assess(TODAY, DAYS), Assessment::Pending);
    }

    #[test]
    fn a_placed_order_with_no_capture_after_the_allowed_days_is_an_exception() {
        let money = OrderMoney {
            placed_on: Some(date!(2026 - 11 - 12)),
            ..placed()
        };
        assert_eq!(reason(&money), Some(ExceptionReason::NotCaptured));
    }

    #[test]
    fn capturing_other_than_the_total_is_an_exception() {
        let money = OrderMoney {
            captured: 9_000,
            ..captured()
        };
        assert_eq!(reason(&money), Some(ExceptionReason::CaptureMismatch));
    }

    #[test]
    fn a_merchant_refund_without_a_card_refund_is_an_exception() {
        let money = OrderMoney {
            merchant_refunded: 3_000,
            ..captured()
        };
        assert_eq!(
            reason(&money),
            Some(ExceptionReason::MerchantRefundWithoutCardRefund)
        );
    }

    #[test]
    fn a_card_refund_without_a_merchant_refund_is_an_exception() {
        let money = OrderMoney {
            card_refunded: 3_000,
            ..captured()
        };
        assert_eq!(
            reason(&money),
            Some(ExceptionReason::CardRefundWithoutMerchantRefund)
        );
    }

    #[test]
    fn refunding_more_than_was_captured_is_an_exception() {
        let card = OrderMoney {
            card_refunded: 12_000,
            merchant_refunded: 12_000,
            ..captured()
        };
        assert_eq!(reason(&card), Some(ExceptionReason::OverRefund));
        let merchant = OrderMoney {
            captured: 5_000,
            card_refunded: 5_000,
            merchant_refunded: 8_000,
            ..captured()
        };
        assert_eq!(reason(&merchant), Some(ExceptionReason::OverRefund));
    }

    #[test]
    fn an_authorization_for_an_order_that_was_never_placed_is_an_exception() {
        let failed = OrderMoney {
            placed_on: None,
            closed: true,
            authorizations_approved: 1,
            authorized: 10_000,
            ..placed()
        };
        assert_eq!(
            reason(&failed),
            Some(ExceptionReason::AuthorizationWithoutOrder)
        );
        let unknown = OrderMoney {
            order_total: None,
            placed_on: None,
            authorizations_approved: 1,
            ..OrderMoney::default()
        };
        assert_eq!(
            reason(&unknown),
            Some(ExceptionReason::AuthorizationWithoutOrder)
        );
    }

    #[test]
    fn card_money_in_another_currency_is_an_exception() {
        let money = OrderMoney {
            currency_mismatch: true,
            ..captured()
        };
        assert_eq!(reason(&money), Some(ExceptionReason::CurrencyMismatch));
    }

    #[test]
    fn an_order_that_failed_before_any_authorization_is_void() {
        let money = OrderMoney {
            placed_on: None,
            closed: true,
            authorizations_declined: 1,
            ..placed()
        };
        assert_eq!(money.assess(TODAY, DAYS), Assessment::Void);
    }

    #[test]
    fn an_order_cancelled_after_placement_before_capture_is_void() {
        let money = OrderMoney {
            closed: true,
            placed_on: Some(date!(2026 - 10 - 1)),
            ..placed()
        };
        assert_eq!(money.assess(TODAY, DAYS), Assessment::Void);
    }

    #[test]
    fn reasons_round_trip_through_their_names() {
        for reason in ExceptionReason::ALL {
            assert_eq!(ExceptionReason::parse(reason.as_str()), Some(reason));
        }
        assert_eq!(ExceptionReason::parse("nonsense"), None);
    }
}
