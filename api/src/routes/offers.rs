//! `/v1/offers`: offers entering from product pages.
//!
//! `POST /v1/offers/extract` reads a page's offers (schema.org JSON-LD, microdata, Open
//! Graph), reports every field it could not read, and lists each offer it could — a
//! title and a price in a stated currency — as an `Offer` event with the page's URL and
//! digest as its citation. Reading the same page again appends nothing; a changed page
//! updates the offer.

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use shopagent_connectors::product_page::{PageOffer, Syntax, extract};
use shopagent_domain::ids::{MerchantId, OfferId};
use shopagent_domain::offer::normalize::{FieldIssue, OfferFields};
use shopagent_domain::offer::{Availability, Citation, OfferCommand, OfferSource, ProductKey};
use time::OffsetDateTime;
use utoipa::ToSchema;

use super::mandates::MoneyBody;
use super::{Body, invalid, metadata, stream_id};
use crate::auth::{Principal, Role};
use crate::idempotency::RequestKey;
use crate::problem::Problem;
use crate::server::App;

/// Largest page `POST /v1/offers/extract` reads: product pages run to a few hundred
/// kilobytes, some past a megabyte.
pub const MAX_PAGE_BODY: usize = 4 * 1024 * 1024;

pub fn routes() -> Router<App> {
    Router::new().route(
        "/v1/offers/extract",
        post(extract_page).layer(DefaultBodyLimit::max(MAX_PAGE_BODY)),
    )
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtractPage {
    /// Where the page was fetched from (http or https).
    #[schema(example = "https://acme.example/p/trail-2")]
    pub url: String,
    /// The page's HTML as fetched.
    pub html: String,
    /// The merchant selling on the page; default: the page's host name.
    #[schema(example = "acme-outdoor")]
    pub merchant: Option<String>,
}

/// Business days to deliver.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    pub min_days: u16,
    pub max_days: u16,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReturnsView {
    /// 0: no returns.
    pub window_days: u16,
    pub free: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TrustView {
    /// Out of 5.
    pub rating: f64,
    pub reviews: u32,
}

/// What could be read of an offer, normalized.
#[derive(Debug, Serialize, ToSchema)]
pub struct OfferFieldsView {
    pub title: Option<String>,
    pub brand: Option<String>,
    /// 14 digits.
    pub gtin: Option<String>,
    pub mpn: Option<String>,
    /// The node of shopagent's taxonomy.
    pub category: Option<String>,
    /// The merchant's own category words.
    pub merchant_category: Option<String>,
    pub price: Option<MoneyBody>,
    pub shipping: Option<MoneyBody>,
    /// `in_stock`, `limited_availability`, `pre_order`, `back_order`, `out_of_stock`,
    /// `discontinued`.
    pub availability: Option<String>,
    pub delivery: Option<DeliveryView>,
    pub returns: Option<ReturnsView>,
    pub trust: Option<TrustView>,
}

/// A field that is not on the offer, and why.
#[derive(Debug, Serialize, ToSchema)]
pub struct FieldIssueView {
    pub field: String,
    /// `missing` (the page does not say) or `unreadable` (it says something no rule reads).
    pub problem: String,
    /// What the page says, for `unreadable`.
    pub value: Option<String>,
    pub why: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ExtractedOfferView {
    pub merchant: String,
    /// The offer's id at the merchant: `sku:…` from its SKU, else `url:…` from the page.
    pub offer_id: String,
    /// Whether it is listed (a title and a price were read); when not, `issues` says why.
    pub listed: bool,
    /// The offer's version after this request, when listed.
    pub version: Option<i64>,
    /// Listings of one product share it (GTIN, brand and MPN, or brand and title).
    pub product_key: Option<String>,
    /// `json_ld`, `microdata`, `open_graph`: where its fields were found.
    pub found_in: Vec<String>,
    pub fields: OfferFieldsView,
    pub issues: Vec<FieldIssueView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ExtractionView {
    pub url: String,
    /// SHA-256 of the page, hex: the citation of every offer read from it.
    pub digest: String,
    pub offers: Vec<ExtractedOfferView>,
    /// Markup that was there but could not be read.
    pub notes: Vec<String>,
}

fn availability_name(availability: Availability) -> String {
    serde_json::to_value(availability)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn fields_view(fields: &OfferFields) -> OfferFieldsView {
    OfferFieldsView {
        title: fields.title.clone(),
        brand: fields.brand.clone(),
        gtin: fields.gtin.as_ref().map(|g| g.as_str().to_owned()),
        mpn: fields.mpn.clone(),
        category: fields.category.as_ref().map(|c| c.as_str().to_owned()),
        merchant_category: fields.merchant_category.clone(),
        price: fields.price.map(MoneyBody::from),
        shipping: fields.shipping.map(MoneyBody::from),
        availability: fields.availability.map(availability_name),
        delivery: fields.delivery.map(|d| DeliveryView {
            min_days: d.min_days,
            max_days: d.max_days,
        }),
        returns: fields.returns.map(|r| ReturnsView {
            window_days: r.window_days,
            free: r.free,
        }),
        trust: fields.trust.map(|t| TrustView {
            rating: f64::from(t.rating_centi) / 100.0,
            reviews: t.reviews,
        }),
    }
}

fn issue_view(issue: &FieldIssue) -> FieldIssueView {
    let field = serde_json::to_value(issue.field())
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    match issue {
        FieldIssue::Missing { .. } => FieldIssueView {
            field,
            problem: "missing".into(),
            value: None,
            why: None,
        },
        FieldIssue::Unreadable { value, why, .. } => FieldIssueView {
            field,
            problem: "unreadable".into(),
            value: Some(value.clone()),
            why: Some(why.clone()),
        },
    }
}

fn syntax_name(syntax: Syntax) -> String {
    match syntax {
        Syntax::JsonLd => "json_ld",
        Syntax::Microdata => "microdata",
        Syntax::OpenGraph => "open_graph",
    }
    .to_owned()
}

/// The page's host as a merchant id (`www.` dropped), for pages that name none.
fn merchant_of(url: &url::Url) -> Option<MerchantId> {
    let host = url.host_str()?.to_ascii_lowercase();
    MerchantId::parse(host.strip_prefix("www.").unwrap_or(&host)).ok()
}

/// The offer's id at the merchant: its SKU as a slug, else a digest of the page
/// address (without its query) and the offer's place on the page.
fn offer_id_of(offer: &PageOffer, url: &url::Url, index: usize) -> OfferId {
    let sku = offer.raw.sku.as_deref().map(|sku| {
        sku.trim()
            .to_ascii_lowercase()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.:/".contains(c) {
                    c
                } else {
                    '-'
                }
            })
            .collect::<String>()
    });
    if let Some(id) = sku.and_then(|sku| OfferId::parse(&format!("sku:{sku}")).ok()) {
        return id;
    }
    let mut page = url.clone();
    page.set_query(None);
    page.set_fragment(None);
    let digest = hex::encode(&Sha256::digest(page.as_str().as_bytes())[..12]);
    OfferId::parse(&format!("url:{digest}/{index}")).unwrap_or_else(|_| {
        // A hex digest and a number always make a valid slug.
        OfferId::parse("url:unknown").expect("a valid slug")
    })
}

fn may_ingest(principal: &Principal) -> Result<(), Problem> {
    match principal.role {
        Role::Shopper | Role::Agent | Role::Ops | Role::Admin => Ok(()),
        Role::Finance | Role::Auditor => Err(Problem::forbidden(
            "offers are read in by shoppers, their agents, ops and admins",
        )),
    }
}

#[utoipa::path(operation_id = "offers_extract", post, path = "/v1/offers/extract", tag = "offers", request_body = ExtractPage,
    params(("Idempotency-Key" = String, Header)),
    responses((status = 200, description = "What the page yielded; each readable offer is listed", body = ExtractionView), (status = "4XX", description = "The request was refused: see `code`", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn extract_page(
    State(app): State<App>,
    principal: Principal,
    key: RequestKey,
    Body(body): Body<ExtractPage>,
) -> Result<Response, Problem> {
    may_ingest(&principal)?;
    let url = url::Url::parse(&body.url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
        .filter(|_| body.url.len() <= 2048)
        .ok_or_else(|| invalid("url", "an http(s) URL of at most 2048 characters"))?;
    let merchant = match &body.merchant {
        Some(merchant) => MerchantId::parse(merchant).map_err(|e| invalid("merchant", e))?,
        None => merchant_of(&url).ok_or_else(|| {
            invalid(
                "merchant",
                "the page's host is not a merchant id; name the merchant",
            )
        })?,
    };
    // Parsing is CPU work on a page of up to megabytes: off the async workers.
    let html = body.html;
    let page_url = url.to_string();
    let extraction = tokio::task::spawn_blocking(move || extract(&html, &page_url))
        .await
        .map_err(|_| Problem::internal())?;
    let retrieved_at = OffsetDateTime::now_utc();
    let mut offers = Vec::with_capacity(extraction.offers.len());
    for (index, offer) in extraction.offers.iter().enumerate() {
        let offer_id = offer_id_of(offer, &url, index);
        let mut view = ExtractedOfferView {
            merchant: merchant.to_string(),
            offer_id: offer_id.to_string(),
            listed: false,
            version: None,
            product_key: None,
            found_in: offer.syntaxes.iter().copied().map(syntax_name).collect(),
            fields: fields_view(&offer.normalized.fields),
            issues: offer.normalized.issues.iter().map(issue_view).collect(),
        };
        if let Some(record) = &offer.normalized.record {
            let stream = offer_stream(&principal.tenant, &merchant, &offer_id);
            let command = OfferCommand::Ingest {
                merchant: merchant.clone(),
                offer_id: offer_id.clone(),
                record: Box::new(record.clone()),
                citation: Some(Citation {
                    url: extraction.url.clone(),
                    digest: extraction.digest.clone(),
                    retrieved_at,
                }),
                source: OfferSource::Page,
                at: retrieved_at,
            };
            let offer_key = key.derived(&format!("offer/{index}"));
            let outcome = app
                .offers
                .execute(&stream, command, metadata(&principal, &offer_key))
                .await?;
            view.listed = true;
            view.version = Some(outcome.version);
            view.product_key = Some(ProductKey::of(&merchant, &offer_id, record).to_string());
        }
        offers.push(view);
    }
    Ok((
        StatusCode::OK,
        axum::Json(ExtractionView {
            url: extraction.url,
            digest: extraction.digest,
            offers,
            notes: extraction.notes,
        }),
    )
        .into_response())
}

/// The stream of `merchant`'s offer `offer_id` in `tenant`.
pub fn offer_stream(tenant: &str, merchant: &MerchantId, offer_id: &OfferId) -> String {
    stream_id(tenant, format!("offer/{merchant}/{offer_id}"))
}
