use crate::propagation::WithTraceContext;
use reqwest::StatusCode;
use serde::Serialize;
use shopagent_domain::cart::Quote;
use shopagent_domain::ports::{
    CallError, CataloguePage, CatalogueQuery, GatewayCapabilities, MerchantGateway, PlaceError,
    PlaceOrder, QuoteRequest,
};

use super::mapping::{
    SessionRequest, complete_checkout, create_checkout, failure, quote_of, update_checkout,
};
use super::wire::Checkout;
use super::{UcpConfig, catalog};

/// A UCP merchant. Cheap to clone.
#[derive(Debug, Clone)]
pub struct UcpMerchant {
    config: UcpConfig,
    http: reqwest::Client,
}

impl UcpMerchant {
    /// A merchant reached through `http`, whose timeout bounds each call and whose
    /// connections it shares with the other merchants of a process.
    pub fn new(config: UcpConfig, http: reqwest::Client) -> Self {
        Self { config, http }
    }

    /// POSTs `body`; a checkout answer (even an error one) comes back as `Checkout`.
    async fn post(
        &self,
        path: &str,
        idempotency_key: &str,
        body: &impl Serialize,
    ) -> Result<(StatusCode, Checkout), PlaceError> {
        self.send(reqwest::Method::POST, path, idempotency_key, body)
            .await
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        idempotency_key: &str,
        body: &impl Serialize,
    ) -> Result<(StatusCode, Checkout), PlaceError> {
        let url = format!("{}{path}", self.config.endpoint.trim_end_matches('/'));
        let response = self
            .http
            .request(method, url)
            .header(
                "UCP-Agent",
                format!("profile=\"{}\"", self.config.agent_profile),
            )
            .header("Idempotency-Key", idempotency_key)
            .json(body)
            .with_trace_context()
            .send()
            .await
            .map_err(|e| PlaceError::Unavailable(e.to_string()))?;
        let status = response.status();
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            return Err(PlaceError::Unavailable(format!(
                "merchant answered {status}"
            )));
        }
        let checkout = response
            .json::<Checkout>()
            .await
            .map_err(|e| PlaceError::Failed {
                reason: shopagent_domain::order::FailureReason::MerchantUnavailable,
                detail: format!("unreadable answer ({status}): {e}"),
            })?;
        Ok((status, checkout))
    }

    /// Opens a checkout session ready to complete: create it with the items, then update
    /// it with the buyer and the destination on the business's shipping method. Keys
    /// derive from `key`, so a retry lands on the same session.
    async fn open_session(
        &self,
        request: SessionRequest<'_>,
        key: &str,
    ) -> Result<(String, Checkout), PlaceError> {
        let (status, created) = self
            .post(
                "/checkout-sessions",
                &format!("{key}/create"),
                &create_checkout(request),
            )
            .await?;
        let Some(id) = created.id.clone().filter(|_| status.is_success()) else {
            return Err(failure(&created));
        };
        if created.status == "completed" || created.status == "ready_for_complete" {
            return Ok((id, created));
        }
        let update = match request.ship_to {
            Some(ship_to) => update_checkout(&created, &id, request.currency, ship_to),
            None => None,
        };
        let Some(update) = update else {
            return Err(failure(&created));
        };
        let (status, updated) = self
            .send(
                reqwest::Method::PUT,
                &format!("/checkout-sessions/{id}"),
                &format!("{key}/update"),
                &update,
            )
            .await?;
        match updated.status.as_str() {
            "ready_for_complete" | "completed" if status.is_success() => Ok((id, updated)),
            _ => Err(failure(&updated)),
        }
    }
}

impl UcpMerchant {
    /// One page of the merchant's catalog (`POST /catalog/search`).
    async fn catalog_search(&self, query: &CatalogueQuery) -> Result<CataloguePage, CallError> {
        let url = format!(
            "{}/catalog/search",
            self.config.endpoint.trim_end_matches('/')
        );
        let response = self
            .http
            .post(url)
            .header(
                "UCP-Agent",
                format!("profile=\"{}\"", self.config.agent_profile),
            )
            .json(&catalog::SearchRequest::of(query))
            .with_trace_context()
            .send()
            .await
            .map_err(|e| CallError::Unavailable(e.to_string()))?;
        let status = response.status();
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            return Err(CallError::Unavailable(format!(
                "merchant answered {status}"
            )));
        }
        if status == StatusCode::NOT_FOUND || status == StatusCode::METHOD_NOT_ALLOWED {
            return Err(CallError::Refused(
                "this merchant offers no catalog search".into(),
            ));
        }
        if !status.is_success() {
            return Err(CallError::Refused(format!("merchant answered {status}")));
        }
        let answer = response
            .json::<catalog::SearchResponse>()
            .await
            .map_err(|e| CallError::Refused(format!("unreadable catalog answer: {e}")))?;
        Ok(catalog::page(answer))
    }
}

