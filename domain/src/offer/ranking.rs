//! Ranking offers for a shopper, with the reasons shown.
//!
//! Each offer the mandate allows is scored on four factors, each from 0 to 1 within the
//! set being compared, then weighted (the caller may change the weights):
//!
//! * **cost** — the landed cost: price, shipping (unstated shipping counts as the
//!   dearest stated in the set) and the tax estimate; the cheapest scores 1, another
//!   `cheapest / its cost`;
//! * **delivery** — the latest day of its delivery estimate; the soonest scores 1,
//!   another `(soonest + 1) / (its + 1)`; no estimate, pre-order or back-order: 0; an
//!   offer that cannot arrive by the shopper's date scores 0 too;
//! * **returns** — the return window (up to 60 days counts) for 0.7, free returns for 0.3;
//! * **trust** — the merchant's rating, pulled toward the middle when few reviews
//!   back it; unknown: 0.3.
//!
//! Offers the mandate forbids (merchant not allowed or blocked, category blocked,
//! landed cost over the per-order limit or the budget left) and offers that cannot be
//! bought (out of stock, discontinued, another currency) are returned as excluded, with
//! every reason. When an offer is excluded only by an amount and would rank first if it
//! were not, a hint says how much more budget unlocks it.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use time::{Date, Duration, Weekday};

use super::{Availability, ProductRecord};
use crate::ids::{Category, MerchantId, OfferId};
use crate::mandate::MandateTerms;
use crate::money::{Currency, Money};

/// How much each factor counts. Any non-negative values; they are normalized.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Weights {
    pub cost: f64,
    pub delivery: f64,
    pub returns: f64,
    pub trust: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Self {
            cost: 0.5,
            delivery: 0.2,
            returns: 0.15,
            trust: 0.15,
        }
    }
}

impl Weights {
    /// Refused when a weight is negative or not a number, or all are zero.
    pub fn validated(self) -> Result<Self, RankingError> {
        let all = [self.cost, self.delivery, self.returns, self.trust];
        if all.iter().any(|w| !w.is_finite() || *w < 0.0) || all.iter().sum::<f64>() <= 0.0 {
            return Err(RankingError::InvalidWeights);
        }
        Ok(self)
    }

    fn total(self) -> f64 {
        self.cost + self.delivery + self.returns + self.trust
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RankingError {
    #[error("weights must be non-negative numbers, not all zero")]
    InvalidWeights,
}

/// One offer to rank.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub merchant: MerchantId,
    pub offer_id: OfferId,
    pub record: ProductRecord,
}

/// Who the offers are ranked for.
#[derive(Debug, Clone, Default)]
pub struct Shopper<'a> {
    /// The mandate an agent shops under, if any.
    pub mandate: Option<&'a MandateTerms>,
    /// What is left of the mandate's budget this period.
    pub budget_left: Option<Money>,
    /// Tax estimate on the price, in basis points.
    pub tax_bps: u32,
    /// The shopper needs it by this day.
    pub deliver_by: Option<Date>,
    /// Today, to turn delivery days into dates.
    pub today: Option<Date>,
}

/// Each factor's weighted share of the score (the four add up to it).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Breakdown {
    pub cost: f64,
    pub delivery: f64,
    pub returns: f64,
    pub trust: f64,
}

/// A ranked offer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ranked {
    pub merchant: MerchantId,
    pub offer_id: OfferId,
    /// 0 to 100.
    pub score: f64,
    pub breakdown: Breakdown,
    pub landed_cost: Money,
    /// Delivery arrives by this day at the latest, when known.
    pub arrives_by: Option<Date>,
    /// One line for the shopper, from the same numbers as the score.
    pub reason: String,
}

/// Why an offer is not among the ranked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum Exclusion {
    MerchantNotAllowed,
    MerchantBlocked,
    CategoryBlocked { category: Category },
    OverPerOrderLimit { landed_cost: Money, limit: Money },
    OverBudget { landed_cost: Money, left: Money },
    NotAvailable { availability: Availability },
    OtherCurrency { currency: Currency },
}

