//! The server's life cycle: open the store, serve HTTP, run projections, stop cleanly.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use shopagent_commands::checkout::{CheckoutProcess, MerchantBreaker, PurchaseDelay};
use shopagent_commands::publisher::LogPublisher;
use shopagent_commands::{CommandBus, Database, Store, StoreConfig, SubscriberRunner};
use shopagent_connectors::kafka::KafkaStream;
use shopagent_connectors::search::{EmbeddedGenerations, EmbeddedIndex};
use shopagent_domain::cart::Cart;
use shopagent_domain::mandate::Mandate;
use shopagent_domain::merchant::Merchant;
use shopagent_domain::offer::Offer;
use shopagent_domain::order::Order;
use shopagent_domain::payment::Payment;
use shopagent_domain::ports::{
    CardIssuer, IndexGenerations, MerchantDirectory, OfferIndex, TrackingProvider,
};
use shopagent_domain::run::AgentRun;
use shopagent_projections::{
    AggregateCatalog, OrdersHub, Projection, ProjectionRunner, Reconciliation, SearchIndexer,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::directory::RegistryDirectory;

/// The key of export pseudonyms, derived from the token secret: stable as long as it
/// is, and the same for the API and `shopagent export`.
pub fn pseudonym_key(token_secret: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    hasher.update(b"shopagent export pseudonyms\0");
    hasher.update(token_secret);
    hasher.finalize().to_vec()
}

/// Our platform profile URI, sent to UCP merchants in `UCP-Agent`.
const AGENT_PROFILE: &str = "https://shopagent.invalid/.well-known/ucp";

/// What request handlers share: one reference to an [`AppState`], so that a clone
/// (axum makes one per request for each middleware's state and for the handler's) is
/// one count, not one per part.
#[derive(Debug, Clone)]
pub struct App(Arc<AppState>);

impl std::ops::Deref for App {
    type Target = AppState;

    fn deref(&self) -> &AppState {
        &self.0
    }
}

impl From<AppState> for App {
    fn from(state: AppState) -> Self {
        Self(Arc::new(state))
    }
}

/// The parts of [`App`].
pub struct AppState {
    pub store: Store,
    pub auth: Authenticator,
    pub mandates: Arc<CommandBus<Mandate>>,
    pub carts: Arc<CommandBus<Cart>>,
    pub runs: Arc<CommandBus<AgentRun>>,
    pub orders: Arc<CommandBus<Order>>,
    pub payments: Arc<CommandBus<Payment>>,
    pub merchants: Arc<CommandBus<Merchant>>,
    pub offers: Arc<CommandBus<Offer>>,
    /// Signing secret of the card issuer's webhooks (`whsec_…`); unset disables them.
    pub stripe_webhook_secret: Option<Arc<str>>,
    /// Signing secret of the tracking provider's webhooks; unset disables them.
    pub tracking_webhook_secret: Option<Arc<str>>,
    /// Webhook signing keys of UCP merchants, from their profiles.
    pub ucp_keys: Arc<crate::directory::UcpSigningKeys>,
    /// The orders this instance placed lately, for the merchants' webhooks about them.
    pub placed: Arc<shopagent_commands::placed::PlacedOrders>,
    /// Each merchant's connector, from the capability registry.
    pub directory: Arc<dyn MerchantDirectory>,
    /// Keys the pseudonyms of redacted exports (stable while it is).
    pub pseudonym_key: Arc<[u8]>,
    /// Days a placed order may wait for its card capture before reconciliation calls
    /// it an exception.
    pub capture_days: u16,
    /// Work requests start and the server waits for on shutdown (projection rebuilds).
    pub background: Background,
    /// The log is published to an event stream (Kafka).
    pub publishing: bool,
    /// Renders what the process counted, for `GET /metrics`.
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// Writes the HTTP idempotency records, in batches.
    pub idempotency: crate::idempotency::RecordWriter,
    /// The purchases' delay behind the log and the longest at which autopilot
    /// checkouts are accepted. `None`: no limit (no checkout process runs, or the
    /// limit is off).
    pub purchase_limit: Option<(PurchaseDelay, std::time::Duration)>,
    /// The offers search index, kept from the log by the `search_index` indexer.
    pub offer_index: Arc<dyn OfferIndex>,
    /// The indexer that keeps it, and rebuilds it beside the live generation.
    pub search_indexer: SearchIndexer,
}

/// Tasks that outlive the request that started them: cancelled and awaited when the
/// server stops.
#[derive(Debug, Clone, Default)]
pub struct Background {
    pub stop: CancellationToken,
    pub tasks: tokio_util::task::TaskTracker,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Must be called within a Tokio runtime: it starts the task that writes the HTTP
    /// idempotency records.
    pub fn new(store: Store, auth: Authenticator) -> Self {
        // A checkout rush on one mandate queues in process; across processes the
        // conflicts it meets are retried this many times.
        let attempts = 20;
        let merchants = Arc::new(CommandBus::new(store.clone()).with_max_attempts(attempts));
        let search_indexer = SearchIndexer::new(
            store.clone(),
            Arc::new(EmbeddedIndex::in_memory().expect("an index in memory")),
        )
        .with_generations(Arc::new(EmbeddedGenerations::in_memory()));
        Self {
            // Building an HTTP client fails only when its TLS backend cannot start, as
            // the process starts.
            directory: Arc::new(
                RegistryDirectory::new(
                    Arc::clone(&merchants),
                    AGENT_PROFILE.into(),
                    std::time::Duration::from_secs(10),
                )
                .expect("an HTTP client for merchants"),
            ),
            mandates: Arc::new(CommandBus::new(store.clone()).with_max_attempts(attempts)),
            carts: Arc::new(CommandBus::new(store.clone()).with_max_attempts(attempts)),
            runs: Arc::new(CommandBus::new(store.clone()).with_max_attempts(attempts)),
            orders: Arc::new(CommandBus::new(store.clone()).with_max_attempts(attempts)),
            payments: Arc::new(CommandBus::new(store.clone()).with_max_attempts(attempts)),
            offers: Arc::new(CommandBus::new(store.clone())),
            merchants,
            idempotency: crate::idempotency::RecordWriter::start(store.derived().clone()),
            store,
            auth,
            stripe_webhook_secret: None,
            tracking_webhook_secret: None,
            pseudonym_key: uuid::Uuid::new_v4().as_bytes().to_vec().into(),
            capture_days: DEFAULT_CAPTURE_DAYS,
            background: Background::default(),
            publishing: false,
            metrics: crate::telemetry::metrics(),
            // In memory until the server is given one on disk: rebuilt from the log at
            // start.
            offer_index: search_indexer.index(),
            search_indexer,
            purchase_limit: None,
            ucp_keys: Arc::new(
                crate::directory::UcpSigningKeys::new(
                    std::time::Duration::from_secs(5),
                    std::time::Duration::from_secs(300),
                )
                .expect("an HTTP client for merchant profiles"),
            ),
            placed: Arc::default(),
        }
    }
}

/// How long the purchases accepted may wait behind the log before autopilot checkouts
/// are refused: an order placed half a minute after its checkout is late, not lost.
pub const DEFAULT_MAX_PURCHASE_DELAY: std::time::Duration = std::time::Duration::from_secs(30);

/// Days a placed order may wait for its capture: merchants capture when they ship.
pub const DEFAULT_CAPTURE_DAYS: u16 = 7;

/// Every projection this build maintains.
pub fn projections() -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(AggregateCatalog),
        Arc::new(OrdersHub),
        Arc::new(Reconciliation),
    ]
}

