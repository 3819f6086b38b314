//! `reconciliation`: per order, the money that moved and whether it agrees with the
//! order — finance's read model — and the day-by-day ledger of captures and refunds.
//!
//! Rows are keyed by order. Order events fill in the merchant's side, payment events
//! (found by payment id) the card's side, and the mandate's `SpendCommitted` (found by
//! reservation id) the committed spend. After a batch's last change to a row, the row's
//! date-independent exception is judged again by [`OrderMoney::standing_exception`]; the
//! one rule that depends on the date (no capture after N days) is applied when reading.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use shopagent_commands::log::format_timestamp;
use shopagent_commands::{Database, StoredEvent, on_pool};
use shopagent_domain::mandate::MandateEvent;
use shopagent_domain::money::Money;
use shopagent_domain::order::OrderEvent;
use shopagent_domain::payment::PaymentEvent;
use shopagent_domain::reconciliation::{ExceptionReason, OrderMoney};
use time::{Date, OffsetDateTime};

use crate::on_read_model;
use crate::rows::{Cell, OnConflict, ROWS_PER_STATEMENT, Wanted, stream_key, upsert};
use crate::runner::{Projection, ProjectionError, ReadModelTx};

#[derive(Debug, Default, Clone, Copy)]
pub struct Reconciliation;

impl Reconciliation {
    pub const NAME: &'static str = "reconciliation";

    /// Every column of `reconciliation_orders`, in the order a batch writes them.
    pub const ORDER_COLUMNS: [&'static str; 22] = [
        "tenant",
        "order_id",
        "payment_id",
        "card_reference",
        "reservation_id",
        "merchant",
        "currency",
        "order_total_minor",
        "placed_on",
        "closed",
        "authorizations_approved",
        "authorizations_declined",
        "authorized_minor",
        "captured_minor",
        "card_refunded_minor",
        "merchant_refunded_minor",
        "committed_minor",
        "currency_mismatch",
        "standing_exception",
        "business_date",
        "created_at",
        "updated_at",
    ];

    /// Every column of `reconciliation_entries`.
    pub const ENTRY_COLUMNS: [&'static str; 7] = [
        "tenant",
        "entry_id",
        "order_id",
        "kind",
        "amount_minor",
        "currency",
        "day",
    ];
}

