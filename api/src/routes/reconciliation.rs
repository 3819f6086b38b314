//! Finance: daily totals and the orders whose money does not reconcile, from the
//! `reconciliation` projection. For `finance` and `admin`, within their tenant.

use axum::Router;
use axum::extract::State;
use axum::extract::rejection::QueryRejection;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use shopagent_domain::ids::MerchantId;
use shopagent_domain::reconciliation::ExceptionReason;
use shopagent_projections::reconciliation::{self, DailyTotals, Judgement, OrderFilter, OrderLine};
use time::{Date, OffsetDateTime};
use utoipa::ToSchema;

use crate::auth::{Principal, Role};
use crate::problem::Problem;
use crate::routes::invalid;
use crate::server::App;

pub fn routes() -> Router<App> {
    Router::new()
        .route("/v1/reconciliation/daily", get(daily))
        .route("/v1/reconciliation/exceptions", get(exceptions))
}

fn finance_only(principal: &Principal) -> Result<(), Problem> {
    if matches!(principal.role, Role::Finance | Role::Admin) {
        Ok(())
    } else {
        Err(Problem::forbidden(
            "reconciliation is for finance and admins",
        ))
    }
}

/// Parses `YYYY-MM-DD`, and only that (not ISO 8601's other date forms).
pub fn parse_day(text: &str) -> Result<Date, time::error::Parse> {
    Date::parse(
        text,
        time::macros::format_description!("[year]-[month]-[day]"),
    )
}

fn parse_date(field: &str, text: &str) -> Result<Date, Problem> {
    parse_day(text).map_err(|_| invalid(field, "a date as YYYY-MM-DD"))
}

