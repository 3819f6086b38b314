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
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use shopagent_connectors::product_page::{PageOffer, Syntax, extract};
use shopagent_domain::ids::{ActionId, MandateId, MerchantId, OfferId, RunId};
use shopagent_domain::mandate::MandateTerms;
use shopagent_domain::money::{Currency, Money};
use shopagent_domain::offer::normalize::{FieldIssue, Normalized, OfferFields};
use shopagent_domain::offer::ranking::{Candidate, Shopper, Weights, rank};
use shopagent_domain::offer::search::{
    IndexedOffer, OfferQuery, cursor_at, cursor_offset, next_cursor,
};
use shopagent_domain::offer::{Citation, OfferCommand, OfferSource, ProductKey};
use shopagent_domain::ports::IndexError;
use shopagent_domain::run::{
    Action, ActionKind, Citation as RunCitation, Digest as RunDigest, ExcludedEvidence,
    MAX_CITATIONS, OfferEvidence, RankedEvidence, RunCommand,
};
use time::OffsetDateTime;
use utoipa::ToSchema;

use super::mandates::MoneyBody;
use super::{Body, IdPath, Owned, invalid, metadata, stream_id};
use crate::auth::{Principal, Role};
use crate::idempotency::RequestKey;
use crate::problem::Problem;
use crate::server::App;

/// Largest page `POST /v1/offers/extract` reads: product pages run to a few hundred
/// kilobytes, some past a megabyte.
pub const MAX_PAGE_BODY: usize = 4 * 1024 * 1024;

/// The route that takes whole pages, and so [`MAX_PAGE_BODY`].
pub const EXTRACT_PATH: &str = "/v1/offers/extract";

