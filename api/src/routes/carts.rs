//! `/v1/carts`: the universal cart, its quotes, and checkout.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use shopagent_commands::{CommandError, Unit};
use shopagent_domain::address::{Address, AddressFields};
use shopagent_domain::cart::{Cart, CartCommand, CartLine, Quote, SubCartDecision};
use shopagent_domain::ids::{
    CartId, Category, LineId, MandateId, MerchantId, OfferId, OrderId, ReservationId,
};
use shopagent_domain::mandate::{MandateCommand, MandateError, Mode};
use shopagent_domain::merchant::choose_path;
use shopagent_domain::money::Currency;
use shopagent_domain::order::{CheckoutPath, OrderCommand, OrderDraft, OrderLine};
use time::{Date, OffsetDateTime};
use utoipa::ToSchema;
use uuid::Uuid;

use super::mandates::{MoneyBody, load_terms as load_mandate_terms};
use super::merchants::merchant_stream;
use super::{
    Body, IdPairPath, IdPath, Owner, authorize_write, created, if_match, invalid, metadata, new_id,
    stream_id, versioned,
};
use super::{Changer, Owned};
use crate::auth::{Principal, Role};
use crate::idempotency::RequestKey;
use crate::problem::Problem;
use crate::server::App;

pub fn routes() -> Router<App> {
    Router::new()
        .route("/v1/carts", post(create))
        .route("/v1/carts/{id}", get(read))
        .route("/v1/carts/{id}/lines", post(add_line))
        .route(
            "/v1/carts/{id}/lines/{line_id}/quantity",
            post(change_quantity),
        )
        .route("/v1/carts/{id}/lines/{line_id}/remove", post(remove_line))
        .route("/v1/carts/{id}/address", post(set_address))
        .route("/v1/carts/{id}/quotes", post(record_quote))
        .route("/v1/carts/{id}/quotes/fetch", post(fetch_quote))
        .route("/v1/carts/{id}/checkout", post(checkout))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCart {
    #[schema(schema_with = crate::openapi::fields::currency)]
    pub currency: String,
    /// The mandate an agent buys under (an agent's token decides this for it).
    pub mandate_id: Option<Uuid>,
    /// Only an admin names the shopper.
    pub shopper: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddLine {
    #[schema(schema_with = crate::openapi::fields::offer_id)]
    pub offer_id: String,
    #[schema(schema_with = crate::openapi::fields::merchant_id)]
    pub merchant: String,
    #[schema(schema_with = crate::openapi::fields::title)]
    pub title: String,
    #[schema(schema_with = crate::openapi::fields::category)]
    pub category: String,
    pub unit_price: MoneyBody,
    #[schema(minimum = 1, maximum = 999)]
    pub quantity: u32,
    /// When the price was seen; now when omitted.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub price_seen_at: Option<OffsetDateTime>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeQuantity {
    #[schema(minimum = 1, maximum = 999)]
    pub quantity: u32,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddressBody {
    #[schema(schema_with = crate::openapi::fields::address_line)]
    pub name: String,
    #[schema(schema_with = crate::openapi::fields::address_line)]
    pub line1: String,
    #[schema(schema_with = crate::openapi::fields::optional_address_line)]
    pub line2: Option<String>,
    #[schema(schema_with = crate::openapi::fields::address_line)]
    pub city: String,
    #[schema(schema_with = crate::openapi::fields::optional_address_line)]
    pub region: Option<String>,
    #[schema(schema_with = crate::openapi::fields::address_line)]
    pub postal_code: String,
    #[schema(schema_with = crate::openapi::fields::country)]
    pub country: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordQuote {
    #[schema(schema_with = crate::openapi::fields::merchant_id)]
    pub merchant: String,
    pub items_total: MoneyBody,
    pub shipping: MoneyBody,
    pub tax: MoneyBody,
    /// The day the merchant expects to deliver, `YYYY-MM-DD`.
    #[serde(default, with = "shopagent_domain::serde_time::date::option")]
    #[schema(value_type = Option<String>, format = Date)]
    pub delivery_estimate: Option<Date>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: OffsetDateTime,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FetchQuote {
    #[schema(schema_with = crate::openapi::fields::merchant_id)]
    pub merchant: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LineView {
    pub line_id: String,
    pub offer_id: String,
    pub merchant: String,
    pub title: String,
    pub category: String,
    pub unit_price: MoneyBody,
    pub quantity: u32,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub price_seen_at: OffsetDateTime,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QuoteView {
    pub merchant: String,
    pub items_total: MoneyBody,
    pub shipping: MoneyBody,
    pub tax: MoneyBody,
    /// The day the merchant expects to deliver, `YYYY-MM-DD`.
    #[serde(default, with = "shopagent_domain::serde_time::date::option")]
    #[schema(value_type = Option<String>, format = Date)]
    pub delivery_estimate: Option<Date>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: OffsetDateTime,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CartView {
    pub id: String,
    pub shopper: String,
    pub mandate_id: Option<String>,
    pub version: i64,
    pub currency: String,
    /// `open`, or `checking_out` once checkout has locked it.
    pub status: String,
    pub lines: Vec<LineView>,
    pub has_shipping_address: bool,
    pub quotes: Vec<QuoteView>,
}

/// What happened to one merchant's sub-cart at checkout.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubCartOutcome {
    pub merchant: String,
    pub grand_total: MoneyBody,
    /// `reserved`: budget held, the order proceeds; `awaiting_approval`: the shopper must
    /// approve (price drift or approval threshold); `refused`: the mandate said no (see
    /// `code` and `reason`); `handoff`: no autopilot mandate, the shopper buys.
    pub status: String,
    pub reservation_id: Option<String>,
    /// The order created for a reserved or handed-off sub-cart.
    pub order_id: Option<String>,
    pub code: Option<String>,
    pub reason: Option<String>,
    /// For a deep-link hand-off: the merchant's checkout with the sub-cart's items, for
    /// the shopper to open.
    pub deeplink: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CheckoutView {
    pub cart: CartView,
    pub sub_carts: Vec<SubCartOutcome>,
}

impl Owned for Cart {
    fn owner(&self) -> Option<Owner<'_>> {
        self.id.map(|_| Owner {
            shopper: &self.shopper,
            mandate: self.mandate_id,
        })
    }
}

fn view(cart: &Cart, version: i64) -> Result<CartView, Problem> {
    let (Some(id), Some(currency)) = (cart.id, cart.currency) else {
        return Err(Problem::not_found());
    };
    Ok(CartView {
        id: id.to_string(),
        shopper: cart.shopper.clone(),
        mandate_id: cart.mandate_id.map(|m| m.to_string()),
        version,
        currency: currency.code().to_owned(),
        status: match cart.status {
            shopagent_domain::cart::CartStatus::Open => "open",
            shopagent_domain::cart::CartStatus::CheckingOut => "checking_out",
        }
        .to_owned(),
        lines: cart
            .lines
            .iter()
            .map(|(id, l)| LineView {
                line_id: id.to_string(),
                offer_id: l.offer_id.to_string(),
                merchant: l.merchant.to_string(),
                title: l.title.clone(),
                category: l.category.to_string(),
                unit_price: l.unit_price.into(),
                quantity: l.quantity,
                price_seen_at: l.price_seen_at,
            })
            .collect(),
        has_shipping_address: cart.address.is_some(),
        quotes: cart
            .quotes
            .iter()
            .map(|(m, q)| QuoteView {
                merchant: m.to_string(),
                items_total: q.items_total.into(),
                shipping: q.shipping.into(),
                tax: q.tax.into(),
                delivery_estimate: q.delivery_estimate,
                expires_at: q.expires_at,
            })
            .collect(),
    })
}

async fn load_visible(
    app: &App,
    principal: &Principal,
    id: CartId,
) -> Result<(Cart, i64), Problem> {
    super::load_visible(&app.carts, principal, id).await
}

#[utoipa::path(operation_id = "carts_create", post, path = "/v1/carts", tag = "carts", request_body = CreateCart,
    params(("Idempotency-Key" = String, Header)),
    responses((status = 201, description = "Created", body = CartView), (status = "4XX", description = "The request was refused: see `code`", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn create(
    State(app): State<App>,
    principal: Principal,
    key: RequestKey,
    Body(body): Body<CreateCart>,
) -> Result<Response, Problem> {
    let currency = Currency::parse(&body.currency).map_err(|e| invalid("currency", e))?;
    let (shopper, mandate_id) = match principal.role {
        Role::Agent => {
            let mandate_id = principal
                .mandate
                .ok_or_else(|| Problem::forbidden("agent tokens name a mandate"))?;
            if body.mandate_id.is_some_and(|m| MandateId(m) != mandate_id) {
                return Err(Problem::forbidden(
                    "an agent acts only under its own mandate",
                ));
            }
            let mandate = load_mandate_terms(&app, &principal, mandate_id).await?;
            (mandate.shopper, Some(mandate_id))
        }
        Role::Shopper | Role::Admin => {
            let shopper = match (principal.role, body.shopper) {
                (Role::Admin, Some(shopper)) if !shopper.is_empty() && shopper.len() <= 128 => {
                    shopper
                }
                (Role::Admin, _) => return Err(invalid("shopper", "an admin names the shopper")),
                (_, Some(shopper)) if shopper != principal.subject => {
                    return Err(Problem::forbidden("a shopper creates carts for themselves"));
                }
                _ => principal.subject.clone(),
            };
            let mandate_id = match body.mandate_id {
                Some(m) => {
                    let mandate = load_mandate_terms(&app, &principal, MandateId(m)).await?;
                    if mandate.shopper != shopper {
                        return Err(
                            Problem::not_found().with_detail("no such mandate for this shopper")
                        );
                    }
                    Some(MandateId(m))
                }
                None => None,
            };
            (shopper, mandate_id)
        }
        Role::Finance | Role::Auditor | Role::Ops => {
            return Err(Problem::forbidden("this role does not shop"));
        }
    };
    let id = CartId(new_id(&principal, &key));
    let stream = stream_id(&principal.tenant, id);
    let command = CartCommand::Create {
        cart_id: id,
        shopper,
        mandate_id,
        currency,
        at: OffsetDateTime::now_utc(),
    };
    app.carts.expect_new(&stream);
    let (cart, version) = app
        .carts
        .execute_and_load(&stream, command, metadata(&principal, &key), None)
        .await?;
    Ok(created(
        format!("/v1/carts/{id}"),
        version,
        &view(&cart, version)?,
    ))
}

#[utoipa::path(operation_id = "carts_read", get, path = "/v1/carts/{id}", tag = "carts", params(("id" = String, Path, format = Uuid)),
    responses((status = 200, description = "The resource after the request", body = CartView, headers(("ETag" = String))), (status = 404, description = "No such resource (or not visible to the caller)", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn read(
    State(app): State<App>,
    principal: Principal,
    IdPath(id): IdPath,
) -> Result<Response, Problem> {
    let (cart, version) = load_visible(&app, &principal, CartId(id)).await?;
    Ok(versioned(StatusCode::OK, version, &view(&cart, version)?))
}

async fn change(
    app: &App,
    principal: &Principal,
    key: &RequestKey,
    headers: &HeaderMap,
    id: CartId,
    command: CartCommand,
) -> Result<Response, Problem> {
    let (cart, version) = super::change(
        &app.carts,
        principal,
        key,
        headers,
        id,
        Changer::OwnerOrAgent,
        command,
    )
    .await?;
    Ok(versioned(StatusCode::OK, version, &view(&cart, version)?))
}

#[utoipa::path(operation_id = "carts_add_line", post, path = "/v1/carts/{id}/lines", tag = "carts", request_body = AddLine,
    params(("id" = String, Path, format = Uuid), ("Idempotency-Key" = String, Header), ("If-Match" = Option<String>, Header)),
    responses((status = 200, description = "The resource after the request", body = CartView), (status = "4XX", description = "The request was refused: see `code`", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn add_line(
    State(app): State<App>,
    principal: Principal,
    key: RequestKey,
    headers: HeaderMap,
    IdPath(id): IdPath,
    Body(body): Body<AddLine>,
) -> Result<Response, Problem> {
    let line = CartLine {
        offer_id: OfferId::parse(&body.offer_id).map_err(|e| invalid("offer_id", e))?,
        merchant: MerchantId::parse(&body.merchant).map_err(|e| invalid("merchant", e))?,
        title: body.title,
        category: Category::parse(&body.category).map_err(|e| invalid("category", e))?,
        unit_price: body.unit_price.parse("unit_price")?,
        quantity: body.quantity,
        price_seen_at: body.price_seen_at.unwrap_or_else(OffsetDateTime::now_utc),
    };
    let line_id = LineId(new_id(&principal, &key));
    change(
        &app,
        &principal,
        &key,
        &headers,
        CartId(id),
        CartCommand::AddLine { line_id, line },
    )
    .await
}

#[utoipa::path(operation_id = "carts_change_quantity", post, path = "/v1/carts/{id}/lines/{line_id}/quantity", tag = "carts", request_body = ChangeQuantity,
    params(("id" = String, Path, format = Uuid), ("line_id" = String, Path, format = Uuid), ("Idempotency-Key" = String, Header), ("If-Match" = Option<String>, Header)),
    responses((status = 200, description = "The resource after the request", body = CartView), (status = "4XX", description = "The request was refused: see `code`", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn change_quantity(
    State(app): State<App>,
    principal: Principal,
    key: RequestKey,
    headers: HeaderMap,
    IdPairPath(id, line): IdPairPath,
    Body(body): Body<ChangeQuantity>,
) -> Result<Response, Problem> {
    let command = CartCommand::ChangeQuantity {
        line_id: LineId(line),
        quantity: body.quantity,
    };
    change(&app, &principal, &key, &headers, CartId(id), command).await
}

#[utoipa::path(operation_id = "carts_remove_line", post, path = "/v1/carts/{id}/lines/{line_id}/remove", tag = "carts",
    params(("id" = String, Path, format = Uuid), ("line_id" = String, Path, format = Uuid), ("Idempotency-Key" = String, Header), ("If-Match" = Option<String>, Header)),
    responses((status = 200, description = "The resource after the request", body = CartView), (status = "4XX", description = "The request was refused: see `code`", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn remove_line(
    State(app): State<App>,
    principal: Principal,
    key: RequestKey,
    headers: HeaderMap,
    IdPairPath(id, line): IdPairPath,
) -> Result<Response, Problem> {
    change(
        &app,
        &principal,
        &key,
        &headers,
        CartId(id),
        CartCommand::RemoveLine {
            line_id: LineId(line),
        },
    )
    .await
}

#[utoipa::path(operation_id = "carts_set_address", post, path = "/v1/carts/{id}/address", tag = "carts", request_body = AddressBody,
    params(("id" = String, Path, format = Uuid), ("Idempotency-Key" = String, Header), ("If-Match" = Option<String>, Header)),
    responses((status = 200, description = "The resource after the request", body = CartView), (status = "4XX", description = "The request was refused: see `code`", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn set_address(
    State(app): State<App>,
    principal: Principal,
    key: RequestKey,
    headers: HeaderMap,
    IdPath(id): IdPath,
    Body(body): Body<AddressBody>,
) -> Result<Response, Problem> {
    let address = Address::new(AddressFields {
        name: body.name,
        line1: body.line1,
        line2: body.line2,
        city: body.city,
        region: body.region,
        postal_code: body.postal_code,
        country: body.country,
    })
    .map_err(|e| Problem::unprocessable("invalid_address", e.to_string()))?;
    change(
        &app,
        &principal,
        &key,
        &headers,
        CartId(id),
        CartCommand::SetShippingAddress { address },
    )
    .await
}

#[utoipa::path(operation_id = "carts_record_quote", post, path = "/v1/carts/{id}/quotes", tag = "carts", request_body = RecordQuote,
    params(("id" = String, Path, format = Uuid), ("Idempotency-Key" = String, Header), ("If-Match" = Option<String>, Header)),
    responses((status = 200, description = "The resource after the request", body = CartView), (status = "4XX", description = "The request was refused: see `code`", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn record_quote(
    State(app): State<App>,
    principal: Principal,
    key: RequestKey,
    headers: HeaderMap,
    IdPath(id): IdPath,
    Body(body): Body<RecordQuote>,
) -> Result<Response, Problem> {
    let quote = Quote {
        items_total: body.items_total.parse("items_total")?,
        shipping: body.shipping.parse("shipping")?,
        tax: body.tax.parse("tax")?,
        delivery_estimate: body.delivery_estimate,
        expires_at: body.expires_at,
    };
    let merchant = MerchantId::parse(&body.merchant).map_err(|e| invalid("merchant", e))?;
    let command = CartCommand::RecordQuote {
        merchant,
        quote,
        at: OffsetDateTime::now_utc(),
    };
    change(&app, &principal, &key, &headers, CartId(id), command).await
}

/// Asks the merchant itself to price its part of the cart (shipping, tax, totals)
/// through its connector, and records the answer as the merchant's quote.
#[utoipa::path(operation_id = "carts_fetch_quote", post, path = "/v1/carts/{id}/quotes/fetch", tag = "carts", request_body = FetchQuote,
    params(("id" = String, Path, format = Uuid), ("Idempotency-Key" = String, Header), ("If-Match" = Option<String>, Header)),
    responses((status = 200, description = "The cart with the merchant's quote", body = CartView), (status = 503, description = "The merchant cannot be reached: try again", body = Problem, content_type = "application/problem+json"), (status = "4XX", description = "The request was refused: see `code`", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn fetch_quote(
    State(app): State<App>,
    principal: Principal,
    key: RequestKey,
    headers: HeaderMap,
    IdPath(id): IdPath,
    Body(body): Body<FetchQuote>,
) -> Result<Response, Problem> {
    use shopagent_domain::cart::CartError;
    use shopagent_domain::ports::{PlaceError, QuoteRequest};
    let merchant = MerchantId::parse(&body.merchant).map_err(|e| invalid("merchant", e))?;
    let (cart, _) = load_visible(&app, &principal, CartId(id)).await?;
    authorize_write(&principal, cart.owner().ok_or_else(Problem::not_found)?)?;
    let (Some(currency), Some(ship_to)) = (cart.currency, cart.address.clone()) else {
        return Err(CommandError::<CartError>::Rejected(CartError::AddressRequired).into());
    };
    let lines: Vec<OrderLine> = cart
        .lines
        .values()
        .filter(|line| line.merchant == merchant)
        .map(OrderLine::from)
        .collect();
    if lines.is_empty() {
        return Err(
            CommandError::<CartError>::Rejected(CartError::NoLinesForMerchant(merchant)).into(),
        );
    }
    let gateway = app
        .directory
        .gateway(&principal.tenant, &merchant)
        .await
        .filter(|g| g.capabilities().quote)
        .ok_or_else(|| {
            Problem::unprocessable(
                "quote_not_offered",
                format!("{merchant} has no connector that quotes; record a quote instead"),
            )
        })?;
    let request = QuoteRequest {
        // The same request (key) gets the same session at the merchant.
        idempotency_key: format!(
            "quote/{}/{}",
            cart.id.map(|c| c.to_string()).unwrap_or_default(),
            key.digest
        ),
        lines,
        currency,
        ship_to,
    };
    let quote = gateway.quote(&request).await.map_err(|error| match error {
        PlaceError::Unavailable(why) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "merchant_unavailable",
            "The merchant cannot be reached right now",
        )
        .with_detail(why)
        .with_retry_after(5),
        PlaceError::Failed { detail, .. } => Problem::unprocessable("quote_refused", detail),
    })?;
    let command = CartCommand::RecordQuote {
        merchant,
        quote,
        at: OffsetDateTime::now_utc(),
    };
    change(&app, &principal, &key, &headers, CartId(id), command).await
}

/// Locks the cart, splits it by merchant, reserves budget on the cart's mandate for
/// every sub-cart that may proceed and creates its order, all in one transaction. The
/// mandate decides each reservation on its state as stored, so concurrent checkouts
/// never overspend it. An autopilot checkout is refused (503, `purchases_behind`, with
/// `Retry-After`) while the purchases accepted before it wait too long behind the log.
#[utoipa::path(operation_id = "carts_checkout", post, path = "/v1/carts/{id}/checkout", tag = "carts",
    params(("id" = String, Path, format = Uuid), ("Idempotency-Key" = String, Header), ("If-Match" = Option<String>, Header)),
    responses((status = 200, description = "The resource after the request", body = CheckoutView), (status = 503, description = "Autopilot: the purchases accepted before wait too long (`purchases_behind`); try again after `Retry-After`", body = Problem, content_type = "application/problem+json"), (status = "4XX", description = "The request was refused: see `code`", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn checkout(
    State(app): State<App>,
    principal: Principal,
    key: RequestKey,
    headers: HeaderMap,
    IdPath(id): IdPath,
) -> Result<Response, Problem> {
    let cart_id = CartId(id);
    let stream = stream_id(&principal.tenant, cart_id);
    // Whose cart it is and its mandate's terms never change: what this process keeps
    // of them will do. Checkout itself is decided below on the cart's state, checked
    // against its stream when it appends, and the orders take their lines from that.
    let cart = super::load_visible_as_made(&app.carts, &principal, cart_id).await?;
    authorize_write(&principal, cart.owner().ok_or_else(Problem::not_found)?)?;
    let mandate = match cart.mandate_id {
        Some(mandate_id) => Some((
            mandate_id,
            load_mandate_terms(&app, &principal, mandate_id).await?,
        )),
        None => None,
    };
    let tolerance = mandate
        .as_ref()
        .and_then(|(_, m)| m.terms.as_ref())
        .map_or(0, |t| t.price_drift_tolerance_bps);
    let now = OffsetDateTime::now_utc();
    // Without a mandate the shopper is buying: the same as assist mode.
    let mode = mandate
        .as_ref()
        .and_then(|(_, m)| m.terms.as_ref())
        .map_or(Mode::Assist, |t| t.mode);
    let expected_version = if_match(&headers)?;
    // An autopilot checkout's orders are bought behind it: while the purchases
    // accepted already wait too long, it is refused before anything is written.
    if mode == Mode::Autopilot
        && let Some((delay, limit)) = &app.purchase_limit
        && let delay = delay.get()
        && delay > *limit
    {
        return Err(Problem::purchases_behind(delay, *limit));
    }
    // The cart's checkout, the budget reserved and the orders created commit together:
    // one transaction, and never a checkout half done.
    let mut attempts = Unit::attempts(&app.store);
    let (checked_out, version, outcomes) = loop {
        let unit = attempts.next().await?;
        let planned = async {
            // The cart as checkout left it is the answer: the orders and reservations
            // below are other aggregates.
            let (checked_out, version) = unit
                .execute_and_load(
                    &app.carts,
                    &stream,
                    CartCommand::StartCheckout {
                        price_drift_tolerance_bps: tolerance,
                        at: now,
                    },
                    metadata(&principal, &key),
                    expected_version,
                )
                .await?;
            let mut outcomes = Vec::with_capacity(checked_out.sub_carts.len());
            for sub_cart in &checked_out.sub_carts {
                let mut outcome = SubCartOutcome {
                    merchant: sub_cart.merchant.to_string(),
                    grand_total: sub_cart.grand_total.into(),
                    status: "handoff".into(),
                    reservation_id: None,
                    order_id: None,
                    code: None,
                    reason: None,
                    deeplink: None,
                };
                let drift = match sub_cart.decision {
                    SubCartDecision::AwaitApproval { drift_bps } => Some(drift_bps),
                    SubCartDecision::Proceed => None,
                };
                let (registered, _) = app
                    .merchants
                    .load(&merchant_stream(&principal, &sub_cart.merchant))
                    .await?;
                let choice = choose_path(mode, &registered);
                // Only an automated path (api, headless) buys under the mandate; it needs
                // budget.
                let automated = mandate
                    .as_ref()
                    .filter(|_| choice.path != CheckoutPath::Deeplink);
                if let Some((mandate_id, _)) = automated {
                    // Reserve even when the price drifted: the hold keeps the budget while
                    // the shopper decides, and approving the reservation releases the
                    // checkout.
                    let reservation_id = ReservationId(Uuid::new_v5(
                        &cart_id.0,
                        sub_cart.merchant.as_str().as_bytes(),
                    ));
                    outcome.reservation_id = Some(reservation_id.to_string());
                    let command = MandateCommand::Reserve {
                        reservation_id,
                        merchant: sub_cart.merchant.clone(),
                        categories: sub_cart.categories.clone(),
                        amount: sub_cart.grand_total,
                        approval_required: drift.is_some(),
                        at: now,
                    };
                    let mandate_stream = stream_id(&principal.tenant, mandate_id);
                    let reserve_key = key.derived(&format!("reserve/{}", sub_cart.merchant));
                    let reserved = unit
                        .execute_and_load(
                            &app.mandates,
                            &mandate_stream,
                            command,
                            metadata(&principal, &reserve_key),
                            None,
                        )
                        .await;
                    match reserved {
                        Ok((mandate, _)) => {
                            let waiting = mandate
                                .reservations
                                .get(&reservation_id)
                                .is_some_and(|r| r.awaiting_approval);
                            outcome.status = if waiting {
                                "awaiting_approval"
                            } else {
                                "reserved"
                            }
                            .into();
                            if let Some(drift_bps) = drift {
                                outcome.code = Some("price_drift".into());
                                outcome.reason = Some(format!(
                                    "the quote is {drift_bps} basis points above the prices seen"
                                ));
                            } else if waiting {
                                outcome.code = Some("approval_threshold".into());
                            }
                        }
                        Err(CommandError::Rejected(
                            rejection @ (MandateError::NotFound | MandateError::AlreadyExists),
                        )) => {
                            return Err(CommandError::Rejected(rejection).into());
                        }
                        Err(CommandError::Rejected(rejection)) => {
                            outcome.status = "refused".into();
                            outcome.code = Some(rejection.code().into());
                            outcome.reason = Some(rejection.to_string());
                        }
                        Err(other) => return Err(other.into()),
                    }
                } else if let Some(drift_bps) = drift {
                    // The shopper buys: tell them the price moved; they re-quote or accept
                    // at the merchant.
                    outcome.code = Some("price_drift".into());
                    outcome.reason = Some(format!(
                        "the quote is {drift_bps} basis points above the prices seen"
                    ));
                }
                let path = match outcome.status.as_str() {
                    "reserved" | "handoff" => Some((choice.path, choice.reason)),
                    _ => None,
                };
                if let Some((path, reason)) = path {
                    let order_id = OrderId(Uuid::new_v5(
                        &cart_id.0,
                        format!("order/{}", sub_cart.merchant).as_bytes(),
                    ));
                    let lines = sub_cart
                        .lines
                        .iter()
                        .filter_map(|line_id| checked_out.lines.get(line_id))
                        .map(OrderLine::from)
                        .collect();
                    let draft = OrderDraft {
                        cart_id,
                        shopper: checked_out.shopper.clone(),
                        mandate_id: checked_out.mandate_id,
                        reservation_id: outcome
                            .reservation_id
                            .as_deref()
                            .and_then(|id| Uuid::parse_str(id).ok())
                            .map(ReservationId),
                        merchant: sub_cart.merchant.clone(),
                        lines,
                        total: sub_cart.grand_total,
                        path,
                        path_reason: reason,
                    };
                    let order_key = key.derived(&format!("order/{}", sub_cart.merchant));
                    let order_stream = stream_id(&principal.tenant, order_id);
                    app.orders.expect_new(&order_stream);
                    unit.execute_and_load(
                        &app.orders,
                        &order_stream,
                        OrderCommand::Create {
                            order_id,
                            draft,
                            at: now,
                        },
                        metadata(&principal, &order_key),
                        None,
                    )
                    .await?;
                    outcome.order_id = Some(order_id.to_string());
                    if path == CheckoutPath::Deeplink {
                        outcome.deeplink = deeplink(&registered, sub_cart, &checked_out, order_id);
                    }
                }
                outcomes.push(outcome);
            }
            Ok::<_, Problem>((checked_out, version, outcomes))
        }
        .await;
        if let Some(done) = attempts.commit(planned).await? {
            break done;
        }
    };
    Ok(versioned(
        StatusCode::OK,
        version,
        &CheckoutView {
            cart: view(&checked_out, version)?,
            sub_carts: outcomes,
        },
    ))
}

/// The merchant's `deeplink_base` with each item (`offer:quantity`) and our order id as
/// the reference, e.g. `https://shop.example/cart?item=sku%3Akettle%3A1&ref=…`.
fn deeplink(
    merchant: &shopagent_domain::merchant::Merchant,
    sub_cart: &shopagent_domain::cart::SubCart,
    cart: &Cart,
    order_id: OrderId,
) -> Option<String> {
    let base = merchant.profile.as_ref()?.deeplink_base.as_deref()?;
    let mut url = url::Url::parse(base).ok()?;
    {
        let mut query = url.query_pairs_mut();
        for line in sub_cart.lines.iter().filter_map(|id| cart.lines.get(id)) {
            query.append_pair("item", &format!("{}:{}", line.offer_id, line.quantity));
        }
        query.append_pair("ref", &order_id.to_string());
    }
    Some(url.into())
}