fn judgement(app: &App) -> Judgement {
    Judgement {
        today: OffsetDateTime::now_utc().date(),
        capture_days: app.capture_days,
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DailyQuery {
    /// The day, `YYYY-MM-DD` (UTC).
    #[param(format = Date)]
    pub date: String,
}

/// One currency's money on one day.
#[derive(Debug, Serialize, ToSchema)]
pub struct DailyView {
    pub currency: String,
    /// Orders placed that day.
    pub orders: i64,
    /// Captured on cards that day, minor units.
    pub captured_minor: i64,
    /// Refunded to cards that day.
    pub refunded_minor: i64,
    /// Refunded by merchants that day.
    pub merchant_refunded_minor: i64,
    /// Captured less refunded.
    pub net_minor: i64,
    /// Orders of that day that do not reconcile.
    pub exceptions: i64,
}

impl From<DailyTotals> for DailyView {
    fn from(totals: DailyTotals) -> Self {
        Self {
            currency: totals.currency,
            orders: totals.orders,
            captured_minor: totals.captured_minor,
            refunded_minor: totals.refunded_minor,
            merchant_refunded_minor: totals.merchant_refunded_minor,
            net_minor: totals.net_minor,
            exceptions: totals.exceptions,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DailyReport {
    pub date: String,
    /// Days a placed order may wait for its capture before it is an exception.
    pub capture_days: u16,
    pub totals: Vec<DailyView>,
}

/// Totals of one day per currency: orders placed, captured, refunded, net, and the
/// number of exceptions.
#[utoipa::path(operation_id = "reconciliation_daily", get, path = "/v1/reconciliation/daily", tag = "finance", params(DailyQuery),
    responses((status = 200, description = "The day's totals per currency", body = DailyReport),
        (status = "4XX", description = "The request was refused: see `code`", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn daily(
    State(app): State<App>,
    principal: Principal,
    daily: Result<axum::extract::Query<DailyQuery>, QueryRejection>,
) -> Result<Response, Problem> {
    finance_only(&principal)?;
    let daily = super::query(daily)?;
    let date = parse_date("date", &daily.date)?;
    let totals = reconciliation::daily(
        app.store.database(),
        Some(&principal.tenant),
        date,
        judgement(&app),
    )
    .await?;
    Ok(axum::Json(DailyReport {
        date: date.to_string(),
        capture_days: app.capture_days,
        totals: totals.into_iter().map(DailyView::from).collect(),
    })
    .into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ExceptionsQuery {
    /// Only this reason: `currency_mismatch`, `authorization_without_order`,
    /// `over_refund`, `capture_mismatch`, `merchant_refund_without_card_refund`,
    /// `card_refund_without_merchant_refund` or `not_captured`.
    #[param(schema_with = reason_schema)]
    pub reason: Option<String>,
    /// Only orders at this merchant.
    #[param(schema_with = crate::openapi::fields::merchant_id)]
    pub merchant: Option<String>,
    /// First business day, `YYYY-MM-DD`.
    #[param(format = Date)]
    pub from: Option<String>,
    /// Last business day, `YYYY-MM-DD`.
    #[param(format = Date)]
    pub to: Option<String>,
    /// Page size, 1 to 100 (default 50).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

fn reason_schema() -> utoipa::openapi::Object {
    crate::openapi::fields::one_of(ExceptionReason::ALL.iter().map(|r| r.as_str())).build()
}

/// An order whose money does not reconcile.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExceptionView {
    pub order_id: String,
    pub payment_id: Option<String>,
    pub merchant: Option<String>,
    pub reason: String,
    pub currency: String,
    /// The merchant-confirmed total; absent when no order is known for the payment.
    pub order_total_minor: Option<i64>,
    pub placed_on: Option<String>,
    /// The day the order counts on.
    pub business_date: String,
    pub authorizations_approved: i64,
    pub authorizations_declined: i64,
    pub authorized_minor: i64,
    pub captured_minor: i64,
    pub card_refunded_minor: i64,
    pub merchant_refunded_minor: i64,
    /// What the mandate committed for the order.
    pub committed_minor: i64,
    pub updated_at: String,
}

impl From<OrderLine> for ExceptionView {
    fn from(line: OrderLine) -> Self {
        Self {
            order_id: line.order_id,
            payment_id: line.payment_id,
            merchant: line.merchant,
            reason: line.reason.unwrap_or_default(),
            currency: line.currency,
            order_total_minor: line.order_total_minor,
            placed_on: line.placed_on,
            business_date: line.business_date,
            authorizations_approved: line.authorizations_approved,
            authorizations_declined: line.authorizations_declined,
            authorized_minor: line.authorized_minor,
            captured_minor: line.captured_minor,
            card_refunded_minor: line.card_refunded_minor,
            merchant_refunded_minor: line.merchant_refunded_minor,
            committed_minor: line.committed_minor,
            updated_at: line.updated_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ExceptionPage {
    pub exceptions: Vec<ExceptionView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Orders whose money does not reconcile, oldest business day first, with the reason.
#[utoipa::path(operation_id = "reconciliation_exceptions", get, path = "/v1/reconciliation/exceptions", tag = "finance", params(ExceptionsQuery),
    responses((status = 200, description = "A page of exceptions", body = ExceptionPage),
        (status = "4XX", description = "The request was refused: see `code`", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn exceptions(
    State(app): State<App>,
    principal: Principal,
    filter: Result<axum::extract::Query<ExceptionsQuery>, QueryRejection>,
) -> Result<Response, Problem> {
    finance_only(&principal)?;
    let filter = super::query(filter)?;
    let limit = filter.limit.unwrap_or(50);
    if !(1..=100).contains(&limit) {
        return Err(invalid("limit", "between 1 and 100"));
    }
    let reason = filter
        .reason
        .map(|reason| {
            ExceptionReason::parse(&reason).ok_or_else(|| {
                let names: Vec<&str> = ExceptionReason::ALL.iter().map(|r| r.as_str()).collect();
                invalid("reason", format!("one of {}", names.join(", ")))
            })
        })
        .transpose()?;
    let merchant = filter
        .merchant
        .map(|m| MerchantId::parse(&m).map_err(|e| invalid("merchant", e)))
        .transpose()?;
    let after = filter
        .cursor
        .map(|cursor| {
            hex::decode(&cursor)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .and_then(|text| {
                    text.split_once('|')
                        .map(|(day, id)| (day.to_owned(), id.to_owned()))
                })
                .ok_or_else(|| {
                    Problem::bad_request(
                        "invalid_cursor",
                        "pass next_cursor from the previous page",
                    )
                })
        })
        .transpose()?;
    let order_filter = OrderFilter {
        tenant: Some(principal.tenant.clone()),
        exceptions_only: true,
        reason,
        merchant: merchant.map(|m| m.to_string()),
        from: filter.from.map(|d| parse_date("from", &d)).transpose()?,
        to: filter.to.map(|d| parse_date("to", &d)).transpose()?,
        after,
    };
    let mut lines = reconciliation::orders(
        app.store.database(),
        &order_filter,
        judgement(&app),
        limit + 1,
    )
    .await?;
    let more = lines.len() > limit as usize;
    lines.truncate(limit as usize);
    let next_cursor = if more {
        lines
            .last()
            .map(|line| hex::encode(format!("{}|{}", line.business_date, line.order_id)))
    } else {
        None
    };
    Ok(axum::Json(ExceptionPage {
        exceptions: lines.into_iter().map(ExceptionView::from).collect(),
        next_cursor,
    })
    .into_response())
}