/// Opens the configured store and applies pending migrations.
pub async fn open_store(config: &StoreConfig) -> anyhow::Result<Store> {
    let db = Database::connect(config).await?;
    db.migrate().await?;
    Ok(Store::new(db))
}

/// A server bound to its address, ready to run.
pub struct Server {
    app: AppState,
    listener: TcpListener,
    /// The card issuer the checkout process uses; without one it does not run.
    card_issuer: Option<Arc<dyn CardIssuer>>,
    /// The carrier-tracking provider shipped parcels are registered with.
    tracking: Option<Arc<dyn TrackingProvider>>,
    /// Where the log is published, and the topics' prefix.
    event_stream: Option<(Arc<KafkaStream>, String)>,
    /// How long after its lease ran out an interrupted request is run again.
    resume_after: std::time::Duration,
    max_purchase_delay: Option<std::time::Duration>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("checkout_process", &self.card_issuer.is_some())
            .finish_non_exhaustive()
    }
}

impl Server {
    pub async fn build(
        config: &StoreConfig,
        auth: Authenticator,
        listen: SocketAddr,
    ) -> anyhow::Result<Self> {
        let store = open_store(config).await?;
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        Ok(Self {
            app: AppState::new(store, auth),
            listener,
            card_issuer: None,
            tracking: None,
            event_stream: None,
            resume_after: crate::idempotency::RESUME_AFTER,
            max_purchase_delay: Some(DEFAULT_MAX_PURCHASE_DELAY),
        })
    }

