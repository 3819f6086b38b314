//! `shopagent reconcile`: one day's reconciliation report for spreadsheets and scripts.

use std::io::Write;

use serde::Serialize;
use shopagent_commands::Store;
use shopagent_projections::reconciliation::{self, DailyTotals, Judgement, OrderFilter, OrderLine};
use shopagent_projections::{ProjectionRunner, Reconciliation};
use time::{Date, OffsetDateTime};

use crate::cli::ReportFormat;

/// The report of one day.
#[derive(Debug, Serialize)]
pub struct DayReport {
    pub date: String,
    pub capture_days: u16,
    pub totals: Vec<DailyTotals>,
    /// Every order of the day, with its status and, for exceptions, the reason.
    pub orders: Vec<OrderLine>,
}

/// Brings the reconciliation read model up to the log's head (unless ops paused it),
/// then reads the report of `date`.
pub async fn day_report(
    store: &Store,
    tenant: Option<&str>,
    date: Date,
    capture_days: u16,
) -> anyhow::Result<DayReport> {
    ProjectionRunner::new(store.clone(), std::sync::Arc::new(Reconciliation))
        .catch_up_to_head()
        .await?;
    let judgement = Judgement {
        today: OffsetDateTime::now_utc().date(),
        capture_days,
    };
    let db = store.database();
    let totals = reconciliation::daily(db, tenant, date, judgement).await?;
    let filter = OrderFilter {
        tenant: tenant.map(str::to_owned),
        from: Some(date),
        to: Some(date),
        ..OrderFilter::default()
    };
    let mut orders = Vec::new();
    loop {
        let page =
            reconciliation::orders(db, &filter_after(&filter, orders.last()), judgement, 1_000)
                .await?;
        let done = page.len() < 1_000;
        orders.extend(page);
        if done {
            break;
        }
    }
    Ok(DayReport {
        date: date.to_string(),
        capture_days,
        totals,
        orders,
    })
}

fn filter_after(filter: &OrderFilter, last: Option<&OrderLine>) -> OrderFilter {
    OrderFilter {
        after: last.map(|line| (line.business_date.clone(), line.order_id.clone())),
        ..filter.clone()
    }
}

/// Writes `report`: JSON holds totals and orders; CSV holds the totals, or the orders
/// with `orders`.
pub fn write_report(
    report: &DayReport,
    format: ReportFormat,
    orders: bool,
    out: impl Write,
) -> anyhow::Result<()> {
    match format {
        ReportFormat::Json => {
            let mut out = out;
            serde_json::to_writer_pretty(&mut out, report)?;
            writeln!(out)?;
        }
        ReportFormat::Csv => {
            let mut csv = csv::Writer::from_writer(out);
            if orders {
                for line in &report.orders {
                    csv.serialize(line)?;
                }
                if report.orders.is_empty() {
                    csv.write_record(ORDER_COLUMNS)?;
                }
            } else {
                for totals in &report.totals {
                    csv.serialize(totals)?;
                }
                if report.totals.is_empty() {
                    csv.write_record(TOTAL_COLUMNS)?;
                }
            }
            csv.flush()?;
        }
    }
    Ok(())
}

/// Headers of an empty CSV, as `serialize` writes them for a row.
const TOTAL_COLUMNS: [&str; 8] = [
    "tenant",
    "currency",
    "orders",
    "captured_minor",
    "refunded_minor",
    "merchant_refunded_minor",
    "net_minor",
    "exceptions",
];

const ORDER_COLUMNS: [&str; 18] = [
    "tenant",
    "order_id",
    "payment_id",
    "merchant",
    "currency",
    "order_total_minor",
    "placed_on",
    "business_date",
    "authorizations_approved",
    "authorizations_declined",
    "authorized_minor",
    "captured_minor",
    "card_refunded_minor",
    "merchant_refunded_minor",
    "committed_minor",
    "status",
    "reason",
    "updated_at",
];
