//! `reconciliation`: per order, the money that moved and whether it agrees with the
//! order — finance's read model — and the day-by-day ledger of captures and refunds.
//!
//! Rows are keyed by order. Order events fill in the merchant's side, payment events
//! (found by payment id) the card's side, and the mandate's `SpendCommitted` (found by
//! reservation id) the committed spend. After a batch's last change to a row, the row's
//! date-independent exception is judged again by [`OrderMoney::standing_exception`]; the
//! one rule that depends on the date (no capture after N days) is applied when reading.

use std::collections::BTreeSet;

use serde::Serialize;
use shopagent_commands::log::format_timestamp;
use shopagent_commands::{Database, StoredEvent, on_pool};
use shopagent_domain::mandate::MandateEvent;
use shopagent_domain::money::Money;
use shopagent_domain::order::OrderEvent;
use shopagent_domain::payment::PaymentEvent;
use shopagent_domain::reconciliation::{ExceptionReason, OrderMoney};
use time::{Date, OffsetDateTime};

use crate::on_read_model;
use crate::runner::{Projection, ProjectionError, ReadModelTx};

#[derive(Debug, Default, Clone, Copy)]
pub struct Reconciliation;

impl Reconciliation {
    pub const NAME: &'static str = "reconciliation";
}

/// How a payment or mandate event names the row it changes.
enum Row<'a> {
    Order(&'a str),
    Payment(&'a str),
    Reservation(&'a str),
}

impl Row<'_> {
    fn condition(&self) -> &'static str {
        match self {
            Self::Order(_) => "order_id = $2",
            Self::Payment(_) => "payment_id = $2",
            Self::Reservation(_) => "reservation_id = $2",
        }
    }

    fn key(&self) -> &str {
        match self {
            Self::Order(key) | Self::Payment(key) | Self::Reservation(key) => key,
        }
    }
}

/// A value bound to a change's SQL after the tenant (`$1`), the row's key (`$2`) and the
/// event's time (`$3`).
enum Bind {
    Int(i64),
    Text(String),
}

/// Adds `money` to `column` when it is in the row's currency, and flags the row when
/// it is not: money in another currency is never summed in.
fn add_money(column: &str, money: Money) -> (String, Vec<Bind>) {
    (
        format!(
            "{column} = {column} + CASE WHEN currency = $5 THEN $4 ELSE 0 END,
             currency_mismatch = CASE WHEN currency <> $5 THEN 1 ELSE currency_mismatch END"
        ),
        vec![
            Bind::Int(money.minor),
            Bind::Text(money.currency.code().to_owned()),
        ],
    )
}

fn stream_key(aggregate_id: &str) -> &str {
    aggregate_id.rsplit('/').next().unwrap_or_default()
}

fn day(at: OffsetDateTime) -> String {
    at.date().to_string()
}

fn unreadable(event: &StoredEvent, error: &serde_json::Error) -> ProjectionError {
    ProjectionError::Event {
        position: event.position(),
        reason: error.to_string(),
    }
}

/// Starts the row of an order (from the order's first event, or from its payment's if
/// that came first): `columns` are set on insert and on conflict alike.
async fn begin_row(
    tx: &mut ReadModelTx<'_>,
    event: &StoredEvent,
    order_id: &str,
    columns: &[(&str, Option<String>)],
    total: Option<i64>,
) -> Result<(), ProjectionError> {
    let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
    let placeholders: Vec<String> = (0..columns.len()).map(|i| format!("${}", i + 6)).collect();
    let updates: Vec<String> = names
        .iter()
        .map(|n| format!("{n} = excluded.{n}"))
        .collect();
    let total_update = if total.is_some() {
        "order_total_minor = excluded.order_total_minor, "
    } else {
        ""
    };
    let sql = format!(
        "INSERT INTO reconciliation_orders (tenant, order_id, business_date, created_at, updated_at,
                                            order_total_minor, {})
         VALUES ($1, $2, $3, $4, $4, $5, {})
         ON CONFLICT (tenant, order_id) DO UPDATE SET {total_update}{}, updated_at = excluded.updated_at",
        names.join(", "),
        placeholders.join(", "),
        updates.join(", "),
    );
    let at = format_timestamp(event.recorded_at);
    on_read_model!(tx, conn => {
        let mut query = sqlx::query(&sql)
            .bind(&event.metadata.tenant)
            .bind(order_id)
            .bind(day(event.recorded_at))
            .bind(&at)
            .bind(total);
        for (_, value) in columns {
            query = query.bind(value);
        }
        query.execute(conn).await?;
    });
    Ok(())
}