    /// Runs the checkout process manager with this card issuer: `api` orders get a card
    /// and are placed with their merchant's connector from the registry.
    pub fn with_card_issuer(mut self, issuer: Option<Arc<dyn CardIssuer>>) -> Self {
        self.card_issuer = issuer;
        self
    }

    /// Publishes the log to this event stream, on topics named with `topic_prefix`.
    pub fn with_event_stream(mut self, stream: Option<(Arc<KafkaStream>, String)>) -> Self {
        self.app.publishing = stream.is_some();
        self.event_stream = stream;
        self
    }

    /// Days a placed order may wait for its capture before it is an exception.
    /// The offers search index (default: in memory, rebuilt from the log at start), and
    /// where a rebuild makes its next generation.
    pub fn with_offer_index(
        mut self,
        index: Arc<dyn OfferIndex>,
        generations: Arc<dyn IndexGenerations>,
    ) -> Self {
        self.app.search_indexer =
            SearchIndexer::new(self.app.store.clone(), index).with_generations(generations);
        self.app.offer_index = self.app.search_indexer.index();
        self
    }

    pub fn with_capture_days(mut self, days: u16) -> Self {
        self.app.capture_days = days;
        self
    }

    /// Keys the pseudonyms of redacted exports; the same key gives the same pseudonyms.
    pub fn with_pseudonym_key(mut self, key: Vec<u8>) -> Self {
        self.app.pseudonym_key = key.into();
        self
    }

    /// Runs the tracking process with this provider: shipped parcels are registered.
    pub fn with_tracking(mut self, provider: Option<Arc<dyn TrackingProvider>>) -> Self {
        self.tracking = provider;
        self
    }

    /// Enables `POST /v1/webhooks/easypost/{tenant}`, verifying signatures with `secret`.
    pub fn with_tracking_webhook_secret(mut self, secret: Option<String>) -> Self {
        self.app.tracking_webhook_secret = secret.filter(|s| !s.is_empty()).map(Arc::from);
        self
    }

    /// Enables `POST /v1/webhooks/stripe`, verifying signatures with `secret`.
    pub fn with_stripe_webhook_secret(mut self, secret: Option<String>) -> Self {
        self.app.stripe_webhook_secret = secret.filter(|s| !s.is_empty()).map(Arc::from);
        self
    }

    /// Runs interrupted requests again this long after their lease ran out (default
    /// [`RESUME_AFTER`](crate::idempotency::RESUME_AFTER)).
    pub fn with_resume_after(mut self, after: std::time::Duration) -> Self {
        self.resume_after = after;
        self
    }

    /// Refuses autopilot checkouts (503, `purchases_behind`) while the purchases
    /// accepted wait longer than `limit` behind the log (default
    /// [`DEFAULT_MAX_PURCHASE_DELAY`]); `None`: accepts them however long the purchases
    /// wait. Applies only where the checkout process runs ([`Server::with_card_issuer`]).
    pub fn with_max_purchase_delay(mut self, limit: Option<std::time::Duration>) -> Self {
        self.max_purchase_delay = limit;
        self
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn app(&self) -> &AppState {
        &self.app
    }

    /// Serves until `shutdown` fires; then lets in-flight requests finish, lets each
    /// projection finish and checkpoint its batch, and closes the store.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            mut app,
            listener,
            card_issuer,
            tracking,
            event_stream,
            resume_after,
            max_purchase_delay,
        } = self;
        let runners_stop = CancellationToken::new();
        let mut purchase_watch = None;
        if card_issuer.is_some()
            && let Some(limit) = max_purchase_delay
        {
            let delay = PurchaseDelay::default();
            let watch = delay.clone().watch(app.store.clone(), runners_stop.clone());
            purchase_watch = Some(tokio::spawn(watch));
            app.purchase_limit = Some((delay, limit));
        }
        let app = App::from(app);
        let store = app.store.clone();
        let background = app.background.clone();
        let runners: Vec<_> = projections()
            .into_iter()
            .map(|projection| {
                let runner = ProjectionRunner::new(store.clone(), projection);
                tokio::spawn(runner.run(runners_stop.clone()))
            })
            .collect();

