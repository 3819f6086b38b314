//! `/v1/mandates`: a shopper's guardrails for agents.

use std::collections::BTreeSet;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use shopagent_domain::ids::{Category, MandateId, MerchantId, ReservationId};
use shopagent_domain::mandate::{
    BudgetPeriod, Mandate, MandateCommand, MandateTerms, Mode, PeriodBudget, PeriodStart,
};
use shopagent_domain::money::{Currency, Money};
use time::OffsetDateTime;
use utoipa::ToSchema;

use super::{
    Body, IdPairPath, IdPath, Owner, created, invalid, metadata, new_id, stream_id, versioned,
};
use super::{Changer, Owned};
use crate::auth::{Principal, Role};
use crate::idempotency::RequestKey;
use crate::problem::Problem;
use crate::server::App;

pub fn routes() -> Router<App> {
    Router::new()
        .route("/v1/mandates", post(create))
        .route("/v1/mandates/{id}", get(read))
        .route("/v1/mandates/{id}/revoke", post(revoke))
        .route(
            "/v1/mandates/{id}/reservations/{reservation_id}/approve",
            post(approve),
        )
        .route(
            "/v1/mandates/{id}/reservations/{reservation_id}/deny",
            post(deny),
        )
}

/// An amount in minor units (cents for USD) of an ISO-4217 currency.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoneyBody {
    #[schema(example = 12999)]
    pub minor: i64,
    #[schema(schema_with = crate::openapi::fields::currency)]
    pub currency: String,
}

impl MoneyBody {
    pub fn parse(&self, field: &str) -> Result<Money, Problem> {
        let currency = Currency::parse(&self.currency).map_err(|e| invalid(field, e))?;
        Ok(Money::new(self.minor, currency))
    }
}