/// Applies `set` to the row `row` names; returns the row's order id, or `None` when no
/// row matches (an event for an order this model never saw begin). `entry` records the
/// movement in the ledger, with the amount and currency bound as `$4` and `$5`.
async fn change(
    tx: &mut ReadModelTx<'_>,
    event: &StoredEvent,
    row: Row<'_>,
    (set, binds): (String, Vec<Bind>),
    entry: Option<&str>,
) -> Result<Option<String>, ProjectionError> {
    let tenant = &event.metadata.tenant;
    let sql = format!(
        "UPDATE reconciliation_orders SET {set}, updated_at = $3
          WHERE tenant = $1 AND {} RETURNING order_id",
        row.condition()
    );
    let order_id: Option<String> = on_read_model!(tx, conn => {
        let mut query = sqlx::query_scalar(&sql)
            .bind(tenant)
            .bind(row.key())
            .bind(format_timestamp(event.recorded_at));
        for value in &binds {
            query = match value {
                Bind::Int(int) => query.bind(*int),
                Bind::Text(text) => query.bind(text.as_str()),
            };
        }
        query.fetch_optional(conn).await?
    });
    if let (Some(order_id), Some(kind), [Bind::Int(minor), Bind::Text(currency)]) =
        (&order_id, entry, binds.as_slice())
    {
        on_read_model!(tx, conn => {
            sqlx::query(
                "INSERT INTO reconciliation_entries (tenant, entry_id, order_id, kind, amount_minor, currency, day)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (tenant, entry_id) DO NOTHING",
            )
            .bind(tenant)
            .bind(event.event_id.to_string())
            .bind(order_id)
            .bind(kind)
            .bind(minor)
            .bind(currency)
            .bind(day(event.recorded_at))
            .execute(conn)
            .await?;
        });
    }
    Ok(order_id)
}

impl Reconciliation {
    async fn apply_order(
        tx: &mut ReadModelTx<'_>,
        event: &StoredEvent,
        order: OrderEvent,
    ) -> Result<Option<String>, ProjectionError> {
        let order_id = stream_key(&event.aggregate_id);
        let row = Row::Order(order_id);
        match order {
            OrderEvent::OrderCreated { draft, .. } => {
                let columns = [
                    (
                        "reservation_id",
                        draft.reservation_id.map(|r| r.to_string()),
                    ),
                    ("merchant", Some(draft.merchant.to_string())),
                    ("currency", Some(draft.total.currency.code().to_owned())),
                ];
                begin_row(tx, event, order_id, &columns, Some(draft.total.minor)).await?;
                Ok(Some(order_id.to_owned()))
            }
            OrderEvent::OrderPlaced { .. } => {
                let set = "placed_on = $4, business_date = $4".to_owned();
                let binds = vec![Bind::Text(day(event.recorded_at))];
                change(tx, event, row, (set, binds), None).await
            }
            OrderEvent::OrderFailed { .. } | OrderEvent::OrderCancelled { .. } => {
                change(tx, event, row, ("closed = 1".to_owned(), vec![]), None).await
            }
            OrderEvent::OrderRefunded { amount, .. } => {
                let set = add_money("merchant_refunded_minor", amount);
                change(tx, event, row, set, Some("merchant_refund")).await
            }
            _ => Ok(None),
        }
    }