        let indexer = tokio::spawn(app.search_indexer.clone().run(runners_stop.clone()));
        let purger = tokio::spawn(purge_idempotency_keys(store.clone(), runners_stop.clone()));
        let checkout = card_issuer.map(|issuer| {
            let process = CheckoutProcess {
                orders: app.orders.clone(),
                payments: app.payments.clone(),
                mandates: app.mandates.clone(),
                carts: app.carts.clone(),
                issuer,
                merchants: app.directory.clone(),
                // Shipping and tax may be recomputed at placement: 5 % headroom.
                cap_tolerance_bps: 500,
                // Five unavailable answers in a row open a merchant's circuit; an order
                // gives up after five attempts (backoff grows to 30 s between them).
                breaker: MerchantBreaker::new(app.merchants.clone(), 5, 5),
                placed: app.placed.clone(),
            };
            tokio::spawn(
                SubscriberRunner::new(store.clone(), Arc::new(process)).run(runners_stop.clone()),
            )
        });
        let publisher = event_stream.map(|(stream, prefix)| {
            tokio::spawn(publish_log(
                store.clone(),
                stream,
                prefix,
                runners_stop.clone(),
            ))
        });
        let tracking = tracking.map(|provider| {
            let process = shopagent_commands::tracking::TrackingProcess { provider };
            tokio::spawn(
                SubscriberRunner::new(store.clone(), Arc::new(process)).run(runners_stop.clone()),
            )
        });
        tracing::info!(
            address = %listener.local_addr()?,
            store = store.backend().as_str(),
            "shopagent listening"
        );
        let records = app.idempotency.clone();
        let router = crate::http::router(app);
        let resumer = tokio::spawn(crate::idempotency::resume_interrupted(
            store.derived().clone(),
            router.clone(),
            resume_after,
            runners_stop.clone(),
        ));
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;

        runners_stop.cancel();
        background.stop.cancel();
        background.tasks.close();
        background.tasks.wait().await;
        let _ = purger.await;
        let _ = resumer.await;
        // The answers of the last requests are written behind their responses.
        records.flush().await;
        let _ = indexer.await;
        for process in [checkout, tracking, publisher, purchase_watch]
            .into_iter()
            .flatten()
        {
            let _ = process.await;
        }
        for runner in runners {
            if let Err(error) = runner.await {
                tracing::error!(%error, "projection runner ended abnormally");
            }
        }
        store.close().await;
        tracing::info!("shopagent stopped");
        served.context("HTTP server failed")
    }
}

/// Events per publisher batch (one checkpoint per batch).
pub const PUBLISH_BATCH: u32 = 1_000;

/// Publishes the log to `stream` until `stop`: creates the topics first (retried until
/// the broker answers), then runs the publisher.
async fn publish_log(
    store: Store,
    stream: Arc<KafkaStream>,
    prefix: String,
    stop: CancellationToken,
) {
    let publisher = LogPublisher::new(stream.clone(), prefix);
    let topics: Vec<String> = [
        "cart",
        "order",
        "payment",
        "mandate",
        "agent_run",
        "merchant",
    ]
    .into_iter()
    .map(|kind| publisher.topic(kind))
    .collect();
    let mut failures = 0;
    while let Err(error) = stream.ensure_topics(&topics).await {
        failures += 1;
        tracing::warn!(%error, "cannot create the event stream's topics; retrying");
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(shopagent_commands::subscriber::backoff(failures)) => {}
        }
    }
    SubscriberRunner::new(store, Arc::new(publisher))
        .run(stop)
        .await;
}

/// Deletes stored idempotent responses past their retention, hourly.
async fn purge_idempotency_keys(store: Store, stop: CancellationToken) {
    let mut every_hour = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every_hour.tick() => {
                match crate::idempotency::purge(store.derived()).await {
                    Ok(0) => {}
                    Ok(deleted) => tracing::info!(deleted, "expired idempotency keys purged"),
                    Err(error) => tracing::warn!(%error, "idempotency purge failed"),
                }
            }
        }
    }
}