#[async_trait::async_trait]
impl MerchantGateway for UcpMerchant {
    /// UCP 2026-01-11 prices carts (a checkout session) and reports order changes by
    /// webhook; it has no REST operations on orders.
    fn capabilities(&self) -> GatewayCapabilities {
        GatewayCapabilities {
            quote: true,
            ..GatewayCapabilities::default()
        }
    }

    /// Opens a checkout session to read the merchant's totals, then cancels it.
    async fn catalogue(&self, query: &CatalogueQuery) -> Result<CataloguePage, CallError> {
        self.catalog_search(query).await
    }

    async fn quote(&self, request: &QuoteRequest) -> Result<Quote, PlaceError> {
        let (id, session) = self
            .open_session(request.into(), &request.idempotency_key)
            .await?;
        let quote = quote_of(&session, request.currency);
        let cancel = format!("/checkout-sessions/{id}/cancel");
        let key = format!("{}/cancel", request.idempotency_key);
        if let Err(error) = self.post(&cancel, &key, &serde_json::json!({})).await {
            tracing::debug!(%error, session = %id, "quote session left to expire");
        }
        quote
    }

    async fn place_order(&self, order: &PlaceOrder) -> Result<String, PlaceError> {
        let (id, session) = self
            .open_session(order.into(), &order.idempotency_key)
            .await?;
        if let (Some(confirmation), "completed") = (&session.order, session.status.as_str()) {
            return Ok(confirmation.id.clone());
        }
        // The merchant prices the items; more than the shopper agreed to is not bought.
        if let Some(asked) = session.total().filter(|asked| *asked > order.total.minor) {
            let cancel = format!("/checkout-sessions/{id}/cancel");
            let key = format!("{}/cancel", order.idempotency_key);
            if let Err(error) = self.post(&cancel, &key, &serde_json::json!({})).await {
                tracing::warn!(%error, session = %id, "could not cancel an over-priced checkout");
            }
            return Err(PlaceError::Failed {
                reason: shopagent_domain::order::FailureReason::PriceChanged,
                detail: format!(
                    "the merchant asks {asked} minor units, the order allows {}",
                    order.total.minor
                ),
            });
        }
        let path = format!("/checkout-sessions/{id}/complete");
        let (status, completed) = self
            .post(
                &path,
                &format!("{}/complete", order.idempotency_key),
                &complete_checkout(order),
            )
            .await?;
        match (&completed.order, completed.status.as_str()) {
            (Some(confirmation), "completed") if status.is_success() => Ok(confirmation.id.clone()),
            _ => Err(failure(&completed)),
        }
    }
}

/// A UCP merchant known by its business URL: discovers the REST endpoint and negotiates
/// the version before its first call (and again after a failed discovery). Calls go
/// through the `http` client it is given, whose timeout bounds each.
#[derive(Debug)]
pub struct DiscoveringUcpMerchant {
    business_url: String,
    agent_profile: String,
    http: reqwest::Client,
    discovered: tokio::sync::OnceCell<UcpMerchant>,
}

impl DiscoveringUcpMerchant {
    pub fn new(business_url: String, agent_profile: String, http: reqwest::Client) -> Self {
        Self {
            business_url,
            agent_profile,
            http,
            discovered: tokio::sync::OnceCell::new(),
        }
    }

    /// The business URL this merchant was discovered from.
    pub fn business_url(&self) -> &str {
        &self.business_url
    }

    async fn merchant(&self) -> Result<&UcpMerchant, PlaceError> {
        self.discovered
            .get_or_try_init(|| async {
                let found = super::discover(&self.http, &self.business_url)
                    .await
                    .map_err(|error| match error {
                        super::DiscoveryError::Unreachable(why) => PlaceError::Unavailable(why),
                        definite => PlaceError::Failed {
                            reason: shopagent_domain::order::FailureReason::MerchantUnavailable,
                            detail: definite.to_string(),
                        },
                    })?;
                let config = UcpConfig {
                    endpoint: found.endpoint,
                    agent_profile: self.agent_profile.clone(),
                };
                Ok(UcpMerchant::new(config, self.http.clone()))
            })
            .await
    }
}

#[async_trait::async_trait]
impl MerchantGateway for DiscoveringUcpMerchant {
    fn capabilities(&self) -> GatewayCapabilities {
        GatewayCapabilities {
            quote: true,
            ..GatewayCapabilities::default()
        }
    }

    async fn catalogue(&self, query: &CatalogueQuery) -> Result<CataloguePage, CallError> {
        let merchant = self.merchant().await.map_err(|error| match error {
            PlaceError::Unavailable(why) => CallError::Unavailable(why),
            other => CallError::Refused(other.to_string()),
        })?;
        merchant.catalogue(query).await
    }

    async fn quote(&self, request: &QuoteRequest) -> Result<Quote, PlaceError> {
        self.merchant().await?.quote(request).await
    }

    async fn place_order(&self, order: &PlaceOrder) -> Result<String, PlaceError> {
        self.merchant().await?.place_order(order).await
    }
}