    async fn apply_payment(
        tx: &mut ReadModelTx<'_>,
        event: &StoredEvent,
        payment: PaymentEvent,
    ) -> Result<Option<String>, ProjectionError> {
        let payment_id = stream_key(&event.aggregate_id);
        let row = Row::Payment(payment_id);
        match payment {
            PaymentEvent::CardRequested { order_id, cap, .. } => {
                let order_id = order_id.to_string();
                let columns = [
                    ("payment_id", Some(payment_id.to_owned())),
                    ("currency", Some(cap.currency.code().to_owned())),
                ];
                begin_row(tx, event, &order_id, &columns, None).await?;
                Ok(Some(order_id))
            }
            PaymentEvent::CardIssued { card, .. } => {
                let set = "card_reference = $4".to_owned();
                let binds = vec![Bind::Text(card.as_str().to_owned())];
                change(tx, event, row, (set, binds), None).await
            }
            PaymentEvent::AuthorizationApproved { amount, .. } => {
                let (set, binds) = add_money("authorized_minor", amount);
                let set = format!("authorizations_approved = authorizations_approved + 1, {set}");
                change(tx, event, row, (set, binds), None).await
            }
            PaymentEvent::AuthorizationDeclined { .. } => {
                let set = "authorizations_declined = authorizations_declined + 1".to_owned();
                change(tx, event, row, (set, vec![]), None).await
            }
            PaymentEvent::PaymentCaptured { amount, .. } => {
                let set = add_money("captured_minor", amount);
                change(tx, event, row, set, Some("capture")).await
            }
            PaymentEvent::PaymentRefunded { amount, .. } => {
                let set = add_money("card_refunded_minor", amount);
                change(tx, event, row, set, Some("card_refund")).await
            }
            PaymentEvent::CardVoided { .. } => Ok(None),
        }
    }

    /// Applies one event; answers the order whose row it changed, if any.
    async fn apply_event(
        tx: &mut ReadModelTx<'_>,
        event: &StoredEvent,
    ) -> Result<Option<String>, ProjectionError> {
        let order_id = match event.aggregate_type.as_str() {
            "order" => {
                let order = serde_json::from_value(event.payload.clone())
                    .map_err(|e| unreadable(event, &e))?;
                Self::apply_order(tx, event, order).await?
            }
            "payment" => {
                let payment = serde_json::from_value(event.payload.clone())
                    .map_err(|e| unreadable(event, &e))?;
                Self::apply_payment(tx, event, payment).await?
            }
            "mandate" => {
                let mandate: MandateEvent = serde_json::from_value(event.payload.clone())
                    .map_err(|e| unreadable(event, &e))?;
                let MandateEvent::SpendCommitted {
                    reservation_id,
                    amount,
                    ..
                } = mandate
                else {
                    return Ok(None);
                };
                let reservation = reservation_id.to_string();
                let set = add_money("committed_minor", amount);
                change(tx, event, Row::Reservation(&reservation), set, None).await?
            }
            _ => return Ok(None),
        };
        Ok(order_id)
    }

    /// Judges the row again after a change and stores its standing exception.
    async fn reassess(
        tx: &mut ReadModelTx<'_>,
        tenant: &str,
        order_id: &str,
    ) -> Result<(), ProjectionError> {
        let row: Option<MoneyRow> = on_read_model!(tx, conn => {
            sqlx::query_as(&format!("SELECT {MONEY_COLUMNS} FROM reconciliation_orders WHERE tenant = $1 AND order_id = $2"))
                .bind(tenant)
                .bind(order_id)
                .fetch_optional(conn)
                .await?
        });
        let Some(row) = row else {
            return Ok(());
        };
        let exception = row
            .money()
            .standing_exception()
            .map(ExceptionReason::as_str);
        on_read_model!(tx, conn => {
            sqlx::query("UPDATE reconciliation_orders SET standing_exception = $3 WHERE tenant = $1 AND order_id = $2")
                .bind(tenant)
                .bind(order_id)
                .bind(exception)
                .execute(conn)
                .await?;
        });
        Ok(())
    }
}

