//! `/v1/merchants/{merchant}/catalogue`: offers entering from a merchant connector's
//! catalogue — its whole feed (`sync`), or what it answers to a search (`search`).
//!
//! Each item is normalized and listed like a product page's offer, citing what the
//! merchant sent (the item's address and the digest of its description). What a
//! merchant leaves unsaid or unreadable is reported per item; an item without a title,
//! a price or a valid id is not listed.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::{Deserialize, Serialize};
use shopagent_domain::ids::MerchantId;
use shopagent_domain::offer::normalize::normalize;
use shopagent_domain::offer::{Citation, OfferSource};
use shopagent_domain::ports::{CallError, CatalogueItem, CatalogueQuery, MerchantGateway};
use time::OffsetDateTime;
use utoipa::ToSchema;

use super::offers::{ExtractedOfferView, Read, ingest, may_ingest};
use super::{Body, invalid};
use crate::auth::Principal;
use crate::idempotency::RequestKey;
use crate::problem::Problem;
use crate::server::App;

pub fn routes() -> Router<App> {
    Router::new()
        .route("/v1/merchants/{merchant}/catalogue/sync", post(sync))
        .route("/v1/merchants/{merchant}/catalogue/search", post(search))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SyncCatalogue {
    /// Items asked for per page, 1 to 100 (default 50).
    #[schema(minimum = 1, maximum = 100)]
    pub page_size: Option<u32>,
    /// Pages read at most, 1 to 1000 (default 100); `next_cursor` says where to go on.
    #[schema(minimum = 1, maximum = 1000)]
    pub max_pages: Option<u32>,
    /// Where an earlier sync stopped.
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SyncView {
    pub merchant: String,
    pub pages: u32,
    /// Items the merchant sent.
    pub items: u32,
    /// Items listed (new, changed or as before).
    pub listed: u32,
    /// Listed items that changed the log: new offers and changed ones.
    pub changed: u32,
    /// Items not listed, each with why.
    pub not_listed: Vec<ExtractedOfferView>,
    /// Where the feed goes on, when `max_pages` stopped the sync before its end.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchCatalogue {
    /// Words, as the merchant's search reads them.
    pub q: String,
    /// Items, 1 to 100 (default 20).
    #[schema(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CatalogueSearchView {
    /// Every item the merchant answered, listed or with why not.
    pub offers: Vec<ExtractedOfferView>,
    pub next_cursor: Option<String>,
}

/// The merchant's connector, for a merchant registered in the caller's tenant.
async fn gateway(
    app: &App,
    principal: &Principal,
    merchant: &str,
) -> Result<(MerchantId, std::sync::Arc<dyn MerchantGateway>), Problem> {
    may_ingest(principal)?;
    let merchant = MerchantId::parse(merchant).map_err(|e| invalid("merchant", e))?;
    let gateway = app
        .directory
        .gateway(&principal.tenant, &merchant)
        .await
        .ok_or_else(Problem::not_found)?;
    Ok((merchant, gateway))
}

fn call_failed(error: CallError) -> Problem {
    match error {
        CallError::Unavailable(why) => {
            tracing::warn!(%why, "merchant catalogue unavailable");
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "merchant_unavailable",
                "The merchant's catalogue cannot answer right now",
            )
            .with_retry_after(5)
        }
        CallError::Refused(why) => Problem::unprocessable("catalogue_refused", why),
    }
}

/// Lists (or reports) one catalogue item.
async fn ingest_item(
    app: &App,
    principal: &Principal,
    key: &RequestKey,
    merchant: &MerchantId,
    item: &CatalogueItem,
    source: OfferSource,
) -> Result<(ExtractedOfferView, bool), Problem> {
    let normalized = normalize(&item.raw);
    let found_in = vec!["catalogue".to_owned()];
    let Some(offer_id) = item.offer_id.clone() else {
        let view = super::offers::report_only(merchant, &item.merchant_ref, &normalized, found_in);
        return Ok((view, false));
    };
    let retrieved_at = OffsetDateTime::now_utc();
    let read = Read {
        merchant,
        offer_id,
        normalized: &normalized,
        found_in,
        citation: item.raw.url.clone().map(|url| Citation {
            url,
            digest: item.digest.clone(),
            retrieved_at,
        }),
        source,
    };
    ingest(app, principal, key, read).await
}

#[utoipa::path(operation_id = "catalogue_sync", post, path = "/v1/merchants/{merchant}/catalogue/sync", tag = "offers", request_body = SyncCatalogue,
    params(("merchant" = String, Path), ("Idempotency-Key" = String, Header)),
    responses((status = 200, description = "The merchant's feed read and its offers listed", body = SyncView), (status = "4XX", description = "The request was refused: see `code`", body = Problem, content_type = "application/problem+json"), (status = 503, description = "The merchant's catalogue did not answer; what was read before is listed", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn sync(
    State(app): State<App>,
    principal: Principal,
    key: RequestKey,
    Path(merchant): Path<String>,
    Body(body): Body<SyncCatalogue>,
) -> Result<Response, Problem> {
    let page_size = body.page_size.unwrap_or(50);
    if !(1..=100).contains(&page_size) {
        return Err(invalid("page_size", "1 to 100"));
    }
    let max_pages = body.max_pages.unwrap_or(100);
    if !(1..=1000).contains(&max_pages) {
        return Err(invalid("max_pages", "1 to 1000"));
    }
    let (merchant, gateway) = gateway(&app, &principal, &merchant).await?;
    let mut view = SyncView {
        merchant: merchant.to_string(),
        pages: 0,
        items: 0,
        listed: 0,
        changed: 0,
        not_listed: Vec::new(),
        next_cursor: body.cursor.clone(),
    };
    while view.pages < max_pages {
        let query = CatalogueQuery {
            text: None,
            cursor: view.next_cursor.clone(),
            limit: page_size,
        };
        let page = gateway.catalogue(&query).await.map_err(call_failed)?;
        for (index, item) in page.items.iter().enumerate() {
            let item_key = key.derived(&format!("feed/{}/{index}", view.pages));
            let (report, changed) = ingest_item(
                &app,
                &principal,
                &item_key,
                &merchant,
                item,
                OfferSource::Feed,
            )
            .await?;
            view.items += 1;
            if report.listed {
                view.listed += 1;
                view.changed += u32::from(changed);
            } else {
                view.not_listed.push(report);
            }
        }
        view.pages += 1;
        view.next_cursor = page.next_cursor;
        if view.next_cursor.is_none() {
            break;
        }
    }
    tracing::info!(merchant = %merchant, pages = view.pages, items = view.items, changed = view.changed, "catalogue synced");
    Ok(axum::Json(view).into_response())
}

#[utoipa::path(operation_id = "catalogue_search", post, path = "/v1/merchants/{merchant}/catalogue/search", tag = "offers", request_body = SearchCatalogue,
    params(("merchant" = String, Path), ("Idempotency-Key" = String, Header)),
    responses((status = 200, description = "What the merchant's search answered, each offer listed or reported", body = CatalogueSearchView), (status = "4XX", description = "The request was refused: see `code`", body = Problem, content_type = "application/problem+json"), (status = 503, description = "The merchant's catalogue did not answer", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn search(
    State(app): State<App>,
    principal: Principal,
    key: RequestKey,
    Path(merchant): Path<String>,
    Body(body): Body<SearchCatalogue>,
) -> Result<Response, Problem> {
    let limit = body.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(invalid("limit", "1 to 100"));
    }
    let words = body.q.trim();
    if words.is_empty() || words.chars().count() > 200 {
        return Err(invalid("q", "1 to 200 characters"));
    }
    let (merchant, gateway) = gateway(&app, &principal, &merchant).await?;
    let query = CatalogueQuery {
        text: Some(words.to_owned()),
        cursor: body.cursor.clone(),
        limit,
    };
    let page = gateway.catalogue(&query).await.map_err(call_failed)?;
    let mut offers = Vec::with_capacity(page.items.len());
    for (index, item) in page.items.iter().enumerate() {
        let item_key = key.derived(&format!("search/{index}"));
        let (report, _) = ingest_item(
            &app,
            &principal,
            &item_key,
            &merchant,
            item,
            OfferSource::Search,
        )
        .await?;
        offers.push(report);
    }
    Ok(axum::Json(CatalogueSearchView {
        offers,
        next_cursor: page.next_cursor,
    })
    .into_response())
}