impl Exclusion {
    /// The reason in words.
    pub fn describe(&self) -> String {
        match self {
            Self::MerchantNotAllowed => "the mandate allows other merchants only".into(),
            Self::MerchantBlocked => "the mandate blocks this merchant".into(),
            Self::CategoryBlocked { category } => format!("the mandate blocks {category}"),
            Self::OverPerOrderLimit { landed_cost, limit } => {
                format!("{landed_cost} is over the per-order limit of {limit}")
            }
            Self::OverBudget { landed_cost, left } => {
                format!("{landed_cost} is over the {left} left in the budget")
            }
            Self::NotAvailable { availability } => {
                format!("not available ({})", availability_words(*availability))
            }
            Self::OtherCurrency { currency } => format!("priced in {currency}"),
        }
    }

    /// How far over an amount limit, for an exclusion that is one.
    fn shortfall(&self) -> Option<i64> {
        match self {
            Self::OverPerOrderLimit { landed_cost, limit } => Some(landed_cost.minor - limit.minor),
            Self::OverBudget { landed_cost, left } => Some(landed_cost.minor - left.minor),
            _ => None,
        }
    }
}

/// An offer left out, with every reason.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Excluded {
    pub merchant: MerchantId,
    pub offer_id: OfferId,
    pub reasons: Vec<Exclusion>,
    pub reason: String,
}

/// What would change the outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hint {
    pub merchant: MerchantId,
    pub offer_id: OfferId,
    /// How much more budget (or per-order limit) admits it.
    pub raise_by: Money,
    pub text: String,
}

/// The outcome: best first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ranking {
    pub ranked: Vec<Ranked>,
    pub excluded: Vec<Excluded>,
    pub hints: Vec<Hint>,
}

/// Ranks `candidates` for `shopper`, all in `currency` (others are excluded).
pub fn rank(
    candidates: &[Candidate],
    currency: Currency,
    shopper: &Shopper<'_>,
    weights: Weights,
) -> Result<Ranking, RankingError> {
    let weights = weights.validated()?;
    let dearest_shipping = candidates
        .iter()
        .filter(|c| c.record.price.currency == currency)
        .filter_map(|c| c.record.shipping)
        .map(|s| s.minor)
        .max()
        .unwrap_or(0);
    let landed = |c: &Candidate| -> Money {
        let price = c.record.price.minor;
        let shipping = c.record.shipping.map_or(dearest_shipping, |s| s.minor);
        let tax = i64::try_from(i128::from(price) * i128::from(shopper.tax_bps) / 10_000)
            .unwrap_or(i64::MAX);
        Money::new(price.saturating_add(shipping).saturating_add(tax), currency)
    };

    let mut admitted: Vec<(&Candidate, Money)> = Vec::new();
    let mut excluded = Vec::new();
    // Offers kept out by an amount only: what they would score decides the hint.
    let mut over_amount: Vec<(&Candidate, Money, i64)> = Vec::new();
    for candidate in candidates {
        let landed_cost = landed(candidate);
        let reasons = exclusions(candidate, landed_cost, currency, shopper);
        if reasons.is_empty() {
            admitted.push((candidate, landed_cost));
            continue;
        }
        if let Some(raise) = reasons
            .iter()
            .map(Exclusion::shortfall)
            .collect::<Option<Vec<i64>>>()
            .and_then(|raises| raises.into_iter().max())
        {
            over_amount.push((candidate, landed_cost, raise));
        }
        excluded.push(Excluded {
            merchant: candidate.merchant.clone(),
            offer_id: candidate.offer_id.clone(),
            reason: reasons
                .iter()
                .map(Exclusion::describe)
                .collect::<Vec<_>>()
                .join("; "),
            reasons,
        });
    }

    let ranked = score(&admitted, shopper, weights);
    let hints = hint(&admitted, &over_amount, &ranked, shopper, weights);
    Ok(Ranking {
        ranked,
        excluded,
        hints,
    })
}