#[async_trait::async_trait]
impl Projection for Reconciliation {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        &["reconciliation_orders", "reconciliation_entries"]
    }

    async fn apply(
        &self,
        tx: &mut ReadModelTx<'_>,
        event: &StoredEvent,
    ) -> Result<(), ProjectionError> {
        self.apply_batch(tx, std::slice::from_ref(event)).await
    }

    /// Each changed row is judged once, after the batch's last change to it: its
    /// standing exception depends only on the row as the batch leaves it, and an order's
    /// several events in one batch then cost one judgement instead of one each.
    async fn apply_batch(
        &self,
        tx: &mut ReadModelTx<'_>,
        events: &[StoredEvent],
    ) -> Result<(), ProjectionError> {
        let mut changed = BTreeSet::new();
        for event in events {
            if let Some(order_id) = Self::apply_event(tx, event).await? {
                changed.insert((event.metadata.tenant.as_str(), order_id));
            }
        }
        for (tenant, order_id) in changed {
            Self::reassess(tx, tenant, &order_id).await?;
        }
        Ok(())
    }

    async fn reset(&self, tx: &mut ReadModelTx<'_>) -> Result<(), ProjectionError> {
        on_read_model!(tx, conn => {
            sqlx::query("DELETE FROM reconciliation_orders").execute(&mut *conn).await?;
            sqlx::query("DELETE FROM reconciliation_entries").execute(&mut *conn).await?;
        });
        Ok(())
    }
}

const MONEY_COLUMNS: &str = "order_total_minor, placed_on, closed, authorizations_approved,
    authorizations_declined, authorized_minor, captured_minor, card_refunded_minor,
    merchant_refunded_minor, committed_minor, currency_mismatch";

#[derive(Debug, sqlx::FromRow)]
struct MoneyRow {
    order_total_minor: Option<i64>,
    placed_on: Option<String>,
    closed: i32,
    authorizations_approved: i64,
    authorizations_declined: i64,
    authorized_minor: i64,
    captured_minor: i64,
    card_refunded_minor: i64,
    merchant_refunded_minor: i64,
    committed_minor: i64,
    currency_mismatch: i32,
}

impl MoneyRow {
    fn money(&self) -> OrderMoney {
        OrderMoney {
            order_total: self.order_total_minor,
            placed_on: self.placed_on.as_deref().and_then(parse_day),
            closed: self.closed != 0,
            authorizations_approved: self.authorizations_approved,
            authorizations_declined: self.authorizations_declined,
            authorized: self.authorized_minor,
            captured: self.captured_minor,
            card_refunded: self.card_refunded_minor,
            merchant_refunded: self.merchant_refunded_minor,
            committed: self.committed_minor,
            currency_mismatch: self.currency_mismatch != 0,
        }
    }
}

fn parse_day(text: &str) -> Option<Date> {
    Date::parse(text, &time::format_description::well_known::Iso8601::DATE).ok()
}

/// How reports judge time: the day they are made, and the days a placed order may wait
/// for its capture before it is an exception.
#[derive(Debug, Clone, Copy)]
pub struct Judgement {
    pub today: Date,
    pub capture_days: u16,
}

impl Judgement {
    /// Orders placed before this day and not captured are overdue.
    fn cutoff(&self) -> String {
        (self.today - time::Duration::days(i64::from(self.capture_days))).to_string()
    }
}

/// The exception of a row, in SQL: its standing exception, else `not_captured` when
/// overdue (`cutoff` is the placeholder of the cutoff day). Agrees with
/// [`OrderMoney::assess`].
fn exception_sql(cutoff: &str) -> String {
    format!(
        "COALESCE(standing_exception, CASE WHEN placed_on IS NOT NULL AND closed = 0
              AND captured_minor = 0 AND placed_on < {cutoff} THEN 'not_captured' END)"
    )
}

/// One day's money in one currency for one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DailyTotals {
    pub tenant: String,
    pub currency: String,
    /// Orders placed that day.
    pub orders: i64,
    pub captured_minor: i64,
    /// Refunded to the card that day.
    pub refunded_minor: i64,
    /// Refunded by merchants that day.
    pub merchant_refunded_minor: i64,
    /// Captured less refunded to the card.
    pub net_minor: i64,
    /// Orders of that day that are exceptions.
    pub exceptions: i64,
}

