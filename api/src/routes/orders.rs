//! `/v1/orders` (one per merchant sub-cart) and `/v1/payments` (read-only).

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use shopagent_domain::ids::{OrderId, PaymentId, ReturnId};
use shopagent_domain::order::{CheckoutPath, Order, OrderCommand, ReturnStatus};
use shopagent_domain::payment::Payment;
use time::OffsetDateTime;
use utoipa::ToSchema;

use super::mandates::MoneyBody;
use super::{Body, IdPath, Owner, invalid, new_id, versioned};
use super::{Changer, Owned};
use crate::auth::{Principal, Role};
use crate::idempotency::RequestKey;
use crate::problem::Problem;
use crate::server::App;

pub fn routes() -> Router<App> {
    Router::new()
        .route("/v1/orders", get(list))
        .route("/v1/orders/{id}", get(read))
        .route("/v1/orders/{id}/cancel", post(cancel))
        .route("/v1/orders/{id}/returns", post(request_return))
        .route("/v1/payments/{id}", get(read_payment))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderReason {
    #[schema(schema_with = crate::openapi::fields::text_500)]
    pub reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrderLineView {
    pub offer_id: String,
    pub title: String,
    pub quantity: u32,
    pub unit_price: MoneyBody,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReturnView {
    pub return_id: String,
    /// `requested`, `rma_issued` or `returned`.
    pub status: String,
    /// The merchant's reference for the return, once it accepted it.
    pub rma: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TrackingView {
    pub carrier: String,
    pub tracking_number: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrderView {
    pub id: String,
    pub cart_id: String,
    pub shopper: String,
    pub mandate_id: Option<String>,
    pub merchant: String,
    pub version: i64,
    /// `api`, `deeplink` or `headless`.
    pub path: String,
    pub path_reason: String,
    pub status: String,
    pub merchant_reference: Option<String>,
    /// The parcel, once shipped.
    pub tracking: Option<TrackingView>,
    /// The payment (virtual card) of an order placed through the merchant's API.
    pub payment_id: Option<String>,
    pub total: MoneyBody,
    pub refunded: MoneyBody,
    pub lines: Vec<OrderLineView>,
    pub returns: Vec<ReturnView>,
    /// Id of the return a POST created, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_id: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PaymentView {
    pub id: String,
    pub order_id: String,
    pub merchant: String,
    pub version: i64,
    pub cap: MoneyBody,
    /// The issuer's card reference; never a card number.
    pub card_reference: Option<String>,
    pub status: String,
    pub captured: MoneyBody,
    pub refunded: MoneyBody,
}

impl Owned for Order {
    fn owner(&self) -> Option<Owner<'_>> {
        self.draft.as_ref().map(|d| Owner {
            shopper: &d.shopper,
            mandate: d.mandate_id,
        })
    }
}

impl Owned for Payment {
    fn owner(&self) -> Option<Owner<'_>> {
        self.terms.as_ref().map(|t| Owner {
            shopper: &t.shopper,
            mandate: t.mandate_id,
        })
    }
}

pub fn path_name(path: CheckoutPath) -> &'static str {
    match path {
        CheckoutPath::Api => "api",
        CheckoutPath::Deeplink => "deeplink",
        CheckoutPath::Headless => "headless",
    }
}

fn view(order: &Order, version: i64, created_id: Option<ReturnId>) -> Result<OrderView, Problem> {
    let (Some(id), Some(draft)) = (order.id, order.draft.as_ref()) else {
        return Err(Problem::not_found());
    };
    Ok(OrderView {
        id: id.to_string(),
        cart_id: draft.cart_id.to_string(),
        shopper: draft.shopper.clone(),
        mandate_id: draft.mandate_id.map(|m| m.to_string()),
        merchant: draft.merchant.to_string(),
        version,
        path: path_name(draft.path).into(),
        path_reason: draft.path_reason.clone(),
        status: order.status.as_str().into(),
        merchant_reference: order.merchant_reference.clone(),
        payment_id: (draft.path == CheckoutPath::Api)
            .then(|| shopagent_commands::checkout::payment_of(id).to_string()),
        tracking: order
            .tracking
            .clone()
            .map(|(carrier, tracking_number)| TrackingView {
                carrier,
                tracking_number,
            }),
        total: draft.total.into(),
        refunded: shopagent_domain::money::Money::new(order.refunded_minor, draft.total.currency)
            .into(),
        lines: draft
            .lines
            .iter()
            .map(|l| OrderLineView {
                offer_id: l.offer_id.to_string(),
                title: l.title.clone(),
                quantity: l.quantity,
                unit_price: l.unit_price.into(),
            })
            .collect(),
        returns: order
            .returns
            .iter()
            .map(|(id, status)| ReturnView {
                return_id: id.to_string(),
                status: match status {
                    ReturnStatus::Requested => "requested",
                    ReturnStatus::RmaIssued => "rma_issued",
                    ReturnStatus::Returned => "returned",
                }
                .into(),
                rma: order.rmas.get(id).cloned(),
            })
            .collect(),
        created_id: created_id.map(|id| id.to_string()),
    })
}

#[utoipa::path(operation_id = "orders_read", get, path = "/v1/orders/{id}", tag = "orders", params(("id" = String, Path, format = Uuid)),
    responses((status = 200, description = "The resource after the request", body = OrderView, headers(("ETag" = String))), (status = 404, description = "No such resource (or not visible to the caller)", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn read(
    State(app): State<App>,
    principal: Principal,
    IdPath(id): IdPath,
) -> Result<Response, Problem> {
    let (order, version) = super::load_visible(&app.orders, &principal, OrderId(id)).await?;
    Ok(versioned(
        StatusCode::OK,
        version,
        &view(&order, version, None)?,
    ))
}

fn reason(body: OrderReason) -> Result<String, Problem> {
    if body.reason.trim().is_empty() || body.reason.chars().count() > 500 {
        return Err(invalid("reason", "1 to 500 characters"));
    }
    Ok(body.reason)
}

#[utoipa::path(operation_id = "orders_cancel", post, path = "/v1/orders/{id}/cancel", tag = "orders", request_body = OrderReason,
    params(("id" = String, Path, format = Uuid), ("Idempotency-Key" = String, Header), ("If-Match" = Option<String>, Header)),
    responses((status = 200, description = "The resource after the request", body = OrderView), (status = "4XX", description = "The request was refused: see `code`", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn cancel(
    State(app): State<App>,
    principal: Principal,
    key: RequestKey,
    headers: HeaderMap,
    IdPath(id): IdPath,
    Body(body): Body<OrderReason>,
) -> Result<Response, Problem> {
    let command = OrderCommand::Cancel {
        reason: reason(body)?,
        at: OffsetDateTime::now_utc(),
    };
    let (order, version) = super::change(
        &app.orders,
        &principal,
        &key,
        &headers,
        OrderId(id),
        Changer::OwnerOrAgent,
        command,
    )
    .await?;
    Ok(versioned(
        StatusCode::OK,
        version,
        &view(&order, version, None)?,
    ))
}

#[utoipa::path(operation_id = "orders_request_return", post, path = "/v1/orders/{id}/returns", tag = "orders", request_body = OrderReason,
    params(("id" = String, Path, format = Uuid), ("Idempotency-Key" = String, Header), ("If-Match" = Option<String>, Header)),
    responses((status = 200, description = "The resource after the request", body = OrderView), (status = "4XX", description = "The request was refused: see `code`", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn request_return(
    State(app): State<App>,
    principal: Principal,
    key: RequestKey,
    headers: HeaderMap,
    IdPath(id): IdPath,
    Body(body): Body<OrderReason>,
) -> Result<Response, Problem> {
    let return_id = ReturnId(new_id(&principal, &key));
    let command = OrderCommand::RequestReturn {
        return_id,
        reason: reason(body)?,
        at: OffsetDateTime::now_utc(),
    };
    let (order, version) = super::change(
        &app.orders,
        &principal,
        &key,
        &headers,
        OrderId(id),
        Changer::OwnerOrAgent,
        command,
    )
    .await?;
    Ok(versioned(
        StatusCode::OK,
        version,
        &view(&order, version, Some(return_id))?,
    ))
}

#[utoipa::path(operation_id = "orders_read_payment", get, path = "/v1/payments/{id}", tag = "payments", params(("id" = String, Path, format = Uuid)),
    responses((status = 200, description = "The resource after the request", body = PaymentView, headers(("ETag" = String))), (status = 404, description = "No such resource (or not visible to the caller)", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn read_payment(
    State(app): State<App>,
    principal: Principal,
    IdPath(id): IdPath,
) -> Result<Response, Problem> {
    let (payment, version) = super::load_visible(&app.payments, &principal, PaymentId(id)).await?;
    let (Some(id), Some(terms)) = (payment.id, payment.terms.as_ref()) else {
        return Err(Problem::not_found());
    };
    let currency = terms.cap.currency;
    let view = PaymentView {
        id: id.to_string(),
        order_id: terms.order_id.to_string(),
        merchant: terms.merchant.to_string(),
        version,
        cap: terms.cap.into(),
        card_reference: payment
            .card
            .as_ref()
            .map(|(card, _)| card.as_str().to_owned()),
        status: format!("{:?}", payment.status).to_lowercase(),
        captured: shopagent_domain::money::Money::new(payment.captured_minor, currency).into(),
        refunded: shopagent_domain::money::Money::new(payment.refunded_minor, currency).into(),
    };
    Ok(versioned(StatusCode::OK, version, &view))
}

/// Filters and page of `GET /v1/orders`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListOrders {
    /// Only orders in this status (`created`, `placed`, `shipped`, …).
    #[param(schema_with = status_schema)]
    pub status: Option<String>,
    /// Only orders at this merchant.
    #[param(schema_with = crate::openapi::fields::merchant_id)]
    pub merchant: Option<String>,
    /// Page size, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrderSummary {
    pub order_id: String,
    pub shopper: String,
    pub merchant: String,
    pub path: String,
    pub status: String,
    pub total: MoneyBody,
    pub refunded: MoneyBody,
    pub merchant_reference: Option<String>,
    pub carrier: Option<String>,
    pub tracking_number: Option<String>,
    /// What happened, oldest first.
    #[schema(value_type = Vec<Object>)]
    pub timeline: serde_json::Value,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrderPage {
    pub orders: Vec<OrderSummary>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

fn status_schema() -> utoipa::openapi::Object {
    crate::openapi::fields::one_of(STATUSES).build()
}

const STATUSES: [&str; 10] = [
    "created",
    "submitted",
    "placed",
    "confirmed",
    "shipped",
    "out_for_delivery",
    "delivered",
    "delivery_exception",
    "failed",
    "cancelled",
];

type SummaryRow = (
    String,
    String,
    String,
    String,
    String,
    i64,
    i64,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    String,
    String,
);

/// Every order the caller may see, newest first, from the `orders_hub` projection.
#[utoipa::path(operation_id = "orders_list", get, path = "/v1/orders", tag = "orders", params(ListOrders),
    responses((status = 200, description = "A page of orders, newest first", body = OrderPage), (status = "4XX", description = "The request was refused: see `code`", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn list(
    State(app): State<App>,
    principal: Principal,
    query: Result<axum::extract::Query<ListOrders>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let query = super::query(query)?;
    let limit = i64::from(query.limit.unwrap_or(20));
    if !(1..=100).contains(&limit) {
        return Err(invalid("limit", "between 1 and 100"));
    }
    let mut sql = String::from(
        "SELECT order_id, shopper, merchant, path, status, total_minor, refunded_minor, currency,
                merchant_reference, carrier, tracking_number, timeline, created_at, updated_at
           FROM orders_hub WHERE tenant = $1",
    );
    let mut binds = vec![principal.tenant.clone()];
    let mut and = |clause: &str, value: String| {
        binds.push(value);
        sql.push_str(&format!(" AND {clause} ${}", binds.len()));
    };
    match principal.role {
        Role::Shopper => and("shopper =", principal.subject.clone()),
        Role::Agent => and(
            "mandate_id =",
            principal.mandate.map(|m| m.to_string()).unwrap_or_default(),
        ),
        Role::Finance | Role::Auditor | Role::Ops | Role::Admin => {}
    }
    if let Some(status) = query.status {
        if !STATUSES.contains(&status.as_str()) {
            return Err(invalid("status", format!("one of {}", STATUSES.join(", "))));
        }
        and("status =", status);
    }
    if let Some(merchant) = query.merchant {
        let merchant = shopagent_domain::ids::MerchantId::parse(&merchant)
            .map_err(|e| invalid("merchant", e))?;
        and("merchant =", merchant.to_string());
    }
    if let Some(cursor) = query.cursor {
        let decoded = hex::decode(&cursor)
            .ok()
            .and_then(|b| String::from_utf8(b).ok());
        let Some((created_at, order_id)) = decoded.as_deref().and_then(|c| c.split_once('|'))
        else {
            return Err(Problem::bad_request(
                "invalid_cursor",
                "pass next_cursor from the previous page",
            ));
        };
        binds.push(created_at.to_owned());
        binds.push(order_id.to_owned());
        sql.push_str(&format!(
            " AND (created_at, order_id) < (${}, ${})",
            binds.len() - 1,
            binds.len()
        ));
    }
    sql.push_str(&format!(
        " ORDER BY created_at DESC, order_id DESC LIMIT ${}",
        binds.len() + 1
    ));
    let rows: Vec<SummaryRow> = match app.store.database() {
        shopagent_commands::Database::Postgres(pool) => {
            let mut q = sqlx::query_as(&sql);
            for value in &binds {
                q = q.bind(value);
            }
            q.bind(limit + 1).fetch_all(pool).await
        }
        shopagent_commands::Database::Sqlite(pool) => {
            let mut q = sqlx::query_as(&sql);
            for value in &binds {
                q = q.bind(value);
            }
            q.bind(limit + 1).fetch_all(pool).await
        }
    }?;
    let more = rows.len() as i64 > limit;
    let orders: Vec<OrderSummary> = rows
        .into_iter()
        .take(limit as usize)
        .map(
            |(
                order_id,
                shopper,
                merchant,
                path,
                status,
                total,
                refunded,
                currency,
                merchant_reference,
                carrier,
                tracking_number,
                timeline,
                created_at,
                updated_at,
            )| OrderSummary {
                order_id,
                shopper,
                merchant,
                path,
                status,
                total: MoneyBody {
                    minor: total,
                    currency: currency.clone(),
                },
                refunded: MoneyBody {
                    minor: refunded,
                    currency,
                },
                merchant_reference,
                carrier,
                tracking_number,
                timeline: serde_json::from_str(&timeline).unwrap_or_default(),
                created_at,
                updated_at,
            },
        )
        .collect();
    let next_cursor = if more {
        orders
            .last()
            .map(|o| hex::encode(format!("{}|{}", o.created_at, o.order_id)))
    } else {
        None
    };
    Ok(axum::Json(OrderPage {
        orders,
        next_cursor,
    })
    .into_response())
}