pub fn routes() -> Router<App> {
    Router::new()
        .route(
            EXTRACT_PATH,
            post(extract_page).layer(DefaultBodyLimit::max(MAX_PAGE_BODY)),
        )
        .route("/v1/offers/search", get(search))
        .route("/v1/offers/compare", post(compare))
        .route("/v1/runs/{id}/searches", post(run_search))
        .route("/v1/runs/{id}/comparisons", post(run_compare))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtractPage {
    /// Where the page was fetched from (http or https).
    #[schema(schema_with = crate::openapi::fields::http_url)]
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
    /// The offer's id at the merchant: from a page, `sku:…` from its SKU, else `url:…`
    /// from the page; from a catalogue, the id checkout names.
    pub offer_id: String,
    /// Whether it is listed (a title and a price were read); when not, `issues` says why.
    pub listed: bool,
    /// The offer's version after this request, when listed.
    pub version: Option<i64>,
    /// Listings of one product share it (GTIN, brand and MPN, or brand and title).
    pub product_key: Option<String>,
    /// `json_ld`, `microdata`, `open_graph` (a page) or `catalogue` (a merchant's
    /// catalogue): where its fields were found.
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
        availability: fields.availability.map(|a| a.as_str().to_owned()),
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
    let field = issue.field().as_str().to_owned();
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

pub(super) fn may_ingest(principal: &Principal) -> Result<(), Problem> {
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
        let citation = Citation {
            url: extraction.url.clone(),
            digest: extraction.digest.clone(),
            retrieved_at,
        };
        let read = Read {
            merchant: &merchant,
            offer_id: offer_id_of(offer, &url, index),
            normalized: &offer.normalized,
            found_in: offer.syntaxes.iter().copied().map(syntax_name).collect(),
            citation: Some(citation),
            source: OfferSource::Page,
        };
        let (view, _) = ingest(
            &app,
            &principal,
            &key.derived(&format!("offer/{index}")),
            read,
        )
        .await?;
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

/// An offer as a source described it, normalized.
pub(super) struct Read<'a> {
    pub merchant: &'a MerchantId,
    pub offer_id: OfferId,
    pub normalized: &'a Normalized,
    pub found_in: Vec<String>,
    pub citation: Option<Citation>,
    pub source: OfferSource,
}

/// The report of an offer that cannot be listed because its id at the merchant is not
/// a valid offer id.
pub(super) fn report_only(
    merchant: &MerchantId,
    merchant_ref: &str,
    normalized: &Normalized,
    found_in: Vec<String>,
) -> ExtractedOfferView {
    let mut issues: Vec<FieldIssueView> = normalized.issues.iter().map(issue_view).collect();
    issues.push(FieldIssueView {
        field: "offer_id".into(),
        problem: "unreadable".into(),
        value: Some(merchant_ref.to_owned()),
        why: Some("not a valid offer id".into()),
    });
    ExtractedOfferView {
        merchant: merchant.to_string(),
        offer_id: merchant_ref.to_owned(),
        listed: false,
        version: None,
        product_key: None,
        found_in,
        fields: fields_view(&normalized.fields),
        issues,
    }
}

/// Lists or updates the offer `read` describes, when it has a title and a price;
/// reports it field by field either way, with whether the log changed.
pub(super) async fn ingest(
    app: &App,
    principal: &Principal,
    key: &RequestKey,
    read: Read<'_>,
) -> Result<(ExtractedOfferView, bool), Problem> {
    let mut view = ExtractedOfferView {
        merchant: read.merchant.to_string(),
        offer_id: read.offer_id.to_string(),
        listed: false,
        version: None,
        product_key: None,
        found_in: read.found_in,
        fields: fields_view(&read.normalized.fields),
        issues: read.normalized.issues.iter().map(issue_view).collect(),
    };
    let Some(record) = &read.normalized.record else {
        return Ok((view, false));
    };
    let stream = offer_stream(&principal.tenant, read.merchant, &read.offer_id);
    let at = read
        .citation
        .as_ref()
        .map_or_else(OffsetDateTime::now_utc, |c| c.retrieved_at);
    let command = OfferCommand::Ingest {
        merchant: read.merchant.clone(),
        offer_id: read.offer_id.clone(),
        record: Box::new(record.clone()),
        citation: read.citation,
        source: read.source,
        at,
    };
    let outcome = app
        .offers
        .execute(&stream, command, metadata(principal, key))
        .await?;
    view.listed = true;
    view.version = Some(outcome.version);
    view.product_key = Some(ProductKey::of(read.merchant, &read.offer_id, record).to_string());
    Ok((view, outcome.events_appended > 0))
}

/// The stream of `merchant`'s offer `offer_id` in `tenant`.
pub fn offer_stream(tenant: &str, merchant: &MerchantId, offer_id: &OfferId) -> String {
    stream_id(tenant, format!("offer/{merchant}/{offer_id}"))
}

/// Words, filters, the page, and how to rank it.
#[derive(Debug, Serialize, Deserialize, utoipa::IntoParams, ToSchema)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SearchOffers {
    /// Words; one typo forgiven in words of 5+ letters, two in 9+.
    #[param(max_length = 200)]
    #[schema(max_length = 200)]
    pub q: Option<String>,
    /// ISO currency the results are compared in (default: the mandate's, else the first
    /// match's); offers in another are excluded.
    #[param(schema_with = crate::openapi::fields::currency)]
    #[schema(schema_with = crate::openapi::fields::currency)]
    pub currency: Option<String>,
    /// Delivered price (price + stated shipping) at least this, in minor units.
    pub min_price: Option<i64>,
    pub max_price: Option<i64>,
    /// Merchant ids, comma-separated.
    pub merchant: Option<String>,
    /// Taxonomy nodes, comma-separated; an offer within any matches.
    pub category: Option<String>,
    /// Only offers that ship now.
    pub available: Option<bool>,
    /// Only offers stating delivery within this many business days.
    #[param(maximum = 65535)]
    #[schema(maximum = 65535)]
    pub delivery_within_days: Option<u16>,
    /// The shopper needs it by this day (YYYY-MM-DD): later offers lose their delivery score.
    #[param(format = Date)]
    #[schema(format = Date)]
    pub deliver_by: Option<String>,
    pub free_returns: Option<bool>,
    /// The mandate to check the offers against (an agent's token names its own).
    #[param(format = Uuid)]
    #[schema(format = Uuid)]
    pub mandate: Option<String>,
    /// Tax estimate in basis points of the price (default 0).
    pub tax_bps: Option<u32>,
    /// Ranking weights (defaults 0.5, 0.2, 0.15, 0.15): not negative, not all zero.
    #[param(minimum = 0)]
    #[schema(minimum = 0)]
    pub w_cost: Option<f64>,
    #[param(minimum = 0)]
    #[schema(minimum = 0)]
    pub w_delivery: Option<f64>,
    #[param(minimum = 0)]
    #[schema(minimum = 0)]
    pub w_returns: Option<f64>,
    #[param(minimum = 0)]
    #[schema(minimum = 0)]
    pub w_trust: Option<f64>,
    /// Page size, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    #[schema(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^o[0-9]{1,4}$")]
    #[schema(pattern = "^o[0-9]{1,4}$")]
    pub cursor: Option<String>,
}

/// An offer as search shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct OfferView {
    pub merchant: String,
    pub offer_id: String,
    pub product_key: String,
    pub version: i64,
    pub fields: OfferFieldsView,
    /// The page it was read from, when it came from one.
    pub citation_url: Option<String>,
}

