//! `/v1/merchants`: the capability registry. Everyone in the tenant reads it; `ops` and
//! `admin` change it.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use shopagent_domain::ids::MerchantId;
use shopagent_domain::merchant::{Health, Merchant, MerchantCommand, MerchantProfile, Protocol};
use shopagent_domain::order::CheckoutPath;
use time::OffsetDateTime;
use utoipa::ToSchema;

use super::orders::path_name;
use super::{Body, created, if_match, invalid, metadata, stream_id, versioned};
use crate::auth::{Principal, Role};
use crate::idempotency::RequestKey;
use crate::problem::Problem;
use crate::server::App;

pub fn routes() -> Router<App> {
    Router::new()
        .route("/v1/merchants", post(register))
        .route("/v1/merchants/{merchant}", get(read))
        .route("/v1/merchants/{merchant}/profile", post(update_profile))
        .route("/v1/merchants/{merchant}/health", post(report_health))
        .route("/v1/merchants/{merchant}/headless", post(set_headless))
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProtocolBody {
    Ucp,
    Acp,
    Shopify,
    Bigcommerce,
    Ebay,
    Violet,
    Firmly,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PathBody {
    Api,
    Deeplink,
    Headless,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthBody {
    Healthy,
    Degraded,
    Down,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileBody {
    #[schema(schema_with = crate::openapi::fields::text_200)]
    pub name: String,
    pub protocol: Option<ProtocolBody>,
    pub api_endpoint: Option<String>,
    pub deeplink_base: Option<String>,
    pub headless_domain: Option<String>,
    /// At least one; `api` needs `protocol` and `api_endpoint`, `deeplink` needs
    /// `deeplink_base`, `headless` needs `headless_domain`.
    #[schema(min_items = 1)]
    pub paths: Vec<PathBody>,
    /// Card-network acceptor ids whose authorizations count as this merchant's.
    #[serde(default)]
    #[schema(schema_with = crate::openapi::fields::card_acceptor_ids)]
    pub card_acceptor_ids: Vec<String>,
}

/// A merchant's id and its profile's fields, side by side. Spelled out rather than a
/// flattened `ProfileBody`: the schema of a flattened body that refuses unknown fields
/// would refuse `merchant_id` too.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterMerchant {
    #[schema(schema_with = crate::openapi::fields::merchant_id)]
    pub merchant_id: String,
    #[schema(schema_with = crate::openapi::fields::text_200)]
    pub name: String,
    pub protocol: Option<ProtocolBody>,
    pub api_endpoint: Option<String>,
    pub deeplink_base: Option<String>,
    pub headless_domain: Option<String>,
    /// At least one; `api` needs `protocol` and `api_endpoint`, `deeplink` needs
    /// `deeplink_base`, `headless` needs `headless_domain`.
    #[schema(min_items = 1)]
    pub paths: Vec<PathBody>,
    /// Card-network acceptor ids whose authorizations count as this merchant's.
    #[serde(default)]
    #[schema(schema_with = crate::openapi::fields::card_acceptor_ids)]
    pub card_acceptor_ids: Vec<String>,
}

impl RegisterMerchant {
    fn profile(self) -> ProfileBody {
        ProfileBody {
            name: self.name,
            protocol: self.protocol,
            api_endpoint: self.api_endpoint,
            deeplink_base: self.deeplink_base,
            headless_domain: self.headless_domain,
            paths: self.paths,
            card_acceptor_ids: self.card_acceptor_ids,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthReport {
    pub health: HealthBody,
    #[schema(schema_with = crate::openapi::fields::text_500)]
    pub reason: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeadlessPolicy {
    pub allowed: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MerchantView {
    pub merchant_id: String,
    pub version: i64,
    pub name: String,
    pub protocol: Option<ProtocolBody>,
    pub api_endpoint: Option<String>,
    pub deeplink_base: Option<String>,
    pub headless_domain: Option<String>,
    pub paths: Vec<String>,
    pub card_acceptor_ids: Vec<String>,
    pub health: HealthBody,
    pub headless_allowed: bool,
}

impl ProfileBody {
    fn into_profile(self) -> MerchantProfile {
        MerchantProfile {
            name: self.name,
            protocol: self.protocol.map(|p| match p {
                ProtocolBody::Ucp => Protocol::Ucp,
                ProtocolBody::Acp => Protocol::Acp,
                ProtocolBody::Shopify => Protocol::Shopify,
                ProtocolBody::Bigcommerce => Protocol::Bigcommerce,
                ProtocolBody::Ebay => Protocol::Ebay,
                ProtocolBody::Violet => Protocol::Violet,
                ProtocolBody::Firmly => Protocol::Firmly,
            }),
            api_endpoint: self.api_endpoint,
            deeplink_base: self.deeplink_base,
            headless_domain: self.headless_domain,
            paths: self
                .paths
                .into_iter()
                .map(|p| match p {
                    PathBody::Api => CheckoutPath::Api,
                    PathBody::Deeplink => CheckoutPath::Deeplink,
                    PathBody::Headless => CheckoutPath::Headless,
                })
                .collect(),
            card_acceptor_ids: self.card_acceptor_ids.into_iter().collect(),
        }
    }
}

fn view(merchant: &Merchant, version: i64) -> Result<MerchantView, Problem> {
    let (Some(id), Some(profile)) = (merchant.id.as_ref(), merchant.profile.as_ref()) else {
        return Err(Problem::not_found());
    };
    Ok(MerchantView {
        merchant_id: id.to_string(),
        version,
        name: profile.name.clone(),
        protocol: profile.protocol.map(|p| match p {
            Protocol::Ucp => ProtocolBody::Ucp,
            Protocol::Acp => ProtocolBody::Acp,
            Protocol::Shopify => ProtocolBody::Shopify,
            Protocol::Bigcommerce => ProtocolBody::Bigcommerce,
            Protocol::Ebay => ProtocolBody::Ebay,
            Protocol::Violet => ProtocolBody::Violet,
            Protocol::Firmly => ProtocolBody::Firmly,
        }),
        api_endpoint: profile.api_endpoint.clone(),
        deeplink_base: profile.deeplink_base.clone(),
        headless_domain: profile.headless_domain.clone(),
        paths: profile
            .paths
            .iter()
            .map(|p| path_name(*p).to_owned())
            .collect(),
        card_acceptor_ids: profile.card_acceptor_ids.iter().cloned().collect(),
        health: match merchant.health {
            Health::Healthy => HealthBody::Healthy,
            Health::Degraded => HealthBody::Degraded,
            Health::Down => HealthBody::Down,
        },
        headless_allowed: merchant.headless_allowed,
    })
}

/// The registry's stream for `merchant` in the caller's tenant.
pub fn merchant_stream(principal: &Principal, merchant: &MerchantId) -> String {
    merchant_stream_in(&principal.tenant, merchant)
}

/// The registry's stream for `merchant` in `tenant`.
pub fn merchant_stream_in(tenant: &str, merchant: &MerchantId) -> String {
    stream_id(tenant, format!("merchant/{merchant}"))
}

fn parse_merchant(raw: &str) -> Result<MerchantId, Problem> {
    MerchantId::parse(raw)
        .map_err(|_| Problem::not_found().with_detail("merchant ids are lowercase slugs"))
}

fn registry_writer(principal: &Principal) -> Result<(), Problem> {
    match principal.role {
        Role::Ops | Role::Admin => Ok(()),
        _ => Err(Problem::forbidden(
            "the capability registry is changed by ops and admins",
        )),
    }
}

#[utoipa::path(operation_id = "merchants_register", post, path = "/v1/merchants", tag = "merchants", request_body = RegisterMerchant,
    params(("Idempotency-Key" = String, Header)),
    responses((status = 201, description = "Created", body = MerchantView), (status = "4XX", description = "The request was refused: see `code`", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn register(
    State(app): State<App>,
    principal: Principal,
    key: RequestKey,
    Body(body): Body<RegisterMerchant>,
) -> Result<Response, Problem> {
    registry_writer(&principal)?;
    let merchant = MerchantId::parse(&body.merchant_id).map_err(|e| invalid("merchant_id", e))?;
    let stream = merchant_stream(&principal, &merchant);
    let command = MerchantCommand::Register {
        merchant: merchant.clone(),
        profile: body.profile().into_profile(),
        at: OffsetDateTime::now_utc(),
    };
    let (registered, version) = app
        .merchants
        .execute_and_load(&stream, command, metadata(&principal, &key), None)
        .await?;
    Ok(created(
        format!("/v1/merchants/{merchant}"),
        version,
        &view(&registered, version)?,
    ))
}

#[utoipa::path(operation_id = "merchants_read", get, path = "/v1/merchants/{merchant}", tag = "merchants", params(("merchant" = String, Path)),
    responses((status = 200, description = "The resource after the request", body = MerchantView, headers(("ETag" = String))), (status = 404, description = "No such resource (or not visible to the caller)", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn read(
    State(app): State<App>,
    principal: Principal,
    Path(merchant): Path<String>,
) -> Result<Response, Problem> {
    let merchant = parse_merchant(&merchant)?;
    let (registered, version) = app
        .merchants
        .load(&merchant_stream(&principal, &merchant))
        .await?;
    Ok(versioned(
        StatusCode::OK,
        version,
        &view(&registered, version)?,
    ))
}

async fn change(
    app: &App,
    principal: &Principal,
    key: &RequestKey,
    headers: &HeaderMap,
    merchant: &str,
    command: MerchantCommand,
) -> Result<Response, Problem> {
    registry_writer(principal)?;
    let merchant = parse_merchant(merchant)?;
    let stream = merchant_stream(principal, &merchant);
    app.merchants
        .execute_at_version(
            &stream,
            command,
            metadata(principal, key),
            if_match(headers)?,
        )
        .await?;
    let (registered, version) = app.merchants.load(&stream).await?;
    Ok(versioned(
        StatusCode::OK,
        version,
        &view(&registered, version)?,
    ))
}

#[utoipa::path(operation_id = "merchants_update_profile", post, path = "/v1/merchants/{merchant}/profile", tag = "merchants", request_body = ProfileBody,
    params(("merchant" = String, Path), ("Idempotency-Key" = String, Header), ("If-Match" = Option<String>, Header)),
    responses((status = 200, description = "The resource after the request", body = MerchantView), (status = "4XX", description = "The request was refused: see `code`", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn update_profile(
    State(app): State<App>,
    principal: Principal,
    key: RequestKey,
    headers: HeaderMap,
    Path(merchant): Path<String>,
    Body(body): Body<ProfileBody>,
) -> Result<Response, Problem> {
    let command = MerchantCommand::UpdateProfile {
        profile: body.into_profile(),
        at: OffsetDateTime::now_utc(),
    };
    change(&app, &principal, &key, &headers, &merchant, command).await
}

#[utoipa::path(operation_id = "merchants_report_health", post, path = "/v1/merchants/{merchant}/health", tag = "merchants", request_body = HealthReport,
    params(("merchant" = String, Path), ("Idempotency-Key" = String, Header)),
    responses((status = 200, description = "The resource after the request", body = MerchantView), (status = "4XX", description = "The request was refused: see `code`", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn report_health(
    State(app): State<App>,
    principal: Principal,
    key: RequestKey,
    headers: HeaderMap,
    Path(merchant): Path<String>,
    Body(body): Body<HealthReport>,
) -> Result<Response, Problem> {
    let health = match body.health {
        HealthBody::Healthy => Health::Healthy,
        HealthBody::Degraded => Health::Degraded,
        HealthBody::Down => Health::Down,
    };
    let command = MerchantCommand::ReportHealth {
        health,
        reason: body.reason,
        at: OffsetDateTime::now_utc(),
    };
    change(&app, &principal, &key, &headers, &merchant, command).await
}

#[utoipa::path(operation_id = "merchants_set_headless", post, path = "/v1/merchants/{merchant}/headless", tag = "merchants", request_body = HeadlessPolicy,
    params(("merchant" = String, Path), ("Idempotency-Key" = String, Header)),
    responses((status = 200, description = "The resource after the request", body = MerchantView), (status = "4XX", description = "The request was refused: see `code`", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn set_headless(
    State(app): State<App>,
    principal: Principal,
    key: RequestKey,
    headers: HeaderMap,
    Path(merchant): Path<String>,
    Body(body): Body<HeadlessPolicy>,
) -> Result<Response, Problem> {
    let command = MerchantCommand::SetHeadlessAllowed {
        allowed: body.allowed,
        at: OffsetDateTime::now_utc(),
    };
    change(&app, &principal, &key, &headers, &merchant, command).await
}
