//! Ports: what checkout needs from the outside world. Connectors implement them; their
//! wire types never leak past these signatures. The traits are async (through the
//! `async-trait` macro, which needs no runtime): the domain only names them.

use std::sync::Arc;

use crate::address::Address;
use crate::ids::{MerchantId, OrderId};
use crate::money::Money;
use crate::order::{FailureReason, OrderLine};
use crate::payment::{CardDisplay, CardReference};
use time::OffsetDateTime;

/// A call to the outside world that did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// Timeout, 5xx, connection refused, open circuit: trying again later may work.
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
    /// A definite answer: trying again will not change it.
    #[error("refused: {0}")]
    Refused(String),
}

/// What to ask of a merchant's catalogue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CatalogueQuery {
    /// Words to search for; none: the whole catalogue.
    pub text: Option<String>,
    /// Where the previous page ended (the merchant's own cursor).
    pub cursor: Option<String>,
    pub limit: u32,
}

/// One offer of a merchant's catalogue, as the merchant describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogueItem {
    /// The merchant's id for what is bought: what an order names.
    pub offer_id: Option<crate::ids::OfferId>,
    /// The id as the merchant gave it, for reports when it is not a valid offer id.
    pub merchant_ref: String,
    pub raw: crate::offer::normalize::RawOffer,
    /// SHA-256 (hex) of the item as the merchant sent it: what a citation keeps.
    pub digest: String,
}

/// One page of a merchant's catalogue.
#[derive(Debug, Clone, PartialEq)]
pub struct CataloguePage {
    pub items: Vec<CatalogueItem>,
    pub next_cursor: Option<String>,
}

/// A single-use virtual card for one order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardRequest {
    /// The same key always yields the same card.
    pub idempotency_key: String,
    pub order_id: OrderId,
    /// Spend cap: authorizations above it are declined by the issuer.
    pub cap: Money,
    /// Merchant lock: authorizations from any other merchant are declined.
    pub merchant: MerchantId,
    /// Opaque id the issuer echoes in its webhooks (card metadata), so an authorization
    /// request finds its payment: the payment's stream id.
    pub payment_ref: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCard {
    /// The issuer's reference; the card number never leaves the issuer.
    pub reference: CardReference,
    /// Brand and last four digits, when the issuer tells them.
    pub display: Option<CardDisplay>,
    pub expires_at: OffsetDateTime,
}

/// A card issuer (shaped after Stripe Issuing).
#[async_trait::async_trait]
pub trait CardIssuer: Send + Sync {
    async fn create_card(&self, request: &CardRequest) -> Result<IssuedCard, CallError>;
    async fn void_card(&self, card: &CardReference, idempotency_key: &str)
    -> Result<(), CallError>;
}

/// An order to place with a merchant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaceOrder {
    /// The same key never places a second order.
    pub idempotency_key: String,
    pub order_id: OrderId,
    pub lines: Vec<OrderLine>,
    pub total: Money,
    pub ship_to: Option<Address>,
    pub card: CardReference,
    pub card_display: Option<CardDisplay>,
}

/// Why a merchant did not place an order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaceError {
    #[error("merchant temporarily unavailable: {0}")]
    Unavailable(String),
    #[error("{reason:?}: {detail}")]
    Failed {
        reason: FailureReason,
        detail: String,
    },
}

/// A sub-cart to price: the merchant answers with its shipping, tax and totals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteRequest {
    /// The same key gets the same quote (UCP: the same checkout session).
    pub idempotency_key: String,
    pub lines: Vec<OrderLine>,
    pub currency: crate::money::Currency,
    pub ship_to: Address,
}

/// What a merchant's protocol lets shopagent do besides placing orders. Protocols
/// differ: UCP 2026-01-11 prices carts but reports order changes only by webhook;
/// marketplace APIs (eBay, Violet) also cancel, return and refund on request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GatewayCapabilities {
    pub quote: bool,
    pub order_status: bool,
    pub cancel: bool,
    pub returns: bool,
    pub refunds: bool,
}

fn not_offered(what: &str) -> CallError {
    CallError::Refused(format!("this merchant's protocol offers no {what}"))
}

/// A merchant's checkout API (UCP, ACP, Shopify, …). Only placing an order is
/// required; the rest answers "not offered" unless the connector says otherwise in
/// [`MerchantGateway::capabilities`].
#[async_trait::async_trait]
pub trait MerchantGateway: Send + Sync {
    fn capabilities(&self) -> GatewayCapabilities {
        GatewayCapabilities::default()
    }

    /// Prices a sub-cart: shipping, tax and totals as the merchant computes them.
    async fn quote(&self, _request: &QuoteRequest) -> Result<crate::cart::Quote, PlaceError> {
        Err(PlaceError::Failed {
            reason: FailureReason::MerchantUnavailable,
            detail: not_offered("quotes").to_string(),
        })
    }

    /// One page of the merchant's catalogue: what matches `query.text` (its search), or
    /// without text every product it sells (its feed), page by page.
    async fn catalogue(&self, _query: &CatalogueQuery) -> Result<CataloguePage, CallError> {
        Err(not_offered("catalogue"))
    }

    /// Places the order; returns the merchant's order reference.
    async fn place_order(&self, order: &PlaceOrder) -> Result<String, PlaceError>;

    /// The order's status at the merchant.
    async fn order_status(
        &self,
        _merchant_reference: &str,
    ) -> Result<crate::order::OrderStatus, CallError> {
        Err(not_offered("order status"))
    }