/// Each factor's share of the score.
#[derive(Debug, Serialize, ToSchema)]
pub struct BreakdownView {
    pub cost: f64,
    pub delivery: f64,
    pub returns: f64,
    pub trust: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RankedOfferView {
    pub offer: OfferView,
    /// 0 to 100.
    pub score: f64,
    pub breakdown: BreakdownView,
    /// Price, shipping (unstated: the dearest stated on the page) and tax estimate.
    pub landed_cost: MoneyBody,
    pub arrives_by: Option<String>,
    /// One line from the same numbers.
    pub reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ExcludedOfferView {
    pub offer: OfferView,
    /// Stable codes: `merchant_not_allowed`, `merchant_blocked`, `category_blocked`,
    /// `over_per_order_limit`, `over_budget`, `not_available`, `other_currency`.
    pub codes: Vec<String>,
    pub reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HintView {
    pub merchant: String,
    pub offer_id: String,
    pub raise_by: MoneyBody,
    pub text: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FacetView {
    pub value: String,
    pub count: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FacetsView {
    pub merchant: Vec<FacetView>,
    pub category: Vec<FacetView>,
    pub availability: Vec<FacetView>,
}

/// One page of matches, ranked.
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchView {
    pub results: Vec<RankedOfferView>,
    /// Matches the mandate forbids or that cannot be bought, with why.
    pub excluded: Vec<ExcludedOfferView>,
    /// What would change the outcome ("raising the budget by … unlocks …").
    pub hints: Vec<HintView>,
    /// Every match, on all pages.
    pub total: u64,
    pub facets: FacetsView,
    pub next_cursor: Option<String>,
}

fn offer_view(offer: &IndexedOffer) -> OfferView {
    let fields = OfferFields::from(&offer.record);
    OfferView {
        merchant: offer.merchant.to_string(),
        offer_id: offer.offer_id.to_string(),
        product_key: offer.product_key.to_string(),
        version: offer.version,
        fields: fields_view(&fields),
        citation_url: offer.citation_url.clone(),
    }
}

fn list(value: Option<&str>) -> Vec<String> {
    value
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .collect()
}

/// What ranking needs from a request, however it came (query string or body).
struct RankParams<'a> {
    weights: [Option<f64>; 4],
    currency: Option<&'a str>,
    deliver_by: Option<&'a str>,
    mandate: Option<&'a str>,
    tax_bps: Option<u32>,
}

/// Who the offers are ranked for and how, read and checked.
struct RankFor {
    weights: Weights,
    currency: Option<Currency>,
    deliver_by: Option<time::Date>,
    tax_bps: u32,
    terms: Option<MandateTerms>,
    budget_left: Option<Money>,
    today: time::Date,
}

async fn rank_for(
    app: &App,
    principal: &Principal,
    params: RankParams<'_>,
) -> Result<RankFor, Problem> {
    let defaults = Weights::default();
    let [cost, delivery, returns, trust] = params.weights;
    let weights = Weights {
        cost: cost.unwrap_or(defaults.cost),
        delivery: delivery.unwrap_or(defaults.delivery),
        returns: returns.unwrap_or(defaults.returns),
        trust: trust.unwrap_or(defaults.trust),
    }
    .validated()
    .map_err(|e| invalid("weights", e))?;
    let currency = params
        .currency
        .map(|c| Currency::parse(&c.to_ascii_uppercase()).map_err(|e| invalid("currency", e)))
        .transpose()?;
    let deliver_by = params
        .deliver_by
        .map(|d| {
            time::Date::parse(d, time::macros::format_description!("[year]-[month]-[day]"))
                .map_err(|_| invalid("deliver_by", "a date, YYYY-MM-DD"))
        })
        .transpose()?;
    // The mandate the offers are checked against: an agent's own, or one the caller
    // names and may see.
    let mandate_id = match (principal.mandate, params.mandate) {
        (Some(own), _) => Some(own),
        (None, Some(named)) => {
            Some(MandateId::parse(named).map_err(|_| invalid("mandate", "a mandate id (UUID)"))?)
        }
        (None, None) => None,
    };
    let mandate = match mandate_id {
        Some(id) => Some(super::mandates::load_visible(app, principal, id).await?.0),
        None => None,
    };
    let terms = mandate.as_ref().and_then(|m| m.terms.clone());
    let now = OffsetDateTime::now_utc();
    let budget_left = match (&mandate, &terms) {
        (Some(mandate), Some(terms)) => terms.period_budget.and_then(|budget| {
            let start = budget.period.start_of(now);
            let used = mandate.used_in_period(terms.currency, start).ok()?;
            budget.limit.checked_sub(used).ok()
        }),
        _ => None,
    };
    Ok(RankFor {
        weights,
        currency,
        deliver_by,
        tax_bps: params.tax_bps.unwrap_or(0),
        terms,
        budget_left,
        today: now.date(),
    })
}

/// A ranking's offers and scores as a run's ledger keeps them.
struct Scores {
    ranked: Vec<RankedEvidence>,
    excluded: Vec<ExcludedEvidence>,
}

/// The ranked, the excluded and the hints, for `offers`: compared in the caller's
/// currency, else the mandate's, else the first offer's.
fn ranked_views(
    offers: &[IndexedOffer],
    rank_for: &RankFor,
) -> Result<(ComparisonView, Scores), Problem> {
    let compared_in = rank_for
        .currency
        .or(rank_for.terms.as_ref().map(|t| t.currency))
        .or(offers.first().map(|offer| offer.record.price.currency));
    let Some(currency) = compared_in else {
        return Ok((
            ComparisonView {
                results: vec![],
                excluded: vec![],
                hints: vec![],
            },
            Scores {
                ranked: vec![],
                excluded: vec![],
            },
        ));
    };
    let candidates: Vec<Candidate> = offers
        .iter()
        .map(|offer| Candidate {
            merchant: offer.merchant.clone(),
            offer_id: offer.offer_id.clone(),
            record: offer.record.clone(),
        })
        .collect();
    let shopper = Shopper {
        mandate: rank_for.terms.as_ref(),
        budget_left: rank_for.budget_left,
        tax_bps: rank_for.tax_bps,
        deliver_by: rank_for.deliver_by,
        today: Some(rank_for.today),
    };
    let ranking = rank(&candidates, currency, &shopper, rank_for.weights)
        .map_err(|e| invalid("weights", e))?;
    let indexed = |merchant: &MerchantId, offer_id: &OfferId| {
        offers
            .iter()
            .find(|offer| &offer.merchant == merchant && &offer.offer_id == offer_id)
    };
    let find =
        |merchant: &MerchantId, offer_id: &OfferId| indexed(merchant, offer_id).map(offer_view);
    let version = |merchant: &MerchantId, offer_id: &OfferId| {
        indexed(merchant, offer_id).map_or(0, |offer| offer.version)
    };
    let results = ranking
        .ranked
        .iter()
        .filter_map(|ranked| {
            Some(RankedOfferView {
                offer: find(&ranked.merchant, &ranked.offer_id)?,
                score: ranked.score,
                breakdown: BreakdownView {
                    cost: ranked.breakdown.cost,
                    delivery: ranked.breakdown.delivery,
                    returns: ranked.breakdown.returns,
                    trust: ranked.breakdown.trust,
                },
                landed_cost: ranked.landed_cost.into(),
                arrives_by: ranked.arrives_by.map(|d| d.to_string()),
                reason: ranked.reason.clone(),
            })
        })
        .collect();
    let excluded = ranking
        .excluded
        .iter()
        .filter_map(|excluded| {
            Some(ExcludedOfferView {
                offer: find(&excluded.merchant, &excluded.offer_id)?,
                codes: excluded
                    .reasons
                    .iter()
                    .filter_map(|r| serde_json::to_value(r).ok())
                    .filter_map(|v| v["code"].as_str().map(str::to_owned))
                    .collect(),
                reason: excluded.reason.clone(),
            })
        })
        .collect();
    let hints = ranking
        .hints
        .iter()
        .map(|hint| HintView {
            merchant: hint.merchant.to_string(),
            offer_id: hint.offer_id.to_string(),
            raise_by: hint.raise_by.into(),
            text: hint.text.clone(),
        })
        .collect();
    let scores = Scores {
        ranked: ranking
            .ranked
            .iter()
            .map(|ranked| RankedEvidence {
                version: version(&ranked.merchant, &ranked.offer_id),
                merchant: ranked.merchant.clone(),
                offer_id: ranked.offer_id.clone(),
                score: ranked.score,
                landed_cost: ranked.landed_cost,
                reason: ranked.reason.clone(),
            })
            .collect(),
        excluded: ranking
            .excluded
            .iter()
            .map(|excluded| ExcludedEvidence {
                version: version(&excluded.merchant, &excluded.offer_id),
                merchant: excluded.merchant.clone(),
                offer_id: excluded.offer_id.clone(),
                reason: excluded.reason.clone(),
            })
            .collect(),
    };
    Ok((
        ComparisonView {
            results,
            excluded,
            hints,
        },
        scores,
    ))
}

#[utoipa::path(operation_id = "offers_search", get, path = "/v1/offers/search", tag = "offers", params(SearchOffers),
    responses((status = 200, description = "One page of matches, ranked, with what was excluded and why", body = SearchView), (status = "4XX", description = "The request was refused: see `code`", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn search(
    State(app): State<App>,
    principal: Principal,
    params: Result<axum::extract::Query<SearchOffers>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let params = super::query(params)?;
    let (view, _) = search_ranked(&app, &principal, &params, None).await?;
    Ok(axum::Json(view).into_response())
}

/// One page of matches for `params`, ranked for the caller (under `run_mandate`, the
/// mandate of the run searching, unless the request names one).
async fn search_ranked(
    app: &App,
    principal: &Principal,
    params: &SearchOffers,
    run_mandate: Option<MandateId>,
) -> Result<(SearchView, Scores), Problem> {
    let limit = params.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(invalid("limit", "1 to 100"));
    }
    if params.q.as_deref().is_some_and(|q| q.chars().count() > 200) {
        return Err(invalid("q", "at most 200 characters"));
    }
    let offset = match params.cursor.as_deref() {
        None => 0,
        Some(cursor) => {
            cursor_offset(cursor).ok_or_else(|| invalid("cursor", "not a cursor of this search"))?
        }
    };
    let run_mandate = run_mandate.map(|m| m.to_string());
    let rank_for = rank_for(
        app,
        principal,
        RankParams {
            weights: [
                params.w_cost,
                params.w_delivery,
                params.w_returns,
                params.w_trust,
            ],
            currency: params.currency.as_deref(),
            deliver_by: params.deliver_by.as_deref(),
            mandate: params.mandate.as_deref().or(run_mandate.as_deref()),
            tax_bps: params.tax_bps,
        },
    )
    .await?;
    let query = OfferQuery {
        tenant: principal.tenant.clone(),
        text: params.q.clone().filter(|q| !q.trim().is_empty()),
        currency: (params.min_price.is_some() || params.max_price.is_some())
            .then(|| {
                rank_for
                    .currency
                    .or(rank_for.terms.as_ref().map(|t| t.currency))
            })
            .flatten()
            .map(|c| c.code().to_owned()),
        min_price_minor: params.min_price,
        max_price_minor: params.max_price,
        merchants: list(params.merchant.as_deref()),
        categories: list(params.category.as_deref()),
        available_only: params.available.unwrap_or(false),
        delivery_within_days: params.delivery_within_days,
        free_returns_only: params.free_returns.unwrap_or(false),
        // The first pages are cut from the ranked window; later ones are the index's.
        limit: if offset < RANK_WINDOW {
            RANK_WINDOW
        } else {
            limit as usize
        },
        cursor: (offset >= RANK_WINDOW).then(|| cursor_at(offset)),
    };
    let page = app
        .offer_index
        .search(&query)
        .await
        .map_err(|error| match error {
            IndexError::InvalidQuery(why) => invalid("cursor", why),
            IndexError::Unavailable(why) => {
                tracing::error!(%why, "search index unavailable");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "search_unavailable",
                    "The search index cannot answer right now",
                )
                .with_retry_after(5)
            }
        })?;
    let (ranked, scores) = ranked_views(&page.hits, &rank_for)?;
    let (ranked, scores) = if offset < RANK_WINDOW {
        window(ranked, scores, offset, limit as usize)
    } else {
        (ranked, scores)
    };
    let next = offset + limit as usize;
    let facet = |values: &[(String, u64)]| {
        values
            .iter()
            .map(|(value, count)| FacetView {
                value: value.clone(),
                count: *count,
            })
            .collect()
    };
    let view = SearchView {
        results: ranked.results,
        excluded: ranked.excluded,
        hints: ranked.hints,
        total: page.total,
        facets: FacetsView {
            merchant: facet(&page.facets.merchant),
            category: facet(&page.facets.category),
            availability: facet(&page.facets.availability),
        },
        next_cursor: next_cursor(next, page.total),
    };
    Ok((view, scores))
}

/// How many of the best matches (by the index's order: relevance, or delivered price
/// without words) are ranked together, so that the first pages show the best of them
/// whatever page the index had them on. Pages beyond are ranked on their own.
pub const RANK_WINDOW: usize = 100;

/// `items[start..end]`, as far as there are items.
fn slice<T>(items: Vec<T>, start: usize, end: usize) -> Vec<T> {
    let end = end.min(items.len());
    let start = start.min(end);
    items.into_iter().skip(start).take(end - start).collect()
}

/// The page `[offset, offset + limit)` of a ranking: the ranked offers best first, then
/// the excluded ones.
fn window(
    ranked: ComparisonView,
    scores: Scores,
    offset: usize,
    limit: usize,
) -> (ComparisonView, Scores) {
    let ranked_count = ranked.results.len();
    let end = offset.saturating_add(limit);
    let (start_ranked, end_ranked) = (offset.min(ranked_count), end.min(ranked_count));
    let (start_excluded, end_excluded) = (
        offset.saturating_sub(ranked_count),
        end.saturating_sub(ranked_count),
    );
    (
        ComparisonView {
            results: slice(ranked.results, start_ranked, end_ranked),
            excluded: slice(ranked.excluded, start_excluded, end_excluded),
            hints: ranked.hints,
        },
        Scores {
            ranked: slice(scores.ranked, start_ranked, end_ranked),
            excluded: slice(scores.excluded, start_excluded, end_excluded),
        },
    )
}

/// An offer to compare: the merchant and its offer id.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OfferRef {
    #[schema(schema_with = crate::openapi::fields::merchant_id)]
    pub merchant: String,
    #[schema(schema_with = crate::openapi::fields::offer_id)]
    pub offer_id: String,
}

/// Ranking weights; each defaults as in search. Not negative, not all zero.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WeightsBody {
    #[schema(minimum = 0)]
    pub cost: Option<f64>,
    #[schema(minimum = 0)]
    pub delivery: Option<f64>,
    #[schema(minimum = 0)]
    pub returns: Option<f64>,
    #[schema(minimum = 0)]
    pub trust: Option<f64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompareOffers {
    /// 2 to 50 listed offers.
    #[schema(min_items = 2, max_items = 50)]
    pub offers: Vec<OfferRef>,
    #[schema(schema_with = crate::openapi::fields::currency)]
    pub currency: Option<String>,
    #[schema(format = Uuid)]
    pub mandate: Option<String>,
    pub tax_bps: Option<u32>,
    /// YYYY-MM-DD.
    #[schema(format = Date)]
    pub deliver_by: Option<String>,
    #[serde(default)]
    pub weights: WeightsBody,
}

/// Offers ranked, best first, with what was excluded and why.
#[derive(Debug, Serialize, ToSchema)]
pub struct ComparisonView {
    pub results: Vec<RankedOfferView>,
    pub excluded: Vec<ExcludedOfferView>,
    pub hints: Vec<HintView>,
}

#[utoipa::path(operation_id = "offers_compare", post, path = "/v1/offers/compare", tag = "offers", request_body = CompareOffers,
    params(("Idempotency-Key" = String, Header)),
    responses((status = 200, description = "The offers ranked for the caller", body = ComparisonView), (status = "4XX", description = "The request was refused: see `code`", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn compare(
    State(app): State<App>,
    principal: Principal,
    Body(body): Body<CompareOffers>,
) -> Result<Response, Problem> {
    let (comparison, _) = compare_ranked(&app, &principal, &body, None).await?;
    Ok(axum::Json(comparison).into_response())
}

/// The chosen offers, as the log has them now, ranked for the caller (under
/// `run_mandate` unless the request names a mandate).
async fn compare_ranked(
    app: &App,
    principal: &Principal,
    body: &CompareOffers,
    run_mandate: Option<MandateId>,
) -> Result<(ComparisonView, Scores), Problem> {
    if !(2..=50).contains(&body.offers.len()) {
        return Err(invalid("offers", "2 to 50 offers"));
    }
    let run_mandate = run_mandate.map(|m| m.to_string());
    let rank_for = rank_for(
        app,
        principal,
        RankParams {
            weights: [
                body.weights.cost,
                body.weights.delivery,
                body.weights.returns,
                body.weights.trust,
            ],
            currency: body.currency.as_deref(),
            deliver_by: body.deliver_by.as_deref(),
            mandate: body.mandate.as_deref().or(run_mandate.as_deref()),
            tax_bps: body.tax_bps,
        },
    )
    .await?;
    // Compared as the log has them now, not as the index last saw them.
    let mut offers = Vec::with_capacity(body.offers.len());
    for reference in &body.offers {
        let merchant =
            MerchantId::parse(&reference.merchant).map_err(|e| invalid("offers.merchant", e))?;
        let offer_id =
            OfferId::parse(&reference.offer_id).map_err(|e| invalid("offers.offer_id", e))?;
        let stream = offer_stream(&principal.tenant, &merchant, &offer_id);
        let (offer, version) = app.offers.load(&stream).await?;
        let (Some(record), false) = (offer.record, offer.withdrawn) else {
            return Err(Problem::unprocessable(
                "offer_not_listed",
                format!("{merchant} does not list {offer_id}"),
            ));
        };
        offers.push(IndexedOffer::new(
            stream,
            principal.tenant.clone(),
            merchant,
            offer_id,
            version,
            record,
            offer.citation.map(|c| c.url),
        ));
    }
    ranked_views(&offers, &rank_for)
}

/// A search a run made, and the ledger entry that records it.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunSearchView {
    /// The action recorded in the run's ledger.
    pub action_id: String,
    pub search: SearchView,
}

/// A comparison a run made, and the ledger entry that records it.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunComparisonView {
    pub action_id: String,
    pub comparison: ComparisonView,
}

/// The run `id`, which the caller may record actions in (the shopper, the agent under
/// its mandate, an admin): loaded once, for its mandate and to check that right.
async fn run_to_record(
    app: &App,
    principal: &Principal,
    id: RunId,
) -> Result<shopagent_domain::run::AgentRun, Problem> {
    let (run, _) = super::load_visible(&app.runs, principal, id).await?;
    super::authorize_write(principal, run.owner().ok_or_else(Problem::not_found)?)?;
    Ok(run)
}

/// A fault of ours, logged; the caller gets a plain 500.
fn internal(error: impl std::fmt::Display) -> Problem {
    tracing::error!(%error, "recording a ranking failed");
    Problem::internal()
}

fn sha256(value: &impl Serialize) -> Result<RunDigest, Problem> {
    let bytes = serde_json::to_vec(value).map_err(internal)?;
    RunDigest::parse(&hex::encode(Sha256::digest(bytes))).map_err(internal)
}

/// What the caller asked, not every option it left out.
fn without_nulls(value: &mut serde_json::Value) {
    if let Some(fields) = value.as_object_mut() {
        fields.retain(|_, field| !field.is_null());
        fields.values_mut().for_each(without_nulls);
    }
}

/// The pages the ranked offers were read from, each once.
fn citations(results: &[RankedOfferView]) -> Vec<RunCitation> {
    let mut citations: Vec<RunCitation> = Vec::new();
    for url in results
        .iter()
        .filter_map(|r| r.offer.citation_url.as_deref())
    {
        if let Ok(citation) = RunCitation::parse(url)
            && !citations.contains(&citation)
            && citations.len() < MAX_CITATIONS
        {
            citations.push(citation);
        }
    }
    citations
}

/// A run's search or comparison, to record in its ledger.
struct RankingAction<'a, R, O> {
    run: RunId,
    kind: ActionKind,
    /// The request as the caller made it.
    request: &'a R,
    scores: Scores,
    citations: Vec<RunCitation>,
    /// The answer as the caller gets it.
    output: &'a O,
    started: std::time::Instant,
}

/// Records the request and every offer returned with its score, so an auditor can see
/// why the agent chose what it chose. The action's id comes from the idempotency key:
/// a retried request records nothing more.
async fn record_ranking<R: Serialize, O: Serialize>(
    app: &App,
    principal: &Principal,
    key: &RequestKey,
    headers: &axum::http::HeaderMap,
    recorded: RankingAction<'_, R, O>,
) -> Result<ActionId, Problem> {
    let mut query = serde_json::to_value(recorded.request).map_err(internal)?;
    without_nulls(&mut query);
    let action = Action {
        kind: recorded.kind,
        input_digest: sha256(&query)?,
        output_digest: sha256(recorded.output)?,
        citations: recorded.citations,
        latency_ms: u64::try_from(recorded.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        cost: None,
        evidence: Some(Box::new(OfferEvidence {
            query,
            ranked: recorded.scores.ranked,
            excluded: recorded.scores.excluded,
        })),
    };
    let action_id = ActionId(super::new_id(principal, key));
    // The caller's right to record in this run was checked when it was loaded.
    let command = RunCommand::RecordAction {
        action_id,
        action,
        at: OffsetDateTime::now_utc(),
    };
    app.runs
        .execute_at_version(
            &stream_id(&principal.tenant, recorded.run),
            command,
            metadata(principal, key),
            super::if_match(headers)?,
        )
        .await?;
    Ok(action_id)
}

#[utoipa::path(operation_id = "runs_search_offers", post, path = "/v1/runs/{id}/searches", tag = "runs", request_body = SearchOffers,
    params(("id" = String, Path, format = Uuid), ("Idempotency-Key" = String, Header)),
    responses((status = 200, description = "One page of matches, ranked under the run's mandate, and the search action recorded in its ledger with the query and every offer's score", body = RunSearchView), (status = "4XX", description = "The request was refused: see `code`", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn run_search(
    State(app): State<App>,
    principal: Principal,
    key: RequestKey,
    headers: axum::http::HeaderMap,
    IdPath(id): IdPath,
    Body(body): Body<SearchOffers>,
) -> Result<Response, Problem> {
    let started = std::time::Instant::now();
    let run = run_to_record(&app, &principal, RunId(id)).await?;
    let (search, scores) = search_ranked(&app, &principal, &body, run.mandate_id).await?;
    let action = RankingAction {
        run: RunId(id),
        kind: ActionKind::Search,
        request: &body,
        scores,
        citations: citations(&search.results),
        output: &search,
        started,
    };
    let action_id = record_ranking(&app, &principal, &key, &headers, action).await?;
    Ok(axum::Json(RunSearchView {
        action_id: action_id.0.to_string(),
        search,
    })
    .into_response())
}

#[utoipa::path(operation_id = "runs_compare_offers", post, path = "/v1/runs/{id}/comparisons", tag = "runs", request_body = CompareOffers,
    params(("id" = String, Path, format = Uuid), ("Idempotency-Key" = String, Header)),
    responses((status = 200, description = "The offers ranked under the run's mandate, and the rank action recorded in its ledger with every offer's score", body = RunComparisonView), (status = "4XX", description = "The request was refused: see `code`", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn run_compare(
    State(app): State<App>,
    principal: Principal,
    key: RequestKey,
    headers: axum::http::HeaderMap,
    IdPath(id): IdPath,
    Body(body): Body<CompareOffers>,
) -> Result<Response, Problem> {
    let started = std::time::Instant::now();
    let run = run_to_record(&app, &principal, RunId(id)).await?;
    let (comparison, scores) = compare_ranked(&app, &principal, &body, run.mandate_id).await?;
    let action = RankingAction {
        run: RunId(id),
        kind: ActionKind::Rank,
        request: &body,
        scores,
        citations: citations(&comparison.results),
        output: &comparison,
        started,
    };
    let action_id = record_ranking(&app, &principal, &key, &headers, action).await?;
    Ok(axum::Json(RunComparisonView {
        action_id: action_id.0.to_string(),
        comparison,
    })
    .into_response())
}