/// Totals of `day` per tenant (or only `tenant`'s) and currency, ordered by both.
///
/// The orders' counts and the ledger's sums are read by one statement, so both halves
/// see the same snapshot: read by two, a refund committed in between would show in
/// the sums while the exception it clears still showed in the counts.
pub async fn daily(
    db: &Database,
    tenant: Option<&str>,
    day: Date,
    judgement: Judgement,
) -> Result<Vec<DailyTotals>, sqlx::Error> {
    // `$3 IS NULL` keeps the count of parameters when every tenant is read.
    let only = if tenant.is_some() {
        " AND tenant = $3"
    } else {
        " AND CAST($3 AS TEXT) IS NULL"
    };
    let exception = exception_sql("$2");
    let sql = format!(
        "SELECT tenant, currency,
                CAST(SUM(CASE WHEN placed_on = $1 THEN 1 ELSE 0 END) AS BIGINT) AS orders,
                CAST(SUM(CASE WHEN {exception} IS NOT NULL THEN 1 ELSE 0 END) AS BIGINT) AS exceptions,
                CAST(0 AS BIGINT) AS captured, CAST(0 AS BIGINT) AS refunded,
                CAST(0 AS BIGINT) AS merchant_refunded
           FROM reconciliation_orders WHERE business_date = $1{only}
          GROUP BY tenant, currency
         UNION ALL
         SELECT tenant, currency, CAST(0 AS BIGINT), CAST(0 AS BIGINT),
                CAST(SUM(CASE WHEN kind = 'capture' THEN amount_minor ELSE 0 END) AS BIGINT),
                CAST(SUM(CASE WHEN kind = 'card_refund' THEN amount_minor ELSE 0 END) AS BIGINT),
                CAST(SUM(CASE WHEN kind = 'merchant_refund' THEN amount_minor ELSE 0 END) AS BIGINT)
           FROM reconciliation_entries WHERE day = $1{only}
          GROUP BY tenant, currency"
    );
    type Row = (String, String, i64, i64, i64, i64, i64);
    let rows: Vec<Row> = on_pool!(db, pool => sqlx::query_as(&sql)
        .bind(day.to_string())
        .bind(judgement.cutoff())
        .bind(tenant)
        .fetch_all(pool)
        .await?);
    let mut totals = std::collections::BTreeMap::<(String, String), DailyTotals>::new();
    for (tenant, currency, orders, exceptions, captured, refunded, merchant_refunded) in rows {
        let totals = totals
            .entry((tenant.clone(), currency.clone()))
            .or_insert_with(|| DailyTotals {
                tenant,
                currency,
                orders: 0,
                captured_minor: 0,
                refunded_minor: 0,
                merchant_refunded_minor: 0,
                net_minor: 0,
                exceptions: 0,
            });
        // Each key has at most one row from each half; the other half's columns are 0.
        totals.orders += orders;
        totals.exceptions += exceptions;
        totals.captured_minor += captured;
        totals.refunded_minor += refunded;
        totals.merchant_refunded_minor += merchant_refunded;
        totals.net_minor = totals.captured_minor - totals.refunded_minor;
    }
    Ok(totals.into_values().collect())
}

/// Which orders to list.
#[derive(Debug, Clone, Default)]
pub struct OrderFilter {
    pub tenant: Option<String>,
    /// Only exceptions (any reason, or this one).
    pub exceptions_only: bool,
    pub reason: Option<ExceptionReason>,
    pub merchant: Option<String>,
    /// Business days, inclusive.
    pub from: Option<Date>,
    pub to: Option<Date>,
    /// Orders after this (business day, order id), for the next page.
    pub after: Option<(String, String)>,
}

/// One order as finance sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct OrderLine {
    pub tenant: String,
    pub order_id: String,
    pub payment_id: Option<String>,
    pub merchant: Option<String>,
    pub currency: String,
    pub order_total_minor: Option<i64>,
    pub placed_on: Option<String>,
    pub business_date: String,
    pub authorizations_approved: i64,
    pub authorizations_declined: i64,
    pub authorized_minor: i64,
    pub captured_minor: i64,
    pub card_refunded_minor: i64,
    pub merchant_refunded_minor: i64,
    pub committed_minor: i64,
    /// `matched`, `pending`, `void` or `exception`.
    #[sqlx(skip)]
    pub status: &'static str,
    pub reason: Option<String>,
    pub updated_at: String,
}