    async fn cancel_order(
        &self,
        _merchant_reference: &str,
        _idempotency_key: &str,
    ) -> Result<(), CallError> {
        Err(not_offered("cancellation"))
    }

    /// Asks for a return; returns the merchant's reference for it (an RMA).
    async fn request_return(
        &self,
        _merchant_reference: &str,
        _idempotency_key: &str,
        _reason: &str,
    ) -> Result<String, CallError> {
        Err(not_offered("returns"))
    }

    /// Asks for a refund; returns the merchant's reference for it.
    async fn refund(
        &self,
        _merchant_reference: &str,
        _idempotency_key: &str,
        _amount: Money,
    ) -> Result<String, CallError> {
        Err(not_offered("refunds"))
    }
}

/// Finds the gateway that speaks to a merchant of a tenant (from its registry entry).
#[async_trait::async_trait]
pub trait MerchantDirectory: Send + Sync {
    async fn gateway(
        &self,
        tenant: &str,
        merchant: &MerchantId,
    ) -> Option<Arc<dyn MerchantGateway>>;
}

/// What a merchant or a carrier reports about an order after it was placed. Merchant
/// protocols (UCP order events, marketplace notifications) and carrier trackers
/// (EasyPost, Shippo) are mapped onto these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FulfillmentUpdate {
    /// The merchant accepted the order (UCP: the order exists).
    Confirmed,
    Shipped {
        carrier: String,
        tracking_number: String,
    },
    OutForDelivery,
    Delivered,
    /// Failed attempt, undeliverable, returned to sender, …
    DeliveryException {
        detail: String,
    },
    Cancelled {
        reason: String,
    },
    /// The merchant accepted a return and gave it this reference (an RMA).
    ReturnAccepted {
        rma: String,
    },
    /// The merchant received the goods of the return with this RMA.
    ReturnReceived {
        rma: String,
    },
    /// The merchant refunded this amount; `reference` is its own id for the refund.
    Refunded {
        reference: String,
        amount: Money,
    },
}

/// One update, with the id its sender gave it (the same id is the same update, however
/// often it is delivered) and when it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportedUpdate {
    pub id: String,
    pub update: FulfillmentUpdate,
    pub at: OffsetDateTime,
}

/// A parcel to follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackParcel {
    /// The same key never registers a second tracker.
    pub idempotency_key: String,
    pub carrier: String,
    pub tracking_number: String,
}

/// A carrier-tracking provider (shaped after EasyPost trackers): once a parcel is
/// registered, the provider reports its progress by webhook.
#[async_trait::async_trait]
pub trait TrackingProvider: Send + Sync {
    /// Registers the parcel; returns the provider's tracker id.
    async fn track(&self, parcel: &TrackParcel) -> Result<String, CallError>;
}

/// One event as it leaves for an event stream (Kafka): where it goes, its key (records
/// of one key stay in order), its bytes and its headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundRecord {
    pub topic: String,
    pub key: String,
    pub value: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

/// Why a batch was not (wholly) published. Nothing is known to be lost: the batch is
/// sent again, and consumers see some records twice.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("publishing failed: {0}")]
pub struct PublishError(pub String);

/// An event stream other services consume (a Kafka-protocol broker).
#[async_trait::async_trait]
pub trait EventStream: Send + Sync {
    /// Publishes `records` in order, returning once the broker acknowledged every one
    /// of them (durably, as the stream's settings define it).
    async fn publish(&self, records: Vec<OutboundRecord>) -> Result<(), PublishError>;
}

/// Why the search index could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    /// The query cannot be run (a malformed cursor): the caller's mistake.
    #[error("invalid search: {0}")]
    InvalidQuery(String),
    /// The index cannot be reached or failed: trying again later may work.
    #[error("search index unavailable: {0}")]
    Unavailable(String),
}

/// The offers search index: a read model kept by the indexer from offer events.
#[async_trait::async_trait]
pub trait OfferIndex: Send + Sync {
    /// Stores `offers` (replacing older versions of the same ids, never newer ones),
    /// removes `withdrawn`, and records `checkpoint` — how far into the log the index
    /// now is — all at once; durable once it returns.
    async fn apply(
        &self,
        offers: Vec<crate::offer::search::IndexedOffer>,
        withdrawn: Vec<String>,
        checkpoint: Option<String>,
    ) -> Result<(), IndexError>;

    /// The checkpoint of the last `apply` that recorded one; `None` for a new index.
    async fn checkpoint(&self) -> Result<Option<String>, IndexError>;

    /// One page of the offers matching `query`.
    async fn search(
        &self,
        query: &crate::offer::search::OfferQuery,
    ) -> Result<crate::offer::search::SearchPage, IndexError>;

    /// Removes every offer and the checkpoint (before a rebuild from the start of the log).
    async fn clear(&self) -> Result<(), IndexError>;

    /// Whether every instance of the service uses this same index (a search server), so
    /// that one indexer at a time must keep it; an embedded index is its process's own.
    fn shared(&self) -> bool {
        false
    }
}

/// Generations of the offers index: a rebuild fills a new one beside the live one,
/// which keeps serving, then promotes it.
#[async_trait::async_trait]
pub trait IndexGenerations: Send + Sync {
    /// A new, empty index beside the live one.
    async fn create_next(&self) -> Result<Arc<dyn OfferIndex>, IndexError>;

    /// Makes the index the last `create_next` made the live one — durably: a restart
    /// opens it — and retires the one before. Returns the handle to serve from.
    async fn promote(&self) -> Result<Arc<dyn OfferIndex>, IndexError>;
}