/// How an event names the row it changes.
enum Row<'a> {
    Order(&'a str),
    Payment(&'a str),
    Reservation(&'a str),
}

fn day(at: OffsetDateTime) -> String {
    at.date().to_string()
}

/// An event this model acts on, decoded once.
enum Decoded {
    Order(OrderEvent),
    Payment(PaymentEvent),
    SpendCommitted { reservation: String, amount: Money },
}

/// Whether this model acts on `event`: an order's, a payment's, or the spend a
/// mandate committed.
fn projected(event: &StoredEvent) -> bool {
    matches!(
        (event.aggregate_type.as_str(), event.event_type.as_str()),
        ("order" | "payment", _) | ("mandate", "SpendCommitted")
    )
}

impl Decoded {
    /// Decodes `event` if this model acts on it, and names the row it needs.
    fn read(event: &StoredEvent, wanted: &mut Wanted) -> Result<Option<Self>, ProjectionError> {
        if !projected(event) {
            return Ok(None);
        }
        let tenant = &event.metadata.tenant;
        let key = stream_key(&event.aggregate_id);
        Ok(Some(match event.aggregate_type.as_str() {
            "order" => {
                let order = OrderEvent::deserialize(&event.payload)
                    .map_err(|e| ProjectionError::unreadable(event, &e))?;
                wanted.add(tenant, "order_id", key);
                Self::Order(order)
            }
            "payment" => {
                let payment = PaymentEvent::deserialize(&event.payload)
                    .map_err(|e| ProjectionError::unreadable(event, &e))?;
                match &payment {
                    PaymentEvent::CardRequested { order_id, .. } => {
                        wanted.add(tenant, "order_id", order_id.to_string());
                    }
                    _ => wanted.add(tenant, "payment_id", key),
                }
                Self::Payment(payment)
            }
            "mandate" if event.event_type == "SpendCommitted" => {
                let MandateEvent::SpendCommitted {
                    reservation_id,
                    amount,
                    ..
                } = MandateEvent::deserialize(&event.payload)
                    .map_err(|e| ProjectionError::unreadable(event, &e))?
                else {
                    return Ok(None);
                };
                let reservation = reservation_id.to_string();
                wanted.add(tenant, "reservation_id", reservation.as_str());
                Self::SpendCommitted {
                    reservation,
                    amount,
                }
            }
            _ => return Ok(None),
        }))
    }
}

/// One row of `reconciliation_orders`, as read and written by a batch.
#[derive(Debug, sqlx::FromRow)]
struct OrderRow {
    tenant: String,
    order_id: String,
    payment_id: Option<String>,
    card_reference: Option<String>,
    reservation_id: Option<String>,
    merchant: Option<String>,
    currency: String,
    #[sqlx(flatten)]
    money: MoneyRow,
    standing_exception: Option<String>,
    business_date: String,
    created_at: String,
    updated_at: String,
}

impl OrderRow {
    /// A row begun by the order's first event, or its payment's if that came first.
    fn begun(tenant: &str, order_id: &str, currency: &str, at: OffsetDateTime) -> Self {
        let stamp = format_timestamp(at);
        Self {
            tenant: tenant.to_owned(),
            order_id: order_id.to_owned(),
            payment_id: None,
            card_reference: None,
            reservation_id: None,
            merchant: None,
            currency: currency.to_owned(),
            money: MoneyRow::default(),
            standing_exception: None,
            business_date: day(at),
            created_at: stamp.clone(),
            updated_at: stamp,
        }
    }

    /// Adds `money` to `column` when it is in the row's currency, and flags the row
    /// when it is not: money in another currency is never summed in.
    fn add(&mut self, column: fn(&mut MoneyRow) -> &mut i64, money: Money) {
        if money.currency.code() == self.currency {
            *column(&mut self.money) += money.minor;
        } else {
            self.money.currency_mismatch = 1;
        }
    }

    fn into_cells(self) -> Vec<Cell> {
        let money = self.money;
        vec![
            self.tenant.into(),
            self.order_id.into(),
            self.payment_id.into(),
            self.card_reference.into(),
            self.reservation_id.into(),
            self.merchant.into(),
            self.currency.into(),
            money.order_total_minor.into(),
            money.placed_on.into(),
            i64::from(money.closed).into(),
            money.authorizations_approved.into(),
            money.authorizations_declined.into(),
            money.authorized_minor.into(),
            money.captured_minor.into(),
            money.card_refunded_minor.into(),
            money.merchant_refunded_minor.into(),
            money.committed_minor.into(),
            i64::from(money.currency_mismatch).into(),
            self.standing_exception.into(),
            self.business_date.into(),
            self.created_at.into(),
            self.updated_at.into(),
        ]
    }
}

/// The rows a pass changes, and the ledger entries it records.
#[derive(Default)]
struct Pass {
    rows: BTreeMap<(String, String), OrderRow>,
    changed: BTreeSet<(String, String)>,
    entries: Vec<Vec<Cell>>,
}

impl Pass {
    /// The key of the row `row` names in `tenant`, if this model has it.
    fn find(&self, tenant: &str, row: &Row<'_>) -> Option<(String, String)> {
        if let Row::Order(id) = row {
            let key = (tenant.to_owned(), (*id).to_owned());
            return self.rows.contains_key(&key).then_some(key);
        }
        let matches = |candidate: &OrderRow| match row {
            Row::Order(id) => candidate.order_id == *id,
            Row::Payment(id) => candidate.payment_id.as_deref() == Some(id),
            Row::Reservation(id) => candidate.reservation_id.as_deref() == Some(id),
        };
        self.rows
            .iter()
            .find(|((t, _), candidate)| t == tenant && matches(candidate))
            .map(|(key, _)| key.clone())
    }

    /// The row of `order_id`, begun by `event` if this model has none yet.
    fn begin(&mut self, event: &StoredEvent, order_id: &str, currency: &str) -> &mut OrderRow {
        let tenant = &event.metadata.tenant;
        let key = (tenant.clone(), order_id.to_owned());
        self.changed.insert(key.clone());
        let row = self
            .rows
            .entry(key)
            .or_insert_with(|| OrderRow::begun(tenant, order_id, currency, event.recorded_at));
        row.updated_at = format_timestamp(event.recorded_at);
        row
    }

    /// Applies `set` to the row `row` names, if there is one (an event for an order this
    /// model never saw begin changes nothing). `entry` records the movement of `money`
    /// in the ledger.
    fn change(
        &mut self,
        event: &StoredEvent,
        row: Row<'_>,
        entry: Option<(&str, Money)>,
        set: impl FnOnce(&mut OrderRow),
    ) {
        let tenant = &event.metadata.tenant;
        let Some(key) = self.find(tenant, &row) else {
            return;
        };
        let Some(found) = self.rows.get_mut(&key) else {
            return;
        };
        set(found);
        found.updated_at = format_timestamp(event.recorded_at);
        if let Some((kind, money)) = entry {
            self.entries.push(vec![
                tenant.as_str().into(),
                event.event_id.to_string().into(),
                found.order_id.as_str().into(),
                kind.into(),
                money.minor.into(),
                money.currency.code().into(),
                day(event.recorded_at).into(),
            ]);
        }
        self.changed.insert(key);
    }

    fn apply_order(&mut self, event: &StoredEvent, order: OrderEvent) {
        let order_id = stream_key(&event.aggregate_id);
        let row = Row::Order(order_id);
        match order {
            OrderEvent::OrderCreated { draft, .. } => {
                let begun = self.begin(event, order_id, draft.total.currency.code());
                begun.reservation_id = draft.reservation_id.map(|r| r.to_string());
                begun.merchant = Some(draft.merchant.to_string());
                draft.total.currency.code().clone_into(&mut begun.currency);
                begun.money.order_total_minor = Some(draft.total.minor);
            }
            OrderEvent::OrderPlaced { .. } => self.change(event, row, None, |found| {
                found.money.placed_on = Some(day(event.recorded_at));
                found.business_date = day(event.recorded_at);
            }),
            OrderEvent::OrderFailed { .. } | OrderEvent::OrderCancelled { .. } => {
                self.change(event, row, None, |found| found.money.closed = 1);
            }
            OrderEvent::OrderRefunded { amount, .. } => {
                self.change(event, row, Some(("merchant_refund", amount)), |found| {
                    found.add(|m| &mut m.merchant_refunded_minor, amount);
                });
            }
            _ => {}
        }
    }

    fn apply_payment(&mut self, event: &StoredEvent, payment: PaymentEvent) {
        let payment_id = stream_key(&event.aggregate_id);
        let row = Row::Payment(payment_id);
        match payment {
            PaymentEvent::CardRequested { order_id, cap, .. } => {
                let begun = self.begin(event, &order_id.to_string(), cap.currency.code());
                begun.payment_id = Some(payment_id.to_owned());
                cap.currency.code().clone_into(&mut begun.currency);
            }
            PaymentEvent::CardIssued { card, .. } => self.change(event, row, None, |found| {
                found.card_reference = Some(card.as_str().to_owned());
            }),
            PaymentEvent::AuthorizationApproved { amount, .. } => {
                self.change(event, row, None, |found| {
                    found.money.authorizations_approved += 1;
                    found.add(|m| &mut m.authorized_minor, amount);
                });
            }
            PaymentEvent::AuthorizationDeclined { .. } => {
                self.change(event, row, None, |found| {
                    found.money.authorizations_declined += 1;
                });
            }
            PaymentEvent::PaymentCaptured { amount, .. } => {
                self.change(event, row, Some(("capture", amount)), |found| {
                    found.add(|m| &mut m.captured_minor, amount);
                });
            }
            PaymentEvent::PaymentRefunded { amount, .. } => {
                self.change(event, row, Some(("card_refund", amount)), |found| {
                    found.add(|m| &mut m.card_refunded_minor, amount);
                });
            }
            PaymentEvent::CardVoided { .. } => {}
        }
    }

    /// Writes the changed rows, each judged once as the pass leaves it, and the entries.
    async fn write(mut self, tx: &mut ReadModelTx<'_>) -> Result<(), ProjectionError> {
        let rows = self
            .changed
            .iter()
            .filter_map(|key| self.rows.remove(key))
            .map(|mut row| {
                row.standing_exception = row
                    .money
                    .money()
                    .standing_exception()
                    .map(|reason| reason.as_str().to_owned());
                row.into_cells()
            })
            .collect();
        upsert(
            tx,
            "reconciliation_orders",
            &Reconciliation::ORDER_COLUMNS,
            &Reconciliation::ORDER_COLUMNS[..2],
            OnConflict::Overwrite(&Reconciliation::ORDER_COLUMNS[2..]),
            rows,
        )
        .await?;
        // An entry is made once per event; a replayed event keeps the first.
        upsert(
            tx,
            "reconciliation_entries",
            &Reconciliation::ENTRY_COLUMNS,
            &Reconciliation::ENTRY_COLUMNS[..2],
            OnConflict::Keep,
            self.entries,
        )
        .await
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

    fn projects(&self, event: &StoredEvent) -> bool {
        projected(event)
    }

    async fn apply(
        &self,
        tx: &mut ReadModelTx<'_>,
        event: &StoredEvent,
    ) -> Result<(), ProjectionError> {
        self.apply_batch(tx, std::slice::from_ref(event)).await
    }

    /// Reads the rows a pass of events names in one statement, applies the events to
    /// them in memory, in log order, and writes the changed rows back in one. Each
    /// changed row is judged once, as the pass leaves it: its standing exception depends
    /// only on the row.
    async fn apply_batch(
        &self,
        tx: &mut ReadModelTx<'_>,
        events: &[StoredEvent],
    ) -> Result<(), ProjectionError> {
        for events in events.chunks(ROWS_PER_STATEMENT) {
            let mut wanted = Wanted::default();
            let mut decoded = Vec::new();
            for event in events {
                if let Some(read) = Decoded::read(event, &mut wanted)? {
                    decoded.push((event, read));
                }
            }
            if decoded.is_empty() {
                continue;
            }
            let mut pass = Pass::default();
            let rows = wanted.fetch::<OrderRow>(tx, "reconciliation_orders", &Self::ORDER_COLUMNS);
            for row in rows.await? {
                pass.rows
                    .insert((row.tenant.clone(), row.order_id.clone()), row);
            }
            for (event, read) in decoded {
                match read {
                    Decoded::Order(order) => pass.apply_order(event, order),
                    Decoded::Payment(payment) => pass.apply_payment(event, payment),
                    Decoded::SpendCommitted {
                        reservation,
                        amount,
                    } => pass.change(event, Row::Reservation(&reservation), None, |found| {
                        found.add(|m| &mut m.committed_minor, amount);
                    }),
                }
            }
            pass.write(tx).await?;
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

#[derive(Debug, Default, sqlx::FromRow)]
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
    let mut totals = BTreeMap::<(String, String), DailyTotals>::new();
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