fn exclusions(
    candidate: &Candidate,
    landed_cost: Money,
    currency: Currency,
    shopper: &Shopper<'_>,
) -> Vec<Exclusion> {
    let mut reasons = Vec::new();
    let record = &candidate.record;
    if record.price.currency != currency {
        reasons.push(Exclusion::OtherCurrency {
            currency: record.price.currency,
        });
        return reasons;
    }
    if let Some(availability) = record.availability
        && matches!(
            availability,
            Availability::OutOfStock | Availability::Discontinued
        )
    {
        reasons.push(Exclusion::NotAvailable { availability });
    }
    if let Some(terms) = shopper.mandate {
        if !terms.allowed_merchants.is_empty()
            && !terms.allowed_merchants.contains(&candidate.merchant)
        {
            reasons.push(Exclusion::MerchantNotAllowed);
        }
        if terms.blocked_merchants.contains(&candidate.merchant) {
            reasons.push(Exclusion::MerchantBlocked);
        }
        if let Some(category) = terms
            .blocked_categories
            .iter()
            .find(|blocked| super::taxonomy::is_within(&record.category, blocked))
        {
            reasons.push(Exclusion::CategoryBlocked {
                category: category.clone(),
            });
        }
        if let Some(limit) = terms.per_order_limit
            && limit.currency == currency
            && landed_cost.minor > limit.minor
        {
            reasons.push(Exclusion::OverPerOrderLimit { landed_cost, limit });
        }
    }
    if let Some(left) = shopper.budget_left
        && left.currency == currency
        && landed_cost.minor > left.minor
    {
        reasons.push(Exclusion::OverBudget { landed_cost, left });
    }
    reasons
}

/// The latest delivery day of an offer, counting business days from today.
fn arrives_by(record: &ProductRecord, today: Option<Date>) -> Option<Date> {
    let delivery = record.delivery?;
    let mut day = today?;
    let mut left = delivery.max_days;
    while left > 0 {
        day = day.checked_add(Duration::days(1))?;
        if !matches!(day.weekday(), Weekday::Saturday | Weekday::Sunday) {
            left -= 1;
        }
    }
    Some(day)
}

/// The days an offer takes at most, if it ships now.
fn delivery_days(record: &ProductRecord) -> Option<u16> {
    let ships_now = record.availability.is_none_or(Availability::can_ship_now);
    record.delivery.filter(|_| ships_now).map(|d| d.max_days)
}

fn score(admitted: &[(&Candidate, Money)], shopper: &Shopper<'_>, weights: Weights) -> Vec<Ranked> {
    let cheapest = admitted.iter().map(|(_, landed)| landed.minor).min();
    let soonest = admitted
        .iter()
        .filter_map(|(c, _)| delivery_days(&c.record))
        .min();
    let total = weights.total();
    let mut ranked: Vec<Ranked> = admitted
        .iter()
        .map(|(candidate, landed_cost)| {
            let record = &candidate.record;
            let cost = match cheapest {
                Some(cheapest) if landed_cost.minor > 0 => {
                    cheapest as f64 / landed_cost.minor as f64
                }
                _ => 1.0,
            };
            let arrives = arrives_by(record, shopper.today);
            let late = matches!((arrives, shopper.deliver_by), (Some(a), Some(by)) if a > by);
            let delivery = match (delivery_days(record), soonest) {
                (Some(days), Some(soonest)) if !late => {
                    (f64::from(soonest) + 1.0) / (f64::from(days) + 1.0)
                }
                _ => 0.0,
            };
            let returns = record.returns.map_or(0.0, |policy| {
                f64::from(policy.window_days.min(60)) / 60.0 * 0.7
                    + if policy.free && policy.window_days > 0 {
                        0.3
                    } else {
                        0.0
                    }
            });
            let trust = record.trust.map_or(0.3, |trust| {
                // A rating backed by few reviews counts for less: toward 0.5.
                let confidence = f64::from(trust.reviews) / (f64::from(trust.reviews) + 20.0);
                0.5 + (f64::from(trust.rating_centi) / 500.0 - 0.5) * confidence
            });
            let breakdown = Breakdown {
                cost: 100.0 * weights.cost / total * cost,
                delivery: 100.0 * weights.delivery / total * delivery,
                returns: 100.0 * weights.returns / total * returns,
                trust: 100.0 * weights.trust / total * trust,
            };
            Ranked {
                merchant: candidate.merchant.clone(),
                offer_id: candidate.offer_id.clone(),
                score: breakdown.cost + breakdown.delivery + breakdown.returns + breakdown.trust,
                breakdown,
                landed_cost: *landed_cost,
                arrives_by: arrives,
                reason: String::new(),
            }
        })
        .collect();
    ranked.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(a.landed_cost.minor.cmp(&b.landed_cost.minor))
            .then(a.merchant.cmp(&b.merchant))
            .then(a.offer_id.cmp(&b.offer_id))
    });
    for index in 0..ranked.len() {
        let reason = explain(&ranked, index, admitted, shopper);
        ranked[index].reason = reason;
    }
    ranked
}