impl From<Money> for MoneyBody {
    fn from(money: Money) -> Self {
        Self {
            minor: money.minor,
            currency: money.currency.code().to_owned(),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModeBody {
    Assist,
    Autopilot,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PeriodBody {
    Day,
    Week,
    Month,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PeriodBudgetBody {
    pub period: PeriodBody,
    pub limit: MoneyBody,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateMandate {
    /// The shopper the mandate belongs to; only an admin names another one.
    pub shopper: Option<String>,
    pub mode: ModeBody,
    #[schema(schema_with = crate::openapi::fields::currency)]
    pub currency: String,
    pub period_budget: Option<PeriodBudgetBody>,
    pub per_order_limit: Option<MoneyBody>,
    /// Merchant ids; none of them also blocked.
    #[serde(default)]
    #[schema(schema_with = crate::openapi::fields::merchant_ids)]
    pub allowed_merchants: Vec<String>,
    #[serde(default)]
    #[schema(schema_with = crate::openapi::fields::merchant_ids)]
    pub blocked_merchants: Vec<String>,
    /// Taxonomy nodes.
    #[serde(default)]
    #[schema(schema_with = crate::openapi::fields::categories)]
    pub blocked_categories: Vec<String>,
    pub approval_threshold: Option<MoneyBody>,
    /// Basis points (1/100 %) a quote may exceed the prices seen before approval is needed.
    #[serde(default)]
    #[schema(maximum = 10000)]
    pub price_drift_tolerance_bps: u32,
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<OffsetDateTime>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Revoke {
    #[schema(schema_with = crate::openapi::fields::text_500)]
    pub reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReservationView {
    pub reservation_id: String,
    pub merchant: String,
    pub amount: MoneyBody,
    pub awaiting_approval: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MandateView {
    pub id: String,
    pub shopper: String,
    pub version: i64,
    pub mode: ModeBody,
    pub currency: String,
    pub period_budget: Option<PeriodBudgetBody>,
    pub per_order_limit: Option<MoneyBody>,
    pub allowed_merchants: Vec<String>,
    pub blocked_merchants: Vec<String>,
    pub blocked_categories: Vec<String>,
    pub approval_threshold: Option<MoneyBody>,
    pub price_drift_tolerance_bps: u32,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<OffsetDateTime>,
    pub revoked: bool,
    pub open_reservations: Vec<ReservationView>,
    /// Committed spend in the current budget period.
    pub spent_this_period: MoneyBody,
}

fn slugs<T>(
    field: &str,
    values: &[String],
    parse: impl Fn(&str) -> Result<T, shopagent_domain::ids::InvalidId>,
) -> Result<BTreeSet<T>, Problem>
where
    T: Ord,
{
    if values.len() > 500 {
        return Err(invalid(field, "at most 500 entries"));
    }
    values
        .iter()
        .map(|v| parse(v).map_err(|e| invalid(field, e)))
        .collect()
}

impl CreateMandate {
    fn terms(&self) -> Result<MandateTerms, Problem> {
        let currency = Currency::parse(&self.currency).map_err(|e| invalid("currency", e))?;
        Ok(MandateTerms {
            mode: match self.mode {
                ModeBody::Assist => Mode::Assist,
                ModeBody::Autopilot => Mode::Autopilot,
            },
            currency,
            period_budget: self
                .period_budget
                .as_ref()
                .map(|b| {
                    Ok::<_, Problem>(PeriodBudget {
                        period: match b.period {
                            PeriodBody::Day => BudgetPeriod::Day,
                            PeriodBody::Week => BudgetPeriod::Week,
                            PeriodBody::Month => BudgetPeriod::Month,
                        },
                        limit: b.limit.parse("period_budget.limit")?,
                    })
                })
                .transpose()?,
            per_order_limit: self
                .per_order_limit
                .as_ref()
                .map(|m| m.parse("per_order_limit"))
                .transpose()?,
            allowed_merchants: slugs(
                "allowed_merchants",
                &self.allowed_merchants,
                MerchantId::parse,
            )?,
            blocked_merchants: slugs(
                "blocked_merchants",
                &self.blocked_merchants,
                MerchantId::parse,
            )?,
            blocked_categories: slugs(
                "blocked_categories",
                &self.blocked_categories,
                Category::parse,
            )?,
            approval_threshold: self
                .approval_threshold
                .as_ref()
                .map(|m| m.parse("approval_threshold"))
                .transpose()?,
            price_drift_tolerance_bps: self.price_drift_tolerance_bps,
            expires_at: self.expires_at,
        })
    }
}

impl Owned for Mandate {
    fn owner(&self) -> Option<Owner<'_>> {
        self.id.map(|id| Owner {
            shopper: &self.shopper,
            mandate: Some(id),
        })
    }
}

fn view(mandate: &Mandate, version: i64) -> Result<MandateView, Problem> {
    let (Some(id), Some(terms)) = (mandate.id, mandate.terms.as_ref()) else {
        return Err(Problem::not_found());
    };
    let period = terms.period_budget.map_or(BudgetPeriod::Day, |b| b.period);
    let spent = mandate
        .spent
        .get(&PeriodStart(period.start_of(OffsetDateTime::now_utc())))
        .copied()
        .unwrap_or(0);
    Ok(MandateView {
        id: id.to_string(),
        shopper: mandate.shopper.clone(),
        version,
        mode: match terms.mode {
            Mode::Assist => ModeBody::Assist,
            Mode::Autopilot => ModeBody::Autopilot,
        },
        currency: terms.currency.code().to_owned(),
        period_budget: terms.period_budget.map(|b| PeriodBudgetBody {
            period: match b.period {
                BudgetPeriod::Day => PeriodBody::Day,
                BudgetPeriod::Week => PeriodBody::Week,
                BudgetPeriod::Month => PeriodBody::Month,
            },
            limit: b.limit.into(),
        }),
        per_order_limit: terms.per_order_limit.map(Into::into),
        allowed_merchants: terms
            .allowed_merchants
            .iter()
            .map(ToString::to_string)
            .collect(),
        blocked_merchants: terms
            .blocked_merchants
            .iter()
            .map(ToString::to_string)
            .collect(),
        blocked_categories: terms
            .blocked_categories
            .iter()
            .map(ToString::to_string)
            .collect(),
        approval_threshold: terms.approval_threshold.map(Into::into),
        price_drift_tolerance_bps: terms.price_drift_tolerance_bps,
        expires_at: terms.expires_at,
        revoked: mandate.revoked_at.is_some(),
        open_reservations: mandate
            .reservations
            .iter()
            .map(|(id, r)| ReservationView {
                reservation_id: id.to_string(),
                merchant: r.merchant.to_string(),
                amount: r.amount.into(),
                awaiting_approval: r.awaiting_approval,
            })
            .collect(),
        spent_this_period: Money::new(spent, terms.currency).into(),
    })
}

/// Loads a mandate the caller may see.
pub async fn load_visible(
    app: &App,
    principal: &Principal,
    id: MandateId,
) -> Result<(Mandate, i64), Problem> {
    super::load_visible(&app.mandates, principal, id).await
}

/// Loads a mandate the caller may see, for its shopper and terms, which never change
/// once it is made (its revocation and reservations do: they are the mandate's own
/// commands' to decide).
pub async fn load_terms(
    app: &App,
    principal: &Principal,
    id: MandateId,
) -> Result<Mandate, Problem> {
    super::load_visible_as_made(&app.mandates, principal, id).await
}

#[utoipa::path(operation_id = "mandates_create", post, path = "/v1/mandates", tag = "mandates", request_body = CreateMandate,
    params(("Idempotency-Key" = String, Header, description = "Makes the request safe to retry")),
    responses((status = 201, description = "Created", body = MandateView), (status = "4XX", description = "The request was refused: see `code`", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn create(
    State(app): State<App>,
    principal: Principal,
    key: RequestKey,
    Body(body): Body<CreateMandate>,
) -> Result<Response, Problem> {
    let shopper = match (principal.role, &body.shopper) {
        (Role::Shopper, None) => principal.subject.clone(),
        (Role::Shopper, Some(s)) if *s == principal.subject => principal.subject.clone(),
        (Role::Admin, Some(s)) if !s.is_empty() && s.len() <= 128 => s.clone(),
        (Role::Admin, _) => {
            return Err(invalid(
                "shopper",
                "an admin names the shopper (1 to 128 characters)",
            ));
        }
        _ => {
            return Err(Problem::forbidden(
                "mandates are created by their shopper or an admin",
            ));
        }
    };
    let terms = body.terms()?;
    let id = MandateId(new_id(&principal, &key));
    let command = MandateCommand::Create {
        mandate_id: id,
        shopper,
        terms,
        at: OffsetDateTime::now_utc(),
    };
    let stream = stream_id(&principal.tenant, id);
    let (mandate, version) = app
        .mandates
        .execute_and_load(&stream, command, metadata(&principal, &key), None)
        .await?;
    Ok(created(
        format!("/v1/mandates/{id}"),
        version,
        &view(&mandate, version)?,
    ))
}

#[utoipa::path(operation_id = "mandates_read", get, path = "/v1/mandates/{id}", tag = "mandates",
    params(("id" = String, Path, format = Uuid)),
    responses((status = 200, description = "The resource after the request", body = MandateView, headers(("ETag" = String))), (status = 404, description = "No such resource (or not visible to the caller)", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn read(
    State(app): State<App>,
    principal: Principal,
    IdPath(id): IdPath,
) -> Result<Response, Problem> {
    let (mandate, version) = load_visible(&app, &principal, MandateId(id)).await?;
    Ok(versioned(
        StatusCode::OK,
        version,
        &view(&mandate, version)?,
    ))
}

async fn change(
    app: &App,
    principal: &Principal,
    key: &RequestKey,
    headers: &HeaderMap,
    id: MandateId,
    command: MandateCommand,
) -> Result<Response, Problem> {
    // Every mandate change is the shopper's (or an admin's) decision, never the agent's.
    let (mandate, version) = super::change(
        &app.mandates,
        principal,
        key,
        headers,
        id,
        Changer::ShopperOrAdmin,
        command,
    )
    .await?;
    Ok(versioned(
        StatusCode::OK,
        version,
        &view(&mandate, version)?,
    ))
}

#[utoipa::path(operation_id = "mandates_revoke", post, path = "/v1/mandates/{id}/revoke", tag = "mandates", request_body = Revoke,
    params(("id" = String, Path, format = Uuid), ("Idempotency-Key" = String, Header), ("If-Match" = Option<String>, Header)),
    responses((status = 200, description = "The resource after the request", body = MandateView), (status = "4XX", description = "The request was refused: see `code`", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn revoke(
    State(app): State<App>,
    principal: Principal,
    key: RequestKey,
    headers: HeaderMap,
    IdPath(id): IdPath,
    Body(body): Body<Revoke>,
) -> Result<Response, Problem> {
    shopagent_domain::text::check("reason", &body.reason, 500)
        .map_err(|rule| Problem::unprocessable("invalid_field", rule))?;
    let command = MandateCommand::Revoke {
        reason: body.reason,
        at: OffsetDateTime::now_utc(),
    };
    change(&app, &principal, &key, &headers, MandateId(id), command).await
}

#[utoipa::path(operation_id = "mandates_approve", post, path = "/v1/mandates/{id}/reservations/{reservation_id}/approve", tag = "mandates",
    params(("id" = String, Path, format = Uuid), ("reservation_id" = String, Path, format = Uuid), ("Idempotency-Key" = String, Header)),
    responses((status = 200, description = "The resource after the request", body = MandateView), (status = "4XX", description = "The request was refused: see `code`", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn approve(
    State(app): State<App>,
    principal: Principal,
    key: RequestKey,
    headers: HeaderMap,
    IdPairPath(id, reservation): IdPairPath,
) -> Result<Response, Problem> {
    let command = MandateCommand::ApproveReservation {
        reservation_id: ReservationId(reservation),
        at: OffsetDateTime::now_utc(),
    };
    change(&app, &principal, &key, &headers, MandateId(id), command).await
}

#[utoipa::path(operation_id = "mandates_deny", post, path = "/v1/mandates/{id}/reservations/{reservation_id}/deny", tag = "mandates",
    params(("id" = String, Path, format = Uuid), ("reservation_id" = String, Path, format = Uuid), ("Idempotency-Key" = String, Header)),
    responses((status = 200, description = "The resource after the request", body = MandateView), (status = "4XX", description = "The request was refused: see `code`", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn deny(
    State(app): State<App>,
    principal: Principal,
    key: RequestKey,
    headers: HeaderMap,
    IdPairPath(id, reservation): IdPairPath,
) -> Result<Response, Problem> {
    let command = MandateCommand::DenyReservation {
        reservation_id: ReservationId(reservation),
    };
    change(&app, &principal, &key, &headers, MandateId(id), command).await
}

impl IntoResponse for MandateView {
    fn into_response(self) -> Response {
        axum::Json(self).into_response()
    }
}
