use crate::propagation::WithTraceContext;
use reqwest::StatusCode;
use shopagent_domain::payment::CardReference;
use shopagent_domain::ports::{CallError, CardIssuer, CardRequest, IssuedCard};

use super::StripeIssuingConfig;
use super::error::IssuerHttpError;
use super::mapping::{create_card_form, issued_card};
use super::wire::{ErrorBody, IssuingCard};

/// The connector. Cheap to clone.
#[derive(Debug, Clone)]
pub struct StripeIssuing {
    config: StripeIssuingConfig,
    http: reqwest::Client,
}

impl StripeIssuing {
    pub fn new(config: StripeIssuingConfig) -> Result<Self, IssuerHttpError> {
        let http = reqwest::Client::builder().timeout(config.timeout).build()?;
        Ok(Self { config, http })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.config.base_url.trim_end_matches('/'))
    }

    /// POSTs a form with an idempotency key; returns the card the issuer answers with.
    async fn post(
        &self,
        path: &str,
        idempotency_key: &str,
        form: &[(String, String)],
    ) -> Result<IssuingCard, IssuerHttpError> {
        let response = self
            .http
            .post(self.url(path))
            .bearer_auth(&self.config.api_key)
            .header("Idempotency-Key", idempotency_key)
            .form(form)
            .with_trace_context()
            .send()
            .await?;
        let status = response.status();
        let body = response.bytes().await?;
        if status != StatusCode::OK {
            let message = serde_json::from_slice::<ErrorBody>(&body)
                .map(|e| format!("{}: {}", e.error.kind, e.error.message.unwrap_or_default()))
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).chars().take(200).collect());
            return Err(IssuerHttpError::Status {
                status: status.as_u16(),
                message,
            });
        }
        let card: IssuingCard =
            serde_json::from_slice(&body).map_err(|e| IssuerHttpError::Body(e.to_string()))?;
        if card.object != "issuing.card" {
            return Err(IssuerHttpError::Body(format!(
                "expected an issuing.card, got {}",
                card.object
            )));
        }
        Ok(card)
    }
}

#[async_trait::async_trait]
impl CardIssuer for StripeIssuing {
    async fn create_card(&self, request: &CardRequest) -> Result<IssuedCard, CallError> {
        let form = create_card_form(request, &self.config.cardholder);
        let card = self
            .post("/v1/issuing/cards", &request.idempotency_key, &form)
            .await?;
        tracing::info!(card = %card.id, order = %request.order_id, "virtual card issued");
        Ok(issued_card(card)?)
    }

    async fn void_card(
        &self,
        card: &CardReference,
        idempotency_key: &str,
    ) -> Result<(), CallError> {
        let form = [("status".to_owned(), "canceled".to_owned())];
        let cancelled = self
            .post(
                &format!("/v1/issuing/cards/{}", card.as_str()),
                idempotency_key,
                &form,
            )
            .await?;
        if cancelled.status == "canceled" {
            Ok(())
        } else {
            Err(CallError::Refused(format!(
                "card {} is {}, not canceled",
                card.as_str(),
                cancelled.status
            )))
        }
    }
}