/// One line from the numbers: what this offer is best at, when it arrives, returns, rating.
fn explain(
    ranked: &[Ranked],
    index: usize,
    admitted: &[(&Candidate, Money)],
    shopper: &Shopper<'_>,
) -> String {
    let this = &ranked[index];
    let record = &admitted
        .iter()
        .find(|(c, _)| c.merchant == this.merchant && c.offer_id == this.offer_id)
        .map(|(c, _)| &c.record);
    let Some(record) = record else {
        return String::new();
    };
    let mut parts = Vec::new();
    let cheapest = ranked
        .iter()
        .all(|other| this.landed_cost.minor <= other.landed_cost.minor);
    let mut cost = format!("{} delivered", this.landed_cost);
    if cheapest && ranked.len() > 1 {
        cost = format!("cheapest at {cost}");
    }
    parts.push(cost);
    match (this.arrives_by, delivery_days(record)) {
        (Some(day), _) => {
            let late = shopper.deliver_by.is_some_and(|by| day > by);
            let mut when = format!("arrives by {}", day_words(day, shopper.today));
            if late {
                when.push_str(", too late");
            }
            parts.push(when);
        }
        (None, Some(days)) => parts.push(format!("arrives within {days} business days")),
        (None, None) => parts.push(match record.availability {
            Some(Availability::PreOrder) => "pre-order".to_owned(),
            Some(Availability::BackOrder) => "back-ordered".to_owned(),
            _ => "delivery time not stated".to_owned(),
        }),
    }
    parts.push(match record.returns {
        Some(policy) if policy.window_days == 0 => "no returns".to_owned(),
        Some(policy) if policy.free => format!("free {}-day returns", policy.window_days),
        Some(policy) => format!("{}-day returns at the shopper's cost", policy.window_days),
        None => "return policy not stated".to_owned(),
    });
    if let Some(trust) = record.trust {
        let mut rating = String::new();
        let _ = write!(
            rating,
            "rated {}.{}/5 ({} reviews)",
            trust.rating_centi / 100,
            trust.rating_centi % 100 / 10,
            trust.reviews
        );
        parts.push(rating);
    }
    parts.join("; ")
}

/// `Friday 27 Nov` (the weekday alone within a week of today).
fn day_words(day: Date, today: Option<Date>) -> String {
    let within_week = today.is_some_and(|today| (day - today).whole_days() < 7);
    if within_week {
        day.weekday().to_string()
    } else {
        format!(
            "{} {} {}",
            day.weekday(),
            day.day(),
            &format!("{}", day.month())[..3]
        )
    }
}

fn availability_words(availability: Availability) -> &'static str {
    match availability {
        Availability::InStock => "in stock",
        Availability::LimitedAvailability => "few left",
        Availability::PreOrder => "pre-order",
        Availability::BackOrder => "back-ordered",
        Availability::OutOfStock => "out of stock",
        Availability::Discontinued => "discontinued",
    }
}

/// For the offer kept out by an amount only that would rank first if admitted: how
/// much more budget unlocks it.
fn hint(
    admitted: &[(&Candidate, Money)],
    over_amount: &[(&Candidate, Money, i64)],
    ranked: &[Ranked],
    shopper: &Shopper<'_>,
    weights: Weights,
) -> Vec<Hint> {
    let best = ranked.first().map(|r| r.score);
    let mut hints: Vec<(f64, Hint)> = over_amount
        .iter()
        .filter_map(|(candidate, landed_cost, raise)| {
            let mut with_it = admitted.to_vec();
            with_it.push((*candidate, *landed_cost));
            let rescored = score(&with_it, shopper, weights);
            let first = rescored.first()?;
            let wins = first.merchant == candidate.merchant
                && first.offer_id == candidate.offer_id
                && best.is_none_or(|best| first.score > best);
            wins.then(|| {
                let raise_by = Money::new(*raise, landed_cost.currency);
                let text = format!(
                    "raising the budget by {raise_by} unlocks {} at {}, which would rank first",
                    candidate.record.title, candidate.merchant
                );
                (
                    first.score,
                    Hint {
                        merchant: candidate.merchant.clone(),
                        offer_id: candidate.offer_id.clone(),
                        raise_by,
                        text,
                    },
                )
            })
        })
        .collect();
    hints.sort_by(|a, b| b.0.total_cmp(&a.0));
    hints.into_iter().take(1).map(|(_, hint)| hint).collect()
}