/// Orders matching `filter` in (business day, order id) order, at most `limit`.
pub async fn orders(
    db: &Database,
    filter: &OrderFilter,
    judgement: Judgement,
    limit: u32,
) -> Result<Vec<OrderLine>, sqlx::Error> {
    let exception = exception_sql("$1");
    let mut sql = format!(
        "SELECT tenant, order_id, payment_id, merchant, currency, order_total_minor, placed_on,
                business_date, authorizations_approved, authorizations_declined, authorized_minor,
                captured_minor, card_refunded_minor, merchant_refunded_minor, committed_minor,
                {exception} AS reason, updated_at, closed, currency_mismatch
           FROM reconciliation_orders WHERE 1 = 1"
    );
    if filter.exceptions_only {
        sql.push_str(&format!(" AND {exception} IS NOT NULL"));
    }
    let mut binds = vec![judgement.cutoff()];
    let mut and = |clause: &str, value: String| {
        binds.push(value);
        sql.push_str(&format!(" AND {clause} ${}", binds.len()));
    };
    if let Some(tenant) = &filter.tenant {
        and("tenant =", tenant.clone());
    }
    if let Some(reason) = filter.reason {
        and(&format!("{exception} ="), reason.as_str().to_owned());
    }
    if let Some(merchant) = &filter.merchant {
        and("merchant =", merchant.clone());
    }
    if let Some(from) = filter.from {
        and("business_date >=", from.to_string());
    }
    if let Some(to) = filter.to {
        and("business_date <=", to.to_string());
    }
    if let Some((day, order_id)) = &filter.after {
        binds.push(day.clone());
        binds.push(order_id.clone());
        sql.push_str(&format!(
            " AND (business_date, order_id) > (${}, ${})",
            binds.len() - 1,
            binds.len()
        ));
    }
    sql.push_str(&format!(
        " ORDER BY business_date, order_id LIMIT {}",
        limit.max(1)
    ));
    let rows: Vec<JudgedRow> = on_pool!(db, pool => {
        let mut query = sqlx::query_as(&sql);
        for value in &binds {
            query = query.bind(value);
        }
        query.fetch_all(pool).await?
    });
    Ok(rows.into_iter().map(|row| row.judged(judgement)).collect())
}

#[derive(Debug, sqlx::FromRow)]
struct JudgedRow {
    #[sqlx(flatten)]
    line: OrderLine,
    closed: i32,
    currency_mismatch: i32,
}

impl JudgedRow {
    fn judged(self, judgement: Judgement) -> OrderLine {
        let line = self.line;
        let money = MoneyRow {
            order_total_minor: line.order_total_minor,
            placed_on: line.placed_on.clone(),
            closed: self.closed,
            authorizations_approved: line.authorizations_approved,
            authorizations_declined: line.authorizations_declined,
            authorized_minor: line.authorized_minor,
            captured_minor: line.captured_minor,
            card_refunded_minor: line.card_refunded_minor,
            merchant_refunded_minor: line.merchant_refunded_minor,
            committed_minor: line.committed_minor,
            currency_mismatch: self.currency_mismatch,
        }
        .money();
        let assessment = money.assess(judgement.today, judgement.capture_days);
        OrderLine {
            status: assessment.as_str(),
            reason: assessment.reason().map(|r| r.as_str().to_owned()),
            ..line
        }
    }
}

/// The payment a card pays for: `(tenant, payment id)`, once this model has seen the
/// card issued. Card-issuer webhooks name the card, not the payment.
pub async fn find_payment_by_card(
    db: &Database,
    card_reference: &str,
) -> Result<Option<(String, String)>, sqlx::Error> {
    const SQL: &str = "SELECT tenant, payment_id FROM reconciliation_orders
                        WHERE card_reference = $1 AND payment_id IS NOT NULL";
    on_pool!(db, pool => sqlx::query_as(SQL).bind(card_reference).fetch_optional(pool).await)
}
